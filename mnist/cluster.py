"""TF_CONFIG: the cluster and task every process of a multi-worker run reads.

TensorFlow-free, so scripts reject a missing or malformed TF_CONFIG before
TensorFlow loads, and the local launcher can write one per worker:

  {"cluster": {"worker": ["host0:12345", "host1:12345"]},
   "task": {"type": "worker", "index": 0}}

Under Slurm's srun without a TF_CONFIG, `resolve` builds it from srun's variables.
"""
import dataclasses
import json
from typing import Mapping, Optional, Sequence

from mnist import errors
from mnist import slurm_cluster

TF_CONFIG_ENV = 'TF_CONFIG'
# The jobs MultiWorkerMirroredStrategy trains with. The chief, or worker 0 when
# there is no chief, also writes the checkpoints and summaries.
TRAINING_JOBS = ('chief', 'worker')
_EXAMPLE = ('{"cluster": {"worker": ["host0:12345", "host1:12345"]}, '
            '"task": {"type": "worker", "index": 0}}')


@dataclasses.dataclass(frozen=True)
class ClusterTask:
  """A parsed TF_CONFIG: job name -> ['host:port', ...], and this process's task."""
  cluster: dict
  task_type: str
  task_index: int

  @property
  def num_workers(self) -> int:
    return sum(len(self.cluster.get(job, ())) for job in TRAINING_JOBS)

  @property
  def is_chief(self) -> bool:
    """TensorFlow's rule (multi_worker_util.is_chief)."""
    if 'chief' in self.cluster:
      return self.task_type == 'chief'
    return self.task_type == 'worker' and self.task_index == 0

  @property
  def address(self) -> str:
    return self.cluster[self.task_type][self.task_index]


def tf_config(addresses: Sequence[str], index: int) -> str:
  """The TF_CONFIG of worker `index` in a cluster of workers only (worker 0 is chief)."""
  return json.dumps({'cluster': {'worker': list(addresses)},
                     'task': {'type': 'worker', 'index': index}})


@dataclasses.dataclass(frozen=True)
class Resolution:
  """This process's cluster task, where it came from, and the TF_CONFIG to set (None:
  the user's own is in place)."""
  task: ClusterTask
  description: str
  tf_config: Optional[str] = None


def resolve(environ: Mapping[str, str], worker_port: Optional[int] = None) -> Resolution:
  """The cluster of --strategy=multi_worker: the user's $TF_CONFIG if set, else the
  srun step this process is a task of. Raises ConfigError if neither (or either is
  malformed). Reads `environ` only."""
  text = environ.get(TF_CONFIG_ENV)
  if text and text.strip():
    if worker_port is not None:
      raise errors.ConfigError(f'--worker_port={worker_port} applies to a cluster from '
                               f'Slurm\'s variables; ${TF_CONFIG_ENV} already names every '
                               'port. Drop one of them.')
    task = parse_tf_config(text)
    return Resolution(task, f'Cluster from ${TF_CONFIG_ENV}: {_describe(task)}; '
                      f'{slurm_cluster.describe_gpus(environ)}.')
  step = slurm_cluster.step_from_environ(environ)
  if step is None:
    parse_tf_config(text)  # Raises: neither is there.
  text = tf_config(step.addresses(worker_port), step.rank)
  task = parse_tf_config(text)
  ports = f'--worker_port={worker_port}' if worker_port is not None else (
      f'ports from job {step.job_id} step {step.step_id}')
  return Resolution(
      task, f'Cluster from Slurm job {step.job_id} step {step.step_id}: '
      f'{_describe(task)}; nodes {",".join(step.hosts)}, tasks per node '
      f'{",".join(map(str, step.tasks_per_node))}, {ports}; '
      f'{slurm_cluster.describe_gpus(environ)}.', tf_config=text)


def _describe(task: ClusterTask) -> str:
  return (f'{task.task_type} {task.task_index} of {task.num_workers} '
          f'({"chief, " if task.is_chief else ""}listening on {task.address})')


def parse_tf_config(text: Optional[str]) -> ClusterTask:
  """Parses and checks TF_CONFIG; raises ConfigError naming every problem."""
  if not text or not text.strip():
    raise errors.ConfigError(
        f'--strategy=multi_worker needs the {TF_CONFIG_ENV} environment variable: the '
        f'cluster and this process\'s task, e.g. {TF_CONFIG_ENV}=\'{_EXAMPLE}\'; or '
        'start every worker with Slurm\'s srun, which sets the variables the cluster is '
        'built from. scripts/launch_local.py sets it for workers on this machine.')
  try:
    value = json.loads(text)
  except json.JSONDecodeError as e:
    raise errors.ConfigError(f'{TF_CONFIG_ENV} is not valid JSON ({e}): {text[:200]!r}. '
                             f'Expected e.g. {_EXAMPLE}.') from None
  if not isinstance(value, dict):
    value = {}
  problems = []
  cluster, task = value.get('cluster'), value.get('task')
  if not isinstance(cluster, dict) or not cluster:
    problems.append('"cluster" must map job names to lists of "host:port"')
    cluster = {}
  for job, addresses in cluster.items():
    if job not in TRAINING_JOBS:
      problems.append(f'job {job!r} is not supported (MultiWorkerMirroredStrategy trains '
                      f'with {" and ".join(TRAINING_JOBS)} jobs only)')
    elif not isinstance(addresses, list) or not addresses:
      problems.append(f'cluster job {job!r} must be a non-empty list of "host:port"')
    else:
      problems.extend(f'{job} address {address!r} is not "host:port"'
                      for address in addresses if not _is_address(address))
  if len(cluster.get('chief', ())) > 1:
    problems.append('there can be only one chief')
  if cluster and not any(job in cluster for job in TRAINING_JOBS):
    problems.append('the cluster has no "worker" (or "chief") job')
  every = [a for job in TRAINING_JOBS for a in cluster.get(job, ()) if isinstance(a, str)]
  duplicates = sorted({a for a in every if every.count(a) > 1})
  if duplicates:
    problems.append(f'addresses appear twice: {", ".join(duplicates)}')
  task_type, task_index = None, None
  if not isinstance(task, dict):
    problems.append('"task" must be {"type": JOB, "index": N}')
  else:
    task_type, task_index = task.get('type'), task.get('index')
    jobs = cluster.get(task_type) if isinstance(task_type, str) else None
    if not isinstance(jobs, list):
      problems.append(f'task type {task_type!r} is not a job of the cluster')
    elif (not isinstance(task_index, int) or isinstance(task_index, bool)
          or not 0 <= task_index < len(jobs)):
      problems.append(f'task index {task_index!r} is not in 0..{len(jobs) - 1} for job '
                      f'{task_type!r}')
  if problems:
    raise errors.ConfigError(f'{TF_CONFIG_ENV} is malformed: ' + '; '.join(problems) +
                             f'. Expected e.g. {_EXAMPLE}.')
  return ClusterTask(cluster=cluster, task_type=task_type, task_index=task_index)


def _is_address(address) -> bool:
  if not isinstance(address, str) or ':' not in address:
    return False
  host, port = address.rsplit(':', 1)
  return bool(host) and port.isdigit() and 0 < int(port) < 65536
