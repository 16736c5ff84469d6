"""Training randomness as a function of the example, not the device.

Every random draw of a train step (dropout masks, augmentation parameters) is a
stateless draw keyed by (run seed, global step, draw) and taken for the whole
global batch, of which each replica keeps its own rows (replica id x per-replica
batch). So example i of global step s gets the same mask and the same transform
on one device, on N replicas or on N workers, and a resumed run (on any number of
replicas) draws what the uninterrupted one drew: no generator state to checkpoint.

`draws(seed, step)` opens a step's draws; within it the random layers number their
draws in call order (the same on every replica, and again from 0 when SAM's second
pass reopens the step). Outside any step (a layer called by hand, Keras fit) the
draws are seeded from TensorFlow's global seed instead.

The price: each replica generates the global batch's random numbers, N times what
it uses. That is a few thousand uniforms per example even for strided_cnn, next to
its ~100 MFLOP of convolutions.
"""
import contextlib
import threading

import keras
import tensorflow as tf

# Per thread: MirroredStrategy traces each replica's function in its own thread.
_local = threading.local()


class _StepDraws:
  """The key of one train step and how many draws its layers have taken."""

  def __init__(self, seed, step, stream=0):
    seed_pair = tf.constant([seed, stream], tf.int64)
    self.key = tf.random.experimental.stateless_fold_in(seed_pair, tf.cast(step, tf.int64))
    self.count = 0

  def next_key(self):
    key = tf.random.experimental.stateless_fold_in(self.key, self.count)
    self.count += 1
    return key


# The model's layers draw from stream 0; the training-batch transforms
# (mnist/batch_transforms/) from their own, so SAM's second pass, which reopens only
# the model's, sees the same dropout as the first.
MODEL_STREAM, BATCH_TRANSFORM_STREAM = 0, 1


@contextlib.contextmanager
def draws(seed: int, step, stream: int = MODEL_STREAM):
  """Within this block, random training layers draw from (seed, step, stream): `step`
  is the global step being trained (a tensor inside tf.function)."""
  previous = getattr(_local, 'step_draws', None)
  _local.step_draws = _StepDraws(seed, step, stream)
  try:
    yield
  finally:
    _local.step_draws = previous


def _next_key():
  step_draws = getattr(_local, 'step_draws', None)
  if step_draws is None:  # Not in a train step: no key to reproduce.
    return tf.random.uniform([2], tf.int64.min, tf.int64.max, dtype=tf.int64)
  return step_draws.next_key()


def replica_slice():
  """(replica index in the global batch, number of replicas): (0, 1) outside a
  replica context. Under multi-worker the index counts every worker's replicas."""
  context = tf.distribute.get_replica_context()
  if context is None or context.num_replicas_in_sync == 1:
    return 0, 1
  return context.replica_id_in_sync_group, context.num_replicas_in_sync


def uniform(batch, shape, minval=0.0, maxval=1.0):
  """float32 uniforms of shape (batch, *shape) in [minval, maxval): this replica's
  `batch` rows of one draw for the whole global batch."""
  replica, num_replicas = replica_slice()
  values = tf.random.stateless_uniform([batch * num_replicas, *shape], seed=_next_key(),
                                       minval=minval, maxval=maxval)
  if num_replicas == 1:
    return values
  return values[replica * batch:(replica + 1) * batch]


def beta(batch, alpha: float):
  """float32 Beta(alpha, alpha) draws, one per example: this replica's `batch` rows of
  one draw for the whole global batch (X / (X + Y) of two Gamma(alpha) draws)."""
  replica, num_replicas = replica_slice()
  x, y = (tf.random.stateless_gamma([batch * num_replicas], seed=_next_key(), alpha=alpha)
          for _ in range(2))
  values = x / (x + y)
  if num_replicas == 1:
    return values
  return values[replica * batch:(replica + 1) * batch]


class ExampleDropout(keras.layers.Layer):
  """keras.layers.Dropout with per-example masks from `uniform`: the same mask for an
  example of a given step whatever the partition. Identity unless training."""

  def __init__(self, rate, **kwargs):
    super().__init__(**kwargs)
    if not 0 <= rate < 1:
      raise ValueError(f'Dropout rate must be in [0, 1), got {rate}.')
    self.rate = rate

  def call(self, inputs, training=None):
    if not training or self.rate == 0:
      return inputs
    shape = keras.ops.shape(inputs)
    keep = uniform(shape[0], shape[1:]) >= self.rate
    return keras.ops.where(keep, inputs / (1 - self.rate), keras.ops.zeros_like(inputs))

  def compute_output_shape(self, input_shape):
    return input_shape

  def get_config(self):
    return {**super().get_config(), 'rate': self.rate}
