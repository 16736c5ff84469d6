"""Real training processes, killed and rerun: resume must be exact. Runs in CI."""
import signal

import pytest

from mnist import errors
from mnist import fault_injection

pytestmark = pytest.mark.real_data

FLAGS = ["--train_split=train[:3200]", '--epochs=2', '--checkpoint_every_steps=10',
         '--log_every_steps=10', '--deterministic']
# A hung training process fails the test instead of stalling CI (run() has no limit).
GUARD_SECONDS = 900


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
  """One uninterrupted deterministic run: the sha256 every resumed run must reach."""
  model_dir = str(tmp_path_factory.mktemp('reference'))
  outcome = fault_injection.run(fault_injection.train_command(model_dir, FLAGS), GUARD_SECONDS)
  assert outcome.returncode == 0, outcome.stderr[-3000:]
  return outcome.results


@pytest.mark.slow
def test_a_deterministic_rerun_gives_the_same_fingerprint(tmp_path, reference, manual_dir):
  del manual_dir  # Only ensures the data exists.
  again = fault_injection.run(fault_injection.train_command(str(tmp_path), FLAGS),
                              GUARD_SECONDS)
  assert again.results['weights_sha256'] == reference['weights_sha256']


@pytest.mark.slow
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
def test_fault_check_reports_every_resumed_run(tmp_path):
  expected, trials = fault_injection.fault_check(
      str(tmp_path), ["--train_split=train[:1280]", '--epochs=2',
                      '--checkpoint_every_steps=5', '--deterministic'],
      runs=1, seed=3, log=lambda line: None)
  assert len(expected) == 64 and len(trials) == 1
  assert all(trial.matches for trial in trials)
