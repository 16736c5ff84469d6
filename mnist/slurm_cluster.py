"""The cluster of a multi-worker run started by Slurm's `srun`, from srun's variables.

Every task computes every task's address from the same variables, the same way,
without talking to the others. TensorFlow-free, so contradicting variables are
refused before TensorFlow loads. TensorFlow's own SlurmClusterResolver is not used:
it runs nvidia-smi (CPU nodes have none), fails with no GPUs, and gives every job
the ports from 8888, so two jobs sharing a node collide.

CUDA_VISIBLE_DEVICES is only read, never set: Slurm already gives each task its GPUs
(--gres=gpu:N, --gpus-per-node, --gpus-per-task).
"""
import dataclasses
import itertools
import re
from typing import Mapping, Optional

from mnist import errors

# What srun sets for each task of a job step. SLURM_NTASKS, SLURM_JOB_NODELIST and
# SLURM_TASKS_PER_NODE are deliberately not fallbacks: a batch script run without
# srun has them too, and would then wait for tasks that never start.
STEP_VARIABLES = ('SLURM_JOB_ID', 'SLURM_STEP_ID', 'SLURM_PROCID', 'SLURM_STEP_NUM_TASKS',
                  'SLURM_STEP_NODELIST', 'SLURM_STEP_TASKS_PER_NODE')
# Checked against the layout when srun set them. SLURM_NODEID and SLURM_LOCALID catch
# a distribution other than block; SLURM_DISTRIBUTION is not read (a name or a number,
# depending on the Slurm version).
_OPTIONAL_VARIABLES = ('SLURM_STEP_NUM_NODES', 'SLURM_NODEID', 'SLURM_LOCALID')
GPU_ENV = 'CUDA_VISIBLE_DEVICES'

# The automatic ports: each (job, step) gets a block of PORTS_PER_STEP ports on every
# node, task j of a node taking the block's port j. Blocks tile FIRST_PORT..LAST_PORT,
# below Linux's ephemeral range (32768-60999), so no outgoing connection holds them.
# Blocks: (job id mod _JOB_WINDOW) * _STEP_WINDOW + (step id mod _STEP_WINDOW). Two
# steps on one node get the same ports only if their job ids agree mod 355 and their
# step ids mod 4: never for jobs started fewer than 355 job ids apart.
FIRST_PORT, LAST_PORT = 10000, 32767
PORTS_PER_STEP = 16  # Tasks per node the automatic choice supports; more: --worker_port.
_STEP_WINDOW = 4
_JOB_WINDOW = (LAST_PORT + 1 - FIRST_PORT) // (PORTS_PER_STEP * _STEP_WINDOW)  # 355.

_BRACKETS = re.compile(r'\[([^\[\]]*)\]')
_RANGE = re.compile(r'(\d+)(?:-(\d+))?$')
_REPEAT = re.compile(r'(\d+)(?:\(x(\d+)\))?$')


@dataclasses.dataclass(frozen=True)
class SlurmStep:
  """One task of an srun job step, tasks laid out in Slurm's default block
  distribution: node i (in nodelist order) holds the next tasks_per_node[i] ranks."""
  job_id: int
  step_id: int
  rank: int
  hosts: tuple
  tasks_per_node: tuple

  @property
  def num_tasks(self) -> int:
    return sum(self.tasks_per_node)

  def layout(self) -> list:
    """(host, local index on that host) of every rank, in rank order."""
    return [(host, local) for host, count in zip(self.hosts, self.tasks_per_node)
            for local in range(count)]

  def addresses(self, worker_port: Optional[int] = None) -> list:
    """'host:port' of every rank: task j of a node listens on first_port + j."""
    first = self.first_port(worker_port)
    return [f'{host}:{first + local}' for host, local in self.layout()]

  def first_port(self, worker_port: Optional[int] = None) -> int:
    """The port of each node's first task: --worker_port, else the step's block."""
    most = max(self.tasks_per_node)
    if worker_port is not None:
      if not 0 < worker_port <= 65536 - most:
        raise errors.ConfigError(
            f'--worker_port={worker_port} must be in 1..{65536 - most}: {most} tasks on '
            f'a node listen on --worker_port .. --worker_port+{most - 1}.')
      return worker_port
    if most > PORTS_PER_STEP:
      raise errors.ConfigError(
          f'Slurm started {most} tasks on one node (SLURM_STEP_TASKS_PER_NODE); the '
          f'automatic ports cover {PORTS_PER_STEP}. Pass --worker_port=N: task j of a '
          'node then listens on N+j.')
    block = (self.job_id % _JOB_WINDOW) * _STEP_WINDOW + self.step_id % _STEP_WINDOW
    return FIRST_PORT + block * PORTS_PER_STEP


# Hand-written (about 40 lines with _split_top_level and _expand_ranges): python-hostlist
# on PyPI parses both formats but is GPL-2.0+, and this package is Apache-2.0.
def expand_hostlist(text: str) -> list:
  """Slurm's compressed host list as host names: 'n[1-3,7]' -> n1 n2 n3 n7,
  'gpu-[01-02]' -> gpu-01 gpu-02 (zero padding kept), 'a1,b[2-3]' -> a1 b2 b3,
  'r[1-2]-n[1-2]' -> r1-n1 r1-n2 r2-n1 r2-n2. Raises ValueError if malformed."""
  hosts = []
  for item in _split_top_level(text.strip()):
    pieces, numbers, start = [], [], 0
    for match in _BRACKETS.finditer(item):
      pieces.append(item[start:match.start()])
      numbers.append(_expand_ranges(match.group(1)))
      start = match.end()
    pieces.append(item[start:])
    if not item or any(c in piece for piece in pieces for c in '[],'):
      raise ValueError(f'bad host list item {item!r}')
    for choice in itertools.product(*numbers):  # The leftmost group varies slowest.
      hosts.append(''.join(p + n for p, n in zip(pieces, choice)) + pieces[-1])
  return hosts


def expand_tasks_per_node(text: str) -> list:
  """Slurm's tasks per node: '2(x3),1' -> [2, 2, 2, 1]. Raises ValueError if malformed."""
  counts = []
  for item in text.strip().split(','):
    match = _REPEAT.match(item.strip())
    if not match or int(match.group(1)) < 1:
      raise ValueError(f'bad item {item!r}')
    counts += [int(match.group(1))] * int(match.group(2) or 1)
  return counts


def step_from_environ(environ: Mapping[str, str]) -> Optional[SlurmStep]:
  """This task's SlurmStep, None outside an srun step; raises ConfigError when srun's
  variables are missing or contradict each other."""
  if 'SLURM_STEP_NUM_TASKS' not in environ and 'SLURM_PROCID' not in environ:
    return None
  problems = []
  values = {name: environ.get(name) for name in STEP_VARIABLES + _OPTIONAL_VARIABLES}
  missing = [name for name in STEP_VARIABLES if values[name] is None]
  if missing:
    problems.append(f'{", ".join(missing)} not set (srun sets them for each task; a '
                    'batch script must start the workers with srun)')
  numbers = {}
  for name in ('SLURM_JOB_ID', 'SLURM_STEP_ID', 'SLURM_PROCID', 'SLURM_STEP_NUM_TASKS',
               'SLURM_STEP_NUM_NODES', 'SLURM_NODEID', 'SLURM_LOCALID'):
    text = values[name]
    if text is not None and not re.fullmatch(r'[0-9]+', text.strip()):
      problems.append(f'{name} is not a non-negative integer')
    elif text is not None:
      numbers[name] = int(text)
  rank, num_tasks = numbers.get('SLURM_PROCID'), numbers.get('SLURM_STEP_NUM_TASKS')
  if rank is not None and num_tasks is not None and rank >= num_tasks:
    problems.append(f'SLURM_PROCID is not in 0..{num_tasks - 1}')
  hosts, counts = [], []
  for name, expand, into in (('SLURM_STEP_NODELIST', expand_hostlist, hosts),
                             ('SLURM_STEP_TASKS_PER_NODE', expand_tasks_per_node, counts)):
    if values[name] is not None:
      try:
        into.extend(expand(values[name]))
      except ValueError as e:
        problems.append(f'{name} cannot be parsed ({e})')
  if not problems:
    problems = _contradictions(numbers, hosts, counts)
  if problems:
    shown = ', '.join(f'{name}={values[name]!r}' for name in STEP_VARIABLES +
                      _OPTIONAL_VARIABLES if values[name] is not None)
    raise errors.ConfigError(
        'Slurm\'s variables do not describe one srun step: ' + '; '.join(problems) +
        f'. Seen: {shown or "none of " + ", ".join(STEP_VARIABLES)}. Start the workers '
        'with srun (e.g. srun -N2 --ntasks-per-node=1 python scripts/train.py '
        '--strategy=multi_worker ...), or set TF_CONFIG yourself.')
  return SlurmStep(job_id=numbers['SLURM_JOB_ID'], step_id=numbers['SLURM_STEP_ID'],
                   rank=numbers['SLURM_PROCID'], hosts=tuple(hosts),
                   tasks_per_node=tuple(counts))


def _contradictions(numbers, hosts, counts) -> list:
  problems = []
  num_tasks, rank = numbers['SLURM_STEP_NUM_TASKS'], numbers['SLURM_PROCID']
  if len(hosts) != len(counts):
    problems.append(f'SLURM_STEP_NODELIST names {len(hosts)} nodes but '
                    f'SLURM_STEP_TASKS_PER_NODE gives counts for {len(counts)}')
  if len(set(hosts)) != len(hosts):
    problems.append('SLURM_STEP_NODELIST names a node twice')
  if numbers.get('SLURM_STEP_NUM_NODES', len(hosts)) != len(hosts):
    problems.append(f'SLURM_STEP_NUM_NODES is not the {len(hosts)} nodes of '
                    'SLURM_STEP_NODELIST')
  if sum(counts) != num_tasks:
    problems.append(f'SLURM_STEP_TASKS_PER_NODE adds up to {sum(counts)} tasks, not '
                    f'SLURM_STEP_NUM_TASKS={num_tasks}')
  if problems:
    return problems
  layout = [(node, local) for node, count in enumerate(counts) for local in range(count)]
  node, local = layout[rank]
  for name, expected in (('SLURM_NODEID', node), ('SLURM_LOCALID', local)):
    if numbers.get(name, expected) != expected:
      problems.append(f'{name} is not {expected}, where block distribution puts rank '
                      f'{rank} (srun --distribution=block is needed)')
  return problems


def describe_gpus(environ: Mapping[str, str]) -> str:
  """The GPUs this task sees, as Slurm left CUDA_VISIBLE_DEVICES."""
  visible = environ.get(GPU_ENV)
  if visible is None:
    return f'GPUs: all of the node\'s (${GPU_ENV} unset)'
  if not visible.strip():
    return f'GPUs: none (${GPU_ENV} empty)'
  return f'GPUs: ${GPU_ENV}={visible}'


def _split_top_level(text: str) -> list:
  """Splits at the commas outside brackets: 'a1,b[2,3]' -> ['a1', 'b[2,3]']."""
  items, depth, start = [], 0, 0
  for i, char in enumerate(text):
    depth += {'[': 1, ']': -1}.get(char, 0)
    if depth not in (0, 1):
      raise ValueError('nested or unbalanced brackets')
    if char == ',' and depth == 0:
      items.append(text[start:i])
      start = i + 1
  if depth:
    raise ValueError('unbalanced brackets')
  return items + [text[start:]]


def _expand_ranges(text: str) -> list:
  """'1-3,07' -> ['1', '2', '3', '07']: each range padded to its first number's width."""
  numbers = []
  for part in text.split(','):
    match = _RANGE.match(part.strip())
    if not match or int(match.group(2) or match.group(1)) < int(match.group(1)):
      raise ValueError(f'bad range {part!r}')
    low, high = match.group(1), match.group(2) or match.group(1)
    numbers += [str(n).zfill(len(low)) for n in range(int(low), int(high) + 1)]
  return numbers
