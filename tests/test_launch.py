"""scripts/launch_local.py: N local workers of one MultiWorkerMirroredStrategy cluster.

The fast tests run stand-in worker scripts; the real_data ones train on MNIST with
two real workers, kill one mid-run and resume.
"""
import io
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from mnist import data
from mnist import errors
from mnist import fault_injection
from mnist import launch

from conftest import REPO

LAUNCHER = os.path.join(REPO, 'scripts', 'launch_local.py')
FAKE_WORKER = textwrap.dedent('''\
    import json, os, signal, sys, time
    index = json.loads(os.environ['TF_CONFIG'])['task']['index']
    print('worker', index, 'flags', ' '.join(sys.argv[1:]), flush=True)
    if '--ignore_sigterm' in sys.argv:
      signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if f'--fail_worker={index}' in sys.argv:
      print('boom', file=sys.stderr, flush=True)
      sys.exit(3)
    if any(flag.startswith('--fail_worker') for flag in sys.argv):
      time.sleep(600)  # A survivor that never notices: the launcher must stop it.
''')


def _fake_launch(tmp_path, flags, num_workers=2):
  script = tmp_path / 'fake_worker.py'
  script.write_text(FAKE_WORKER)
  out, err = io.StringIO(), io.StringIO()
  code = launch.launch(num_workers, flags, stop_grace_seconds=0.2, script=str(script),
                       out=out, err=err)
  return code, out.getvalue(), err.getvalue()


@pytest.mark.slow
def test_workers_get_their_own_tf_config_and_prefixed_logs(tmp_path):
  code, out, err = _fake_launch(tmp_path, ['--epochs=1'], num_workers=3)
  assert code == 0, err
  for index in range(3):
    assert f'[worker {index}] worker {index} flags --epochs=1 --strategy=multi_worker' in out
  assert '[launch] all 3 workers finished.' in err


@pytest.mark.parametrize('extra, signals', [
    ([], ['SIGTERM']),
    (['--ignore_sigterm'], ['SIGTERM', 'SIGKILL']),  # Stuck in a collective, say.
])
@pytest.mark.slow
def test_a_failed_worker_stops_the_others_and_is_named(tmp_path, extra, signals):
  code, _, err = _fake_launch(tmp_path, ['--fail_worker=1', *extra])
  assert code == 3
  assert '[worker 1] boom' in err
  assert re.search(r'\[launch\] worker 1 \(pid \d+, 127\.0\.0\.1:\d+\) exited with code 3; '
                   'stopping the other workers', err)
  for sig in signals:
    assert f'[launch] sending {sig} to worker 0' in err
  assert '[launch] FAILED: worker 1' in err


def test_strategy_flag_is_added_or_must_be_multi_worker():
  assert launch.worker_flags(['--epochs=1']) == ['--epochs=1', '--strategy=multi_worker']
  assert launch.worker_flags(['--strategy=multi_worker']) == ['--strategy=multi_worker']
  with pytest.raises(errors.ConfigError, match='drop --strategy=mirrored'):
    launch.worker_flags(['--strategy', 'mirrored'])
  ports = launch.free_ports(3)
  assert len(set(ports)) == 3


def test_workers_sharing_gpus_default_to_ring_and_a_users_choice_wins():
  """NCCL refuses two ranks on one GPU, so shared GPUs get ring, first: absl takes the
  last value, so the user's own --collective_communication (or flagfile) wins."""
  assert launch.worker_flags(['--epochs=1'], gpus_shared=True) == [
      '--collective_communication=ring', '--epochs=1', '--strategy=multi_worker']
  assert launch.worker_flags(['--collective_communication=nccl'], gpus_shared=True)[-2:] == [
      '--collective_communication=nccl', '--strategy=multi_worker']
  assert launch.worker_flags(['--epochs=1'], gpus_shared=False) == [
      '--epochs=1', '--strategy=multi_worker']


GPU_REPORTING_WORKER = textwrap.dedent('''\
    import json, os, sys
    index = json.loads(os.environ['TF_CONFIG'])['task']['index']
    print('worker', index, 'sees', os.environ.get('CUDA_VISIBLE_DEVICES', 'all'),
          'flags', ' '.join(sys.argv[1:]), flush=True)
''')


@pytest.mark.slow
@pytest.mark.parametrize('node_gpus, sees, first_flags, notice', [
    (4, ['0,1', '2,3'], '--epochs=1', None),
    (1, ['0', '0'], '--collective_communication=ring --epochs=1', 'share 1 GPU(s)'),
    (0, ['all', 'all'], '--epochs=1', None),
])
def test_each_worker_gets_its_own_gpus(tmp_path, monkeypatch, node_gpus, sees, first_flags,
                                       notice):
  monkeypatch.delenv('CUDA_VISIBLE_DEVICES', raising=False)
  script = tmp_path / 'gpu_worker.py'
  script.write_text(GPU_REPORTING_WORKER)
  out, err = io.StringIO(), io.StringIO()
  assert launch.launch(2, ['--epochs=1'], script=str(script), out=out, err=err,
                       node_gpus=node_gpus) == 0, err.getvalue()
  for index, visible in enumerate(sees):
    assert (f'[worker {index}] worker {index} sees {visible} flags {first_flags} '
            '--strategy=multi_worker') in out.getvalue()
  if notice:
    assert f'[launch] 2 processes {notice}' in err.getvalue()
  else:
    assert 'GPU(s)' not in err.getvalue().replace('on GPU(s)', '')


# --- Real workers on MNIST -------------------------------------------------------------

FLAGS = ["--train_split=train[:2560]", '--epochs=1', '--batch_size=128',
         '--log_every_steps=5']


@pytest.fixture(scope='module')
def prepared(manual_dir):
  """Prepares MNIST once here: two workers preparing one data dir at once would race."""
  data.load_splits('mnist', 'train[:1]', 'test[:1]', manual_dir=manual_dir)
  return manual_dir


def _worker_results(stdout: str) -> dict:
  """{worker index: the results JSON it printed last}."""
  results = {}
  for line in stdout.splitlines():
    match = re.match(r'\[worker (\d+)\] (\{.*\})$', line)
    if match:
      results[int(match.group(1))] = json.loads(match.group(2))
  return results


@pytest.mark.slow
@pytest.mark.real_data
def test_two_workers_train_like_one_device_and_only_the_chief_writes(tmp_path, prepared):
  model_dir = str(tmp_path / 'run')
  # No dropout: each replica draws its own masks, which one device cannot reproduce.
  flags = [*FLAGS, '--dropout_rate=0', f'--tfds_manual_dir={prepared}']
  env_tmp = tmp_path / 'worker_tmp'  # Where the non-chief writes its throwaway checkpoints.
  env_tmp.mkdir()
  result = subprocess.run(
      [sys.executable, LAUNCHER, '--num_workers=2', '--', f'--model_dir={model_dir}', *flags],
      capture_output=True, text=True, timeout=600, env={**os.environ, 'TMPDIR': str(env_tmp)})
  assert result.returncode == 0, result.stderr[-5000:]
  workers = _worker_results(result.stdout)
  assert set(workers) == {0, 1}
  assert workers[0]['weights_sha256'] == workers[1]['weights_sha256']
  assert workers[0]['num_replicas'] == 2 and workers[0]['global_step'] == 20
  with open(os.path.join(model_dir, 'results.json')) as f:
    assert json.load(f) == workers[0]
  assert workers[0]['test_examples'] == 10000

  # Only the chief (worker 0) wrote: every event file carries its pid, checkpoints
  # are only the chief's, and the non-chief's temporary copies are gone.
  chief_pid = re.search(r'started worker 0 \(pid (\d+)', result.stderr).group(1)
  events = [os.path.join(root, name) for root, _, names in os.walk(model_dir)
            for name in names if name.startswith('events.out.tfevents')]
  assert sorted(os.path.relpath(os.path.dirname(p), model_dir) for p in events) == [
      '.', 'eval', 'train']
  assert all(f'.{chief_pid}.' in os.path.basename(p) for p in events)
  assert sorted(os.listdir(os.path.join(model_dir, 'checkpoints'))) == [
      'checkpoint', 'ckpt-20.data-00000-of-00001', 'ckpt-20.index']
  assert not [name for name in os.listdir(env_tmp)
              if name.startswith('mnist_worker_checkpoint_')]

  # The same steps on one device: the global batch is split across the workers
  # in order, so the result matches up to float summation order.
  one = fault_injection.run(fault_injection.train_command(str(tmp_path / 'one'), flags),
                          timeout=900)
  assert one.returncode == 0, one.stderr[-3000:]
  print('2 workers:', {k: workers[0][k] for k in ('test_loss', 'test_accuracy')},
        'one device:', {k: one.results[k] for k in ('test_loss', 'test_accuracy')})
  assert workers[0]['test_loss'] == pytest.approx(one.results['test_loss'], rel=1e-3)
  assert workers[0]['test_accuracy'] == pytest.approx(one.results['test_accuracy'], abs=2e-3)


@pytest.mark.slow
@pytest.mark.real_data
def test_killing_a_worker_fails_the_launch_promptly_and_a_rerun_resumes(tmp_path, prepared):
  model_dir = str(tmp_path / 'run')
  # A longer run with frequent checkpoints; a short heartbeat so the survivor
  # notices the loss itself well within the launcher's grace period.
  command = [sys.executable, LAUNCHER, '--num_workers=2', '--stop_grace_seconds=60', '--',
             f'--model_dir={model_dir}', "--train_split=train[:6400]", '--epochs=1',
             '--batch_size=64', '--checkpoint_every_steps=5', '--log_every_steps=5',
             '--worker_heartbeat_timeout_seconds=10', f'--tfds_manual_dir={prepared}']
  process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
  stderr_lines = []
  reader = threading.Thread(target=lambda: stderr_lines.extend(process.stderr), daemon=True)
  reader.start()
  try:
    deadline = time.monotonic() + 300
    while fault_injection.latest_checkpoint_step(model_dir) is None:
      assert process.poll() is None, ''.join(stderr_lines)[-5000:]
      assert time.monotonic() < deadline, 'no checkpoint after 300 s'
      time.sleep(0.05)
    pid = int(re.search(r'started worker 1 \(pid (\d+)', ''.join(stderr_lines)).group(1))
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    process.wait(timeout=120)  # The bound: 60 s grace + 5 s + 5 s at most.
    print(f'launcher exited {time.monotonic() - killed:.1f} s after worker 1 was killed')
  finally:
    if process.poll() is None:
      process.kill()
  reader.join(timeout=10)
  stderr = ''.join(stderr_lines)
  assert process.returncode == 128 + signal.SIGKILL, stderr[-5000:]
  assert f'[launch] FAILED: worker 1 (pid {pid}, 127.0.0.1:' in stderr
  assert 'was killed by SIGKILL' in stderr
  # The survivor found out by itself (its heartbeat or its collective failed).
  lost = re.search(r'\[worker 0\] error: Lost contact with another worker \(lost '
                   r'/job:worker/replica:0/task:1: .*\)\. The last checkpoint is (\S+);', stderr)
  assert lost, stderr[-5000:]
  killed_at = fault_injection.latest_checkpoint_step(model_dir)
  assert killed_at < 100

  rerun = subprocess.run(command, capture_output=True, text=True, timeout=600)
  assert rerun.returncode == 0, rerun.stderr[-5000:]
  for index in (0, 1):
    assert f'[worker {index}] ' in rerun.stderr
    assert re.search(rf'\[worker {index}\] .* Restored {model_dir}/checkpoints/ckpt-\d+: '
                     r'epoch 0, step \d+', rerun.stderr)
  workers = _worker_results(rerun.stdout)
  assert workers[0]['global_step'] == 100 and workers[0]['test_examples'] == 10000
  assert workers[0]['weights_sha256'] == workers[1]['weights_sha256']
