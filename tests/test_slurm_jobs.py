"""Training under a private real Slurm cluster (tests/private_slurm.py): two workers
started by srun find each other from Slurm's variables, and scripts/slurm/train.sbatch
requeued mid-run resumes to the weights of an uninterrupted job."""
import json
import os
import subprocess
import sys
import time

import pytest

from conftest import REPO
from mnist import cli
from mnist import data
from mnist import fault_injection
from mnist import train

TRAIN = os.path.join(REPO, 'scripts', 'train.py')
SBATCH = os.path.join(REPO, 'scripts', 'slurm', 'train.sbatch')
GUARD_SECONDS = 600  # A hung job fails the test instead of the CI run.


@pytest.fixture(scope='module')
def prepared(manual_dir):
  """Prepares MNIST once here: two tasks preparing one data dir at once would race."""
  data.load_splits('mnist', 'train[:1]', 'test[:1]', manual_dir=manual_dir)
  return manual_dir


def _results(model_dir) -> dict:
  with open(os.path.join(model_dir, 'results.json')) as f:
    return json.load(f)


@pytest.mark.slow
@pytest.mark.real_data
def test_srun_workers_build_their_cluster_from_slurm_and_train_like_one_device(
    tmp_path, prepared, slurm_cluster):
  # No dropout: each replica draws its own masks, which one device cannot reproduce.
  flags = ['--deterministic', '--seed=3', '--train_split=train[:6400]', '--epochs=1',
           '--batch_size=64', '--dropout_rate=0', f'--tfds_manual_dir={prepared}']
  model_dir = str(tmp_path / 'two')
  env = {k: v for k, v in slurm_cluster.env.items() if k != 'TF_CONFIG'}
  srun = subprocess.Popen(
      ['srun', '-n2', '--cpus-per-task=1', sys.executable, TRAIN, '--strategy=multi_worker',
       f'--model_dir={model_dir}', *flags], cwd=REPO, env=env, text=True,
      stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  try:
    # The one-device reference meanwhile, in this process.
    config, _ = cli.parse_train_flags([*flags, '--strategy=default',
                                       f'--model_dir={tmp_path / "one"}'])
    one = train.run(config)
    stdout, stderr = srun.communicate(timeout=GUARD_SECONDS)
  finally:
    if srun.poll() is None:
      srun.kill()
  assert srun.returncode == 0, stderr[-5000:]
  assert 'Cluster from Slurm job' in stderr, stderr[-3000:]
  two = _results(model_dir)
  assert two['num_replicas'] == 2 and two['test_examples'] == 10000
  print('srun 2 workers:', two['test_loss'], 'one device:', one['test_loss'])
  assert two['test_loss'] == pytest.approx(one['test_loss'], abs=2e-3)


def _wait(what, ready, timeout=GUARD_SECONDS, poll=0.2):
  deadline = time.monotonic() + timeout
  while not ready():
    assert time.monotonic() < deadline, f'no {what} after {timeout} s'
    time.sleep(poll)


@pytest.mark.slow
@pytest.mark.real_data
def test_requeued_batch_job_resumes_to_the_uninterrupted_weights(tmp_path, prepared,
                                                                  slurm_cluster):
  flags = ['--deterministic', '--checkpoint_every_steps=20', '--train_split=train[:3200]',
           '--eval_split=test[:1000]', '--epochs=1', '--batch_size=32',
           '--log_every_steps=10', f'--tfds_manual_dir={prepared}']
  env = {**slurm_cluster.env, 'MNIST_PYTHON': sys.executable}
  jobs = {}
  for name in ('requeued', 'uninterrupted'):  # Side by side, one CPU each.
    jobs[name] = slurm_cluster.sbatch(
        f'--output={tmp_path / name}.log', SBATCH, f'--model_dir={tmp_path / name}', *flags,
        cwd=REPO, env=env)  # Submitted from the checkout, as a user does.
  requeued = jobs['requeued']
  try:
    _wait('first checkpoint', lambda: fault_injection.latest_checkpoint_step(
        str(tmp_path / 'requeued')) is not None)
    slurm_cluster.run('scontrol', 'requeue', requeued)
    _wait('requeued job', lambda: slurm_cluster.job(requeued).get('JobState') == 'PENDING')
    slurm_cluster.make_eligible(requeued)  # Else it waits ~2 minutes to start again.
    for job_id in jobs.values():
      slurm_cluster.wait_until_gone(job_id, GUARD_SECONDS)
  finally:
    slurm_cluster.run('scancel', *jobs.values(), check=False)
  log = (tmp_path / 'requeued.log').read_text()
  info = slurm_cluster.job(requeued)
  assert (info['JobState'], info['ExitCode'], info['Restarts']) == ('COMPLETED', '0:0', '1'), log
  assert f'mnist: job {requeued} restart 0 ' in log and f'mnist: job {requeued} restart 1 ' in log
  assert 'Received SIGTERM at step' in log  # The first run checkpointed on Slurm's SIGTERM.
  assert f'Restored {tmp_path / "requeued"}/checkpoints/ckpt-' in log
  reference = _results(tmp_path / 'uninterrupted')
  assert 'Restored' not in (tmp_path / 'uninterrupted.log').read_text()
  assert _results(tmp_path / 'requeued')['weights_sha256'] == reference['weights_sha256']
  assert reference['global_step'] == 100
