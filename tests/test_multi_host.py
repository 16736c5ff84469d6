"""Multi-worker training across real network hosts (tests/network_hosts.py: one network
namespace per host, its own address and link): two workers on two hosts train like one
device; a network partition mid-run stops both workers, naming the checkpoint to resume
from, and rerunning them ends with the uninterrupted run's weights; and the private
Slurm's two nodes, each on its own host, train with srun the same way.

The workers reach each other only through the bridge, by address (TF_CONFIG) or by node
name (/etc/hosts, under Slurm). model_dir is on the one local filesystem all hosts share,
as a cluster's shared filesystem would be.
"""
import dataclasses
import json
import os
import re
import subprocess
import sys
import time

import pytest

import network_hosts
import private_slurm
from conftest import REPO
from mnist import cluster
from mnist import data
from mnist import fault_injection
from mnist import launch

TRAIN = os.path.join(REPO, 'scripts', 'train.py')
GUARD_SECONDS = 600  # A hung run fails the test instead of the CI run.
# After the partition: TensorFlow declares a worker lost once its heartbeats are missed for
# --worker_heartbeat_timeout_seconds (30 by default), then both processes must exit.
STOP_LIMIT_SECONDS = 60
LOST_CONTACT = 'Lost contact with another worker'  # train._report_lost_workers's error.
EPOCHS, STEPS_PER_EPOCH = 3, 100  # train[:6400] in global batches of 64.
# Three epochs with a checkpoint every 20 steps: the partition lands well inside the run
# (the first checkpoint comes at step 20 of 300). No dropout: each replica draws its own
# masks, which one device cannot reproduce, and the test loss is compared with one's.
FLAGS = ['--deterministic', '--seed=3', '--train_split=train[:6400]', f'--epochs={EPOCHS}',
         '--batch_size=64', '--dropout_rate=0', '--checkpoint_every_steps=20',
         '--log_every_steps=20']


@pytest.fixture(scope='module')
def two_hosts():
  """Two test hosts for this module's tests, removed at its end however they went."""
  network_hosts.require_netns()
  with network_hosts.network(num_hosts=2) as network:
    yield network


@pytest.fixture(scope='module')
def prepared(manual_dir):
  """Prepares MNIST once here: two workers preparing one data dir at once would race."""
  data.load_splits('mnist', 'train[:1]', 'test[:1]', manual_dir=manual_dir)
  return [*FLAGS, f'--tfds_manual_dir={manual_dir}']


@dataclasses.dataclass
class Finished:
  returncode: int
  stdout: str
  stderr: str

  @property
  def results(self) -> dict:
    """The results JSON a finished run prints as its last stdout line."""
    return json.loads(self.stdout.strip().splitlines()[-1])


class Workers:
  """One scripts/train.py per host, each with its own TF_CONFIG naming every host's
  address; output goes to files (two pipes of TensorFlow logs would need readers).
  Each dies with this process (a killed pytest leaves no worker training on)."""

  def __init__(self, network, model_dir: str, flags, addresses, log_dir):
    self.processes, self.logs = [], []
    os.makedirs(log_dir, exist_ok=True)
    for index, host in enumerate(network.hosts[:len(addresses)]):
      env = {**os.environ, cluster.TF_CONFIG_ENV: cluster.tf_config(addresses, index),
             'TMPDIR': str(log_dir)}  # The non-chief's throwaway checkpoints go here.
      log = (os.path.join(log_dir, f'worker{index}.out'),
             os.path.join(log_dir, f'worker{index}.err'))
      with open(log[0], 'w') as out, open(log[1], 'w') as err:
        self.processes.append(network.popen(
            host, [sys.executable, TRAIN, '--strategy=multi_worker', f'--model_dir={model_dir}',
                   *flags], env=env, cwd=REPO, stdout=out, stderr=err,
            stdin=subprocess.DEVNULL, preexec_fn=launch.die_with_parent))
      self.logs.append(log)

  def wait(self, timeout: float = GUARD_SECONDS) -> list:
    """Every worker's Finished; kills them all if any is still running after `timeout`."""
    deadline = time.monotonic() + timeout
    try:
      for process in self.processes:
        process.wait(timeout=max(deadline - time.monotonic(), 0.1))
    finally:
      self.kill()
    return [Finished(p.returncode, open(out).read(), open(err).read())
            for p, (out, err) in zip(self.processes, self.logs)]

  def kill(self):
    for process in self.processes:
      if process.poll() is None:
        process.kill()
        process.wait()

  def all_said(self, text: str) -> bool:
    """Whether every worker's stderr so far contains `text`."""
    return all(text in open(err, errors='replace').read() for _, err in self.logs)


def _addresses(network) -> list:
  return [f'{host.address}:{host.port()}' for host in network.hosts]


class Background:
  """A process left running while others work; `finish` waits for it once."""

  def __init__(self, command):
    self.process = subprocess.Popen(command, cwd=REPO, text=True, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                    preexec_fn=launch.die_with_parent)
    self.finished = None

  def finish(self) -> Finished:
    if self.finished is None:
      try:
        stdout, stderr = self.process.communicate(timeout=GUARD_SECONDS)
      finally:
        self.kill()
      self.finished = Finished(self.process.returncode, stdout, stderr)
    return self.finished

  def kill(self):
    if self.process.poll() is None:
      self.process.kill()
      self.process.communicate()


@pytest.fixture(scope='module')
def one_device(tmp_path_factory, prepared):
  """The one-device reference run, started here and left running beside the two-worker
  run (`two_workers`); tests call .finish() for its results."""
  run = Background(fault_injection.train_command(
      str(tmp_path_factory.mktemp('one_device') / 'run'), ['--strategy=default', *prepared]))
  try:
    yield run
  finally:
    run.kill()


@pytest.fixture(scope='module')
def two_workers(two_hosts, one_device, tmp_path_factory, prepared):
  """The uninterrupted two-worker run on the two hosts: [Finished of worker 0, of 1].
  Asks for `one_device` so that the reference trains meanwhile."""
  root = tmp_path_factory.mktemp('two_workers')
  return Workers(two_hosts, str(root / 'run'), prepared, _addresses(two_hosts), root).wait()


@pytest.mark.slow
@pytest.mark.real_data
def test_two_workers_on_two_hosts_train_like_one_device(two_hosts, two_workers, one_device):
  for index, (host, worker) in enumerate(zip(two_hosts.hosts, two_workers)):
    assert worker.returncode == 0, f'worker {index}: {worker.stderr[-5000:]}'
    # Each listened on its own host's address, which only that host has.
    place = (rf'Cluster from \$TF_CONFIG: worker {index} of 2 '
             rf'\((chief, )?listening on {re.escape(host.address)}:\d+\)')
    assert re.search(place, worker.stderr), worker.stderr[-3000:]
  chief, other = two_workers
  assert chief.results['weights_sha256'] == other.results['weights_sha256']
  assert chief.results['num_replicas'] == 2 and chief.results['test_examples'] == 10000
  assert chief.results['global_step'] == EPOCHS * STEPS_PER_EPOCH
  one = one_device.finish()
  assert one.returncode == 0, one.stderr[-3000:]
  print('2 workers on 2 hosts:', chief.results['test_loss'], 'one device:',
        one.results['test_loss'])
  assert chief.results['test_loss'] == pytest.approx(one.results['test_loss'], abs=2e-3)


@pytest.mark.slow
@pytest.mark.real_data
def test_a_partition_stops_both_workers_and_the_rerun_resumes_to_the_same_weights(
    two_hosts, two_workers, tmp_path, prepared):
  assert two_workers[0].returncode == 0, 'the uninterrupted run failed: no reference'
  model_dir = str(tmp_path / 'run')
  addresses = _addresses(two_hosts)  # The rerun uses the same command and TF_CONFIG.
  cut_off = two_hosts.hosts[1]
  workers = Workers(two_hosts, model_dir, prepared, addresses, tmp_path / 'partitioned')
  try:
    def checkpointed_or_exited():  # Exited: failed early, shown by the asserts below.
      return (fault_injection.latest_checkpoint_step(model_dir) is not None
              or any(process.poll() is not None for process in workers.processes))
    network_hosts.wait_until('first checkpoint', checkpointed_or_exited, GUARD_SECONDS)
    two_hosts.disconnect(cut_off)
    exited = lambda: all(process.poll() is not None for process in workers.processes)
    # Noticed: both printed the error; they exit after TensorFlow's own shutdown.
    noticed = network_hosts.wait_until(
        'both workers reporting the partition',
        lambda: workers.all_said(LOST_CONTACT) or exited(), GUARD_SECONDS)
    stopped = noticed + network_hosts.wait_until(
        'both workers stopped after the partition', exited, GUARD_SECONDS)
  finally:
    two_hosts.reconnect(cut_off)  # The next tests use this host too.
    workers.kill()
  partitioned = workers.wait()
  step = fault_injection.latest_checkpoint_step(model_dir)
  print(f'partition after ckpt-{step}: both workers reported it {noticed:.1f} s and exited '
        f'{stopped:.1f} s after the link went down')
  assert step is not None and step < EPOCHS * STEPS_PER_EPOCH  # Cut mid-run.
  for index, worker in enumerate(partitioned):
    assert worker.returncode == 75, f'worker {index}: {worker.stderr[-5000:]}'
    assert LOST_CONTACT in worker.stderr, worker.stderr[-3000:]
    assert f'The last checkpoint is {model_dir}/checkpoints/ckpt-{step};' in worker.stderr
  assert stopped < STOP_LIMIT_SECONDS

  resumed = Workers(two_hosts, model_dir, prepared, addresses, tmp_path / 'resumed').wait()
  for index, worker in enumerate(resumed):
    assert worker.returncode == 0, f'worker {index}: {worker.stderr[-5000:]}'
    assert f'Restored {model_dir}/checkpoints/ckpt-{step}' in worker.stderr
  uninterrupted = two_workers[0].results['weights_sha256']
  assert [worker.results['weights_sha256'] for worker in resumed] == [uninterrupted] * 2


@pytest.mark.slow
@pytest.mark.real_data
def test_srun_over_two_slurm_nodes_on_two_hosts_trains_like_one_device(
    two_hosts, one_device, tmp_path, prepared):
  private_slurm.require_slurm()
  nodes = [private_slurm.Node(host.name, host.address, host.namespace)
           for host in two_hosts.hosts]
  slurm = private_slurm.start(str(tmp_path / 'slurm'), nodes=nodes,
                              controller_address=two_hosts.bridge_address)
  model_dir = str(tmp_path / 'run')
  try:
    # srun runs here, in the root namespace: slurmd's step connects back to the address
    # srun's launch request came from, the bridge's, which every host reaches.
    srun = slurm.run('srun', '-N2', '--ntasks-per-node=1', sys.executable, TRAIN,
                     '--strategy=multi_worker', f'--model_dir={model_dir}', *prepared,
                     check=False, cwd=REPO, timeout=GUARD_SECONDS,
                     env={**slurm.env, 'TMPDIR': str(tmp_path)})
  finally:
    left = slurm.queue()  # Only after a timeout: srun's job then outlives srun.
    if left:
      slurm.run('scancel', '--full', *left, check=False)
    private_slurm.stop(slurm)
  assert srun.returncode == 0, srun.stderr[-5000:]
  # Each task found its place from Slurm's variables: rank i listens on the ith node,
  # by a name only /etc/hosts resolves, to its host's address.
  for rank, node in enumerate(nodes):
    place = (rf'Cluster from Slurm job \d+ step \d+: worker {rank} of 2 '
             rf'\((chief, )?listening on {re.escape(node.name)}:\d+\)')
    assert re.search(place, srun.stderr), srun.stderr[-3000:]
  two = json.loads(srun.stdout.strip().splitlines()[-1])
  assert two['num_replicas'] == 2 and two['test_examples'] == 10000
  one = one_device.finish()
  assert one.returncode == 0, one.stderr[-3000:]
  print('srun on 2 hosts:', two['test_loss'], 'one device:', one.results['test_loss'])
  assert two['test_loss'] == pytest.approx(one.results['test_loss'], abs=2e-3)
