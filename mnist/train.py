"""Training: a hand-written GradientTape step under tf.distribute, eval, checkpoints,
TensorBoard and results.json.

`run(config, datasets_override=..., strategy_override=...)` is the whole program;
tests inject data and strategies through the overrides and download nothing.
"""
import dataclasses
import json
import math
import os
import re
import time
from typing import Optional

from absl import logging
import keras
import tensorflow as tf

from mnist import config as config_lib
from mnist import data
from mnist import distribute
from mnist import errors
from mnist import model as model_lib

SUM = tf.distribute.ReduceOp.SUM


@dataclasses.dataclass
class TrainState:
  """What a checkpoint holds. `step` and `epoch` count completed steps and epochs."""
  model: keras.Model
  optimizer: keras.optimizers.Optimizer
  step: tf.Variable
  epoch: tf.Variable

  def checkpoint(self) -> tf.train.Checkpoint:
    return tf.train.Checkpoint(model=self.model, optimizer=self.optimizer,
                               step=self.step, epoch=self.epoch)


def create_state(config: config_lib.TrainConfig, splits: data.Splits,
                 strategy: tf.distribute.Strategy) -> TrainState:
  """Builds model and optimizer under the strategy, so their variables are mirrored."""
  keras.utils.set_random_seed(config.seed)
  with strategy.scope():
    model = model_lib.build_model(input_shape=splits.image_shape,
                                  num_classes=splits.num_classes,
                                  precision=config.mixed_precision,
                                  dropout_rate=config.dropout_rate)
    optimizer = keras.optimizers.Adam(learning_rate=config.learning_rate)
    if config.mixed_precision == 'mixed_float16':
      # float16 gradients underflow without loss scaling; bfloat16 has float32's range.
      optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    # Keras 3 optimizers must be built inside the scope before strategy.run,
    # or the first step fails on an unfed 'cond/...' placeholder.
    optimizer.build(model.trainable_variables)
  # Counters live outside the scope: plain variables, updated from Python.
  return TrainState(model, optimizer, step=tf.Variable(0, dtype=tf.int64, name='step'),
                    epoch=tf.Variable(0, dtype=tf.int64, name='epoch'))


def per_example_stats(logits, labels, weights=None):
  """(per-example float32 loss, [loss sum, correct, count]) for one replica's batch.

  `weights` (1 real, 0 padding) exclude the eval set's padding from every sum.
  """
  logits = tf.cast(logits, tf.float32)  # Loss and softmax in float32 under mixed precision.
  losses = tf.keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
  correct = tf.cast(tf.equal(tf.argmax(logits, axis=-1, output_type=tf.int32), labels),
                    tf.float32)
  if weights is None:
    weights = tf.ones_like(losses)
  return losses, tf.stack([tf.reduce_sum(losses * weights), tf.reduce_sum(correct * weights),
                           tf.reduce_sum(weights)])


def make_train_steps(state: TrainState, strategy: tf.distribute.Strategy,
                     global_batch_size: int, jit_compile: bool = False):
  """Returns train_steps(iterator, num_steps) -> summed [loss, correct, count]."""
  model, optimizer = state.model, state.optimizer

  @tf.function(jit_compile=jit_compile)
  def replica_step(images, labels):
    with tf.GradientTape() as tape:
      logits = model(images, training=True)
      losses, stats = per_example_stats(logits, labels)
      # Divide by the global batch, not the replica's: the optimizer sums the
      # replicas' gradients, so N replicas train exactly like one device.
      loss = tf.nn.compute_average_loss(losses, global_batch_size=global_batch_size)
      scaled_loss = optimizer.scale_loss(loss)  # Identity unless LossScaleOptimizer.
    grads = tape.gradient(scaled_loss, model.trainable_variables)
    optimizer.apply(grads, model.trainable_variables)  # Unscales; skips non-finite.
    return stats

  @tf.function
  def train_steps(iterator, num_steps):
    totals = tf.zeros([3])
    for _ in tf.range(num_steps):
      images, labels = next(iterator)
      per_replica = strategy.run(replica_step, args=(images, labels))
      totals += strategy.reduce(SUM, per_replica, axis=None)
    return totals

  return train_steps


def make_eval_step(model: keras.Model, strategy: tf.distribute.Strategy):
  """Returns eval_step(images, labels, weights) -> summed [loss, correct, count]."""
  @tf.function
  def eval_step(images, labels, weights):
    def replica_step(images, labels, weights):
      return per_example_stats(model(images, training=False), labels, weights)[1]
    per_replica = strategy.run(replica_step, args=(images, labels, weights))
    return strategy.reduce(SUM, per_replica, axis=None)
  return eval_step


def evaluate(eval_step, dataset) -> dict:
  """Scores every example of a distributed eval dataset; sums across replicas."""
  totals = tf.zeros([3])
  for batch in dataset:
    totals += eval_step(*batch)
  loss_sum, correct, count = totals.numpy().tolist()
  return {'loss': loss_sum / max(count, 1), 'accuracy': correct / max(count, 1),
          'examples': int(round(count))}


def _restore(state: TrainState, manager: tf.train.CheckpointManager):
  """Restores the latest checkpoint, refusing a partial match."""
  path = manager.latest_checkpoint
  if not path:
    return
  try:
    state.checkpoint().restore(path).assert_consumed()
  except (AssertionError, ValueError, tf.errors.OpError) as e:
    detail = re.sub(r'\{\{.*?\}\}\s*|\s*\[Op:\w+\]', '', str(e)).strip()
    raise errors.CheckpointError(
        f'The checkpoint {path} does not match this model and flags (a different model, '
        f'precision or optimizer?). Use a new --model_dir or the original flags. '
        f'Details: {detail.splitlines()[0][:300]}') from None
  logging.info('Restored %s: epoch %d, step %d.', path, int(state.epoch), int(state.step))


def _check_model_dir(model_dir: str):
  try:
    os.makedirs(model_dir, exist_ok=True)
  except OSError as e:
    raise errors.CheckpointError(f'--model_dir={model_dir} cannot be created: {e}') from None
  if not os.access(model_dir, os.W_OK):
    raise errors.CheckpointError(f'--model_dir={model_dir} is not writable.')


def _write_scalars(writer, step: int, scalars: dict):
  with writer.as_default(step=step):
    for name, value in scalars.items():
      tf.summary.scalar(name, value)
  writer.flush()  # Visible in TensorBoard while training runs, not only at the end.


def run(config: config_lib.TrainConfig, datasets_override: Optional[data.Splits] = None,
        strategy_override: Optional[tf.distribute.Strategy] = None) -> dict:
  """Trains (or resumes) to config.epochs, evaluating each epoch; returns results.json."""
  config.validate()
  _check_model_dir(config.model_dir)

  # Set-up: strategy, data, state, checkpoints, summaries.
  strategy = strategy_override or distribute.make_strategy(config.strategy,
                                                           config.cpu_devices)
  config_lib.check_divisible(config, strategy.num_replicas_in_sync)
  splits = datasets_override or data.load_splits(
      config.dataset, config.train_split, config.eval_split, config.data_dir,
      config.tfds_manual_dir)
  steps_per_epoch = data.steps_per_epoch(splits.num_train, config.batch_size)
  if steps_per_epoch == 0:
    raise errors.ConfigError(f'--train_split={config.train_split} has {splits.num_train} '
                             f'examples, fewer than one --batch_size={config.batch_size}.')
  train_cached, eval_cached = splits.train.cache(), splits.eval.cache()
  eval_dataset = strategy.experimental_distribute_dataset(
      data.eval_pipeline(eval_cached, splits.num_eval, config.eval_batch_size))

  with tf.io.gfile.GFile(os.path.join(config.model_dir, 'config.json'), 'w') as f:
    f.write(config.to_json())  # What scripts/evaluate, predict and export rebuild from.
  state = create_state(config, splits, strategy)
  manager = tf.train.CheckpointManager(state.checkpoint(),
                                       os.path.join(config.model_dir, 'checkpoints'),
                                       max_to_keep=config.checkpoints_to_keep)
  _restore(state, manager)
  train_writer = tf.summary.create_file_writer(os.path.join(config.model_dir, 'train'))
  eval_writer = tf.summary.create_file_writer(os.path.join(config.model_dir, 'eval'))
  train_steps = make_train_steps(state, strategy, config.batch_size, config.jit_compile)
  eval_step = make_eval_step(state.model, strategy)

  logging.info('Training %s on %s (%d examples, %d steps/epoch) with %s, %d replica(s), '
               'batch %d, %s.', state.model.name, config.dataset, splits.num_train,
               steps_per_epoch, type(strategy).__name__, strategy.num_replicas_in_sync,
               config.batch_size, config.mixed_precision)
  total_steps = config.epochs * steps_per_epoch
  start_time = time.perf_counter()
  train_seconds_in_steps, images_trained = 0.0, 0
  eval_metrics = None

  # The loop: epochs of step windows; eval and a checkpoint at each epoch end.
  while int(state.epoch) < config.epochs:
    epoch = int(state.epoch)
    done_in_epoch = int(state.step) - epoch * steps_per_epoch
    iterator = iter(strategy.experimental_distribute_dataset(data.train_pipeline(
        train_cached, splits.num_train, config.batch_size, config.seed, epoch,
        skip_batches=done_in_epoch)))
    window_totals, window_start = tf.zeros([3]), time.perf_counter()
    while done_in_epoch < steps_per_epoch:
      step = int(state.step)
      num_steps = min(config.steps_per_loop, steps_per_epoch - done_in_epoch,
                      config.log_every_steps - step % config.log_every_steps)
      window_totals += train_steps(iterator, tf.constant(num_steps))
      state.step.assign_add(num_steps)
      done_in_epoch += num_steps
      step += num_steps
      if step % config.log_every_steps == 0 or done_in_epoch == steps_per_epoch:
        loss_sum, correct, count = window_totals.numpy().tolist()  # Waits for the steps.
        seconds = time.perf_counter() - window_start
        if not math.isfinite(loss_sum):
          raise errors.TrainingDivergedError(
              f'The training loss became {loss_sum} at step {step} (epoch {epoch + 1}); '
              f'stopped. The last good checkpoint in {manager.directory} is untouched.')
        images_per_sec = count / seconds
        train_seconds_in_steps += seconds
        images_trained += int(count)
        eta = (total_steps - step) * config.batch_size / max(images_per_sec, 1e-9)
        logging.info('step %d  epoch %d  loss %.4f  accuracy %.4f  %.0f images/s  ETA %.0fs',
                     step, epoch + 1, loss_sum / count, correct / count, images_per_sec, eta)
        _write_scalars(train_writer, step, {
            'loss': loss_sum / count, 'accuracy': correct / count,
            'learning_rate': float(keras.ops.convert_to_numpy(
                state.optimizer.learning_rate)),
            'images_per_sec': images_per_sec})
        window_totals, window_start = tf.zeros([3]), time.perf_counter()

    state.epoch.assign_add(1)
    eval_metrics = evaluate(eval_step, eval_dataset)
    _write_scalars(eval_writer, int(state.step),
                   {'loss': eval_metrics['loss'], 'accuracy': eval_metrics['accuracy']})
    path = manager.save(checkpoint_number=int(state.step))
    logging.info('epoch %d/%d  eval loss %.4f  accuracy %.4f on %d examples  saved %s',
                 int(state.epoch), config.epochs, eval_metrics['loss'],
                 eval_metrics['accuracy'], eval_metrics['examples'], path)

  if eval_metrics is None:  # Nothing left to train: report the restored model.
    eval_metrics = evaluate(eval_step, eval_dataset)
  results = {
      'test_accuracy': eval_metrics['accuracy'],
      'test_loss': eval_metrics['loss'],
      'test_examples': eval_metrics['examples'],
      'global_step': int(state.step),
      'epochs_completed': int(state.epoch),
      'train_seconds': time.perf_counter() - start_time,
      'train_images_per_sec': images_trained / train_seconds_in_steps
                              if train_seconds_in_steps else None,
      'weights_sha256': model_lib.weights_sha256(state.model),
      'num_replicas': strategy.num_replicas_in_sync,
      'config': dataclasses.asdict(config),
  }
  _write_json(os.path.join(config.model_dir, 'results.json'), results)
  return results


def _write_json(path: str, value: dict):
  """Writes atomically: a reader never sees half a file."""
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(value, f, indent=2)
  os.replace(tmp, path)
