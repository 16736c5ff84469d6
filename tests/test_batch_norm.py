"""The fused batch norm computes what keras.layers.BatchNormalization computes."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from mnist import batch_norm


def _pair(channels=3, momentum=0.9, dtype=None):
  """A Keras and a fused layer, built on NHWC input, with the same random parameters."""
  rng = np.random.default_rng(0)
  keras_layer = keras.layers.BatchNormalization(momentum=momentum, dtype=dtype)
  fused_layer = batch_norm.FusedBatchNormalization(momentum=momentum, dtype=dtype)
  for layer in (keras_layer, fused_layer):
    layer.build((None, 5, 5, channels))
  values = [rng.normal(size=channels), rng.normal(size=channels),   # gamma, beta
            rng.normal(size=channels), rng.uniform(0.5, 2, size=channels)]  # moving
  for layer in (keras_layer, fused_layer):
    for variable, value in zip(layer.weights, values):
      variable.assign(value.astype(np.float32))
  return keras_layer, fused_layer


def _images(shape=(16, 5, 5, 3)):
  return tf.constant(np.random.default_rng(1).normal(2.0, 3.0, size=shape), tf.float32)


def test_training_step_normalises_and_updates_the_moving_averages_like_keras():
  keras_layer, fused_layer = _pair()
  images = _images()
  np.testing.assert_allclose(fused_layer(images, training=True),
                             keras_layer(images, training=True), atol=1e-4)
  np.testing.assert_allclose(fused_layer.moving_mean.numpy(),
                             keras_layer.moving_mean.numpy(), atol=1e-5)
  # The kernel averages the unbiased batch variance: n / (n - 1) with n = 16 * 5 * 5.
  n = 16 * 5 * 5
  batch_variance = np.var(images.numpy(), axis=(0, 1, 2))
  expected = keras_layer.moving_variance.numpy() + 0.1 * batch_variance / (n - 1)
  np.testing.assert_allclose(fused_layer.moving_variance.numpy(), expected, rtol=1e-4)


def test_inference_uses_the_moving_averages_and_changes_nothing():
  keras_layer, fused_layer = _pair()
  images = _images()
  before = [v.numpy() for v in fused_layer.weights]
  np.testing.assert_allclose(fused_layer(images, training=False),
                             keras_layer(images, training=False), atol=1e-4)
  for old, variable in zip(before, fused_layer.weights):
    np.testing.assert_array_equal(old, variable.numpy())


def test_gradients_match_keras():
  keras_layer, fused_layer = _pair()
  images = _images()
  upstream = _images() * 0.1  # An arbitrary, non-uniform loss gradient.
  grads = []
  for layer in (keras_layer, fused_layer):
    with tf.GradientTape() as tape:
      tape.watch(images)
      loss = tf.reduce_sum(layer(images, training=True) * upstream)
    grads.append(tape.gradient(loss, [images, layer.gamma.value, layer.beta.value]))
  for expected, got in zip(*grads):
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_bfloat16_activations_keep_float32_statistics():
  _, fused_layer = _pair(dtype=keras.DTypePolicy('mixed_bfloat16'))
  outputs = fused_layer(tf.cast(_images(), tf.bfloat16), training=True)
  assert outputs.dtype == tf.bfloat16
  assert all(v.dtype == 'float32' for v in fused_layer.weights)


@pytest.mark.parametrize('shape', [(None, 8), (None, 4, 4, 2, 3)])
def test_only_nhwc_images_are_accepted(shape):
  with pytest.raises(ValueError, match='4-D NHWC'):
    batch_norm.FusedBatchNormalization().build(shape)


def test_checkpoints_of_the_keras_layer_restore_into_the_fused_one(tmp_path):
  keras_layer, _ = _pair()
  path = tf.train.Checkpoint(layer=keras_layer).write(str(tmp_path / 'ckpt'))
  fused_layer = batch_norm.FusedBatchNormalization()
  fused_layer.build((None, 5, 5, 3))
  tf.train.Checkpoint(layer=fused_layer).read(path).assert_consumed()
  for expected, got in zip(keras_layer.weights, fused_layer.weights):
    np.testing.assert_array_equal(got.numpy(), expected.numpy())


def test_two_replicas_normalise_with_the_global_batch_statistics(mirrored2):
  """Each replica sees half the batch, yet normalises and updates the averages with the
  whole batch's statistics, as one device's fused kernel does."""
  _, one_device = _pair()
  with mirrored2.scope():
    _, synchronized = _pair()
  images = _images()  # Halves with different statistics: the first 8 and the last 8.
  images = tf.concat([images[:8] * 2.0 + 1.0, images[8:]], axis=0)
  expected = one_device(images, training=True)

  dataset = mirrored2.experimental_distribute_dataset(tf.data.Dataset.from_tensors(images))
  @tf.function
  def train_call(batch):
    return mirrored2.run(lambda x: synchronized(x, training=True), args=(batch,))
  outputs = mirrored2.experimental_local_results(train_call(next(iter(dataset))))
  np.testing.assert_allclose(tf.concat(outputs, axis=0), expected, atol=1e-4)
  for variable in (synchronized.moving_mean, synchronized.moving_variance):
    first, second = mirrored2.experimental_local_results(variable.value)
    np.testing.assert_array_equal(first.numpy(), second.numpy())
  np.testing.assert_allclose(synchronized.moving_mean.numpy(),
                             one_device.moving_mean.numpy(), rtol=1e-5)
  np.testing.assert_allclose(synchronized.moving_variance.numpy(),
                             one_device.moving_variance.numpy(), rtol=1e-5)
