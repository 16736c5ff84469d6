"""Training throughput: our train step (or Keras fit) timed in step windows or whole epochs.

`run(config)` prints a settings header, one line per window or epoch, the
images/s statistics, and returns everything as a dict (the script prints it as
JSON). It reuses the training code: `distribute.make_strategy`, `data.train_pipeline`,
`train.create_state` and `train.make_train_steps`, so it times what training runs.
"""
import os
import platform
import resource
import statistics
import time
from typing import Optional

import keras
import tensorflow as tf

from mnist import benchmark_config
from mnist import config as config_lib
from mnist import data
from mnist import distribute
from mnist import errors
from mnist import keras_fit
from mnist import runtime
from mnist import stats
from mnist import train

SUM = tf.distribute.ReduceOp.SUM


def run(config: benchmark_config.BenchmarkConfig,
        datasets_override: Optional[data.Splits] = None) -> dict:
  """Measures one side (ours, or Keras fit for role keras_fit) in this process.

  Tests pass `datasets_override`, as they do to train.run.
  """
  config.validate()
  tc = config.train
  runtime.apply_threading(config.runtime)
  if getattr(tc, 'deterministic', False):  # As training does.
    tf.config.experimental.enable_op_determinism()
  strategy = distribute.make_strategy(tc.strategy, tc.cpu_devices)
  config_lib.check_divisible(tc, strategy.num_replicas_in_sync)
  splits = datasets_override or data.load_splits(
      tc.dataset, tc.train_split, tc.eval_split, tc.data_dir, tc.tfds_manual_dir)
  steps_per_epoch = data.steps_per_epoch(splits.num_train, tc.batch_size)
  if steps_per_epoch == 0:
    raise errors.ConfigError(f'--train_split={tc.train_split} has {splits.num_train} '
                             f'examples, fewer than one --batch_size={tc.batch_size}.')
  train_cached = splits.train.cache()

  if config.role == 'keras_fit':
    model = keras_fit.compiled_model(tc, splits, strategy)
    settings = describe(config, strategy, splits, steps_per_epoch, xla=model.jit_compile)
    print_settings(settings)
    dataset = data.train_pipeline(train_cached, splits.num_train, tc.batch_size, tc.seed, 0)
    if config.epochs_mode:
      seconds = keras_fit.time_epochs(model, dataset, config.warmup_steps, tc.epochs)
    else:
      seconds = keras_fit.time_windows(model, dataset, config.warmup_steps,
                                       config.window_steps, config.num_windows)
  else:
    settings = describe(config, strategy, splits, steps_per_epoch, xla=tc.jit_compile)
    print_settings(settings)
    step_fn = (make_input_steps(strategy) if config.input_only else
               train.make_train_steps(train.create_state(tc, splits, strategy), strategy,
                                      tc.batch_size, tc.jit_compile))
    if config.synthetic_data:
      batch = synthetic_batch(strategy, tc.batch_size, splits, tc.seed)
      make_feed = lambda first_epoch: _SyntheticFeed(batch)
    else:
      make_feed = lambda first_epoch: _EpochFeed(
          strategy, train_cached, splits.num_train, tc.batch_size, tc.seed,
          steps_per_epoch, first_epoch)
    if config.epochs_mode:
      seconds = _time_epochs(step_fn, make_feed, config.warmup_steps, tc.epochs,
                             steps_per_epoch, tc.steps_per_loop)
    else:
      seconds = _time_windows(step_fn, make_feed(0), config.warmup_steps,
                              config.window_steps, config.num_windows, tc.steps_per_loop)
  return report(config, settings, seconds, steps_per_epoch)


# Feeds: where each tf.function call's iterator comes from.

class _EpochFeed:
  """Epochs of the training pipeline, one distributed iterator each, as training opens them."""

  def __init__(self, strategy, cached, num_examples, batch_size, seed, steps_per_epoch,
               first_epoch=0):
    self._args = (strategy, cached, num_examples, batch_size, seed)
    self._steps_per_epoch = steps_per_epoch
    self._epoch, self._left, self._iterator = first_epoch, 0, None

  def chunk(self, max_steps):
    """(iterator, steps to run from it): never past an epoch's end."""
    if not self._left:
      strategy, cached, num_examples, batch_size, seed = self._args
      self._iterator = iter(strategy.experimental_distribute_dataset(
          data.train_pipeline(cached, num_examples, batch_size, seed, self._epoch)))
      self._epoch += 1
      self._left = self._steps_per_epoch
    steps = min(max_steps, self._left)
    self._left -= steps
    return self._iterator, steps


class _Repeat:
  """Stands in for a distributed iterator: next() returns the same device-resident batch."""

  def __init__(self, batch):
    self._batch = batch

  def __iter__(self):
    return self

  def __next__(self):
    return self._batch


class _SyntheticFeed:
  def __init__(self, batch):
    self._iterator = _Repeat(batch)

  def chunk(self, max_steps):
    return self._iterator, max_steps


def synthetic_batch(strategy, batch_size, splits, seed):
  """One random global batch, split across replicas and placed on their devices once."""
  images = tf.random.stateless_uniform((batch_size, *splits.image_shape), seed=(seed, 1))
  labels = tf.random.stateless_uniform((batch_size,), seed=(seed, 2), minval=0,
                                       maxval=splits.num_classes, dtype=tf.int32)
  dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(batch_size)
  return next(iter(strategy.experimental_distribute_dataset(dataset)))


def make_input_steps(strategy):
  """input_steps(iterator, num_steps) -> examples: pulls batches as training does, no model."""
  def replica_count(images, labels):
    del images  # Produced by the pipeline all the same: GetNext yields whole elements.
    return tf.cast(tf.shape(labels)[0], tf.float32)

  @tf.function
  def input_steps(iterator, num_steps):
    count = tf.constant(0.0)
    for _ in tf.range(num_steps):
      count += strategy.reduce(SUM, strategy.run(replica_count, args=next(iterator)),
                               axis=None)
    return count

  return input_steps


# Timing.

def _run_steps(step_fn, feed, num_steps, steps_per_loop):
  """Runs num_steps steps in calls of at most steps_per_loop, then waits for them."""
  out = None
  while num_steps:
    iterator, steps = feed.chunk(min(steps_per_loop, num_steps))
    out = step_fn(iterator, tf.constant(steps))
    num_steps -= steps
  tf.nest.flatten(out)[0].numpy()  # One call's outputs: the steps before it are done.


def _time_windows(step_fn, feed, warmup_steps, window_steps, num_windows, steps_per_loop):
  _run_steps(step_fn, feed, warmup_steps, steps_per_loop)
  seconds = []
  for _ in range(num_windows):
    start = time.perf_counter()
    _run_steps(step_fn, feed, window_steps, steps_per_loop)
    seconds.append(time.perf_counter() - start)
  return seconds


def _time_epochs(step_fn, make_feed, warmup_steps, epochs, steps_per_epoch, steps_per_loop):
  """Wall time of whole epochs, each from opening its iterator to its last step."""
  _run_steps(step_fn, make_feed(0), warmup_steps, steps_per_loop)
  seconds = []
  for epoch in range(epochs):
    start = time.perf_counter()
    _run_steps(step_fn, make_feed(epoch), steps_per_epoch, steps_per_loop)
    seconds.append(time.perf_counter() - start)
  return seconds


# Reporting.

def _onednn_enabled():
  try:
    from tensorflow.python.util import _pywrap_util_port  # pylint: disable=g-import-not-at-top
    return bool(_pywrap_util_port.IsMklEnabled())
  except (ImportError, AttributeError):  # A private API: report unknown if it moves.
    return None


def _cpu_model():
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or None


def describe(config, strategy, splits, steps_per_epoch, xla) -> dict:
  """Everything the numbers depend on, for the header and the JSON."""
  tc, replicas = config.train, strategy.num_replicas_in_sync
  if config.input_only:
    data_kind = 'input_only'
  else:
    data_kind = 'synthetic' if config.synthetic_data else 'tfds'
  settings = {
      'role': config.role or 'ours',
      'mode': 'epochs' if config.epochs_mode else 'windows',
      'data': data_kind,
      'dataset': tc.dataset, 'train_split': tc.train_split, 'num_train': splits.num_train,
      'steps_per_epoch': steps_per_epoch,
      'warmup_steps': config.warmup_steps,
      'devices': [d.name for d in tf.config.list_logical_devices()],
      'cpu': _cpu_model(), 'cpu_count': os.cpu_count(),
      'cpus_allowed': len(os.sched_getaffinity(0)),
      'strategy': type(strategy).__name__, 'replicas': replicas,
      'global_batch': tc.batch_size, 'per_replica_batch': tc.batch_size // replicas,
      'steps_per_loop': 1 if config.role == 'keras_fit' else tc.steps_per_loop,
      'precision': tc.mixed_precision, 'xla': bool(xla),
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


def print_settings(s: dict):
  what = {'ours': 'our GradientTape train step (train.make_train_steps)',
          'keras_fit': 'Keras model.compile / model.fit (baseline)'}[s['role']]
  if s['data'] == 'input_only':
    what = 'the input pipeline alone: no model, no train step'
  data_text = {'tfds': 'the tf.data training pipeline (data.train_pipeline)',
               'synthetic': 'synthetic: one random batch on the device, repeated',
               'input_only': 'input only: the tf.data pipeline, no model'}[s['data']]
  if s['mode'] == 'epochs':
    mode = f'{s["warmup_steps"]} warmup steps, then {s["epochs"]} timed epochs'
  else:
    mode = (f'{s["warmup_steps"]} warmup steps, then {s["num_windows"]} windows '
            f'x {s["window_steps"]} steps')
  threads, env = s['threads'], s['env']
  lines = [
      ('measuring', what),
      ('mode', mode),
      ('data', f'{data_text}; {s["dataset"]} {s["train_split"]}: {s["num_train"]} '
               f'examples, {s["steps_per_epoch"]} steps/epoch'),
      ('devices', f'{", ".join(s["devices"])} on {s["cpu"]} ({s["cpus_allowed"]} of '
                  f'{s["cpu_count"]} CPUs allowed)'),
      ('strategy', f'{s["strategy"]}, {s["replicas"]} replica(s)'),
      ('batch', f'{s["global_batch"]} global, {s["per_replica_batch"]} per replica, '
                f'{s["steps_per_loop"]} step(s) per call'),
      ('precision', s['precision']),
      ('XLA', 'on' if s['xla'] else 'off'),
      ('versions', f'TensorFlow {s["tensorflow"]}, Keras {s["keras"]}, '
                   f'Python {s["python"]}'),
      ('oneDNN', f'--onednn={s["onednn"]["flag"]}, '
                 f'{runtime.ONEDNN_ENV}={env[runtime.ONEDNN_ENV] or "(unset)"}, '
                 f'enabled: {s["onednn"]["enabled"]}'),
      ('threads', f'inter-op {threads["inter_op"]}, intra-op {threads["intra_op"]} '
                  '(0: TensorFlow decides); ' +
                  ', '.join(f'{k}={env[k] or "(unset)"}' for k in runtime.REPORTED_ENV[1:])),
  ]
  print('Benchmark settings', flush=False)
  for name, value in lines:
    print(f'  {name:<10} {value}')
  print(flush=True)


def report(config, settings, seconds, steps_per_epoch) -> dict:
  """Prints one line per window or epoch and the statistics; returns the JSON dict."""
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
  if not config.epochs_mode:
    result['windows_opening_an_epoch'] = [i + 1 for i in sorted(opens)]
  if config.epochs_mode:
    ratio = max(seconds) / statistics.median(seconds)
    print(f'epoch seconds: max / median {ratio:.3f}')
    result['epoch_seconds_max_over_median'] = ratio
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


def peak_rss_mib(who=resource.RUSAGE_SELF) -> float:
  return resource.getrusage(who).ru_maxrss / 1024  # Linux reports KiB.
