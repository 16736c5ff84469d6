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


def test_auto_turns_onednn_on_only_where_tensorflow_leaves_it_off():
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


def test_explicit_flags_set_the_environment():
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
