"""mnist/hardware.py: the profile read from /proc/cpuinfo text, and the decisions made
from it, on every kind of machine whatever this one is."""
import pytest

from mnist import hardware

ZEN3 = ('avx2',)  # AMD EPYC Zen 3: AVX2 only.
ZEN4 = ('avx2', 'avx512f', 'avx512_vnni', 'avx512_bf16')  # AMD EPYC Zen 4.
SAPPHIRE_RAPIDS = ('avx2', 'avx512f', 'avx512_vnni', 'avx512_bf16', 'amx_tile', 'amx_bf16')
SKYLAKE = ('avx2', 'avx512f')  # AVX-512 without VNNI or BF16.
CASCADE_LAKE = ('avx2', 'avx512f', 'avx512_vnni')
OLD = ()  # Before AVX2.


def _cpu(features, architecture='x86_64'):
  return hardware.Cpu('test CPU', architecture, 2, features)


@pytest.mark.parametrize('features, precision, onednn_env', [
    (ZEN3, 'float32', {'TF_ENABLE_ONEDNN_OPTS': '1'}),  # TensorFlow leaves it off.
    (SKYLAKE, 'float32', {'TF_ENABLE_ONEDNN_OPTS': '1'}),
    (CASCADE_LAKE, 'float32', {}),  # TensorFlow turns it on itself (VNNI).
    (ZEN4, 'mixed_bfloat16', {}),
    (SAPPHIRE_RAPIDS, 'mixed_bfloat16', {}),
    (OLD, 'float32', {}),  # No AVX2: left to TensorFlow (not measured here).
])
def test_cpu_resolution_table(features, precision, onednn_env):
  cpu = _cpu(features)
  assert hardware.resolve_precision(cpu) == precision
  assert hardware.resolve_onednn(cpu, environ={}) == onednn_env


def test_arm_cpus_are_left_to_tensorflow():
  cpu = _cpu(('avx2',), architecture='aarch64')  # (Features are x86 names: none match.)
  assert hardware.resolve_onednn(cpu, environ={}) == {}
  assert hardware.resolve_precision(_cpu((), 'aarch64')) == 'float32'


@pytest.mark.parametrize('user_value', ['0', '1', ''])
def test_a_users_tf_enable_onednn_opts_wins(user_value):
  assert hardware.resolve_onednn(_cpu(ZEN3), {'TF_ENABLE_ONEDNN_OPTS': user_value}) == {}


@pytest.mark.parametrize('capabilities, precision', [
    ([(9, 0)], 'mixed_bfloat16'),  # H100
    ([(8, 0)], 'mixed_bfloat16'),  # A100
    ([(8, 6), (8, 0)], 'mixed_bfloat16'),
    ([(7, 5)], 'mixed_float16'),  # T4
    ([(7, 0)], 'mixed_float16'),  # V100
    ([(8, 0), (7, 0)], 'mixed_float16'),  # Mixed GPUs: what the slowest does natively.
    ([(6, 1)], 'float32'),  # P40
    ([None], 'float32'),  # Capability unknown.
])
def test_gpu_resolution_table_whatever_the_cpu(capabilities, precision):
  gpus = [hardware.Gpu(f'gpu{i}', c) for i, c in enumerate(capabilities)]
  for features in (ZEN3, ZEN4):
    assert hardware.resolve_precision(_cpu(features), gpus) == precision


@pytest.mark.parametrize('precision, features, capabilities, emulated_on, auto', [
    ('float32', ZEN3, [], None, None),
    ('mixed_bfloat16', ZEN3, [], 'a CPU without AVX-512 BF16 or AMX', 'float32'),
    ('mixed_bfloat16', SKYLAKE, [], 'a CPU without AVX-512 BF16 or AMX', 'float32'),
    ('mixed_bfloat16', ZEN4, [], None, None),
    ('mixed_bfloat16', SAPPHIRE_RAPIDS, [], None, None),
    ('mixed_float16', ZEN4, [], 'a CPU', 'mixed_bfloat16'),
    ('mixed_bfloat16', ZEN3, [(8, 0)], None, None),  # The GPU computes it.
    ('mixed_bfloat16', ZEN4, [(7, 5)], 'GPUs before compute capability 8.0',
     'mixed_float16'),
    ('mixed_float16', ZEN3, [(7, 5)], None, None),
    ('mixed_float16', ZEN3, [(8, 0), (6, 1)], 'GPUs before compute capability 7.0',
     'float32'),
    ('mixed_float16', ZEN3, [None], 'GPUs before compute capability 7.0', 'float32'),
])
def test_a_precision_forced_where_it_is_emulated_is_named(precision, features, capabilities,
                                                          emulated_on, auto):
  gpus = [hardware.Gpu(f'gpu{i}', c) for i, c in enumerate(capabilities)]
  reason = hardware.emulated_precision(precision, _cpu(features), gpus)
  if emulated_on is None:
    assert reason is None
  else:
    assert reason.startswith(f'--mixed_precision={precision} on {emulated_on} runs in '
                             'emulated kernels')
    assert reason.endswith(f'--mixed_precision=auto picks {auto} here.')


@pytest.mark.parametrize('features', [ZEN3, ZEN4, SAPPHIRE_RAPIDS, SKYLAKE, CASCADE_LAKE, OLD])
@pytest.mark.parametrize('capabilities', [[], [(9, 0)], [(7, 5)], [(8, 0), (7, 0)], [(6, 1)],
                                          [None]])
def test_auto_never_picks_an_emulated_precision(features, capabilities):
  cpu, gpus = _cpu(features), [hardware.Gpu('gpu', c) for c in capabilities]
  assert hardware.emulated_precision(hardware.resolve_precision(cpu, gpus), cpu, gpus) is None


CPUINFO = '''processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 17
model name\t: AMD EPYC 9R14 96-Core Processor
flags\t\t: fpu sse sse2 avx avx2 fma avx512f avx512dq avx512_bf16 avx512_vnni
processor\t: 1
model name\t: AMD EPYC 9R14 96-Core Processor
flags\t\t: fpu sse sse2 avx avx2 fma avx512f avx512dq avx512_bf16 avx512_vnni
'''


def test_cpu_profile_from_cpuinfo_text():
  cpu = hardware.cpu(CPUINFO, environ={}, architecture='x86_64', cores=2)
  assert cpu.model == 'AMD EPYC 9R14 96-Core Processor, family 25 model 17'
  assert cpu.features == ('avx2', 'avx512f', 'avx512_vnni', 'avx512_bf16')
  assert hardware.describe(cpu) == ('AMD EPYC 9R14 96-Core Processor, family 25 model 17 '
                                    '(x86_64, 2 cores; avx2 avx512f avx512_vnni avx512_bf16)')


def test_onednn_isa_cap_imitates_an_avx2_only_cpu():
  capped = hardware.cpu(CPUINFO, environ={'ONEDNN_MAX_CPU_ISA': 'avx2'},
                        architecture='x86_64', cores=2)
  assert capped.features == ('avx2',)
  assert hardware.resolve_precision(capped) == 'float32'


def test_this_machines_profile_and_its_dict():
  cpu = hardware.cpu()
  assert cpu.cores >= 1 and cpu.model
  record = hardware.as_dict(cpu, [hardware.Gpu('A100', (8, 0))])
  assert record['gpus'] == [{'name': 'A100', 'compute_capability': [8, 0]}]
  assert record['cpu']['features'] == list(cpu.features)  # JSON's types.
  assert record['summary'].endswith('GPU A100 (compute capability 8.0)')


@pytest.mark.parametrize('environ, enabled', [
    ({'TF_ENABLE_ONEDNN_OPTS': '1'}, True), ({'TF_ENABLE_ONEDNN_OPTS': 'True'}, True),
    ({'TF_ENABLE_ONEDNN_OPTS': '0'}, False), ({'TF_ENABLE_ONEDNN_OPTS': 'false'}, False),
    ({}, True),  # TensorFlow's own default: this CPU has AVX-512 VNNI and BF16.
    ({'ONEDNN_MAX_CPU_ISA': 'AVX2'}, True),  # TensorFlow reads CPUID, not the cap.
])
def test_onednn_enabled_as_tensorflow_decides(environ, enabled):
  assert hardware.onednn_enabled(environ, CPUINFO) == enabled


ZEN3_CPUINFO = CPUINFO.replace(' avx512f avx512dq avx512_bf16 avx512_vnni', '')


@pytest.mark.parametrize('precision, environ, cpuinfo, refused', [
    # The AVX2-only imitation on an AVX-512 CPU: oneDNN gets bfloat16 ops it cannot run.
    ('mixed_bfloat16', {'ONEDNN_MAX_CPU_ISA': 'AVX2'}, CPUINFO, True),
    ('bfloat16', {'ONEDNN_MAX_CPU_ISA': 'avx2', 'TF_ENABLE_ONEDNN_OPTS': '1'}, CPUINFO, True),
    ('mixed_bfloat16', {'ONEDNN_MAX_CPU_ISA': 'AVX2', 'TF_ENABLE_ONEDNN_OPTS': '0'}, CPUINFO,
     False),  # oneDNN off: TensorFlow's own (emulated) kernels.
    ('float32', {'ONEDNN_MAX_CPU_ISA': 'AVX2'}, CPUINFO, False),
    ('mixed_bfloat16', {'ONEDNN_MAX_CPU_ISA': 'AVX512_CORE'}, CPUINFO, False),  # Emulated.
    ('mixed_bfloat16', {}, CPUINFO, False),  # Native.
    ('mixed_bfloat16', {'TF_ENABLE_ONEDNN_OPTS': '1'}, ZEN3_CPUINFO, False),  # Real AVX2 CPU.
])
def test_bfloat16_problem_only_where_capped_onednn_would_get_bfloat16(
    precision, environ, cpuinfo, refused):
  problem = hardware.bfloat16_problem(precision, environ, cpuinfo)
  assert bool(problem) == refused
  if refused:
    assert 'ONEDNN_MAX_CPU_ISA=' in problem and '--onednn=off' in problem
