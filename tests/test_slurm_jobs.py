"""Training under a private real Slurm cluster (tests/private_slurm.py): two workers
started by srun find each other from Slurm's variables, and scripts/slurm/train.sbatch
requeued mid-run (by `scontrol requeue`, or by itself after the USR1 ahead of a time limit)
resumes to the weights of an uninterrupted job."""
import json
import os
import re
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


# Where a requeued job goes (PENDING) or a job not requeued ends.
_REQUEUED_OR_ENDED = ('PENDING', 'COMPLETED', 'FAILED', 'CANCELLED', 'TIMEOUT', 'NODE_FAIL',
                      'OUT_OF_MEMORY', 'PREEMPTED', 'BOOT_FAIL', 'DEADLINE')
# Two ways a batch job is stopped and requeued, each on a job of its own:
INTERRUPTIONS = {
    # Slurm's SIGTERM to every task and the batch shell; Slurm requeues the job itself.
    'requeued': ('scontrol', 'requeue'),
    # What --signal=B:USR1@N sends N s before the time limit, without waiting for one:
    # train.sbatch has training checkpoint and exit 75, then requeues the job itself.
    'time_limited': ('scancel', '--batch', '--signal=USR1'),
}


@pytest.mark.slow
@pytest.mark.real_data
def test_requeued_batch_jobs_resume_to_the_uninterrupted_weights(tmp_path, prepared,
                                                                 slurm_cluster):
  # 200 steps: a signal sent at the first checkpoint (step 20) must land before the end.
  flags = ['--deterministic', '--checkpoint_every_steps=20', '--train_split=train[:6400]',
           '--eval_split=test[:1000]', '--epochs=1', '--batch_size=32',
           '--log_every_steps=10', f'--tfds_manual_dir={prepared}']
  env = {**slurm_cluster.env, 'MNIST_PYTHON': sys.executable}
  jobs = {}
  # One CPU each; the uninterrupted job takes the CPU the first interrupted one frees.
  for name in (*INTERRUPTIONS, 'uninterrupted'):
    jobs[name] = slurm_cluster.sbatch(
        f'--output={tmp_path / name}.log', SBATCH, f'--model_dir={tmp_path / name}', *flags,
        cwd=REPO, env=env)  # Submitted from the checkout, as a user does.
  try:
    for name, interrupt in INTERRUPTIONS.items():
      model_dir = str(tmp_path / name)
      _wait(f'first checkpoint of {name}',
            lambda d=model_dir: fault_injection.latest_checkpoint_step(d) is not None)
      slurm_cluster.run(*interrupt, jobs[name])
    for name in INTERRUPTIONS:
      _wait(f'{name} job requeued or ended',
            lambda j=jobs[name]: slurm_cluster.job(j).get('JobState') in _REQUEUED_OR_ENDED)
      state = slurm_cluster.job(jobs[name]).get('JobState')
      assert state == 'PENDING', (name, state, (tmp_path / f'{name}.log').read_text()[-5000:])
      slurm_cluster.make_eligible(jobs[name])  # Else it waits ~2 minutes to start again.
    for job_id in jobs.values():
      slurm_cluster.wait_until_gone(job_id, GUARD_SECONDS)
  finally:
    slurm_cluster.run('scancel', *jobs.values(), check=False)
  reference = _results(tmp_path / 'uninterrupted')
  assert 'Restored' not in (tmp_path / 'uninterrupted.log').read_text()
  assert reference['global_step'] == 200
  for name in INTERRUPTIONS:
    job_id, log = jobs[name], (tmp_path / f'{name}.log').read_text()
    info = slurm_cluster.job(job_id)
    assert (info['JobState'], info['ExitCode'], info['Restarts']) == ('COMPLETED', '0:0', '1'), (
        name, log)
    assert f'mnist: job {job_id} restart 0 ' in log and f'mnist: job {job_id} restart 1 ' in log
    # The first run checkpointed on the SIGTERM (Slurm's, or train.sbatch's after USR1) and
    # the second resumed from that very checkpoint.
    stopped = re.search(r'Received SIGTERM at step (\d+): saved (\S+)\. Rerun', log)
    assert stopped, (name, log)
    assert stopped[2] == f'{tmp_path / name}/checkpoints/ckpt-{stopped[1]}', stopped[0]
    assert f'Restored {stopped[2]}: ' in log, (name, log)
    assert _results(tmp_path / name)['weights_sha256'] == reference['weights_sha256'], name
  # Only after its own USR1 does train.sbatch requeue a job: training exits 75 with the
  # checkpoint, or 143 when a second SIGTERM ends it after the save (the handler is gone then).
  time_limited = (tmp_path / 'time_limited.log').read_text()
  assert re.search(r'mnist: stopped \(exit (75|143) after USR1\); requeueing job '
                   f'{jobs["time_limited"]} ', time_limited), time_limited
  requeued = (tmp_path / 'requeued.log').read_text()
  assert 'requeueing' not in requeued, requeued
