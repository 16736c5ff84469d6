"""mnist/runtime.py and the runtime flags every TensorFlow script shares."""
import os
import subprocess
import sys

import pytest

from mnist import errors
from mnist import hardware
from mnist import runtime

import test_hardware

from conftest import REPO


AVX2_ONLY = hardware.Cpu('AMD EPYC (Zen 3)', 'x86_64', 2, ('avx2',))
AVX512_BF16 = hardware.Cpu('AMD EPYC (Zen 4)', 'x86_64', 2,
                           ('avx2', 'avx512f', 'avx512_vnni', 'avx512_bf16'))
NVIDIA_LINUX = hardware.GpuSupport('Linux', nvidia_driver=True, device_plugins=())
DRIVERLESS_LINUX = hardware.GpuSupport('Linux', nvidia_driver=False, device_plugins=())
CPU_ONLY_DEVICES = {'TF_ENABLED_DEVICE_TYPES': 'CPU,XLA_CPU'}
CUINIT_ERROR = 'failed call to cuInit'


@pytest.fixture
def nvidia_machine(monkeypatch):
  """This machine as one with the NVIDIA driver: device types are left alone."""
  monkeypatch.setattr(hardware, 'gpu_support', lambda: NVIDIA_LINUX)


def test_auto_turns_onednn_on_only_where_tensorflow_leaves_it_off(nvidia_machine):
  auto = runtime.RuntimeConfig()
  assert runtime.env_changes(auto, environ={}, cpu=AVX2_ONLY) == {
      'TF_ENABLE_ONEDNN_OPTS': '1'}
  assert runtime.env_changes(auto, environ={}, cpu=AVX512_BF16) == {}
  user = {'TF_ENABLE_ONEDNN_OPTS': '0'}  # Set by the user: it wins.
  assert runtime.env_changes(auto, environ=user, cpu=AVX2_ONLY) == {}
  runtime.apply_env(auto, user)
  assert user == {'TF_ENABLE_ONEDNN_OPTS': '0'}
  stock = runtime.RuntimeConfig(onednn='tensorflow')  # The Keras fit baseline's.
  assert runtime.env_changes(stock, environ={}, cpu=AVX2_ONLY) == {}


@pytest.mark.parametrize('support, environ, changes', [
    (DRIVERLESS_LINUX, {}, CPU_ONLY_DEVICES),
    (NVIDIA_LINUX, {}, {}),  # Its GPUs stay.
    (hardware.GpuSupport('Darwin', False, ()), {}, {}),  # No CUDA in TensorFlow there.
    (hardware.GpuSupport('Linux', False, ('/venv/site-packages/tensorflow-plugins',)),
     {}, {}),  # The allow-list would disable a pluggable device too.
    (DRIVERLESS_LINUX, {'TF_PLUGGABLE_DEVICE_LIBRARY_PATH': '/opt/plugin.so'}, {}),
    (DRIVERLESS_LINUX, {'TF_ENABLED_DEVICE_TYPES': 'CPU'}, {}),  # The user's wins.
    (DRIVERLESS_LINUX, {'TF_ENABLED_DEVICE_TYPES': ''}, {}),  # Empty: TF's default.
])
def test_gpu_device_types_are_left_out_only_where_there_is_no_nvidia_driver(
    support, environ, changes):
  assert hardware.resolve_devices(support, environ) == changes
  for onednn in runtime.ONEDNN_MODES:  # Whatever --onednn says.
    config = runtime.RuntimeConfig(onednn=onednn)
    set_by_config = runtime.env_changes(config, environ, AVX512_BF16, support)
    assert set_by_config.get('TF_ENABLED_DEVICE_TYPES') == changes.get(
        'TF_ENABLED_DEVICE_TYPES')


def test_apply_env_leaves_gpu_device_types_out_without_the_driver(monkeypatch):
  monkeypatch.setattr(hardware, 'gpu_support', lambda: DRIVERLESS_LINUX)
  environ = {}
  runtime.apply_env(runtime.RuntimeConfig(onednn='off'), environ)
  assert environ == {**CPU_ONLY_DEVICES, 'TF_ENABLE_ONEDNN_OPTS': '0'}


def test_this_machines_gpu_support():
  """(Read without TensorFlow: the bfloat16 refusal tests below reach it with
  `import tensorflow` poisoned.)"""
  support = hardware.gpu_support()
  assert support.system and isinstance(support.nvidia_driver, bool)
  assert all(os.path.isdir(d) and d.endswith('tensorflow-plugins')
             for d in support.device_plugins)


def _stderr_of(code: str, environ: dict) -> subprocess.Popen:
  return subprocess.Popen([sys.executable, '-c', code], cwd=REPO, env=environ, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.skipif(not hardware.resolve_devices(hardware.gpu_support(), {}),
                    reason='has the NVIDIA driver (or is not Linux): nothing is left out')
@pytest.mark.slow
def test_no_cuinit_error_without_the_driver_and_other_tensorflow_warnings_still_show():
  """Stock TensorFlow, then the same through runtime.start, in real processes: the
  cuInit error goes, a C++ warning (an unfinished tf.data cache) and the CPU stay."""
  environ = {k: v for k, v in os.environ.items()
             if k not in ('TF_ENABLED_DEVICE_TYPES', 'TF_CPP_MIN_LOG_LEVEL')}
  work = ('import tensorflow as tf\n'
          'print(tf.config.list_physical_devices())\n'
          'unfinished = iter(tf.data.Dataset.range(3).cache()); next(unfinished)\n'
          'del unfinished\n')
  stock = _stderr_of(work, environ)
  ours = _stderr_of('from mnist import runtime\n'
                    'runtime.start(runtime.RuntimeConfig())\n' + work, environ)
  results = [(p, *p.communicate(timeout=300)) for p in (stock, ours)]
  for process, stdout, stderr in results:
    assert process.returncode == 0, stderr[-3000:]
    assert "device_type='CPU'" in stdout
    assert 'did not fully read the dataset being cached' in stderr, stderr[-3000:]
  (_, _, stock_err), (_, _, ours_err) = results
  if CUINIT_ERROR not in stock_err:
    pytest.skip('this TensorFlow build does not log the cuInit error here')
  assert CUINIT_ERROR not in ours_err, ours_err[-3000:]
  assert "Device factory 'GPU' disabled by TF_ENABLED_DEVICE_TYPES" in ours_err


def test_explicit_flags_set_the_environment(nvidia_machine):
  environ = {}
  runtime.apply_env(runtime.RuntimeConfig(onednn='off', inter_op_threads=2,
                                          intra_op_threads=3), environ)
  assert environ == {'TF_ENABLE_ONEDNN_OPTS': '0', 'TF_NUM_INTEROP_THREADS': '2',
                     'TF_NUM_INTRAOP_THREADS': '3'}
  assert runtime.env_changes(runtime.RuntimeConfig(onednn='on'), environ={}) == {
      'TF_ENABLE_ONEDNN_OPTS': '1'}


def test_apply_env_refuses_a_precision_the_capped_onednn_cannot_compute(monkeypatch):
  """The AVX2-only imitation on an AVX-512 BF16 CPU: bfloat16 with oneDNN on would
  abort TensorFlow; it is refused before TensorFlow loads, and runs with it off."""
  monkeypatch.setattr(hardware, '_read_cpuinfo', lambda: test_hardware.CPUINFO)
  capped = {'ONEDNN_MAX_CPU_ISA': 'AVX2'}
  with pytest.raises(errors.ConfigError, match='--onednn=off'):
    runtime.apply_env(runtime.RuntimeConfig(), dict(capped), precision='mixed_bfloat16')
  runtime.apply_env(runtime.RuntimeConfig(), dict(capped), precision='float32')
  environ = dict(capped)
  runtime.apply_env(runtime.RuntimeConfig(onednn='off'), environ, precision='mixed_bfloat16')
  assert environ['TF_ENABLE_ONEDNN_OPTS'] == '0'


def test_to_flags_passes_on_only_what_differs_from_the_defaults():
  assert runtime.to_flags(runtime.RuntimeConfig()) == []
  assert runtime.to_flags(runtime.RuntimeConfig(onednn='on', intra_op_threads=1)) == [
      '--onednn=on', '--intra_op_threads=1']


@pytest.mark.slow
@pytest.mark.parametrize('script, args', [
    ('train.py', []), ('evaluate.py', []), ('export.py', ['--export_dir=/tmp/x']),
    ('predict.py', ['digit.png']), ('benchmark.py', []), ('speedrun.py', [])])
def test_every_tensorflow_script_refuses_a_bad_onednn_before_tensorflow_loads(script, args):
  poison = os.path.join(REPO, 'tests', 'poison_tensorflow')  # Importing TF fails.
  result = subprocess.run(
      [sys.executable, os.path.join(REPO, 'scripts', script), '--onednn=maybe', *args],
      capture_output=True, text=True, timeout=120,
      env={**os.environ, 'PYTHONPATH': poison + os.pathsep + REPO})
  assert result.returncode == 2, result.stderr[-2000:]
  assert result.stderr.strip().splitlines()[-1] == (
      "error: --onednn must be one of auto, on, off, tensorflow; got 'maybe'.")


@pytest.mark.slow
@pytest.mark.parametrize('script', ['train.py', 'benchmark.py', 'speedrun.py'])
def test_scripts_refuse_bfloat16_under_the_avx2_imitation_before_tensorflow_loads(script):
  """ONEDNN_MAX_CPU_ISA=AVX2 on an AVX-512 CPU (tests/avx512_cpu makes any machine one):
  exit 2 with the reason, where TensorFlow would abort."""
  paths = [os.path.join(REPO, 'tests', d) for d in ('poison_tensorflow', 'avx512_cpu')]
  environ = {k: v for k, v in os.environ.items() if k != 'TF_ENABLE_ONEDNN_OPTS'}
  result = subprocess.run(
      [sys.executable, os.path.join(REPO, 'scripts', script),
       '--mixed_precision=mixed_bfloat16'],
      capture_output=True, text=True, timeout=120,
      env={**environ, 'ONEDNN_MAX_CPU_ISA': 'AVX2',
           'PYTHONPATH': os.pathsep.join(paths + [REPO])})
  assert result.returncode == 2, result.stderr[-2000:]
  assert result.stderr.strip().splitlines()[-1].startswith(
      'error: --mixed_precision=mixed_bfloat16 cannot run with oneDNN capped at '
      'ONEDNN_MAX_CPU_ISA=AVX2')
