"""What this process runs on, and the settings that follow from it.

The CPU part reads /proc/cpuinfo and never imports TensorFlow, so it can decide
what TensorFlow reads when it loads (TF_ENABLE_ONEDNN_OPTS); so does `gpu_support`,
which looks for the NVIDIA driver (TF_ENABLED_DEVICE_TYPES). The GPU part asks
TensorFlow. The decisions (`resolve_precision`, `resolve_onednn`, `resolve_devices`)
are pure functions of a profile, tested on every kind of machine whatever this one is.
"""
import ctypes
import dataclasses
import os
import platform
import site
import sys
from typing import Mapping, Optional, Sequence

# The instruction sets that decide precision and kernels (Linux /proc/cpuinfo names).
FEATURES = ('avx2', 'avx512f', 'avx512_vnni', 'avx512_bf16', 'amx_tile', 'amx_bf16')
# Native bfloat16 arithmetic: AVX-512 BF16 (AMD Zen 4, Intel Cooper Lake) or AMX.
_BF16_FEATURES = ('avx512_bf16', 'amx_bf16')
# TensorFlow 2.21 turns oneDNN on by itself for x86 CPUs with any of these.
_TF_ONEDNN_DEFAULT_FEATURES = ('avx512_vnni', 'avx512_bf16', 'amx_tile', 'amx_bf16')
ONEDNN_ENV = 'TF_ENABLE_ONEDNN_OPTS'
# oneDNN's own cap on the instructions its kernels use; AVX2 imitates an AVX2-only CPU.
ONEDNN_ISA_ENV = 'ONEDNN_MAX_CPU_ISA'
_ISA_CAPS = {'SSE41': (), 'AVX': (), 'AVX2': ('avx2',),
             'AVX2_VNNI': ('avx2',), 'AVX2_VNNI_2': ('avx2',),
             'AVX512_CORE': ('avx2', 'avx512f'),
             'AVX512_CORE_VNNI': ('avx2', 'avx512f', 'avx512_vnni'),
             'AVX512_CORE_BF16': ('avx2', 'avx512f', 'avx512_vnni', 'avx512_bf16'),
             'AVX512_CORE_FP16': ('avx2', 'avx512f', 'avx512_vnni', 'avx512_bf16')}
X86 = ('x86_64', 'amd64', 'i386', 'i686')
# TensorFlow registers only the device factories named here (comma-separated; empty:
# all), when it loads.
ENABLED_DEVICES_ENV = 'TF_ENABLED_DEVICE_TYPES'
# TensorFlow's device factories that need no NVIDIA driver: its others, GPU and XLA_GPU,
# call cuInit when they list devices.
DRIVERLESS_DEVICE_TYPES = 'CPU,XLA_CPU'
PLUGGABLE_DEVICE_ENV = 'TF_PLUGGABLE_DEVICE_LIBRARY_PATH'


@dataclasses.dataclass(frozen=True)
class Cpu:
  model: str
  architecture: str  # platform.machine(): x86_64, aarch64, ...
  cores: int  # Cores this process may run on (its affinity mask).
  features: tuple  # Those of FEATURES it has, as oneDNN may use them.

  @property
  def x86(self) -> bool:
    return self.architecture.lower() in X86


@dataclasses.dataclass(frozen=True)
class Gpu:
  name: str
  compute_capability: Optional[tuple]  # (major, minor); None if TensorFlow did not say.


@dataclasses.dataclass(frozen=True)
class GpuSupport:
  """What TensorFlow's GPU support could find here, read without loading TensorFlow."""
  system: str  # platform.system(): Linux, Darwin, Windows.
  nvidia_driver: bool  # Its kernel module is loaded, or libcuda.so.1 loads (WSL2).
  device_plugins: tuple  # tensorflow-plugins folders: pluggable devices TensorFlow loads.


def cpu(cpuinfo: Optional[str] = None, environ: Mapping[str, str] = os.environ,
        architecture: Optional[str] = None, cores: Optional[int] = None) -> Cpu:
  """This CPU, from /proc/cpuinfo (or the text given); features are capped by
  $ONEDNN_MAX_CPU_ISA as oneDNN caps its kernels."""
  if cpuinfo is None:
    cpuinfo = _read_cpuinfo()
  fields = {}
  for line in cpuinfo.splitlines():
    key, sep, value = line.partition(':')
    if sep and key.strip() not in fields:  # The first processor's.
      fields[key.strip()] = value.strip()
  flags = set((fields.get('flags') or fields.get('Features') or '').split())
  features = [f for f in FEATURES if f in flags]
  cap = environ.get(ONEDNN_ISA_ENV, '').upper()
  if cap in _ISA_CAPS:
    features = [f for f in features if f in _ISA_CAPS[cap]]
  return Cpu(model=_model(fields), architecture=architecture or platform.machine(),
             cores=cores or len(os.sched_getaffinity(0)), features=tuple(features))


def _model(fields: Mapping[str, str]) -> str:
  """The model name, with x86's family and model numbers: under a hypervisor the name
  can be bare ('AMD EPYC' on both Zen 3 and Zen 5), and the numbers tell them apart."""
  name = fields.get('model name') or platform.processor() or 'unknown CPU'
  if 'cpu family' in fields and 'model' in fields:
    name += f', family {fields["cpu family"]} model {fields["model"]}'
  return name


def _read_cpuinfo() -> str:
  try:
    with open('/proc/cpuinfo') as f:
      return f.read()
  except OSError:  # Not Linux: model and features unknown.
    return ''


def gpu_support() -> GpuSupport:
  """This machine's GpuSupport."""
  return GpuSupport(platform.system(), _nvidia_driver(), _tensorflow_plugin_dirs())


def _nvidia_driver() -> bool:
  """Whether the NVIDIA driver is here: its kernel module, or (WSL2 has no module) its
  library libcuda.so.1, loaded as TensorFlow would load it."""
  if os.path.exists('/proc/driver/nvidia'):
    return True
  try:
    ctypes.CDLL('libcuda.so.1')
  except OSError:
    return False
  return True


def _tensorflow_plugin_dirs() -> tuple:
  """The site-packages/tensorflow-plugins folders TensorFlow's __init__ loads
  pluggable devices from (searched as it searches them)."""
  roots = set(site.getsitepackages()) | {p for p in sys.path if 'site-packages' in p}
  if site.ENABLE_USER_SITE:
    roots.add(site.getusersitepackages())
  return tuple(sorted(d for d in (os.path.join(r, 'tensorflow-plugins') for r in roots)
                      if os.path.isdir(d)))


def gpus() -> list:
  """The GPUs TensorFlow sees, with their compute capability (imports TensorFlow)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  found = []
  for device in tf.config.list_physical_devices('GPU'):
    details = tf.config.experimental.get_device_details(device)
    found.append(Gpu(details.get('device_name', device.name),
                     details.get('compute_capability')))
  return found


# What each mixed policy needs to run natively: the slowest GPU's compute capability,
# or on a CPU one of these features (none: never native on a CPU), and how the
# hardware without them is named. float32 is native everywhere.
_NATIVE_NEEDS = {
    'mixed_bfloat16': ((8, 0), _BF16_FEATURES, 'a CPU without AVX-512 BF16 or AMX'),
    'mixed_float16': ((7, 0), (), 'a CPU'),
}
_FASTEST_FIRST = ('mixed_bfloat16', 'mixed_float16', 'float32')


def _native(precision: str, cpu_profile: Cpu, gpu_profiles: Sequence[Gpu]) -> bool:
  if precision not in _NATIVE_NEEDS:
    return True
  capability, features, _ = _NATIVE_NEEDS[precision]
  if gpu_profiles:
    return min(g.compute_capability or (0, 0) for g in gpu_profiles) >= capability
  return any(f in cpu_profile.features for f in features)


def resolve_precision(cpu_profile: Cpu, gpu_profiles: Sequence[Gpu] = ()) -> str:
  """--mixed_precision=auto: the fastest policy the hardware computes natively.

  GPUs: bfloat16 from compute capability 8.0 (Ampere), float16 on 7.x (Volta,
  Turing: tensor cores), float32 below. CPUs: bfloat16 with AVX-512 BF16 or AMX;
  elsewhere it is emulated: on an AVX2-only AMD EPYC 8.7x slower than float32 with
  oneDNN on, ~3x with it off.
  """
  return next(p for p in _FASTEST_FIRST if _native(p, cpu_profile, gpu_profiles))


def emulated_precision(precision: str, cpu_profile: Cpu,
                       gpu_profiles: Sequence[Gpu] = ()) -> Optional[str]:
  """Why a policy asked for by name runs emulated here (None: native, or float32).

  What `resolve_precision` avoids, said to a user who forces it: on an AVX2-only
  AMD EPYC (Zen 3), mixed_bfloat16 trained 359 images/s against float32's ~3,100.
  """
  if _native(precision, cpu_profile, gpu_profiles):
    return None
  (major, minor), _, cpu_without = _NATIVE_NEEDS[precision]
  hardware = (f'GPUs before compute capability {major}.{minor}' if gpu_profiles
              else cpu_without)
  return (f'--mixed_precision={precision} on {hardware} runs in emulated kernels, several '
          'times slower than float32 (mixed_bfloat16 on an AVX2-only AMD EPYC: 8.7x). '
          '--mixed_precision=auto picks '
          f'{resolve_precision(cpu_profile, gpu_profiles)} here.')


def resolve_onednn(cpu_profile: Cpu, environ: Mapping[str, str] = os.environ) -> dict:
  """--onednn=auto: the environment to set before TensorFlow loads (empty: nothing).

  On for x86 CPUs with AVX2 where TensorFlow leaves it off (1.3x float32 images/s
  on an AVX2-only AMD EPYC, BUILD.md); a TF_ENABLE_ONEDNN_OPTS the user set wins.
  """
  if ONEDNN_ENV in environ or not cpu_profile.x86 or 'avx2' not in cpu_profile.features:
    return {}
  if tf_enables_onednn(cpu_profile):
    return {}
  return {ONEDNN_ENV: '1'}


def resolve_devices(support: GpuSupport, environ: Mapping[str, str] = os.environ) -> dict:
  """The environment that keeps TensorFlow from initialising CUDA where it cannot (empty:
  nothing); set before TensorFlow loads.

  TensorFlow's Linux wheel has CUDA built in (libtensorflow_framework.so.2). Without
  the NVIDIA driver its cuInit stub finds no libcuda.so.1 and returns 303
  (CUDA_ERROR_SHARED_OBJECT_INIT_FAILED), which TensorFlow logs as an error ("failed call
  to cuInit") in every process that lists devices. With the GPU and XLA_GPU device
  factories not registered nothing calls cuInit; TensorFlow logs one INFO line for each.
  Left alone: machines with the driver, pluggable devices (an allow-list would disable
  them too), and a TF_ENABLED_DEVICE_TYPES the user set (empty: TensorFlow's default).
  """
  if (support.system != 'Linux' or support.nvidia_driver or support.device_plugins
      or ENABLED_DEVICES_ENV in environ or environ.get(PLUGGABLE_DEVICE_ENV)):
    return {}
  return {ENABLED_DEVICES_ENV: DRIVERLESS_DEVICE_TYPES}


def tf_enables_onednn(cpu_profile: Cpu) -> bool:
  """Whether TensorFlow turns oneDNN on by itself here (it reads CPUID, not the cap)."""
  return cpu_profile.x86 and any(f in cpu_profile.features
                                 for f in _TF_ONEDNN_DEFAULT_FEATURES)


def onednn_enabled(environ: Mapping[str, str] = os.environ,
                   cpuinfo: Optional[str] = None,
                   cpu_profile: Optional[Cpu] = None) -> bool:
  """Whether TensorFlow runs oneDNN in a process with this environment: as
  TF_ENABLE_ONEDNN_OPTS says if set (TensorFlow reads 1/true, 0/false), else its own
  default, which reads CPUID and not $ONEDNN_MAX_CPU_ISA (`cpu_profile`, uncapped;
  default this CPU's, or `cpuinfo`'s)."""
  value = environ.get(ONEDNN_ENV, '').strip().lower()
  if value in ('1', 'true', '0', 'false'):
    return value in ('1', 'true')
  return tf_enables_onednn(cpu_profile or cpu(cpuinfo, environ={}))


def bfloat16_problem(precision: str, environ: Mapping[str, str] = os.environ,
                     cpuinfo: Optional[str] = None) -> Optional[str]:
  """Why `precision` (a Keras policy name) cannot compute here, or None.

  TensorFlow hands bfloat16 ops to oneDNN on any CPU whose CPUID has AVX-512F; an
  $ONEDNN_MAX_CPU_ISA below AVX512_CORE (the AVX2-only imitation) leaves oneDNN no
  bfloat16 kernels, and the process aborts in the first bfloat16 op ("could not
  create a primitive descriptor"). A real AVX2-only CPU is not affected: TensorFlow
  keeps bfloat16 off oneDNN there.
  """
  if not precision.endswith('bfloat16'):
    return None
  cpuinfo = _read_cpuinfo() if cpuinfo is None else cpuinfo  # Once for all three reads.
  if not onednn_enabled(environ, cpuinfo):
    return None
  real, capped = cpu(cpuinfo, environ={}), cpu(cpuinfo, environ=environ)
  if not real.x86 or 'avx512f' not in real.features or 'avx512f' in capped.features:
    return None
  return (f'--mixed_precision={precision} cannot run with oneDNN capped at '
          f'{ONEDNN_ISA_ENV}={environ.get(ONEDNN_ISA_ENV)}: this CPU has AVX-512, so '
          'TensorFlow gives bfloat16 ops to oneDNN, and the cap leaves oneDNN no bfloat16 '
          'kernels (TensorFlow would abort in the first one). Use --mixed_precision=auto '
          'or float32 (auto picks float32 on an AVX2-only CPU), or --onednn=off '
          '(bfloat16 then runs in TensorFlow\'s own emulated kernels, as it does on a real '
          f'AVX2-only CPU), or unset {ONEDNN_ISA_ENV}.')


def resolve_auto(config, cpu_profile: Optional[Cpu] = None,
                 gpu_profiles: Optional[Sequence[Gpu]] = None):
  """A TrainConfig with --mixed_precision=auto made concrete for the profiles given
  (default: this machine's; listing GPUs loads TensorFlow); any other config as it
  is. What runs is what is recorded."""
  if config.mixed_precision != 'auto':
    return config
  return config.replace(mixed_precision=resolve_precision(
      cpu_profile or cpu(), gpus() if gpu_profiles is None else gpu_profiles))


def describe(cpu_profile: Cpu, gpu_profiles: Sequence[Gpu] = ()) -> str:
  """One line: what a figure was measured on."""
  text = (f'{cpu_profile.model} ({cpu_profile.architecture}, {cpu_profile.cores} cores; '
          f'{" ".join(cpu_profile.features) or "no AVX2"})')
  for gpu in gpu_profiles:
    capability = ('.'.join(map(str, gpu.compute_capability)) if gpu.compute_capability
                  else '?')
    text += f'; GPU {gpu.name} (compute capability {capability})'
  return text


def as_dict(cpu_profile: Cpu, gpu_profiles: Sequence[Gpu] = ()) -> dict:
  """For results.json and the benchmark JSON: JSON's own types (lists, not tuples), so
  the dict a run returns equals the results.json it writes."""
  gpus = [{'name': g.name, 'compute_capability': (list(g.compute_capability)
                                                  if g.compute_capability else None)}
          for g in gpu_profiles]
  return {'cpu': {**dataclasses.asdict(cpu_profile), 'features': list(cpu_profile.features)},
          'gpus': gpus, 'summary': describe(cpu_profile, gpu_profiles)}
