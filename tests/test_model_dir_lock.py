"""One writer per model_dir (mnist/model_dir_lock.py): a second run is refused, naming
the holder, having written nothing; a killed holder's lock does not block."""
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from mnist import config as config_lib
from mnist import data
from mnist import errors
from mnist import evaluate
from mnist import fault_injection
from mnist import inference
from mnist import model_dir_lock
from mnist import train

from conftest import REPO, synthetic_splits

# The helper processes run with TensorFlow poisoned: the module must not need it.
_ENV = {**os.environ,
        'PYTHONPATH': os.path.join(REPO, 'tests', 'poison_tensorflow') + os.pathsep + REPO}
# Holds argv[1]'s lock until its stdin closes.
_HOLD = ('import sys\n'
         'from mnist import model_dir_lock\n'
         'with model_dir_lock.hold(sys.argv[1]):\n'
         '  print("holding", flush=True)\n'
         '  sys.stdin.read()\n')
# Takes the lock once, as a script would: a refusal prints one paragraph, exit 2.
_TRY = ('from mnist import cli, model_dir_lock\n'
        'def main(argv):\n'
        '  with model_dir_lock.hold(argv[1]):\n'
        '    print("acquired", flush=True)\n'
        'cli.run(main)\n')
# Locks without writing an identity: a holder caught between the two.
_LOCK_ONLY = ('import fcntl, os, sys\n'
              'fd = os.open(sys.argv[1] + "/train.lock", os.O_RDWR | os.O_CREAT)\n'
              'fcntl.lockf(fd, fcntl.LOCK_EX)\n'
              'print("holding", flush=True)\n'
              'sys.stdin.read()\n')
# A probe of refuse_if_held caught holding its shared lock; with a delay (argv[2] s),
# it lets go of it after that long, as a real probe does after an instant.
_PROBE = ('import fcntl, os, sys, time\n'
          'fd = os.open(sys.argv[1] + "/train.lock", os.O_RDWR | os.O_CREAT)\n'
          'fcntl.lockf(fd, fcntl.LOCK_SH)\n'
          'print("holding", flush=True)\n'
          'if len(sys.argv) > 2:\n'
          '  time.sleep(float(sys.argv[2]))\n'
          '  os.close(fd)\n'
          'sys.stdin.read()\n')
_GUARD_SECONDS = 60


def _start_holder(model_dir, script=_HOLD, *args, **env) -> subprocess.Popen:
  holder = subprocess.Popen([sys.executable, '-c', script, str(model_dir), *args],
                            env={**_ENV, **env},
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
  line = holder.stdout.readline()  # '' if it died first.
  assert line.strip() == 'holding', holder.communicate(timeout=_GUARD_SECONDS)[1]
  return holder


def _stop(process: subprocess.Popen):
  if process.poll() is None:
    process.kill()
  process.communicate(timeout=_GUARD_SECONDS)


def _try_lock(model_dir) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, '-c', _TRY, str(model_dir)], env=_ENV,
                        capture_output=True, text=True, timeout=_GUARD_SECONDS)


def _listing(model_dir) -> dict:
  """Every file under model_dir with its modification time, size and contents' digest."""
  listing = {}
  for root, _, names in os.walk(model_dir):
    for name in names:
      path = os.path.join(root, name)
      stat = os.stat(path)
      with open(path, 'rb') as f:
        listing[os.path.relpath(path, model_dir)] = (stat.st_mtime_ns, stat.st_size,
                                                     hash(f.read()))
  return listing


@pytest.mark.slow
def test_a_second_process_is_refused_naming_the_holder(tmp_path):
  holder = _start_holder(tmp_path)
  try:
    (tmp_path / 'results.json').write_text('{"the holder": "wrote this"}')
    before = _listing(tmp_path)
    refused = _try_lock(tmp_path)
    assert refused.returncode == errors.ModelDirInUseError.exit_code == 2
    assert 'acquired' not in refused.stdout and 'Traceback' not in refused.stderr
    message = refused.stderr.strip()
    assert message.startswith(f'error: --model_dir={tmp_path} is in use by another training run')
    assert len(message.splitlines()) == 1  # One paragraph.
    assert f'process {holder.pid} on host {socket.gethostname()}' in message
    started = json.loads((tmp_path / 'train.lock').read_text())['started_utc']
    assert time.strptime(started, '%Y-%m-%d %H:%M:%S')  # A real time, not a placeholder.
    assert f'since {started} UTC' in message
    assert _listing(tmp_path) == before  # Nothing written, nothing touched.
  finally:
    _stop(holder)


@pytest.mark.slow
def test_the_lock_is_refused_to_this_process_while_another_holds_it(tmp_path):
  holder = _start_holder(tmp_path)
  try:
    with pytest.raises(errors.ModelDirInUseError) as refusal:
      with model_dir_lock.hold(str(tmp_path)):
        pass
    assert f'process {holder.pid}' in str(refusal.value)
    assert isinstance(refusal.value, errors.CheckpointError)
  finally:
    _stop(holder)


@pytest.mark.slow
def test_the_early_check_refuses_while_held_and_writes_nothing(tmp_path):
  model_dir_lock.refuse_if_held(str(tmp_path / 'new'))  # No lock file: a new run.
  assert not (tmp_path / 'new').exists()
  holder = _start_holder(tmp_path)
  try:
    before = _listing(tmp_path)
    with pytest.raises(errors.ModelDirInUseError, match=f'process {holder.pid} on host'):
      model_dir_lock.refuse_if_held(str(tmp_path))
    assert _listing(tmp_path) == before
  finally:
    _stop(holder)
  model_dir_lock.refuse_if_held(str(tmp_path))  # Released: no refusal, and no lock kept.
  assert _try_lock(tmp_path).returncode == 0
  with model_dir_lock.hold(str(tmp_path)):  # Our own hold is not refused or dropped.
    model_dir_lock.refuse_if_held(str(tmp_path))
    assert _try_lock(tmp_path).returncode == 2


@pytest.mark.slow
def test_the_early_checks_of_one_runs_workers_do_not_refuse_each_other(tmp_path):
  # Every worker of a multi-worker run probes as it starts; one probe caught mid-flight
  # by another must not look like a run in progress (make test failed on that once).
  (tmp_path / model_dir_lock.LOCK_FILE).write_text('{"pid": 1}\n')  # An old run's.
  probe = _start_holder(tmp_path, _PROBE)
  try:
    model_dir_lock.refuse_if_held(str(tmp_path))
  finally:
    _stop(probe)


@pytest.mark.slow
def test_taking_the_lock_waits_out_a_probe_but_not_a_holder(tmp_path):
  probe = _start_holder(tmp_path, _PROBE, '0.05')  # Lets go after 50 ms.
  try:
    with model_dir_lock.hold(str(tmp_path)):
      pass
  finally:
    _stop(probe)
  probe = _start_holder(tmp_path, _PROBE)  # Never lets go: refused.
  try:
    with pytest.raises(errors.ModelDirInUseError):
      with model_dir_lock.hold(str(tmp_path)):
        pass
  finally:
    _stop(probe)


@pytest.mark.slow
def test_the_lock_of_a_killed_holder_does_not_block(tmp_path, monkeypatch):
  monkeypatch.delenv('SLURM_JOB_ID', raising=False)
  holder = _start_holder(tmp_path, SLURM_JOB_ID='4242424242')  # A longer identity.
  stale = json.loads((tmp_path / 'train.lock').read_text())
  assert stale['pid'] == holder.pid and stale['slurm_job_id'] == '4242424242'
  os.kill(holder.pid, signal.SIGKILL)  # No cleanup runs: only the kernel releases it.
  _stop(holder)
  assert holder.returncode == -signal.SIGKILL
  with model_dir_lock.hold(str(tmp_path)):
    pass
  # Read after the hold: closing any descriptor of the file would drop our lock.
  # The file is reused and its identity replaced whole: it parses as exactly ours.
  identity = json.loads((tmp_path / 'train.lock').read_text())
  assert identity['pid'] == os.getpid() and identity['host'] == socket.gethostname()
  assert 'slurm_job_id' not in identity


@pytest.mark.slow
def test_released_on_exit_and_on_error_for_the_next_process(tmp_path):
  with pytest.raises(RuntimeError):
    with model_dir_lock.hold(str(tmp_path)):
      refused = _try_lock(tmp_path)
      assert refused.returncode == 2 and f'process {os.getpid()}' in refused.stderr
      raise RuntimeError('the run failed')
  acquired = _try_lock(tmp_path)
  assert acquired.returncode == 0, acquired.stderr
  assert acquired.stdout.strip() == 'acquired'
  with model_dir_lock.hold(str(tmp_path)):  # Reused again, by this process.
    pass
  assert json.loads((tmp_path / 'train.lock').read_text())['pid'] == os.getpid()


@pytest.mark.slow
def test_a_second_hold_in_the_same_process_is_refused_and_keeps_the_first(tmp_path):
  """POSIX locks never conflict within a process, and closing any descriptor of the
  file would drop ours: the second hold must fail without opening it."""
  with model_dir_lock.hold(str(tmp_path)):
    with pytest.raises(errors.ModelDirInUseError) as refusal:
      with model_dir_lock.hold(str(tmp_path)):
        pass
    assert f'process {os.getpid()}' in str(refusal.value)
    still_held = _try_lock(tmp_path)
    assert still_held.returncode == 2, still_held.stdout
  with model_dir_lock.hold(str(tmp_path)):  # Sequential holds, as back-to-back runs.
    pass


@pytest.mark.slow
def test_a_holder_that_has_not_written_its_name_yet(tmp_path, monkeypatch):
  monkeypatch.setattr(model_dir_lock, '_IDENTITY_WAIT_SECONDS', 0.2)
  holder = _start_holder(tmp_path, _LOCK_ONLY)
  try:
    with pytest.raises(errors.ModelDirInUseError) as refusal:
      with model_dir_lock.hold(str(tmp_path)):
        pass
    assert 'a process that has not written its name' in str(refusal.value)
    assert (tmp_path / 'train.lock').read_text() == ''  # The refused run wrote nothing.
  finally:
    _stop(holder)


def test_the_paragraph_names_host_pid_time_and_slurm_job():
  text = model_dir_lock.describe_holder('runs/a', {
      'host': 'node7', 'pid': 4242, 'started_utc': '2025-03-01 09:30:00',
      'slurm_job_id': '918'})
  assert ('--model_dir=runs/a is in use by another training run: runs/a/train.lock is '
          'locked by process 4242 on host node7, Slurm job 918, which has held it since '
          '2025-03-01 09:30:00 UTC.') in text
  assert 'wrote' not in text and 'stopped before writing anything' in text
  assert 'Slurm' not in model_dir_lock.describe_holder(
      'runs/a', {'host': 'node7', 'pid': 4242, 'started_utc': '2025-03-01 09:30:00'})


def test_a_filesystem_without_locks_warns_and_runs_unlocked(tmp_path, monkeypatch, caplog):
  def no_lock_manager(fd, operation):  # What NFS without a lock manager answers.
    raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))
  monkeypatch.setattr(model_dir_lock.fcntl, 'lockf', no_lock_manager)
  with model_dir_lock.hold(str(tmp_path)):
    assert 'cannot lock files' in caplog.text and 'No locks available' in caplog.text
    with model_dir_lock.hold(str(tmp_path)):  # Not recorded as held: nothing to refuse.
      pass


@pytest.mark.slow
def test_train_run_is_refused_before_writing_into_the_model_dir(tmp_path):
  model_dir = tmp_path / 'run'
  model_dir.mkdir()
  holder = _start_holder(model_dir)
  try:
    config = config_lib.TrainConfig(model_dir=str(model_dir), epochs=1, batch_size=32)
    with pytest.raises(errors.ModelDirInUseError) as refusal:
      train.run(config, datasets_override=synthetic_splits())
    assert f'process {holder.pid}' in str(refusal.value)
    assert os.listdir(model_dir) == ['train.lock']  # No config.json, events or checkpoints.
  finally:
    _stop(holder)


@pytest.mark.slow
def test_train_run_releases_the_lock_when_it_diverges(tmp_path):
  """An error leaving run() (exit 3 here) frees the model_dir for the next process."""
  clean = synthetic_splits()
  images, labels = zip(*clean.train.as_numpy_iterator())
  images = np.stack(images).astype(np.float32)
  images[:] = np.nan
  nan_splits = data.Splits(
      train=tf.data.Dataset.from_tensor_slices((images, np.array(labels))), eval=clean.eval,
      num_train=clean.num_train, num_eval=clean.num_eval, num_classes=10,
      image_shape=(28, 28, 1))
  config = config_lib.TrainConfig(model_dir=str(tmp_path), epochs=1, batch_size=32)
  with pytest.raises(errors.TrainingDivergedError):
    train.run(config, datasets_override=nan_splits)
  acquired = _try_lock(tmp_path)
  assert acquired.returncode == 0, acquired.stderr


def _wait_for(condition, process, timeout, what):
  deadline = time.monotonic() + timeout
  while not condition():
    assert process.poll() is None, f'The run ended before {what}.'
    assert time.monotonic() < deadline, f'No {what} after {timeout} s.'
    time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.real_data
def test_a_second_real_run_is_refused_then_a_killed_holders_run_resumes(tmp_path, manual_dir):
  model_dir = str(tmp_path / 'run')

  def command(epochs):
    return fault_injection.train_command(model_dir, [
        '--train_split=train[:1280]', '--eval_split=test[:1000]', f'--epochs={epochs}',
        f'--tfds_manual_dir={manual_dir}', '--checkpoint_every_steps=5',
        '--log_every_steps=5'])
  guard = 900
  with open(tmp_path / 'holder.log', 'w') as log:  # A file: a full pipe would stall it.
    holder = subprocess.Popen(command(epochs=100), stdout=log, stderr=subprocess.STDOUT)
  try:
    # Its first checkpoint: it holds the lock and has something to resume from.
    _wait_for(lambda: fault_injection.latest_checkpoint_step(model_dir) is not None, holder,
              guard, 'checkpoint')
    holder.send_signal(signal.SIGSTOP)  # Alive and holding, but writing nothing now.
    assert json.loads(open(os.path.join(model_dir, 'train.lock')).read())['pid'] == holder.pid
    killed_at = fault_injection.latest_checkpoint_step(model_dir)
    before = _listing(model_dir)

    # Refused before TensorFlow loads: the script's early check, with TensorFlow poisoned.
    poison = os.path.join(REPO, 'tests', 'poison_tensorflow')
    second = subprocess.run(command(epochs=2), capture_output=True, text=True, timeout=guard,
                            env={**os.environ, 'PYTHONPATH': poison + os.pathsep + REPO})
    assert second.returncode == 2, second.stderr[-3000:]
    assert f'error: --model_dir={model_dir} is in use by another training run' in second.stderr
    assert f'process {holder.pid} on host {socket.gethostname()}' in second.stderr
    assert 'Traceback' not in second.stderr
    assert _listing(model_dir) == before  # Not a file added, changed or touched.

    # Reading the run is not blocked by its lock.
    config = inference.read_config(model_dir).replace(tfds_manual_dir=manual_dir)
    assert evaluate.run(config)['examples'] == 1000

    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=guard)
    resumed = fault_injection.run(command(epochs=2), guard)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f'Restored {model_dir}/checkpoints/ckpt-{killed_at}' in resumed.stderr
    assert killed_at < 40 and resumed.results['global_step'] == 40  # 2 epochs of 20 steps.
  finally:
    if holder.poll() is None:
      holder.kill()
      holder.wait()
