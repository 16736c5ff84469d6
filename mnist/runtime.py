"""Process-wide runtime settings: oneDNN, thread pools, device types. TF-free.

TensorFlow reads TF_ENABLE_ONEDNN_OPTS, TF_NUM_INTEROP_THREADS,
TF_NUM_INTRAOP_THREADS and TF_ENABLED_DEVICE_TYPES once, when it loads and starts its
runtime, so scripts call `start` (`apply_env` before importing TensorFlow,
`apply_threading` right after). --onednn=auto turns oneDNN on where TensorFlow would
leave it off on an x86 CPU with AVX2 (mnist/hardware.py); a TF_ENABLE_ONEDNN_OPTS in
the environment wins. Thread pools default to TensorFlow's choice. On Linux without the
NVIDIA driver TensorFlow's GPU device factories are left out, so it does not log its
failed cuInit (`hardware.resolve_devices`); a TF_ENABLED_DEVICE_TYPES set wins. Once
TensorFlow has loaded, `apply_devices` refuses a GPU node where it lists no GPU and
turns GPU memory growth on (mnist/gpu.py decides both).
"""
import dataclasses
import os
import subprocess
import sys

from absl import logging

from mnist import errors
from mnist import gpu
from mnist import hardware

# tensorflow: leave it to TensorFlow (stock behaviour; the Keras fit baseline's).
ONEDNN_MODES = ('auto', 'on', 'off', 'tensorflow')
ONEDNN_ENV = hardware.ONEDNN_ENV
INTER_OP_ENV = 'TF_NUM_INTEROP_THREADS'
INTRA_OP_ENV = 'TF_NUM_INTRAOP_THREADS'
# Reported, never set: official TF builds run oneDNN on TF's own thread pool, not OpenMP.
REPORTED_ENV = (ONEDNN_ENV, INTER_OP_ENV, INTRA_OP_ENV, 'OMP_NUM_THREADS')


@dataclasses.dataclass(frozen=True)
class RuntimeConfig:
  """onednn: auto (decided from the CPU; see `env_changes`), on or off. Threads: 0
  means TensorFlow's default (all the cores this process may use). The GPU settings
  (`apply_devices`): memory growth on each GPU, and whether running on the CPU where
  the NVIDIA driver is loaded but TensorFlow lists no GPU is meant."""
  onednn: str = 'auto'
  inter_op_threads: int = 0
  intra_op_threads: int = 0
  gpu_memory_growth: bool = True
  allow_cpu_on_gpu_node: bool = False

  def problems(self) -> list:
    found = []
    if self.onednn not in ONEDNN_MODES:
      found.append(f'--onednn must be one of {", ".join(ONEDNN_MODES)}; '
                   f'got {self.onednn!r}.')
    for name in ('inter_op_threads', 'intra_op_threads'):
      if getattr(self, name) < 0:
        found.append(f'--{name} must be >= 0 (0: TensorFlow decides), '
                     f'got {getattr(self, name)}.')
    for name in ('gpu_memory_growth', 'allow_cpu_on_gpu_node'):
      if not isinstance(getattr(self, name), bool):
        found.append(f'--{name} must be true or false, got {getattr(self, name)!r}.')
    return found

  def validate(self) -> 'RuntimeConfig':
    if self.problems():
      raise errors.ConfigError(' '.join(self.problems()))
    return self


def env_changes(config: RuntimeConfig, environ=None, cpu=None, gpu_support=None) -> dict:
  """The environment variables `config` sets. --onednn=auto asks the CPU profile
  (`cpu`, default this one's): on for x86 with AVX2 where TensorFlow leaves it off,
  nothing where TensorFlow turns it on itself or the user set TF_ENABLE_ONEDNN_OPTS.
  Whatever `config`, the device types follow `gpu_support` (default this machine's;
  `hardware.resolve_devices`)."""
  environ = os.environ if environ is None else environ
  changes = hardware.resolve_devices(gpu_support or hardware.gpu_support(), environ)
  if config.onednn == 'auto':
    changes.update(hardware.resolve_onednn(cpu or hardware.cpu(environ=environ), environ))
  elif config.onednn != 'tensorflow':
    changes[ONEDNN_ENV] = '1' if config.onednn == 'on' else '0'
  if config.inter_op_threads:
    changes[INTER_OP_ENV] = str(config.inter_op_threads)
  if config.intra_op_threads:
    changes[INTRA_OP_ENV] = str(config.intra_op_threads)
  return changes


def check_precision(config: RuntimeConfig, precision: str, environ=None) -> dict:
  """`config`'s env_changes, or ConfigError if `precision` cannot compute under them
  (`hardware.bfloat16_problem`: TensorFlow would abort, not say why)."""
  environ = os.environ if environ is None else environ
  changes = env_changes(config, environ)
  if problem := hardware.bfloat16_problem(precision, {**environ, **changes}):
    raise errors.ConfigError(problem)
  return changes


def apply_env(config: RuntimeConfig, environ=None, precision: str = 'float32') -> dict:
  """Sets the variables of `config` in `environ` (os.environ); call before TF loads.
  Refuses (ConfigError) a `precision` the resulting oneDNN cannot compute
  (`hardware.bfloat16_problem`) rather than let TensorFlow abort on it."""
  environ = os.environ if environ is None else environ
  changes = check_precision(config, precision, environ)
  stale = {k: v for k, v in changes.items() if environ.get(k) != v}
  if stale and environ is os.environ and 'tensorflow' in sys.modules:
    raise RuntimeError(f'TensorFlow is already loaded; setting {", ".join(stale)} now '
                       'has no effect. Call runtime.apply_env before importing it.')
  environ.update(changes)
  return changes


def apply_threading(config: RuntimeConfig):
  """Sets the thread pools through tf.config; call right after importing TensorFlow."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  if config.inter_op_threads:
    tf.config.threading.set_inter_op_parallelism_threads(config.inter_op_threads)
  if config.intra_op_threads:
    tf.config.threading.set_intra_op_parallelism_threads(config.intra_op_threads)


def apply_devices(config: RuntimeConfig, nvidia_driver=None, environ=None) -> list:
  """Right after importing TensorFlow, before anything initialises its runtime: raises
  ConfigError where the NVIDIA driver is loaded (`nvidia_driver`, default this
  machine's) but TensorFlow lists no GPU (`gpu.cpu_on_gpu_node_problem`), then sets
  memory growth on the GPUs `gpu.memory_growth_devices` names. Returns those GPUs
  (none on a machine without GPUs: then it changes nothing)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  environ = os.environ if environ is None else environ
  gpus = tf.config.list_physical_devices('GPU')
  if nvidia_driver is None:
    nvidia_driver = hardware.gpu_support().nvidia_driver
  if problem := gpu.cpu_on_gpu_node_problem(nvidia_driver, [d.name for d in gpus],
                                            config.allow_cpu_on_gpu_node, environ):
    raise errors.ConfigError(problem)
  growing = gpu.memory_growth_devices(gpus, config.gpu_memory_growth, environ)
  try:
    for device in growing:
      tf.config.experimental.set_memory_growth(device, True)
  except RuntimeError:  # Initialised already (in-process callers, tests): keep going.
    logging.warning('TensorFlow\'s runtime was initialised before GPU memory growth '
                    'could be set; each GPU keeps TensorFlow\'s default allocation.')
    return []
  return growing


def check_devices_in_child(config: RuntimeConfig, environ=None, nvidia_driver=None,
                           python: str = sys.executable):
  """`apply_devices`' refusal for a TensorFlow-free process that starts training
  processes (scripts/speedrun.py): TensorFlow's GPU list is read in a child, so this
  process never loads it, and only where the answer can matter (the NVIDIA driver
  loaded, the flag not given). A child that cannot tell leaves the check to the
  training processes, which make it themselves."""
  environ = os.environ if environ is None else environ
  if nvidia_driver is None:
    nvidia_driver = hardware.gpu_support().nvidia_driver
  if (not nvidia_driver or config.allow_cpu_on_gpu_node or gpu.hidden_by_user(environ)):
    return
  listing = ('import tensorflow as tf\n'
             'for d in tf.config.list_physical_devices("GPU"): print(d.name)')
  try:
    child = subprocess.run([python, '-c', listing], capture_output=True, text=True,
                           timeout=300, env={**environ, **env_changes(config, environ)})
  except (OSError, subprocess.TimeoutExpired):
    return
  if child.returncode != 0:
    return
  if problem := gpu.cpu_on_gpu_node_problem(nvidia_driver, child.stdout.split(),
                                            config.allow_cpu_on_gpu_node, environ):
    raise errors.ConfigError(problem)


def start(config: RuntimeConfig, precision: str = 'float32'):
  """Sets the environment, loads TensorFlow, sizes its thread pools and sets up its
  GPUs: the first thing every script that runs TensorFlow does, once its flags are
  validated."""
  apply_env(config, precision=precision)
  apply_threading(config)
  apply_devices(config)


def to_flags(config: RuntimeConfig) -> list:
  """The flags that reproduce `config` in a child process (those not at their default)."""
  default = RuntimeConfig()
  changed = {field.name: getattr(config, field.name)
             for field in dataclasses.fields(RuntimeConfig)
             if getattr(config, field.name) != getattr(default, field.name)}
  return [f'--{name}={str(value).lower() if isinstance(value, bool) else value}'
          for name, value in changed.items()]


def reported_env(environ=None) -> dict:
  """The runtime variables as the process sees them (None: unset)."""
  environ = os.environ if environ is None else environ
  return {name: environ.get(name) for name in REPORTED_ENV}
