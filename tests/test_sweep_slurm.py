"""scripts/sweep.py --launcher=slurm (mnist/sweep/slurm.py): the array's pure parts, then
a private real Slurm cluster running the TensorFlow-free stand-in for scripts/train.py,
and a real 2x2 sweep on MNIST interrupted and resumed."""
import glob
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from conftest import REPO
from mnist import errors
from mnist import launch
from mnist.sweep import runner
from mnist.sweep import slurm
from test_sweep_runner import FAKE_TRAIN

SWEEP = os.path.join(REPO, 'scripts', 'sweep.py')
GUARD_SECONDS = 600  # A hung sweep fails the test instead of the CI run.


def _job(tmp_path, name, *flags):
  return runner.Job(name, str(tmp_path / name), tuple(flags), str(tmp_path / f'{name}.log'))


def test_array_spec_limits_the_tasks_running_at_once():
  assert slurm.array_spec(4, 2) == '0-3%2'
  assert slurm.array_spec(1, 3) == '0-0%3'


def test_the_table_holds_the_local_launchers_command_unpinned(tmp_path):
  jobs = [_job(tmp_path, 'a/seed0', '--seed=0'), _job(tmp_path, 'b/seed0', '--seed=0')]
  table = slurm.task_table(jobs)
  assert [row['name'] for row in table['runs']] == ['a/seed0', 'b/seed0']
  row = table['runs'][1]
  assert row['argv'] == runner.command(jobs[1]) == [
      sys.executable, launch.TRAIN_SCRIPT, '--seed=0', f'--model_dir={jobs[1].model_dir}']
  assert not any('threads' in arg for arg in row['argv'])  # Slurm allocates the CPUs.
  assert (row['log'], row['model_dir']) == (jobs[1].log_path, jobs[1].model_dir)


def test_sbatch_command_puts_the_users_options_before_the_script():
  options = slurm.check_sbatch_flags("--partition=gpu --time=2:00:00 --gres='gpu:1'")
  argv = slurm.sbatch_command('/s/array-1.sh', 4, 2, 'sweep-lr', '/s/array-1/%a.out',
                              options)
  assert argv[:3] == ['sbatch', '--parsable', '--array=0-3%2']
  assert '--job-name=sweep-lr' in argv and '--output=/s/array-1/%a.out' in argv
  assert argv[-4:] == ['--partition=gpu', '--time=2:00:00', '--gres=gpu:1', '/s/array-1.sh']


@pytest.mark.parametrize('flags', ['--array=0-9', '-o x.log', "--wrap='true'", '--time="1'])
def test_slurm_flags_may_not_take_over_the_array(flags):
  with pytest.raises(errors.ConfigError, match='--slurm_flags'):
    slurm.check_sbatch_flags(flags)


@pytest.mark.parametrize('record, state, exit_code, expected', [
    ({'returncode': 75, 'seconds': 1.0}, 'CANCELLED', '0:15', 75),  # The task's own word.
    ({'returncode': -9, 'seconds': 1.0}, None, None, -9),
    (None, 'CANCELLED', '0:15', -15),  # Killed before it wrote a record.
    (None, 'FAILED', '2:0', 2),
    (None, 'TIMEOUT', '0:0', 75),
    (None, 'NODE_FAIL', '0:0', 1),
    (None, None, None, 1),  # Slurm forgot it: a failure, never a success.
])
def test_exit_code_from_the_record_else_from_slurms_state(record, state, exit_code,
                                                          expected):
  assert slurm.returncode(record, state, exit_code) == expected


# --- A private real Slurm cluster ---------------------------------------------------------

@pytest.fixture
def fake_train(tmp_path):
  path = tmp_path / 'fake_train.py'
  path.write_text(FAKE_TRAIN)
  return str(path)


def _starts(job):
  path = os.path.join(job.model_dir, 'starts')
  return open(path).read().splitlines() if os.path.exists(path) else []


@pytest.fixture
def slurm_env(slurm_cluster, monkeypatch):
  """This process as a Slurm client of the private cluster."""
  monkeypatch.setenv('SLURM_CONF', slurm_cluster.env['SLURM_CONF'])
  return slurm_cluster


@pytest.mark.slow
def test_array_skips_finished_runs_and_reports_each_outcome(tmp_path, fake_train,
                                                            slurm_env):
  done, failing, fresh = (_job(tmp_path, 'done', '--seed=1'),
                          _job(tmp_path, 'failing', '--seed=2', '--behaviour=fail'),
                          _job(tmp_path, 'fresh', '--seed=3'))
  os.makedirs(done.model_dir)
  with open(os.path.join(done.model_dir, 'results.json'), 'w') as f:
    json.dump({'test_accuracy': 0.5, 'train_seconds': 9.0}, f)
  seen = []
  outcomes = slurm.run_jobs(
      [done, failing, fresh], parallel=2, on_done=lambda o: seen.append(o.job.name),
      work_dir=str(tmp_path / 'slurm'), script=fake_train, poll_seconds=0.2)
  assert sorted(seen) == ['done', 'failing', 'fresh']
  assert outcomes[0].skipped and _starts(done) == []
  assert (outcomes[1].returncode, outcomes[1].results) == (3, None)
  assert outcomes[2].returncode == 0 and outcomes[2].results['test_accuracy'] == 0.3
  assert not outcomes[2].skipped and outcomes[2].process_seconds > 0
  with open(tmp_path / 'slurm' / 'array-1.json') as f:  # One array: the two unfinished.
    assert [row['name'] for row in json.load(f)['runs']] == ['failing', 'fresh']
  with open(fresh.log_path) as f:
    assert f.readline() == f'$ {sys.executable} {fake_train} --seed=3 ' \
                           f'--model_dir={fresh.model_dir}\n'


@pytest.mark.slow
def test_array_resubmits_a_run_whose_results_lack_the_metric(tmp_path, fake_train,
                                                             slurm_env):
  # Issue #29: resumed after its last checkpoint with nothing to train, it wrote a
  # results.json without its metric. Unfinished: submitted again; a complete run is not.
  lacking, complete = [
      runner.Job(name, str(tmp_path / name), (f'--seed={seed}',),
                 str(tmp_path / f'{name}.log'), required_result='test_accuracy')
      for name, seed in (('lacking', 2), ('complete', 1))]
  for job, results in ((lacking, {'train_seconds': 9.0}),
                       (complete, {'test_accuracy': 0.5, 'train_seconds': 9.0})):
    os.makedirs(job.model_dir)
    with open(os.path.join(job.model_dir, 'results.json'), 'w') as f:
      json.dump(results, f)
  outcomes = slurm.run_jobs([lacking, complete], parallel=2,
                            work_dir=str(tmp_path / 'slurm'), script=fake_train,
                            poll_seconds=0.2)
  with open(tmp_path / 'slurm' / 'array-1.json') as f:
    assert [row['name'] for row in json.load(f)['runs']] == ['lacking']
  assert len(_starts(lacking)) == 1 and _starts(complete) == []
  assert outcomes[0].finished and outcomes[0].results['test_accuracy'] == 0.2
  assert outcomes[1].skipped


@pytest.mark.slow
def test_sigint_cancels_the_array_and_running_tasks_checkpoint(tmp_path, fake_train,
                                                               slurm_env):
  jobs = [_job(tmp_path, name, '--seed=1', '--seconds=120') for name in ('a', 'b', 'c')]

  def interrupt_once_started():
    while len(_starts(jobs[0])) + len(_starts(jobs[1])) < 2:
      time.sleep(0.05)
    time.sleep(0.5)  # The stand-in handles SIGTERM only after it wrote `starts`.
    os.kill(os.getpid(), signal.SIGINT)

  threading.Thread(target=interrupt_once_started, daemon=True).start()
  seen = []
  started = time.monotonic()
  with pytest.raises(errors.PreemptedError, match='Received SIGINT') as raised:
    slurm.run_jobs(jobs, parallel=2, on_done=seen.append, work_dir=str(tmp_path / 'slurm'),
                   script=fake_train, poll_seconds=0.2)
  assert time.monotonic() - started < 60  # Well within Slurm's KillWait (30 s) + start.
  assert [(o.job.name, o.returncode, o.stopped) for o in sorted(
      seen, key=lambda o: o.job.name)] == [('a', 75, True), ('b', 75, True)]
  for job in jobs[:2]:  # Slurm's SIGTERM reached them: they checkpointed and exited 75.
    assert os.path.exists(os.path.join(job.model_dir, 'checkpoint'))
  assert _starts(jobs[2]) == []  # Cancelled while pending.
  assert 'a, b, c' in str(raised.value)
  slurm_env.wait_until_gone(timeout=60)  # Nothing left running (after COMPLETING).


# --- A real sweep on MNIST ----------------------------------------------------------------

def _sweep_command(sweep_dir, manual_dir):
  return [sys.executable, SWEEP, '--launcher=slurm', f'--sweep_dir={sweep_dir}',
          '--seeds=2', '--parallel=2', '--vary=learning_rate=1e-3,3e-3', '--',
          '--train_split=train[:640]', '--validation_split=train[59000:]',
          '--eval_split=test[:1000]', '--epochs=1', '--batch_size=64',
          f'--tfds_manual_dir={manual_dir}']


@pytest.mark.slow
@pytest.mark.real_data
def test_interrupted_slurm_sweep_resumes_without_repeating_finished_runs(
    tmp_path, manual_dir, slurm_cluster):
  sweep_dir = tmp_path / 'sweep'
  command = _sweep_command(sweep_dir, manual_dir)
  process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=slurm_cluster.env)
  finished = []
  try:
    for line in process.stdout:
      if ': validation_accuracy ' in line:
        finished.append(line.split(':')[0])
        process.send_signal(signal.SIGINT)
        break
    _, stderr = process.communicate(timeout=GUARD_SECONDS)
  finally:
    if process.poll() is None:
      process.kill()
  assert process.returncode == 75, stderr[-3000:]
  assert 'Received SIGINT' in stderr and 'Rerun the same command' in stderr
  with open(sweep_dir / 'slurm' / 'array-1.json') as f:
    first = [row['name'] for row in json.load(f)['runs']]
  assert len(first) == 4 and finished and finished[0] in first  # One array of 4 tasks.
  slurm_cluster.wait_until_gone(timeout=60)  # scancel ended it.
  # The run still training when SIGINT came may have finished before Slurm's SIGTERM.
  done = [name for name in first if os.path.exists(sweep_dir / name / 'results.json')]
  assert set(finished) <= set(done) and len(done) < 4

  # --allow_code_change: the checkout may be edited while the tests run; that is the
  # provenance check's concern, not this test's.
  rerun = subprocess.run([*command[:2], '--allow_code_change', *command[2:]],
                         capture_output=True, text=True, timeout=GUARD_SECONDS,
                         env=slurm_cluster.env)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  with open(sweep_dir / 'slurm' / 'array-2.json') as f:
    second = [row['name'] for row in json.load(f)['runs']]
  assert second == [name for name in first if name not in done]  # Only the others.
  for name in done:
    assert f'{name}: finished earlier, skipped' in rerun.stdout
    with open(sweep_dir / f'{name}.log') as f:
      assert len([line for line in f if line.startswith('$ ')]) == 1  # Never repeated.
  results = {os.path.relpath(os.path.dirname(path), sweep_dir): json.load(open(path))
             for path in glob.glob(str(sweep_dir / '*' / 'seed*' / 'results.json'))}
  assert sorted(results) == sorted(first)
  report = json.load(open(sweep_dir / 'report.json'))
  assert [(row['variant'], row['seeds']) for row in report['rows']] == [
      ('learning_rate=1e-3', 2), ('learning_rate=3e-3', 2)]
  assert report['rows'][1]['per_seed']['0'] == results['learning_rate=3e-3/seed0'][
      'validation_accuracy']
  assert '| learning_rate=3e-3 | 2 |' in rerun.stdout  # The local launcher's table.
