"""A private Slurm cluster for tests: munged, slurmctld and one slurmd on free ports,
everything (config, key, state, spool, logs, pid files, sockets) in one tmp folder.

The `slurm_cluster` fixture starts it once per session and stops it by PID (SIGTERM,
then SIGKILL). Without Slurm's binaries the tests that need it are skipped, unless
$MNIST_REQUIRE_SLURM is set (CI sets it): then they fail. Clients find the cluster
through the SLURM_CONF in `cluster.env`. The daemons run as the current user (root in
CI and here: SlurmUser=root).

By default its one node is this host (127.0.0.1). Given `Node`s with their own address
and network namespace (tests/network_hosts.py), each slurmd runs in its node's namespace
and slurmctld listens where they reach it (the bridge's address), so srun's tasks run
on separate hosts; munged stays in the root namespace (its socket is a file, seen by
every namespace).
"""
import dataclasses
import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from typing import Optional

import pytest

REQUIRE_ENV = 'MNIST_REQUIRE_SLURM'
DAEMONS = ('munged', 'slurmctld', 'slurmd')
CLIENTS = ('srun', 'sbatch', 'squeue', 'scontrol', 'scancel', 'sinfo')
NODE = 'localhost'
_START_SECONDS = 60
_STOP_SECONDS = 10

_CONF = '''\
ClusterName=mnisttest
SlurmctldHost={node}({ctld_address})
SlurmUser={user}
SlurmdUser=root
SlurmctldPort={ctld_port}
AuthType=auth/munge
AuthInfo=socket={root}/munge/munge.socket
CredType=cred/munge
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool/%n
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd-%n.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd-%n.log
PlugStackConfig={root}/plugstack.conf
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
MailProg=/bin/true
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
ReturnToService=2
SchedulerParameters=sched_interval=1
KillWait=30
MinJobAge=600
{node_lines}
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
'''


@dataclasses.dataclass(frozen=True)
class Node:
  """A slurmd: its node name, the address slurmctld and srun reach it at, and the
  network namespace it runs in (None: this host's own)."""
  name: str
  address: str = '127.0.0.1'
  namespace: Optional[str] = None


def missing_binaries() -> list:
  return [name for name in (*DAEMONS, *CLIENTS) if shutil.which(name) is None
          and not os.path.exists(os.path.join('/usr/sbin', name))]


@dataclasses.dataclass
class Cluster:
  root: str
  env: dict  # os.environ with SLURM_CONF: pass it to every Slurm client.
  pids: dict  # Daemon name -> its process.

  def run(self, *argv, check=True, **kwargs) -> subprocess.CompletedProcess:
    """Runs a Slurm client (or anything) against this cluster."""
    kwargs.setdefault('timeout', 60)
    return subprocess.run(argv, env=kwargs.pop('env', self.env), capture_output=True,
                          text=True, check=check, **kwargs)

  def sbatch(self, *argv, **kwargs) -> str:
    """Submits a batch job; returns its id."""
    return self.run('sbatch', '--parsable', *argv, **kwargs).stdout.strip().split(';')[0]

  def queue(self, job_id: Optional[str] = None) -> dict:
    """{job or array task id: state} of the job's tasks (every job's: None) in squeue."""
    which = ['-j', job_id] if job_id else []
    out = self.run('squeue', '-h', '-r', *which, '-o', '%i %T', check=False).stdout
    return dict(line.split() for line in out.splitlines() if line.strip())

  def job(self, job_id: str) -> dict:
    """`scontrol show job` as a dict (JobState, ExitCode, Restarts, ...); {} if unknown.
    Finished jobs stay known for MinJobAge seconds."""
    result = self.run('scontrol', '-o', 'show', 'job', job_id, check=False)
    fields = {}
    for word in result.stdout.split():
      key, sep, value = word.partition('=')
      if sep:
        fields.setdefault(key, value)
    return fields

  def wait_until_gone(self, job_id: Optional[str] = None, timeout: float = 300) -> None:
    """Waits until no task of the job (of any job: None) is in squeue; else TimeoutError."""
    deadline = time.monotonic() + timeout
    while self.queue(job_id):
      if time.monotonic() > deadline:
        raise TimeoutError(f'Slurm job {job_id} still queued after {timeout} s: '
                           f'{self.queue(job_id)}')
      time.sleep(0.5)

  def make_eligible(self, job_id: str) -> None:
    """A requeued job waits ~2 minutes (its BeginTime); this starts it at once."""
    self.run('scontrol', 'update', f'JobId={job_id}', 'StartTime=now')

  def log(self, name: str = 'slurmctld') -> str:
    path = os.path.join(self.root, f'{name}.log')
    return open(path, errors='replace').read() if os.path.exists(path) else ''


def _free_ports(count: int) -> list:
  sockets = [socket.socket() for _ in range(count)]
  try:
    for sock in sockets:
      sock.bind(('127.0.0.1', 0))
    return [sock.getsockname()[1] for sock in sockets]
  finally:
    for sock in sockets:
      sock.close()


def _write(path: str, text, mode: int = 0o644) -> None:
  with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode), 'wb') as f:
    f.write(text.encode() if isinstance(text, str) else text)


def start(root: str, cpus: Optional[int] = None, nodes: tuple = (NODE,),
          controller_address: str = '127.0.0.1') -> Cluster:
  """Starts the cluster in `root` and waits until its nodes are idle.

  `nodes`: names (slurmd processes on this host at 127.0.0.1, each on its own port:
  srun then writes the formats of a real multi-node step, SLURM_STEP_NODELIST=n[1-2],
  tasks per node 1(x2), though only NODE resolves to this host) or `Node`s, each slurmd
  in its node's network namespace at its address. `controller_address`: where slurmctld
  is reached, from every node's namespace (with Nodes: the bridge's address); the
  node names must resolve (/etc/hosts) for the tasks to reach each other by name."""
  nodes = tuple(node if isinstance(node, Node) else Node(node) for node in nodes)
  for folder in ('munge', 'state', *(os.path.join('spool', node.name) for node in nodes)):
    os.makedirs(os.path.join(root, folder), exist_ok=True)
  os.chmod(os.path.join(root, 'munge'), 0o755)  # munged requires it of its socket's folder.
  ctld_port, *slurmd_ports = _free_ports(1 + len(nodes))
  conf = os.path.join(root, 'slurm.conf')
  node_lines = '\n'.join(
      f'NodeName={node.name} NodeAddr={node.address} Port={port} '
      f'CPUs={cpus or os.cpu_count()} State=UNKNOWN' for node, port in zip(nodes, slurmd_ports))
  _write(conf, _CONF.format(root=root, node=NODE, user=getpass.getuser(),
                            ctld_address=controller_address, ctld_port=ctld_port,
                            node_lines=node_lines))
  _write(os.path.join(root, 'plugstack.conf'), '')
  munge = os.path.join(root, 'munge')
  _write(os.path.join(munge, 'munge.key'), os.urandom(1024), 0o400)
  env = {**os.environ, 'SLURM_CONF': conf}
  for name in list(env):  # Not inside another job's allocation, nor another cluster.
    if (name.startswith(('SLURM_', 'SBATCH_', 'SRUN_', 'SQUEUE_')) and name != 'SLURM_CONF'
        or name == 'TF_CONFIG'):
      del env[name]
  cluster = Cluster(root, env, {})
  commands = {
      'munged': ['munged', '-F', '--force', f'--socket={munge}/munge.socket',
                 f'--key-file={munge}/munge.key', f'--pid-file={munge}/munged.pid',
                 f'--log-file={munge}/munged.log', f'--seed-file={munge}/munged.seed'],
      'slurmctld': ['slurmctld', '-D', '-f', conf],
      **{f'slurmd-{node.name}': ['slurmd', '-D', '-N', node.name, '-f', conf]
         for node in nodes},
  }
  # nsenter, not `ip netns exec`: that also remounts /sys, where slurmd finds no cgroups.
  namespaces = {f'slurmd-{node.name}': node.namespace for node in nodes if node.namespace}
  try:
    for name, argv in commands.items():
      path = shutil.which(argv[0]) or os.path.join('/usr/sbin', argv[0])
      enter = ['nsenter', f'--net=/var/run/netns/{namespaces[name]}'] if (
          name in namespaces) else []
      with open(os.path.join(root, f'{name}.out'), 'w') as out:
        cluster.pids[name] = subprocess.Popen([*enter, path, *argv[1:]], env=env, stdout=out,
                                              stderr=subprocess.STDOUT,
                                              stdin=subprocess.DEVNULL,
                                              start_new_session=True)
      if name == 'munged':
        _wait_for(lambda: os.path.exists(f'{munge}/munge.socket'), cluster, name)
    _wait_for(lambda: cluster.run('sinfo', '-h', '-o', '%T', check=False).stdout.strip()
              == 'idle', cluster, 'an idle node')
  except BaseException:
    stop(cluster)
    raise
  return cluster


def _wait_for(ready, cluster: Cluster, what: str) -> None:
  deadline = time.monotonic() + _START_SECONDS
  while not ready():
    dead = [name for name, p in cluster.pids.items() if p.poll() is not None]
    if dead or time.monotonic() > deadline:
      logs = {name: open(os.path.join(cluster.root, f'{name}.out'), errors='replace').read()
              for name in cluster.pids}
      raise RuntimeError(f'Private Slurm: no {what} after {_START_SECONDS} s '
                         f'(exited: {dead}); output: {logs}; slurmctld.log: '
                         f'{cluster.log()[-3000:]}; slurmd logs: '
                         f'{[cluster.log(n)[-2000:] for n in cluster.pids if "slurmd-" in n]}')
    time.sleep(0.1)


def stop(cluster: Cluster) -> None:
  """SIGTERM to every daemon (slurmd first, munged last), then SIGKILL if needed."""
  for name in reversed(list(cluster.pids)):
    process = cluster.pids[name]
    if process.poll() is None:
      process.send_signal(signal.SIGTERM)
    try:
      process.wait(timeout=_STOP_SECONDS)
    except subprocess.TimeoutExpired:
      os.killpg(process.pid, signal.SIGKILL)
      process.wait()


def require_slurm():
  """Skips the calling test without Slurm's binaries (fails it with $MNIST_REQUIRE_SLURM)."""
  missing = missing_binaries()
  if missing:
    reason = (f'Slurm is not installed (missing {", ".join(missing)}); on Debian: '
              'apt-get install slurmctld slurmd slurm-client munge')
    if os.environ.get(REQUIRE_ENV):
      pytest.fail(f'{REQUIRE_ENV} is set but {reason}')
    pytest.skip(reason)


@pytest.fixture(scope='session')
def slurm_cluster(tmp_path_factory):
  """A running private Slurm cluster (a Cluster), shared by the session's tests."""
  require_slurm()
  cluster = start(str(tmp_path_factory.mktemp('slurm')))
  try:
    yield cluster
  finally:
    stop(cluster)
