"""--input_on_device: the training split kept on the device, each batch gathered there.

Under the default strategy each tf.data batch is made on the host and copied to the
device as float32 (4x its uint8 size) at every step, and nothing prefetches it to a
GPU. Here the split's uint8 images and labels are copied to the device once; each
step, inside the compiled loop, gathers its batch by index and normalises it there.

The order is the tf.data pipeline's (data.train_pipeline): tf.data's own full-buffer
shuffle of the example indices with the epoch's seed, which draws the same
permutation as shuffling the examples themselves (it depends only on the count and
the seed). So the batches are the pipeline's, batch for batch, and switching changes
no weight of a --deterministic run. One device only: MirroredStrategy's distributed
iterator already prefetches each replica's share to its device.
"""
import numpy as np
import tensorflow as tf

from mnist import data


def epoch_order(num_examples: int, seed: int, epoch: int) -> np.ndarray:
  """The example indices in the order data.train_pipeline visits them that epoch."""
  indices = tf.data.Dataset.range(num_examples).shuffle(
      num_examples, seed=data.epoch_seed(seed, epoch), reshuffle_each_iteration=False)
  return np.fromiter(indices.as_numpy_iterator(), np.int64, count=num_examples)


class DeviceBatches:
  """Stands in for the epoch's iterator in train_steps: `next()`, traced inside the
  compiled loop, gathers the next batch on the device and advances a cursor.

  `start_epoch` (on the host, between calls) sets the epoch's order and where in it
  to begin; the examples themselves are copied to the device once, here.
  """

  def __init__(self, cached: tf.data.Dataset, num_examples: int, batch_size: int,
               seed: int, device: str):
    self._num_examples, self._batch_size, self._seed = num_examples, batch_size, seed
    images, labels = next(iter(cached.batch(num_examples)))
    used = data.steps_per_epoch(num_examples, batch_size) * batch_size
    with tf.device(device):
      self._images, self._labels = tf.identity(images), tf.identity(labels)
      # Every uint8 value normalised once, eagerly, as the pipeline does: inside the
      # compiled loop Grappler turns x / 255 into x * (1 / 255), 1 ulp off for some x,
      # and a --deterministic run's weights would no longer match the pipeline's.
      self._pixel_values = data.normalize(tf.range(256, dtype=tf.int32), 0)[0]
      self._order = tf.Variable(tf.zeros([used], tf.int64), trainable=False,
                                name='epoch_order')
      self._cursor = tf.Variable(tf.constant(0, tf.int64), trainable=False,
                                 name='epoch_cursor')

  def start_epoch(self, epoch: int, skip_batches: int = 0) -> 'DeviceBatches':
    """The epoch's order (its dropped remainder cut), from batch `skip_batches` on."""
    order = epoch_order(self._num_examples, self._seed, epoch)
    self._order.assign(order[:self._order.shape[0]])
    self._cursor.assign(skip_batches * self._batch_size)
    return self

  def __iter__(self):
    return self

  def __next__(self):
    start = self._cursor.read_value()
    indices = tf.slice(self._order, [start], [self._batch_size])
    self._cursor.assign_add(self._batch_size)
    images = tf.gather(self._images, indices)
    labels = tf.gather(self._labels, indices)
    return (tf.gather(self._pixel_values, tf.cast(images, tf.int32)),
            data.normalize(images, labels)[1])
