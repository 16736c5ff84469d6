"""The decisions a GPU node needs, each a pure function of what it is given.

- `cpu_on_gpu_node_problem`: refuse to run on the CPU where the NVIDIA driver is loaded
  but TensorFlow lists no GPU (a CPU-only install, or CUDA libraries that do not load).
- `memory_growth_devices`: the GPUs to give memory growth, so two processes can share one.
- `collective_communication`: what --collective_communication=auto means on this worker.
- `gpu_slots`: which GPUs each of K processes on one node sees (CUDA_VISIBLE_DEVICES).

They are tested on every case on any machine. The inputs come from thin readers:
`node_gpu_count` (nvidia-smi or /proc, never TensorFlow, so the launchers stay
TensorFlow-free) and, in the callers, TensorFlow's own device list.
"""
import dataclasses
import os
import subprocess
from typing import Callable, Mapping, Optional, Sequence

VISIBLE_DEVICES_ENV = 'CUDA_VISIBLE_DEVICES'
# TensorFlow reads it over any memory-growth setting made through tf.config.
FORCE_GROWTH_ENV = 'TF_FORCE_GPU_ALLOW_GROWTH'
ENABLED_DEVICES_ENV = 'TF_ENABLED_DEVICE_TYPES'
PROC_GPUS = '/proc/driver/nvidia/gpus'  # One folder per GPU the kernel module drives.
INSTALL_GPU = "make venv-gpu (or pip install -e '.[gpu]' in your environment)"
_NVIDIA_SMI_SECONDS = 20  # A wedged driver can hang nvidia-smi; never wait on it for long.


def hidden_by_user(environ: Mapping[str, str]) -> bool:
  """Whether the environment hides every GPU from TensorFlow on purpose: an empty
  CUDA_VISIBLE_DEVICES or one of -1 (the usual way to ask for the CPU), or a
  TF_ENABLED_DEVICE_TYPES without GPU."""
  if VISIBLE_DEVICES_ENV in environ and not visible_device_list(environ[VISIBLE_DEVICES_ENV]):
    return True
  types = environ.get(ENABLED_DEVICES_ENV, '').strip()
  return bool(types) and 'GPU' not in (t.strip().upper() for t in types.split(','))


def cpu_on_gpu_node_problem(nvidia_driver: bool, tensorflow_gpus: Sequence[str],
                            allow_cpu_on_gpu_node: bool,
                            environ: Mapping[str, str] = os.environ) -> Optional[str]:
  """Why this process must not start (None: it may).

  With the NVIDIA driver loaded and no GPU in TensorFlow's list, a run would train on
  the CPU, tens of times slower, and say so only in a log line: almost always the
  environment is wrong, not the user's intent. Left alone: no driver (a CPU machine),
  GPUs listed, --allow_cpu_on_gpu_node, or GPUs hidden on purpose (`hidden_by_user`).
  """
  if (not nvidia_driver or tensorflow_gpus or allow_cpu_on_gpu_node
      or hidden_by_user(environ)):
    return None
  return ('This machine has an NVIDIA driver but TensorFlow lists no GPU, so this would '
          'run on the CPU. The usual cause is an environment without the CUDA libraries '
          'TensorFlow 2.21 loads: it takes CUDA 12 and cuDNN 9 from the nvidia-* packages '
          'that tensorflow[and-cuda] installs, and `make venv` (CPU machines, CI) installs '
          'plain tensorflow without them, as does tensorflow-cpu. Other causes: CUDA or '
          'cuDNN libraries of another version found first (LD_LIBRARY_PATH), or a driver '
          'too old for CUDA 12; TensorFlow\'s own warning above ("Cannot dlopen some GPU '
          f'libraries") names the library it could not load. Fix: {INSTALL_GPU}. To run '
          'on the CPU here on purpose, pass --allow_cpu_on_gpu_node.')


def memory_growth_devices(gpus: Sequence, enabled: bool,
                          environ: Mapping[str, str] = os.environ) -> list:
  """The GPUs (TensorFlow's physical devices, or anything standing for them) to set
  memory growth on, before any is initialised.

  Without it TensorFlow maps nearly all of each GPU's memory in its first op, so a
  second process on the same GPU (a sweep's runs sharing it, an evaluation beside a
  training run) fails to allocate. None when --gpu_memory_growth is off (TensorFlow's
  default), and none when TF_FORCE_GPU_ALLOW_GROWTH is set: TensorFlow reads it over
  this setting (and warns when they disagree), so the user's variable decides.
  """
  if not enabled or FORCE_GROWTH_ENV in environ:
    return []
  return list(gpus)


def collective_communication(requested: str, device_kinds: Sequence[str]) -> str:
  """The all-reduce implementation a multi-worker run asks TensorFlow for.

  `device_kinds`: the types of the devices this worker's replicas run on ('GPU' for
  each local GPU, else 'CPU'). An explicit ring or nccl is kept. auto becomes nccl
  when every device is a GPU: TensorFlow's AUTO hands the choice to its collective
  runtime, which takes NCCL only when asked (or with its experimental collective_nccl
  option), and ring all-reduce between GPUs copies through host memory. Any CPU
  device: ring (NCCL cannot reduce host tensors). No devices named: auto, TensorFlow's.
  """
  if requested != 'auto' or not device_kinds:
    return requested
  if all(kind.upper() == 'GPU' for kind in device_kinds):
    return 'nccl'
  return 'ring'


def visible_device_list(value: str) -> list:
  """CUDA_VISIBLE_DEVICES as CUDA reads it: comma-separated indices or UUIDs, up to the
  first invalid entry (so '-1', and anything after it, hides the rest)."""
  devices = []
  for entry in value.split(','):
    entry = entry.strip()
    if not entry or entry.startswith('-'):
      break
    devices.append(entry)
  return devices


@dataclasses.dataclass(frozen=True)
class GpuSlots:
  """What each of K processes on one node sees: `visible_devices[i]` is process i's
  CUDA_VISIBLE_DEVICES, or None to leave its environment as inherited."""
  visible_devices: tuple
  shared: bool = False  # Fewer GPUs than processes: some processes share a GPU.
  notice: Optional[str] = None  # One line for the log, when the split is not clean.

  def env_changes(self, index: int) -> dict:
    """The variables to set in process `index`'s environment (empty: none)."""
    value = self.visible_devices[index]
    return {} if value is None else {VISIBLE_DEVICES_ENV: value}


def gpu_slots(processes: int, node_gpus: int,
              environ: Mapping[str, str] = os.environ) -> GpuSlots:
  """Gives each of `processes` parallel processes its own GPUs where it can.

  The pool is the user's CUDA_VISIBLE_DEVICES list when set (Slurm sets it to the
  job's GPUs), else the node's `node_gpus`. Then:
  - one process, no GPUs on the node, or a pool hidden on purpose: environment
    untouched (the process sees what it would have seen);
  - at least one GPU per process: contiguous blocks of equal size (pool // processes),
    so every run (or multi-worker worker, which must all have the same device count)
    trains on as many GPUs as the others; GPUs left over stay idle, said in `notice`;
  - fewer GPUs than processes: one GPU each, round-robin, so several share a GPU
    (memory growth, on by default, lets them fit); `notice` warns that their timings
    are spoiled by the sharing.
  """
  untouched = GpuSlots((None,) * max(processes, 1))
  if processes <= 1 or node_gpus <= 0:
    return untouched
  if VISIBLE_DEVICES_ENV in environ:
    pool = visible_device_list(environ[VISIBLE_DEVICES_ENV])
  else:
    pool = [str(index) for index in range(node_gpus)]
  if not pool:
    return untouched
  if len(pool) < processes:
    devices = tuple(pool[index % len(pool)] for index in range(processes))
    return GpuSlots(devices, shared=True, notice=(
        f'{processes} processes share {len(pool)} GPU(s) ({",".join(pool)}), round-robin: '
        'they compete for each GPU, so their timings are spoiled by the sharing; run at '
        f'most {len(pool)} at a time for clean timings.'))
  share = len(pool) // processes
  devices = tuple(','.join(pool[index * share:(index + 1) * share])
                  for index in range(processes))
  idle = pool[processes * share:]
  notice = (f'GPU(s) {",".join(idle)} left idle: {len(pool)} GPUs do not split evenly '
            f'among {processes} processes, and each gets the same {share}.' if idle else None)
  return GpuSlots(devices, notice=notice)


def count_listed_gpus(nvidia_smi_list: str) -> int:
  """The GPUs in `nvidia-smi -L` output: one 'GPU i: NAME (UUID: ...)' line each
  (MIG instances are indented lines under their GPU and not counted)."""
  return sum(1 for line in nvidia_smi_list.splitlines() if line.startswith('GPU '))


def node_gpu_count(run: Callable = subprocess.run, proc_gpus: str = PROC_GPUS) -> int:
  """This node's NVIDIA GPUs, without TensorFlow: `nvidia-smi -L` (which sees only the
  devices this process may open, as in a container or a Slurm cgroup), else the
  kernel module's /proc folder, else 0."""
  try:
    listed = run(['nvidia-smi', '-L'], capture_output=True, text=True,
                 timeout=_NVIDIA_SMI_SECONDS, check=False)
    if listed.returncode == 0:
      return count_listed_gpus(listed.stdout)
  except (OSError, subprocess.TimeoutExpired):
    pass  # No nvidia-smi here, or it hung.
  try:
    return len(os.listdir(proc_gpus))
  except OSError:
    return 0
