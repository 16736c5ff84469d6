"""Real training processes, killed and rerun: resume must be exact. Runs in CI. First
the pure parts of fault_check: kill moments, their log-line triggers, and the
comparison of results.json."""
import copy
import random
import signal
import sys
import time

import pytest

from mnist import errors
from mnist import fault_injection

FLAGS = ["--train_split=train[:3200]", '--epochs=2', '--checkpoint_every_steps=10',
         '--log_every_steps=10', '--deterministic']
# A hung training process fails the test instead of stalling CI (run() has no limit).
GUARD_SECONDS = 900


# --- Pure parts ----------------------------------------------------------------------

# A results.json of a 2-epoch run with a validation split, as train.py writes it.
RESULTS = {
    'test_accuracy': 0.95, 'test_loss': 0.17, 'test_examples': 1000, 'global_step': 50,
    'epochs_completed': 2, 'train_seconds': 12.5, 'train_images_per_sec': 900.0,
    'weights_sha256': 'ab' * 32, 'num_replicas': 1,
    'eval_history': [
        {'epoch': 1, 'step': 25, 'seconds': 6.1, 'split': 'train[59000:]', 'loss': 0.3,
         'accuracy': 0.91, 'examples': 1000, 'eval_seconds': 0.4, 'epoch_end_seconds': 0.7},
        {'epoch': 2, 'step': 50, 'seconds': 11.9, 'split': 'train[59000:]', 'loss': 0.2,
         'accuracy': 0.94, 'examples': 1000, 'eval_seconds': 0.3, 'epoch_end_seconds': 0.6}],
    'config': {'model_dir': '/runs/reference', 'seed': 0, 'epochs': 2},
    'hardware': {'summary': 'EPYC, 2 cores'},
    'provenance': {'code_version': '1a2b3c4d', 'segments': [{'first_step': 0}]},
    'validation_accuracy': 0.94, 'validation_loss': 0.2, 'validation_examples': 1000,
}


def test_results_compare_equal_but_for_timings_and_provenance():
  resumed = copy.deepcopy(RESULTS)
  resumed.update(train_seconds=20.0, train_images_per_sec=500.0,
                 hardware={'summary': 'another host'},
                 provenance={'code_version': '5e6f7a8b', 'segments': [{}, {}]})
  resumed['config']['model_dir'] = '/runs/trial0'
  for entry in resumed['eval_history']:
    entry.update(seconds=99.0, eval_seconds=9.0, epoch_end_seconds=9.5)
  assert fault_injection.compare_results(RESULTS, resumed) == []


def test_results_differences_name_a_missing_epoch_metric_and_changed_values():
  # A kill after epoch 1's checkpoint, resumed by a process that lost the record.
  resumed = copy.deepcopy(RESULTS)
  del resumed['eval_history'][0], resumed['validation_accuracy']
  resumed['test_loss'] = 0.18
  resumed['config']['seed'] = 1
  resumed['images_trained'] = 3200
  differences = fault_injection.compare_results(RESULTS, resumed)
  assert [d.key for d in differences] == [
      'config.seed', 'eval_history[epoch=1]', 'images_trained', 'test_loss',
      'validation_accuracy']
  assert [d.describe() for d in differences] == [
      'config.seed (0 -> 1)', 'eval_history[epoch=1] (absent after resume)',
      'images_trained (only after resume)', 'test_loss (0.17 -> 0.18)',
      'validation_accuracy (absent after resume)']
  assert differences[1].reference['accuracy'] == 0.91  # The lost entry, without timings.
  assert 'seconds' not in differences[1].reference


def test_an_int_for_a_float_or_a_changed_eval_value_is_a_difference():
  resumed = copy.deepcopy(RESULTS)
  resumed['eval_history'][1]['accuracy'] = 0.95
  resumed['validation_examples'] = 1000.0
  assert [d.key for d in fault_injection.compare_results(RESULTS, resumed)] == [
      'eval_history[epoch=2].accuracy', 'validation_examples']


def test_kill_moments_take_turns_and_stay_in_their_windows():
  moments = fault_injection.plan_kill_moments(7, random.Random(5), RESULTS,
                                              results_window=0.8)
  assert [m.kind for m in moments] == ['epoch_end', 'results_write', 'random'] * 2 + [
      'epoch_end']
  for moment in moments:
    assert 0 <= moment.delay <= moment.window
  by_epoch = {e['epoch']: e for e in RESULTS['eval_history']}
  for moment in (m for m in moments if m.kind == 'epoch_end'):
    entry = by_epoch[moment.epoch]  # An epoch of the run, its last step and its end.
    assert (moment.step, moment.window) == (entry['step'], entry['epoch_end_seconds'])
  assert {m.window for m in moments if m.kind == 'results_write'} == {0.8}
  assert {m.window for m in moments if m.kind == 'random'} == {12.5}
  assert moments == fault_injection.plan_kill_moments(7, random.Random(5), RESULTS, 0.8)
  assert 'epoch end: ' in moments[0].describe()
  assert 'results write: ' in moments[1].describe()
  assert 'random: ' in moments[2].describe()


def test_triggers_match_the_log_lines_before_an_epoch_end_and_the_results_write():
  prefix = 'I0520 07:40:01.123456 140 train.py:576] '
  last_step_of_epoch_1 = fault_injection.KillMoment('epoch_end', 0.1, 0.7, epoch=1,
                                                    step=25).trigger()
  assert last_step_of_epoch_1.search(
      prefix + 'step 25  epoch 1  loss 0.3000  accuracy 0.9100  900 images/s  ETA 3s')
  assert not last_step_of_epoch_1.search(prefix + 'step 250  epoch 1  loss 0.3')
  assert not last_step_of_epoch_1.search(prefix + 'step 125  epoch 1  loss 0.3')
  results_write = fault_injection.KillMoment('results_write', 0.1, 0.8).trigger()
  final = 'epoch 2/2  train[59000:] loss 0.2  accuracy 0.94 on 1000 examples  saved /m/ck-50'
  assert results_write.search(prefix + final)
  assert results_write.search(prefix + final.replace('2/2', '12/12'))
  assert not results_write.search(prefix + final.replace('2/2', '1/2'))
  assert not results_write.search(prefix + final.replace('2/2', '2/12'))
  assert fault_injection.KillMoment('random', 0.1, 12.5).trigger() is None


def test_the_results_window_is_measured_else_the_last_eval_pass():
  assert fault_injection.results_window(RESULTS, 100.0, 100.75) == 0.75
  assert fault_injection.results_window(RESULTS, None, 100.75) == 0.3
  assert fault_injection.results_window(RESULTS, 100.0, 99.0) == 0.3  # A stale file.


def test_an_epoch_end_kill_is_bounded_by_the_epochs_own_line():
  moment = fault_injection.KillMoment('epoch_end', 0.1, 0.7, epoch=1, step=25)
  assert moment.bound().search('I0520 train.py:622] epoch 1/2  train[59000:] loss 0.3')
  assert not moment.bound().search('I0520 train.py:622] epoch 11/12  train loss 0.3')
  assert not moment.bound().search('I0520 train.py:576] step 25  epoch 1  loss 0.3')
  assert fault_injection.KillMoment('results_write', 0.1, 0.8).bound() is None


# A stand-in for train.py's log (no TensorFlow): an epoch's last step, its epoch line
# 1 s later, then 60 s more unless signalled.
FAKE_EPOCH_END = (
    'import sys, time\n'
    'print("I0520 train.py:576] step 25  epoch 1  loss 0.3", file=sys.stderr, flush=True)\n'
    'time.sleep(1)\n'
    'print("I0520 train.py:622] epoch 1/2  loss 0.3", file=sys.stderr, flush=True)\n'
    'time.sleep(60)\n'
    'print("{}")\n')
EPOCH_END_MOMENT = fault_injection.KillMoment('epoch_end', 0.0, 0.0, epoch=1, step=25)


@pytest.mark.slow
@pytest.mark.parametrize('delay, until, expected', [
    (0.1, None, fault_injection.AFTER_DELAY),  # Within the epoch end.
    (30.0, EPOCH_END_MOMENT.bound(), fault_injection.AT_BOUND),  # Cut short by its line.
], ids=['after_the_delay', 'at_the_bound'])
def test_the_signal_follows_the_trigger_line_by_the_delay_or_at_the_bound(delay, until,
                                                                          expected):
  started = time.monotonic()
  outcome, how = fault_injection.run_and_signal_after_line(
      [sys.executable, '-c', FAKE_EPOCH_END], EPOCH_END_MOMENT.trigger(), signal.SIGKILL,
      delay, until=until, timeout=120)
  assert (outcome.returncode, how) == (-signal.SIGKILL, expected)
  assert ('epoch 1/2' in outcome.stderr) == (expected == fault_injection.AT_BOUND)
  assert time.monotonic() - started < 20  # Neither the 30 s delay nor the 60 s sleep.


@pytest.mark.slow
def test_a_run_that_never_logs_the_trigger_is_not_signalled():
  outcome, how = fault_injection.run_and_signal_after_line(
      [sys.executable, '-c', 'print("{\\"done\\": 1}")'], EPOCH_END_MOMENT.trigger(),
      signal.SIGKILL, 0.0, timeout=120)
  assert (outcome.returncode, how, outcome.results) == (0, fault_injection.NOT_SENT,
                                                        {'done': 1})


# --- Real processes -----------------------------------------------------------------

@pytest.fixture(scope='module')
def reference(tmp_path_factory):
  """One uninterrupted deterministic run: the sha256 every resumed run must reach."""
  model_dir = str(tmp_path_factory.mktemp('reference'))
  outcome = fault_injection.run(fault_injection.train_command(model_dir, FLAGS), GUARD_SECONDS)
  assert outcome.returncode == 0, outcome.stderr[-3000:]
  return outcome.results


@pytest.mark.slow
@pytest.mark.real_data
def test_a_deterministic_rerun_gives_the_same_fingerprint(tmp_path, reference, manual_dir):
  del manual_dir  # Only ensures the data exists.
  again = fault_injection.run(fault_injection.train_command(str(tmp_path), FLAGS),
                              GUARD_SECONDS)
  assert again.results['weights_sha256'] == reference['weights_sha256']


@pytest.mark.slow
@pytest.mark.real_data
def test_sigkill_after_a_checkpoint_then_rerun_matches_uninterrupted(tmp_path, reference):
  command = fault_injection.train_command(str(tmp_path), FLAGS)
  killed = fault_injection.run_and_signal(command, str(tmp_path), signal.SIGKILL,
                                          delay=0.5)
  assert killed.returncode == -signal.SIGKILL
  killed_at = fault_injection.latest_checkpoint_step(str(tmp_path))
  assert killed_at is not None and killed_at < reference['global_step']
  resumed = fault_injection.run(command, GUARD_SECONDS)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f'Restored {tmp_path}/checkpoints/ckpt-' in resumed.stderr
  assert resumed.results['weights_sha256'] == reference['weights_sha256']


@pytest.mark.slow
@pytest.mark.real_data
def test_sigterm_saves_a_checkpoint_exits_75_and_resumes(tmp_path, reference):
  command = fault_injection.train_command(str(tmp_path), FLAGS)
  stopped = fault_injection.run_and_signal(command, str(tmp_path), signal.SIGTERM,
                                           delay=0.5)
  assert stopped.returncode == errors.PreemptedError.exit_code == 75
  assert 'Received SIGTERM at step' in stopped.stderr
  assert 'Traceback' not in stopped.stderr
  saved_at = fault_injection.latest_checkpoint_step(str(tmp_path))
  assert f'ckpt-{saved_at}' in stopped.stderr  # The checkpoint it names is the latest.
  resumed = fault_injection.run(command, GUARD_SECONDS)
  assert resumed.results['weights_sha256'] == reference['weights_sha256']


@pytest.mark.slow
@pytest.mark.real_data
def test_fault_check_kills_at_an_epoch_end_and_before_the_results_write(tmp_path,
                                                                        manual_dir):
  lines = []
  expected, trials = fault_injection.fault_check(
      str(tmp_path), ["--train_split=train[:1280]", "--validation_split=train[59000:59500]",
                      "--eval_split=test[:1000]", '--epochs=2',
                      '--checkpoint_every_steps=5', f'--tfds_manual_dir={manual_dir}',
                      '--deterministic'],
      runs=2, seed=3, log=lines.append)
  assert len(expected) == 64
  assert [trial.moment.kind for trial in trials] == ['epoch_end', 'results_write']
  epoch_end, results_write = trials
  for trial in trials:  # Both killed while the run was still going.
    assert trial.returncode == -signal.SIGKILL, lines
  # Killed after the line that follows the final checkpoint: that checkpoint is there.
  assert results_write.killed_after_step == 40  # 1280 / 64 x 2 epochs.
  assert epoch_end.killed_after_step <= epoch_end.moment.step
  assert lines[1].startswith('trial 0: epoch end: ') and 'same weights' in lines[1]
  assert lines[2].startswith('trial 1: results write: ') and 'same weights' in lines[2]
  for trial in trials:  # The whole record, not only the weights.
    assert trial.weights_match and trial.result_differences == [], lines
