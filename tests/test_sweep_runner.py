"""mnist/sweep/runner.py with a stand-in for scripts/train.py (no TensorFlow): slots
and pinning, skipping finished runs, failures, and a clean stop on SIGINT."""
import json
import os
import signal
import textwrap
import threading

import pytest

from mnist import errors
from mnist.sweep import runner

# Takes train.py's flags; --behaviour (or FAKE_TRAIN_BEHAVIOUR, for sweeps, whose flags
# must be train.py's) and --seconds say what to do. On SIGTERM it writes a checkpoint
# marker and exits 75, as training does. no_metric: exits 0 with a results.json without
# test_accuracy, as train.py did when resumed after its last checkpoint.
FAKE_TRAIN = textwrap.dedent('''
    import json, os, signal, sys, time
    flags = dict(a[2:].split('=', 1) for a in sys.argv[1:] if '=' in a)
    behaviour = flags.get('behaviour', os.environ.get('FAKE_TRAIN_BEHAVIOUR'))
    model_dir = flags['model_dir']
    os.makedirs(model_dir, exist_ok=True)
    with open(os.path.join(model_dir, 'starts'), 'a') as f:
      f.write(json.dumps({'cpus': sorted(os.sched_getaffinity(0)),
                          'argv': sys.argv[1:]}) + '\\n')
    if behaviour == 'fail':
      sys.exit(3)
    if behaviour == 'no_metric':
      with open(os.path.join(model_dir, 'results.json'), 'w') as f:
        json.dump({'train_seconds': 1.0}, f)
      sys.exit(0)
    stop = []
    signal.signal(signal.SIGTERM, lambda *unused: stop.append(1))
    deadline = time.time() + float(flags.get('seconds', '0'))
    while time.time() < deadline:
      if stop:
        open(os.path.join(model_dir, 'checkpoint'), 'w').close()
        sys.exit(75)
      time.sleep(0.02)
    with open(os.path.join(model_dir, 'results.json'), 'w') as f:
      json.dump({'test_accuracy': int(flags['seed']) / 10, 'train_seconds': 1.0}, f)
    ''')


@pytest.fixture
def fake_train(tmp_path):
  path = tmp_path / 'fake_train.py'
  path.write_text(FAKE_TRAIN)
  return str(path)


def _job(tmp_path, name, *flags, required_result=None):
  return runner.Job(name, str(tmp_path / name), tuple(flags), str(tmp_path / f'{name}.log'),
                    required_result)


def _write_results(job, results):
  os.makedirs(job.model_dir, exist_ok=True)
  with open(os.path.join(job.model_dir, 'results.json'), 'w') as f:
    json.dump(results, f)


def _starts(job):
  path = os.path.join(job.model_dir, 'starts')
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f]


def test_cpu_slots_split_the_cores_between_concurrent_runs():
  assert runner.cpu_slots(2, [0, 1]) == [(0,), (1,)]
  assert runner.cpu_slots(2, [0, 1, 2, 3, 4]) == [(0, 1, 2), (3, 4)]
  assert runner.cpu_slots(1, [0, 1]) == [None]  # One at a time: all cores, no pinning.
  assert runner.cpu_slots(3, [0, 1]) == [None, None, None]  # More runs than cores.


def test_thread_pools_match_the_slot_and_a_users_own_setting_wins(tmp_path):
  job = _job(tmp_path, 'a', '--intra_op_threads=4')
  argv = runner.command(job, (2, 3))
  assert argv[2:5] == ['--intra_op_threads=2', '--inter_op_threads=2',
                       '--intra_op_threads=4']  # absl: the last one counts.
  assert argv[-1] == f'--model_dir={job.model_dir}'
  assert runner.thread_flags(None) == []


@pytest.mark.slow
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason='needs 2 cores to pin to')
def test_parallel_runs_are_pinned_to_their_own_cores(tmp_path, fake_train):
  cpus = sorted(os.sched_getaffinity(0))[:2]
  jobs = [_job(tmp_path, name, '--seed=1', '--seconds=1') for name in ('a', 'b')]
  outcomes = runner.run_jobs(jobs, parallel=2, cpus=cpus, script=fake_train)
  assert [o.returncode for o in outcomes] == [0, 0]
  pinned = [_starts(job)[0]['cpus'] for job in jobs]
  assert sorted(pinned) == [[cpus[0]], [cpus[1]]]
  assert all('--intra_op_threads=1' in _starts(job)[0]['argv'] for job in jobs)


@pytest.mark.slow
def test_finished_runs_are_skipped_and_failures_do_not_stop_the_others(tmp_path,
                                                                       fake_train):
  done, failing, fresh = (_job(tmp_path, 'done', '--seed=1'),
                          _job(tmp_path, 'failing', '--seed=2', '--behaviour=fail'),
                          _job(tmp_path, 'fresh', '--seed=3'))
  os.makedirs(done.model_dir)
  with open(os.path.join(done.model_dir, 'results.json'), 'w') as f:
    json.dump({'test_accuracy': 0.5, 'train_seconds': 9.0}, f)
  seen = []
  outcomes = runner.run_jobs([done, failing, fresh], parallel=1, script=fake_train,
                             on_done=lambda outcome: seen.append(outcome.job.name))
  assert sorted(seen) == ['done', 'failing', 'fresh']
  assert outcomes[0].skipped and outcomes[0].results['test_accuracy'] == 0.5
  assert _starts(done) == []  # Not started again.
  assert (outcomes[1].returncode, outcomes[1].results) == (3, None)
  assert outcomes[2].returncode == 0 and outcomes[2].results['test_accuracy'] == 0.3
  with open(failing.log_path) as f:
    assert f.readline().startswith('$ ')  # The command, then the run's output.


@pytest.mark.slow
def test_sigint_stops_running_children_cleanly_and_starts_no_more(tmp_path, fake_train):
  jobs = [_job(tmp_path, name, '--seed=1', '--seconds=60') for name in ('a', 'b', 'c')]

  def interrupt_once_started():
    while len(_starts(jobs[0])) + len(_starts(jobs[1])) < 2:
      threading.Event().wait(0.05)
    os.kill(os.getpid(), signal.SIGINT)

  threading.Thread(target=interrupt_once_started, daemon=True).start()
  seen = []
  with pytest.raises(errors.PreemptedError, match='Received SIGINT') as raised:
    runner.run_jobs(jobs, parallel=2, script=fake_train, on_done=seen.append)
  assert raised.value.exit_code == 75
  assert [(o.job.name, o.returncode, o.stopped) for o in sorted(
      seen, key=lambda o: o.job.name)] == [('a', 75, True), ('b', 75, True)]
  for job in jobs[:2]:  # They got SIGTERM, checkpointed and exited.
    assert os.path.exists(os.path.join(job.model_dir, 'checkpoint'))
  assert _starts(jobs[2]) == []
  assert 'a, b, c' in str(raised.value)


def test_a_results_json_finishes_a_job_only_with_its_required_result(tmp_path):
  needs_metric = _job(tmp_path, 'a', required_result='test_accuracy')
  assert runner.is_complete(needs_metric, {'test_accuracy': 0.9, 'train_seconds': 1.0})
  assert not runner.is_complete(needs_metric, {'train_seconds': 1.0})
  assert not runner.is_complete(needs_metric, {'test_accuracy': None})
  assert not runner.is_complete(needs_metric, None)
  assert runner.is_complete(_job(tmp_path, 'b'), {'train_seconds': 1.0})  # Any record.
  incomplete = runner.Outcome(needs_metric, 0, {'train_seconds': 1.0}, 2.0)
  assert incomplete.incomplete and not incomplete.finished
  failed = runner.Outcome(needs_metric, 3, None, 2.0)
  assert not failed.incomplete and not failed.finished


@pytest.mark.slow
def test_a_run_whose_results_lack_the_metric_is_started_again_not_skipped(tmp_path,
                                                                          fake_train):
  # Issue #29: interrupted after its last checkpoint, resumed with nothing to train, it
  # wrote a results.json without its metric; a complete neighbour is still skipped.
  lacking = _job(tmp_path, 'lacking', '--seed=2', required_result='test_accuracy')
  complete = _job(tmp_path, 'complete', '--seed=1', required_result='test_accuracy')
  _write_results(lacking, {'train_seconds': 9.0})
  _write_results(complete, {'test_accuracy': 0.5, 'train_seconds': 9.0})
  outcomes = runner.run_jobs([lacking, complete], script=fake_train)
  assert len(_starts(lacking)) == 1 and _starts(complete) == []
  assert not outcomes[0].skipped and outcomes[0].finished
  assert outcomes[0].results['test_accuracy'] == 0.2  # The record, completed.
  assert outcomes[1].skipped and outcomes[1].results['test_accuracy'] == 0.5


@pytest.mark.slow
def test_a_run_exiting_0_without_the_metric_is_incomplete(tmp_path, fake_train):
  job = _job(tmp_path, 'a', '--seed=1', '--behaviour=no_metric',
             required_result='test_accuracy')
  outcome, = runner.run_jobs([job], script=fake_train)
  assert (outcome.returncode, outcome.results) == (0, {'train_seconds': 1.0})
  assert outcome.incomplete and not outcome.finished and not outcome.skipped
  stopped = runner.preempted_error('SIGINT', [job], {job: outcome})
  assert 'stopped 1 unfinished run(s) (a)' in str(stopped)  # Not taken for finished.
