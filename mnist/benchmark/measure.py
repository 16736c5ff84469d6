"""Training throughput: our train step (or Keras fit) timed in step windows or whole epochs.

`run(config)` prints a settings header, one line per window or epoch, the
images/s statistics, and returns everything as a dict (the script prints it as
JSON). It reuses the training code: `distribute.make_strategy`, `data.train_pipeline`,
`train.create_state` and `train_step.train_steps_for`, so it times what training runs.
"""
import time
from typing import Optional

import tensorflow as tf

from mnist import config as config_lib
from mnist import data
from mnist import device_input
from mnist import distribute
from mnist import errors
from mnist import hardware
from mnist import provenance
from mnist import runtime
from mnist import train
from mnist import train_step
from mnist.benchmark import ceiling
from mnist.benchmark import config as benchmark_config
from mnist.benchmark import flops
from mnist.benchmark import keras_fit
from mnist.benchmark import report as benchmark_report

SUM = tf.distribute.ReduceOp.SUM


def run(config: benchmark_config.BenchmarkConfig,
        datasets_override: Optional[data.Splits] = None,
        strategy_override: Optional[tf.distribute.Strategy] = None) -> dict:
  """Measures one side (ours, or Keras fit for role keras_fit) in this process.

  Tests pass `datasets_override` and `strategy_override`, as they do to train.run.
  """
  start_utc = provenance.utc_now()
  # --mixed_precision=auto made concrete, as training does: the header, JSON and
  # ceiling hold the policy that ran.
  config = config.replace(train=hardware.resolve_auto(config.validate().train))
  tc = config.train
  runtime.apply_threading(config.runtime)
  runtime.apply_devices(config.runtime)  # A GPU node without TensorFlow's GPUs: refused.
  if tc.deterministic:  # As training does.
    tf.config.experimental.enable_op_determinism()
  strategy = strategy_override or distribute.strategy_from_config(tc)  # As training does.
  config_lib.check_divisible(tc, strategy.num_replicas_in_sync)
  splits = datasets_override or data.load_splits(
      tc.dataset, tc.train_split, tc.eval_split, tc.data_dir, tc.tfds_manual_dir)
  steps_per_epoch = data.steps_per_epoch(splits.num_train, tc.batch_size)
  if steps_per_epoch == 0:
    raise errors.ConfigError(f'--train_split={tc.train_split} has {splits.num_train} '
                             f'examples, fewer than one --batch_size={tc.batch_size}.')
  measure = _measure_keras_fit if config.role == 'keras_fit' else _measure_ours
  settings, limit, seconds = measure(config, strategy, splits, steps_per_epoch)
  result = benchmark_report.report(config, settings, limit, seconds, steps_per_epoch)
  # What made the figures: code version, packages, oneDNN, command, data (mnist/provenance.py).
  result['provenance'] = provenance.finish(provenance.record(
      tc, splits.dataset_version, start_time=start_utc))
  return result


def machine_limit(model, config, strategy, passes=1) -> dict:
  """The model's training FLOPs per image and this machine's matmul ceiling in the
  run's compute dtype, as images/s: what the figures are relative to."""
  model_flops = flops.training_flops_per_image(model, passes)
  matmul = ceiling.matmul_flops_per_sec(ceiling.compute_dtype(config.train.mixed_precision))
  # Each GPU replica has its own matmul units; CPU replicas share one pool of cores.
  devices = strategy.num_replicas_in_sync if matmul['device'] == 'GPU' else 1
  ceiling_flops = matmul['flops_per_sec'] * devices
  return {'model_flops_per_image': model_flops,
          'ceiling_flops_per_sec': ceiling_flops,
          'ceiling_images_per_sec': ceiling_flops / model_flops,
          'ceiling_matmul': {**matmul, 'devices': devices}}


def _measure_ours(config, strategy, splits, steps_per_epoch):
  """(settings, limit, seconds per window or epoch) of our train step, or of input
  alone (no model: no limit)."""
  tc = config.train
  if config.input_only:
    step_fn, limit = make_input_steps(strategy), None
    wait = lambda out: tf.nest.flatten(out)[0].numpy()  # The count of the steps' images.
  else:
    state = train.create_state(tc, splits, strategy)
    step_fn = train_step.train_steps_for(tc, state, strategy)
    # The clock stops after the optimizer's last update, not at the loss sums, which an
    # asynchronous device (a GPU stream) can hand back before the update has run.
    wait = lambda out: state.optimizer.iterations.numpy()
    # Sharpness-aware minimisation takes two gradients per step.
    limit = machine_limit(state.model, config, strategy, passes=2 if tc.sam_rho > 0 else 1)
  settings = benchmark_report.describe(config, strategy, splits, steps_per_epoch,
                                       xla=tc.jit_compile)
  benchmark_report.print_settings(settings, limit)
  if config.synthetic_data:
    batch = synthetic_batch(strategy, tc.batch_size, splits, tc.seed)
    make_feed = lambda first_epoch: _SyntheticFeed(batch)
  elif tc.input_on_device:  # Copied to the device once, before the warm-up.
    batches = device_input.DeviceBatches(splits.train.cache(), splits.num_train,
                                         tc.batch_size, tc.seed, distribute.default_device())
    make_feed = lambda first_epoch: _EpochFeed(
        lambda epoch: batches.start_epoch(epoch), steps_per_epoch, first_epoch)
  else:
    cached = splits.train.cache()
    make_feed = lambda first_epoch: _EpochFeed(
        lambda epoch: iter(strategy.experimental_distribute_dataset(data.train_pipeline(
            cached, splits.num_train, tc.batch_size, tc.seed, epoch))),
        steps_per_epoch, first_epoch)
  if config.epochs_mode:
    seconds = _time_epochs(step_fn, wait, make_feed, config.warmup_steps, tc.epochs,
                           steps_per_epoch, tc.steps_per_loop)
  else:
    seconds = _time_windows(step_fn, wait, make_feed(0), config.warmup_steps,
                            config.window_steps, config.num_windows, tc.steps_per_loop)
  return settings, limit, seconds


def _measure_keras_fit(config, strategy, splits, steps_per_epoch):
  """(settings, limit, seconds per window or epoch) of Keras model.fit on the same
  pipeline."""
  tc = config.train
  model = keras_fit.compiled_model(tc, splits, strategy)
  limit = machine_limit(model, config, strategy)  # fit takes one gradient per step.
  settings = benchmark_report.describe(config, strategy, splits, steps_per_epoch,
                                       xla=model.jit_compile)
  benchmark_report.print_settings(settings, limit)
  dataset = data.train_pipeline(splits.train.cache(), splits.num_train, tc.batch_size,
                                tc.seed, epoch=0)
  if config.epochs_mode:
    seconds = keras_fit.time_epochs(model, dataset, config.warmup_steps, tc.epochs)
  else:
    seconds = keras_fit.time_windows(model, dataset, config.warmup_steps,
                                     config.window_steps, config.num_windows)
  return settings, limit, seconds


# Feeds: where each tf.function call's iterator comes from.

class _EpochFeed:
  """Epochs of training input, one iterator each (`open_epoch(epoch)`: the distributed
  pipeline's, or --input_on_device's batches), as training opens them."""

  def __init__(self, open_epoch, steps_per_epoch, first_epoch=0):
    self._open_epoch = open_epoch
    self._steps_per_epoch = steps_per_epoch
    self._epoch, self._left, self._iterator = first_epoch, 0, None

  def chunk(self, max_steps):
    """(iterator, steps to run from it): never past an epoch's end."""
    if not self._left:
      self._iterator = self._open_epoch(self._epoch)
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
  batch = next(iter(strategy.experimental_distribute_dataset(dataset)))
  if not isinstance(batch[0], tf.distribute.DistributedValues):
    # The default strategy: the iterator hands back host tensors, which every step
    # would copy to a GPU again. Copied once, onto the device its ops run on.
    with tf.device(distribute.default_device()):
      batch = tf.nest.map_structure(tf.identity, batch)
  return batch


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

def _run_steps(step_fn, wait, feed, num_steps, steps_per_loop):
  """Runs num_steps steps in calls of at most steps_per_loop, then waits for them:
  `wait(the last call's outputs)` returns once its steps are done."""
  out = None
  while num_steps:
    iterator, steps = feed.chunk(min(steps_per_loop, num_steps))
    out = step_fn(iterator, tf.constant(steps))
    num_steps -= steps
  wait(out)


def _time_windows(step_fn, wait, feed, warmup_steps, window_steps, num_windows,
                  steps_per_loop):
  _run_steps(step_fn, wait, feed, warmup_steps, steps_per_loop)
  seconds = []
  for _ in range(num_windows):
    start = time.perf_counter()
    _run_steps(step_fn, wait, feed, window_steps, steps_per_loop)
    seconds.append(time.perf_counter() - start)
  return seconds


def _time_epochs(step_fn, wait, make_feed, warmup_steps, epochs, steps_per_epoch,
                 steps_per_loop):
  """Wall time of whole epochs, each from opening its iterator to its last step."""
  _run_steps(step_fn, wait, make_feed(0), warmup_steps, steps_per_loop)
  seconds = []
  for epoch in range(epochs):
    start = time.perf_counter()
    _run_steps(step_fn, wait, make_feed(epoch), steps_per_epoch, steps_per_loop)
    seconds.append(time.perf_counter() - start)
  return seconds
