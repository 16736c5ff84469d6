"""The benchmark's settings header, per-window lines, statistics and JSON dict."""
import os
import platform
import resource
import statistics
from typing import Optional

import keras
import tensorflow as tf

from mnist import hardware
from mnist import runtime
from mnist.benchmark import stats


def _onednn_enabled():
  try:
    from tensorflow.python.util import _pywrap_util_port  # pylint: disable=g-import-not-at-top
    return bool(_pywrap_util_port.IsMklEnabled())
  except (ImportError, AttributeError):  # A private API: report unknown if it moves.
    return None


def describe(config, strategy, splits, steps_per_epoch, xla) -> dict:
  """Everything the numbers depend on, for the header and the JSON."""
  tc, replicas = config.train, strategy.num_replicas_in_sync
  if config.input_only:
    data_kind = 'input_only'
  elif config.synthetic_data:
    data_kind = 'synthetic'
  else:
    data_kind = 'device' if tc.input_on_device and config.role != 'keras_fit' else 'tfds'
  cpu, gpus = hardware.cpu(), hardware.gpus()
  settings = {
      'role': config.role or 'ours',
      'mode': 'epochs' if config.epochs_mode else 'windows',
      'data': data_kind,
      'dataset': tc.dataset, 'train_split': tc.train_split, 'num_train': splits.num_train,
      'steps_per_epoch': steps_per_epoch,
      'warmup_steps': config.warmup_steps,
      'devices': [d.name for d in tf.config.list_logical_devices()],
      'hardware': hardware.as_dict(cpu, gpus),
      'cpu': cpu.model, 'cpu_count': os.cpu_count(),
      'cpus_allowed': len(os.sched_getaffinity(0)),
      'strategy': type(strategy).__name__, 'replicas': replicas,
      'global_batch': tc.batch_size, 'per_replica_batch': tc.batch_size // replicas,
      'steps_per_loop': 1 if config.role == 'keras_fit' else tc.steps_per_loop,
      'precision': tc.mixed_precision,
      'precision_emulated': hardware.emulated_precision(tc.mixed_precision, cpu, gpus),
      'xla': bool(xla),
      'tensorflow': tf.__version__, 'keras': keras.__version__,
      'python': platform.python_version(),
      'onednn': {'flag': config.runtime.onednn, 'enabled': _onednn_enabled()},
      'threads': {'inter_op_flag': config.runtime.inter_op_threads,
                  'intra_op_flag': config.runtime.intra_op_threads,
                  'inter_op': tf.config.threading.get_inter_op_parallelism_threads(),
                  'intra_op': tf.config.threading.get_intra_op_parallelism_threads()},
      'env': runtime.reported_env(),
  }
  if config.epochs_mode:
    settings['epochs'] = tc.epochs
  else:
    settings.update(num_windows=config.num_windows, window_steps=config.window_steps)
  return settings


def print_settings(s: dict, limit: Optional[dict]):
  """The header; `limit` is measure.machine_limit's dict (None: no model)."""
  what = {'ours': 'our GradientTape train step (train_step.make_train_steps)',
          'keras_fit': 'Keras model.compile / model.fit (baseline)'}[s['role']]
  if s['data'] == 'input_only':
    what = 'the input pipeline alone: no model, no train step'
  data_text = {'tfds': 'the tf.data training pipeline (data.train_pipeline)',
               'synthetic': 'synthetic: one random batch on the device, repeated',
               'device': 'the training split on the device, batches gathered there in '
                         'the pipeline\'s order (--input_on_device)',
               'input_only': 'input only: the tf.data pipeline, no model'}[s['data']]
  if s['mode'] == 'epochs':
    mode = f'{s["warmup_steps"]} warmup steps, then {s["epochs"]} timed epochs'
  else:
    mode = (f'{s["warmup_steps"]} warmup steps, then {s["num_windows"]} windows '
            f'x {s["window_steps"]} steps')
  threads, env = s['threads'], s['env']
  lines = [
      ('hardware', s['hardware']['summary']),
      ('measuring', what),
      ('mode', mode),
      ('data', f'{data_text}; {s["dataset"]} {s["train_split"]}: {s["num_train"]} '
               f'examples, {s["steps_per_epoch"]} steps/epoch'),
      ('devices', f'{", ".join(s["devices"])} on {s["cpu"]} ({s["cpus_allowed"]} of '
                  f'{s["cpu_count"]} CPUs allowed)'),
      ('strategy', f'{s["strategy"]}, {s["replicas"]} replica(s)'),
      ('batch', f'{s["global_batch"]} global, {s["per_replica_batch"]} per replica, '
                f'{s["steps_per_loop"]} step(s) per call'),
      ('precision', s['precision'] + (f'. WARNING: {s["precision_emulated"]}'
                                      if s['precision_emulated'] else '')),
      ('XLA', 'on' if s['xla'] else 'off'),
      ('versions', f'TensorFlow {s["tensorflow"]}, Keras {s["keras"]}, '
                   f'Python {s["python"]}'),
      ('oneDNN', f'--onednn={s["onednn"]["flag"]}, '
                 f'{runtime.ONEDNN_ENV}={env[runtime.ONEDNN_ENV] or "(unset)"}, '
                 f'enabled: {s["onednn"]["enabled"]}'),
      ('threads', f'inter-op {threads["inter_op"]}, intra-op {threads["intra_op"]} '
                  '(0: TensorFlow decides); ' +
                  ', '.join(f'{k}={env[k] or "(unset)"}' for k in runtime.REPORTED_ENV[1:])),
      ('model', f'{limit["model_flops_per_image"] / 1e6:.2f} MFLOP per training image '
                '(conv and dense multiply-adds, 3 x forward)' if limit else 'none'),
      ('ceiling', _ceiling_text(limit) if limit else 'none (no model)'),
  ]
  print('Benchmark settings', flush=False)
  for name, value in lines:
    print(f'  {name:<10} {value}')
  print(flush=True)


def _ceiling_text(limit):
  matmul = limit['ceiling_matmul']
  size = matmul['matmul_size']
  where = 'the CPU' if matmul['device'] == 'CPU' else f'{matmul["devices"]} GPU(s)'
  return (f'{limit["ceiling_flops_per_sec"] / 1e9:.1f} GFLOP/s, a {size}x{size} '
          f'{matmul["dtype"]} matmul on {where} here '
          f'= {limit["ceiling_images_per_sec"]:.1f} images/s of this model')


def report(config, settings, limit, seconds, steps_per_epoch) -> dict:
  """Prints one line per window or epoch and the statistics; returns the JSON dict.

  fraction_of_ceiling = median images/s / ceiling_images_per_sec."""
  batch = config.train.batch_size
  steps = steps_per_epoch if config.epochs_mode else config.window_steps
  name = 'epoch' if config.epochs_mode else 'window'
  opens = _windows_opening_an_epoch(config, steps_per_epoch)
  for i, s in enumerate(seconds):
    print(f'{name} {i + 1}/{len(seconds)}: {steps} steps in {s:.3f} s  '
          f'{steps * batch / s:.1f} images/s'
          + ('  (opens a new epoch)' if i in opens else ''), flush=True)
  summary = stats.summarize(seconds, steps * batch)
  print(f'images/s: median {summary["median"]:.1f}  mean {summary["mean"]:.1f} '
        f'± {summary["stderr"]:.1f} (standard error)  jitter {summary["jitter"]:.1f} '
        f'(1.4826 x MAD) over {summary["n"]} {name}s')
  result = {
      'settings': settings,
      f'{name}_seconds': seconds,
      f'{name}_images_per_sec': [steps * batch / s for s in seconds],
      'images_per_sec_median': summary['median'],
      'images_per_sec_mean': summary['mean'],
      'images_per_sec_stderr': summary['stderr'],
      'images_per_sec_jitter': summary['jitter'],
  }
  if config.epochs_mode:
    ratio = max(seconds) / statistics.median(seconds)
    print(f'epoch seconds: max / median {ratio:.3f}')
    result['epoch_seconds_max_over_median'] = ratio
  else:
    result['windows_opening_an_epoch'] = [i + 1 for i in sorted(opens)]
  result.update(limit or dict.fromkeys(('model_flops_per_image', 'ceiling_flops_per_sec',
                                        'ceiling_images_per_sec', 'ceiling_matmul')))
  result['fraction_of_ceiling'] = (summary['median'] / limit['ceiling_images_per_sec']
                                   if limit else None)
  if limit:
    print(f'fraction of the matmul ceiling: {result["fraction_of_ceiling"]:.3f} '
          f'({summary["median"]:.1f} of {limit["ceiling_images_per_sec"]:.1f} images/s; '
          f'{summary["median"] * limit["model_flops_per_image"] / 1e9:.1f} GFLOP/s)')
  result['peak_rss_mib'] = peak_rss_mib()
  print(f'peak resident memory: {result["peak_rss_mib"]:.0f} MiB', flush=True)
  return result


def _windows_opening_an_epoch(config, steps_per_epoch) -> set:
  """Windows whose steps include an epoch's first (a new iterator, a shuffle-buffer fill)."""
  if config.epochs_mode or config.synthetic_data:
    return set()
  first = config.warmup_steps
  return {i for i in range(config.num_windows)
          if (first + i * config.window_steps - 1) // steps_per_epoch
          != (first + (i + 1) * config.window_steps - 1) // steps_per_epoch}


def peak_rss_mib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB.
