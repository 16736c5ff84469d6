"""TF_CONFIG: the cluster and task every process of a multi-worker run reads.

TensorFlow-free, so scripts reject a missing or malformed TF_CONFIG before
TensorFlow loads, and the local launcher can write one per worker:

  {"cluster": {"worker": ["host0:12345", "host1:12345"]},
   "task": {"type": "worker", "index": 0}}
"""
import dataclasses
import json
from typing import Optional, Sequence

from mnist import errors

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


def parse_tf_config(text: Optional[str]) -> ClusterTask:
  """Parses and checks TF_CONFIG; raises ConfigError naming every problem."""
  if not text or not text.strip():
    raise errors.ConfigError(
        f'--strategy=multi_worker needs the {TF_CONFIG_ENV} environment variable: the '
        f'cluster and this process\'s task, e.g. {TF_CONFIG_ENV}=\'{_EXAMPLE}\'. '
        'scripts/launch_local.py sets it for workers on this machine.')
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
