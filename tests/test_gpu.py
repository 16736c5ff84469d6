"""mnist/gpu.py's decisions, case by case whatever this machine is, and where the scripts
and launchers apply them (runtime.apply_devices, launch, the refusal in the scripts)."""
import os
import subprocess
import sys
import types

import pytest

from mnist import cli
from mnist import errors
from mnist import gpu
from mnist import runtime

from conftest import REPO

TWO_GPUS = ('/physical_device:GPU:0', '/physical_device:GPU:1')


# --- Refusing the CPU on a GPU node ------------------------------------------------------

@pytest.mark.parametrize('driver, gpus, allow, refused', [
    (True, (), False, True),  # The one refusal: driver loaded, TensorFlow lists no GPU.
    (True, (), True, False),  # --allow_cpu_on_gpu_node: the CPU on purpose.
    (True, TWO_GPUS, False, False),
    (True, TWO_GPUS, True, False),
    (False, (), False, False),  # A CPU machine.
    (False, (), True, False),
    (False, TWO_GPUS, False, False),  # A pluggable device, say: GPUs, so fine.
    (False, TWO_GPUS, True, False),
])
def test_cpu_on_gpu_node_is_refused_only_without_gpus_or_the_flag(driver, gpus, allow,
                                                                   refused):
  problem = gpu.cpu_on_gpu_node_problem(driver, gpus, allow, environ={})
  assert (problem is not None) == refused
  if refused:
    for named in ('NVIDIA driver', 'lists no GPU', 'tensorflow[and-cuda]', 'cuDNN',
                  'make venv-gpu', "pip install -e '.[gpu]'", '--allow_cpu_on_gpu_node'):
      assert named in problem
    assert '\n' not in problem  # One paragraph.


@pytest.mark.parametrize('environ, hidden', [
    ({}, False),
    ({'CUDA_VISIBLE_DEVICES': '0'}, False),
    ({'CUDA_VISIBLE_DEVICES': 'GPU-8a1c,GPU-77f0'}, False),
    ({'CUDA_VISIBLE_DEVICES': ''}, True),  # The usual ways to ask for the CPU.
    ({'CUDA_VISIBLE_DEVICES': '-1'}, True),
    ({'TF_ENABLED_DEVICE_TYPES': 'CPU'}, True),
    ({'TF_ENABLED_DEVICE_TYPES': 'CPU,GPU'}, False),
    ({'TF_ENABLED_DEVICE_TYPES': 'cpu, gpu'}, False),
    ({'TF_ENABLED_DEVICE_TYPES': ''}, False),  # Empty: TensorFlow's default, all types.
])
def test_gpus_hidden_on_purpose_are_not_refused(environ, hidden):
  assert gpu.hidden_by_user(environ) == hidden
  assert (gpu.cpu_on_gpu_node_problem(True, (), False, environ) is None) == hidden


# --- Memory growth ----------------------------------------------------------------------

@pytest.mark.parametrize('gpus, enabled, environ, growing', [
    (TWO_GPUS, True, {}, list(TWO_GPUS)),
    (TWO_GPUS, False, {}, []),  # --nogpu_memory_growth: TensorFlow's default allocation.
    (TWO_GPUS, True, {'TF_FORCE_GPU_ALLOW_GROWTH': 'false'}, []),  # Theirs decides.
    (TWO_GPUS, True, {'TF_FORCE_GPU_ALLOW_GROWTH': 'true'}, []),
    ((), True, {}, []),
    ((), False, {}, []),
])
def test_memory_growth_devices(gpus, enabled, environ, growing):
  assert gpu.memory_growth_devices(gpus, enabled, environ) == growing


def test_apply_devices_without_gpus_changes_nothing(monkeypatch):
  """This CPU machine: no GPU listed, so no memory-growth call and no refusal."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  assert not tf.config.list_physical_devices('GPU')

  def fail(device, enable):
    raise AssertionError(f'set_memory_growth({device}, {enable}) called without GPUs')
  monkeypatch.setattr(tf.config.experimental, 'set_memory_growth', fail)
  for config in (runtime.RuntimeConfig(), runtime.RuntimeConfig(gpu_memory_growth=False)):
    assert runtime.apply_devices(config, nvidia_driver=False, environ={}) == []


def test_apply_devices_refuses_a_driver_without_gpus_unless_allowed():
  with pytest.raises(errors.ConfigError, match='lists no GPU') as raised:
    runtime.apply_devices(runtime.RuntimeConfig(), nvidia_driver=True, environ={})
  assert raised.value.exit_code == 2
  allowed = runtime.RuntimeConfig(allow_cpu_on_gpu_node=True)
  assert runtime.apply_devices(allowed, nvidia_driver=True, environ={}) == []


def test_apply_devices_sets_memory_growth_on_each_gpu_listed(monkeypatch):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  devices = [tf.config.PhysicalDevice(name, 'GPU') for name in TWO_GPUS]
  calls = []
  monkeypatch.setattr(tf.config, 'list_physical_devices',
                      lambda kind=None: devices if kind == 'GPU' else [])
  monkeypatch.setattr(tf.config.experimental, 'set_memory_growth',
                      lambda device, enable: calls.append((device.name, enable)))
  assert runtime.apply_devices(runtime.RuntimeConfig(), True, environ={}) == devices
  assert calls == [(name, True) for name in TWO_GPUS]
  calls.clear()
  assert runtime.apply_devices(runtime.RuntimeConfig(gpu_memory_growth=False), True,
                               environ={}) == []
  assert not calls


def test_the_tensorflow_free_check_asks_tensorflow_only_where_it_can_matter(monkeypatch):
  def fail(*args, **kwargs):
    raise AssertionError(f'TensorFlow asked in a child: {args}')
  monkeypatch.setattr(subprocess, 'run', fail)
  config = runtime.RuntimeConfig()
  runtime.check_devices_in_child(config, environ={}, nvidia_driver=False)
  runtime.check_devices_in_child(runtime.RuntimeConfig(allow_cpu_on_gpu_node=True),
                                 environ={}, nvidia_driver=True)
  runtime.check_devices_in_child(config, environ={'CUDA_VISIBLE_DEVICES': '-1'},
                                 nvidia_driver=True)


@pytest.mark.slow
@pytest.mark.parametrize('listed, refused', [('', True), ('/physical_device:GPU:0\n', False)])
def test_the_tensorflow_free_check_refuses_what_the_child_lists(tmp_path, listed, refused):
  fake_python = tmp_path / 'python'  # Prints a GPU list, as the child would.
  fake_python.write_text(f'#!/bin/sh\nprintf "{listed}"\n')
  fake_python.chmod(0o755)
  check = lambda: runtime.check_devices_in_child(  # noqa: E731
      runtime.RuntimeConfig(), environ={}, nvidia_driver=True, python=str(fake_python))
  if refused:
    with pytest.raises(errors.ConfigError, match='lists no GPU'):
      check()
  else:
    check()


@pytest.mark.slow
@pytest.mark.parametrize('script', ['train.py', 'benchmark.py', 'speedrun.py'])
def test_scripts_refuse_a_gpu_node_where_tensorflow_lists_no_gpu(script, tmp_path):
  """tests/nvidia_driver makes this machine one with the NVIDIA driver; TensorFlow here
  lists no GPU: exit 2 with the cause and the fix, before any training."""
  driver = os.path.join(REPO, 'tests', 'nvidia_driver')
  environ = {k: v for k, v in os.environ.items()
             if k not in ('CUDA_VISIBLE_DEVICES', 'TF_ENABLED_DEVICE_TYPES')}
  args = [f'--model_dir={tmp_path / "run"}']
  if script == 'speedrun.py':
    args.append(f'--workdir={tmp_path}')
  result = subprocess.run(
      [sys.executable, os.path.join(REPO, 'scripts', script), *args],
      capture_output=True, text=True, timeout=300,
      env={**environ, 'PYTHONPATH': os.pathsep.join([driver, REPO])})
  assert result.returncode == 2, result.stderr[-3000:]
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith('error: This machine has an NVIDIA driver but TensorFlow lists '
                         'no GPU'), last
  assert '--allow_cpu_on_gpu_node' in last
  assert not os.path.exists(tmp_path / 'run')


def test_gpu_flags_become_the_runtime_config_and_pass_on_to_children():
  _, default = cli.parse_train_flags([])
  assert (default.gpu_memory_growth, default.allow_cpu_on_gpu_node) == (True, False)
  _, config = cli.parse_train_flags(['--nogpu_memory_growth', '--allow_cpu_on_gpu_node'])
  assert (config.gpu_memory_growth, config.allow_cpu_on_gpu_node) == (False, True)
  flags = runtime.to_flags(config)
  assert flags == ['--gpu_memory_growth=false', '--allow_cpu_on_gpu_node=true']
  assert cli.parse_train_flags(flags)[1] == config


def test_gpu_fields_must_be_booleans():
  with pytest.raises(errors.ConfigError, match='--gpu_memory_growth must be true or false'):
    runtime.RuntimeConfig(gpu_memory_growth='yes').validate()
  with pytest.raises(errors.ConfigError, match='--allow_cpu_on_gpu_node must be true'):
    runtime.RuntimeConfig(allow_cpu_on_gpu_node=1).validate()


# --- Collective communication -----------------------------------------------------------

@pytest.mark.parametrize('requested, kinds, chosen', [
    ('auto', ['GPU'], 'nccl'),
    ('auto', ['GPU', 'GPU', 'GPU', 'GPU'], 'nccl'),
    ('auto', ['CPU'], 'ring'),
    ('auto', ['GPU', 'CPU'], 'ring'),  # Any host device: NCCL cannot reduce it.
    ('auto', [], 'auto'),  # Nothing known: TensorFlow's own choice.
    ('ring', ['GPU', 'GPU'], 'ring'),  # Explicit choices are kept.
    ('ring', ['CPU'], 'ring'),
    ('nccl', ['GPU'], 'nccl'),
    ('nccl', [], 'nccl'),
])
def test_collective_communication(requested, kinds, chosen):
  assert gpu.collective_communication(requested, kinds) == chosen


# --- GPU slots for parallel processes ---------------------------------------------------

@pytest.mark.parametrize('value, devices', [
    ('0,1,2', ['0', '1', '2']),
    (' 2, 3 ', ['2', '3']),
    ('GPU-8a1c,MIG-77f0', ['GPU-8a1c', 'MIG-77f0']),
    ('', []),
    ('-1', []),
    ('0,-1,2', ['0']),  # CUDA stops at the first invalid entry.
    ('1,,2', ['1']),
])
def test_visible_device_list_reads_as_cuda_does(value, devices):
  assert gpu.visible_device_list(value) == devices


@pytest.mark.parametrize('processes, node_gpus, environ, visible, shared, notice', [
    # Environment untouched: one process, no GPUs, GPUs hidden on purpose.
    (1, 8, {}, (None,), False, None),
    (1, 0, {}, (None,), False, None),
    (4, 0, {}, (None,) * 4, False, None),
    (4, 0, {'CUDA_VISIBLE_DEVICES': '0,1'}, (None,) * 4, False, None),  # No GPU here.
    (2, 4, {'CUDA_VISIBLE_DEVICES': ''}, (None, None), False, None),
    (2, 4, {'CUDA_VISIBLE_DEVICES': '-1'}, (None, None), False, None),
    # At least one GPU each: equal contiguous blocks.
    (2, 2, {}, ('0', '1'), False, None),
    (2, 4, {}, ('0,1', '2,3'), False, None),
    (4, 8, {}, ('0,1', '2,3', '4,5', '6,7'), False, None),
    (3, 8, {}, ('0,1', '2,3', '4,5'), False, 'GPU(s) 6,7 left idle'),
    (3, 4, {}, ('0', '1', '2'), False, 'GPU(s) 3 left idle'),
    # The user's CUDA_VISIBLE_DEVICES is the pool (Slurm's, say).
    (2, 8, {'CUDA_VISIBLE_DEVICES': '4,5,6,7'}, ('4,5', '6,7'), False, None),
    (2, 8, {'CUDA_VISIBLE_DEVICES': 'GPU-a,GPU-b'}, ('GPU-a', 'GPU-b'), False, None),
    # Fewer GPUs than processes: one each, round-robin, with a warning.
    (3, 2, {}, ('0', '1', '0'), True, 'timings are spoiled by the sharing'),
    (4, 1, {}, ('0', '0', '0', '0'), True, '4 processes share 1 GPU(s)'),
    (3, 8, {'CUDA_VISIBLE_DEVICES': '6'}, ('6', '6', '6'), True, 'share 1 GPU(s) (6)'),
])
def test_gpu_slots(processes, node_gpus, environ, visible, shared, notice):
  slots = gpu.gpu_slots(processes, node_gpus, environ)
  assert slots.visible_devices == visible
  assert slots.shared == shared
  if notice is None:
    assert slots.notice is None
  else:
    assert notice in slots.notice and '\n' not in slots.notice
  for index, value in enumerate(visible):
    assert slots.env_changes(index) == ({} if value is None
                                        else {'CUDA_VISIBLE_DEVICES': value})


NVIDIA_SMI_L = """\
GPU 0: NVIDIA A100-SXM4-40GB (UUID: GPU-8a1c2b3d-0000-0000-0000-000000000000)
GPU 1: NVIDIA A100-SXM4-40GB (UUID: GPU-77f0aa11-0000-0000-0000-000000000000)
  MIG 1g.5gb      Device  0: (UUID: MIG-2c4e0000-0000-0000-0000-000000000000)
GPU 2: NVIDIA H100 80GB HBM3 (UUID: GPU-0d9e1f22-0000-0000-0000-000000000000)
"""


def _answers(returncode=0, stdout='', raises=None):
  def run(argv, **kwargs):
    assert argv == ['nvidia-smi', '-L'] and kwargs['timeout'] > 0
    if raises:
      raise raises
    return types.SimpleNamespace(returncode=returncode, stdout=stdout)
  return run


def test_node_gpu_count_from_nvidia_smi_else_proc_else_zero(tmp_path):
  proc = tmp_path / 'gpus'
  for bus_id in ('0000:07:00.0', '0000:0f:00.0'):
    (proc / bus_id).mkdir(parents=True)
  missing = str(tmp_path / 'absent')
  assert gpu.count_listed_gpus(NVIDIA_SMI_L) == 3
  assert gpu.node_gpu_count(_answers(stdout=NVIDIA_SMI_L), str(proc)) == 3  # nvidia-smi's.
  assert gpu.node_gpu_count(_answers(returncode=9), str(proc)) == 2  # It failed: /proc's.
  assert gpu.node_gpu_count(_answers(raises=FileNotFoundError('nvidia-smi')), str(proc)) == 2
  assert gpu.node_gpu_count(_answers(raises=subprocess.TimeoutExpired('nvidia-smi', 20)),
                            missing) == 0
  assert gpu.node_gpu_count(_answers(raises=FileNotFoundError('nvidia-smi')), missing) == 0


def test_this_machine_has_no_gpu_to_count():
  """No NVIDIA driver here (BUILD.md): the launchers leave every environment alone."""
  if os.path.exists(gpu.PROC_GPUS):
    pytest.skip('this machine has NVIDIA GPUs')
  assert gpu.node_gpu_count() == 0


RECORDING_TRAIN = """\
import json, os, sys
model_dir = [f for f in sys.argv if f.startswith('--model_dir=')][0].split('=', 1)[1]
os.makedirs(model_dir, exist_ok=True)
with open(os.path.join(model_dir, 'results.json'), 'w') as f:
  json.dump({'visible': os.environ.get('CUDA_VISIBLE_DEVICES', 'all')}, f)
"""


@pytest.mark.slow
@pytest.mark.parametrize('parallel, node_gpus, visible', [
    (2, 4, ['0,1', '2,3']),
    (2, 0, ['all', 'all']),
    (1, 4, ['all', 'all']),  # One at a time: each run has every GPU.
])
def test_the_sweep_runner_gives_each_parallel_run_its_gpus(tmp_path, monkeypatch, parallel,
                                                          node_gpus, visible):
  from mnist.sweep import runner  # pylint: disable=g-import-not-at-top
  monkeypatch.delenv('CUDA_VISIBLE_DEVICES', raising=False)
  script = tmp_path / 'fake_train.py'
  script.write_text(RECORDING_TRAIN)
  jobs = [runner.Job(f'run{i}', str(tmp_path / f'run{i}'), (), str(tmp_path / f'run{i}.log'))
          for i in range(2)]
  outcomes = runner.run_jobs(jobs, parallel=parallel, cpus=[0, 1], script=str(script),
                             node_gpus=node_gpus)
  assert [o.results['visible'] for o in outcomes] == visible
  if visible[0] != 'all':
    assert (tmp_path / 'run0.log').read_text().startswith('$ CUDA_VISIBLE_DEVICES=0,1 ')
