"""scripts/benchmark.py and its library: it runs and reports; no timing is asserted."""
import json
import os
import subprocess
import sys

import pytest

from mnist import config as config_lib
from mnist import distribute
from mnist import errors
from mnist import hardware
from mnist import runtime
from mnist.benchmark import ab
from mnist.benchmark import ceiling
from mnist.benchmark import config as benchmark_config
from mnist.benchmark import measure
from mnist.benchmark import stats

from conftest import REPO
from conftest import synthetic_splits

STATS_KEYS = {'images_per_sec_median', 'images_per_sec_mean', 'images_per_sec_stderr',
              'images_per_sec_jitter', 'peak_rss_mib', 'settings', 'model_flops_per_image',
              'ceiling_flops_per_sec', 'ceiling_images_per_sec', 'fraction_of_ceiling'}
SEED_CNN_TRAINING_FLOPS = 15_786_240  # 3 x 5,262,080 (tests/test_benchmark_flops.py).


def _assert_relative_to_the_ceiling(result, model_flops=SEED_CNN_TRAINING_FLOPS):
  assert result['model_flops_per_image'] == model_flops
  assert result['ceiling_images_per_sec'] == pytest.approx(
      result['ceiling_flops_per_sec'] / model_flops)
  assert result['fraction_of_ceiling'] == pytest.approx(
      result['images_per_sec_median'] / result['ceiling_images_per_sec'])
  assert result['settings']['hardware']['cpu']['cores'] >= 1
TINY = ('--warmup_steps=2', '--num_windows=2', '--window_steps=3')


def test_summarize_known_numbers():
  # 100 images per window in 1, 2, 4, 1, 2 s: rates 100, 50, 25, 100, 50.
  summary = stats.summarize([1, 2, 4, 1, 2], images_per_window=100)
  assert summary['n'] == 5
  assert summary['median'] == 50
  assert summary['mean'] == pytest.approx(500 / 10)  # Total images over total time.
  # Population std of the rates (mean 65): sqrt(4500 / 5) = 30; over sqrt(5).
  assert summary['stderr'] == pytest.approx(30 / 5 ** 0.5)
  # |rate - 50| = 50, 0, 25, 50, 0: median 25.
  assert summary['jitter'] == pytest.approx(1.4826 * 25)


def test_summarize_jitter_ignores_one_outlier():
  summary = stats.summarize([1, 1, 1, 1, 100], images_per_window=10)
  assert summary['median'] == 10 and summary['jitter'] == 0
  assert summary['stderr'] > 0


def test_summarize_rejects_empty_or_zero_durations():
  with pytest.raises(ValueError):
    stats.summarize([], 10)
  with pytest.raises(ValueError):
    stats.summarize([1, 0], 10)


@pytest.mark.parametrize('changes, message', [
    ({'warmup_steps': 0}, '--warmup_steps must be >= 1'),
    ({'synthetic_data': True, 'input_only': True}, 'exclude each other'),
    ({'baseline': 'keras_fit', 'synthetic_data': True}, 'cannot be combined'),
    ({'baseline': 'torch'}, '--baseline must be'),
    ({'baseline': 'keras_fit', 'baseline_repeats': 1}, '--baseline_repeats must be >= 2'),
    ({'runtime': runtime.RuntimeConfig(onednn='maybe')}, '--onednn must be one of'),
    ({'train': config_lib.TrainConfig(batch_size=0)}, '--batch_size must be > 0'),
])
def test_invalid_benchmark_config_names_the_problem(changes, message):
  with pytest.raises(errors.ConfigError, match=message):
    benchmark_config.BenchmarkConfig(**changes).validate()


def test_keras_child_gets_stock_runtime_flags_unless_tuned():
  command = ['python', 'benchmark.py', '--onednn=off']
  stock = ab.child_command(command, 'keras_fit', 'keras_fit')
  assert stock[:3] == command and stock[3] == '--_role=keras_fit'
  assert stock[-3:] == ['--onednn=tensorflow', '--inter_op_threads=0', '--intra_op_threads=0']
  tuned = ab.child_command(command, 'keras_fit', 'keras_fit_tuned')
  assert tuned == command + ['--_role=keras_fit']
  assert ab.child_command(command, 'ours', 'keras_fit') == command + ['--_role=ours']


def _config(**changes):
  train = config_lib.TrainConfig(batch_size=64, epochs=2).replace(**changes.pop('train', {}))
  return benchmark_config.BenchmarkConfig(train=train, warmup_steps=2, num_windows=2,
                                          window_steps=3).replace(**changes)


@pytest.mark.parametrize('changes', [
    {},
    {'synthetic_data': True},
    {'synthetic_data': True, 'train': {'strategy': 'mirrored', 'cpu_devices': 2}},
    {'input_only': True, 'train': {'steps_per_loop': 2}},
    {'train': {'input_on_device': True}},
], ids=['ours', 'synthetic', 'synthetic_mirrored', 'input_only', 'input_on_device'])
@pytest.mark.slow
def test_windows_report_every_statistic_as_json(changes, capsys, mirrored2):
  config = _config(**changes)
  # The session's strategy: a second one over the same devices would reuse its
  # collective keys (conftest.mirrored2).
  strategy = mirrored2 if config.train.strategy == 'mirrored' else None
  result = json.loads(json.dumps(measure.run(config, datasets_override=synthetic_splits(),
                                               strategy_override=strategy)))
  assert STATS_KEYS <= set(result)
  assert len(result['window_seconds']) == len(result['window_images_per_sec']) == 2
  settings = result['settings']
  assert settings['mode'] == 'windows' and settings['global_batch'] == 64
  assert {'devices', 'strategy', 'replicas', 'precision', 'xla', 'tensorflow', 'keras',
          'onednn', 'threads', 'env', 'hardware'} <= set(settings)
  # What made the figures (mnist/provenance.py); injected data has no TFDS version.
  record = result['provenance']
  assert {'code_version', 'code', 'packages', 'onednn', 'command', 'host', 'start_time',
          'end_time', 'dataset', 'slurm'} <= set(record)
  assert record['end_time'] >= record['start_time']
  assert record['dataset']['version'].startswith('unknown')
  out = capsys.readouterr().out
  assert out.index('Benchmark settings') < out.index('window 1/2') < out.index('median')
  assert f'  hardware   {settings["hardware"]["summary"]}\n' in out
  assert settings['data'] == ('device' if config.train.input_on_device else
                              'input_only' if config.input_only else
                              'synthetic' if config.synthetic_data else 'tfds')
  if config.input_only:  # No model: nothing to be relative to.
    assert result['model_flops_per_image'] is None and result['fraction_of_ceiling'] is None
    assert '  ceiling    none (no model)' in out
  else:
    _assert_relative_to_the_ceiling(result)
    assert '  model      15.79 MFLOP per training image' in out
    assert result['ceiling_matmul']['dtype'] == 'float32'
    assert 'fraction of the matmul ceiling' in out


@pytest.mark.slow
def test_the_synthetic_batch_is_placed_on_the_replicas_devices(mirrored2):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  for strategy, devices in [(tf.distribute.get_strategy(), [distribute.default_device()]),
                            (mirrored2, mirrored2.extended.worker_devices)]:
    images, _ = measure.synthetic_batch(strategy, 8, synthetic_splits(), seed=0)
    parts = strategy.experimental_local_results(images)
    where = lambda name: (tf.DeviceSpec.from_string(name).device_type,
                          tf.DeviceSpec.from_string(name).device_index)
    assert [where(p.device) for p in parts] == [where(d) for d in devices]
    assert sum(p.shape[0] for p in parts) == 8


def test_the_ceiling_is_measured_in_the_compute_dtype(capsys):
  config = _config(synthetic_data=True, train={'mixed_precision': 'mixed_bfloat16'})
  result = measure.run(config, datasets_override=synthetic_splits())
  assert result['ceiling_matmul']['dtype'] == 'bfloat16'
  _assert_relative_to_the_ceiling(result)  # The precision does not change the count.
  out = capsys.readouterr().out
  assert 'bfloat16 matmul' in out
  # Where this CPU emulates bfloat16 (AVX2 only), the header says so.
  reason = hardware.emulated_precision('mixed_bfloat16', hardware.cpu(), hardware.gpus())
  assert result['settings']['precision_emulated'] == reason
  assert ('  precision  mixed_bfloat16. WARNING: ' in out) == bool(reason)


@pytest.mark.slow
def test_flops_follow_the_model_flags():
  config = _config(synthetic_data=True, train={'model': 'fast_cnn', 'width': 2.0})
  result = measure.run(config, datasets_override=synthetic_splits())
  # fast_cnn at width 2: 48 and 64 channels, 512 units (conv outputs 24x24 and 10x10).
  forward = 2 * (24 * 24 * 48 * 25 + 10 * 10 * 64 * 9 * 48 + 1600 * 512 + 512 * 10)
  _assert_relative_to_the_ceiling(result, model_flops=3 * forward)


@pytest.mark.slow
@pytest.mark.parametrize('role', ['ours', 'keras_fit'])
def test_epochs_mode_times_whole_epochs(role, capsys):
  config = _config(epochs_mode=True, role=role)
  result = json.loads(json.dumps(measure.run(config, datasets_override=synthetic_splits())))
  assert len(result['epoch_seconds']) == 2  # --epochs=2 of 512 // 64 steps.
  assert result['epoch_seconds_max_over_median'] >= 1
  assert STATS_KEYS <= set(result) and result['settings']['role'] == role
  _assert_relative_to_the_ceiling(result)
  assert 'epoch 2/2: 8 steps' in capsys.readouterr().out


@pytest.mark.parametrize('jit_compile', [False, True])
@pytest.mark.slow
def test_keras_fit_role_times_windows_in_process(capsys, jit_compile):
  result = measure.run(_config(role='keras_fit', window_steps=5,
                               train={'jit_compile': jit_compile}),
                       datasets_override=synthetic_splits())
  assert len(result['window_seconds']) == 2 and STATS_KEYS <= set(result)
  assert result['settings']['xla'] is jit_compile  # Ours's setting, not compile's 'auto'.
  # 2 warm-up + 2 x 5 steps cross the 8-step epoch end in window 2.
  assert result['windows_opening_an_epoch'] == [2]
  assert 'model.fit' in capsys.readouterr().out


def _script(*flags, env=None):
  return subprocess.run([sys.executable, os.path.join(REPO, 'scripts', 'benchmark.py'),
                         *flags], capture_output=True, text=True, timeout=600,
                        env={**os.environ, **(env or {})})


@pytest.mark.slow
def test_script_rejects_bad_flags_before_loading_tensorflow():
  poison = os.path.join(REPO, 'tests', 'poison_tensorflow')
  result = _script('--num_windows=0', '--onednn=maybe', '--baseline=keras_fit',
                   '--baseline_repeats=1', env={'PYTHONPATH': poison + os.pathsep + REPO})
  assert result.returncode == 2, result.stderr
  for message in ('--num_windows must be >= 1', '--onednn must be one of',
                  '--baseline_repeats must be >= 2'):
    assert message in result.stderr
  assert 'Traceback' not in result.stderr


@pytest.mark.slow
@pytest.mark.real_data
def test_script_prints_settings_windows_and_json(manual_dir):
  result = _script("--train_split=train[:1024]", *TINY, '--mixed_precision=auto',
                   f'--tfds_manual_dir={manual_dir}')
  assert result.returncode == 0, result.stderr[-3000:]
  lines = result.stdout.strip().splitlines()
  summary = json.loads(lines[-1])  # The last line is JSON.
  assert STATS_KEYS | {'window_seconds'} <= set(summary)
  _assert_relative_to_the_ceiling(summary)
  # auto is resolved for this machine, and the ceiling is timed in what it resolved to.
  precision = summary['settings']['precision']
  assert precision in config_lib.PRECISIONS
  assert summary['ceiling_matmul']['dtype'] == ceiling.compute_dtype(precision)
  assert summary['settings']['precision_emulated'] is None  # auto never emulates.
  assert f'  hardware   {summary["settings"]["hardware"]["summary"]}' in lines
  assert summary['settings']['data'] == 'tfds' and summary['settings']['num_train'] == 1024
  assert summary['provenance']['dataset']['version'] == '3.0.1'  # The TFDS builder's.
  # The settings come first (after TFDS's own lines if it had to prepare the data).
  assert lines.index('Benchmark settings') < min(
      i for i, line in enumerate(lines) if line.startswith('window '))


@pytest.mark.slow
@pytest.mark.real_data
def test_keras_fit_baseline_alternates_child_processes(manual_dir):
  result = _script("--train_split=train[:512]", *TINY, '--baseline=keras_fit',
                   '--baseline_repeats=2', '--onednn=on', f'--tfds_manual_dir={manual_dir}')
  assert result.returncode == 0, result.stderr[-3000:]
  summary = json.loads(result.stdout.strip().splitlines()[-1])
  assert {'images_per_sec_median', 'baseline_images_per_sec_median', 'ratio_median',
          'ratios', 'peak_rss_mib', 'ours', 'baseline_runs'} <= set(summary)
  assert len(summary['ratios']) == 2
  for run in summary['ours'] + summary['baseline_runs']:  # Each child: its own ceiling.
    _assert_relative_to_the_ceiling(run)
  assert summary['baseline_fractions_of_ceiling'] == [
      r['fraction_of_ceiling'] for r in summary['baseline_runs']]
  assert 'fractions of the matmul ceiling, ours: ' in result.stdout
  assert [r['settings']['role'] for r in summary['ours'] + summary['baseline_runs']] == [
      'ours', 'ours', 'keras_fit', 'keras_fit']
  # Ours runs with our runtime flags, the stock baseline without them.
  assert summary['ours'][0]['settings']['onednn']['flag'] == 'on'
  assert summary['baseline_runs'][0]['settings']['onednn']['flag'] == 'tensorflow'
  labels = [line.split(']')[0] for line in result.stdout.splitlines() if line.startswith('[')]
  order = [label for i, label in enumerate(labels) if i == 0 or label != labels[i - 1]]
  assert order == ['[ours 1/2', '[keras_fit 1/2', '[ours 2/2', '[keras_fit 2/2']
  assert 'median ratio ours / keras_fit' in result.stdout
