"""The training-batch transform stage: off by default (labels untouched), on in
registration order with one-hot targets, drawing from its own stream."""
import numpy as np
import pytest
import tensorflow as tf

from mnist import batch_transforms
from mnist import config as config_lib
from mnist import losses
from mnist import randomness


def test_with_no_transform_on_the_labels_pass_through():
  stage = batch_transforms.make_stage(config_lib.TrainConfig(), num_classes=10)
  images = tf.zeros([4, 28, 28, 1])
  out_images, targets = stage(images, tf.constant([1, 2, 3, 4]))
  assert out_images is images and targets is None


@pytest.fixture
def flip_transform(monkeypatch):
  """A transform registered for the test only: flips the images, keeps the targets."""
  monkeypatch.setattr(batch_transforms, '_REGISTRY', {})
  batch_transforms.register('flip', enabled=lambda config: config.seed == 7)(
      lambda images, targets, config: (images[:, ::-1], targets))


def test_an_enabled_transform_gets_one_hot_targets(flip_transform):
  assert batch_transforms.active(config_lib.TrainConfig(seed=1)) == ()
  stage = batch_transforms.make_stage(config_lib.TrainConfig(seed=7), num_classes=3)
  images = tf.reshape(tf.range(8, dtype=tf.float32), [1, 8, 1, 1])
  out_images, targets = stage(images, tf.constant([2]))
  np.testing.assert_array_equal(out_images.numpy().ravel(), np.arange(8)[::-1])
  np.testing.assert_array_equal(targets.numpy(), [[0, 0, 1]])


def test_one_hot_targets_give_the_integer_labels_loss_with_smoothing_too():
  logits = tf.constant(np.random.default_rng(0).normal(size=(5, 10)), tf.float32)
  labels = tf.constant([0, 3, 9, 1, 1])
  for smoothing in (0.0, 0.1):
    np.testing.assert_allclose(
        losses.per_example_loss(logits, tf.one_hot(labels, 10), smoothing).numpy(),
        losses.per_example_loss(logits, labels, smoothing).numpy(), rtol=1e-6)


def test_the_transforms_stream_leaves_the_models_draws_as_they_were():
  def first_uniforms(stream):
    with randomness.draws(3, tf.constant(5, tf.int64), stream):
      return randomness.uniform(4, ()).numpy()
  with randomness.draws(3, tf.constant(5, tf.int64)):
    model_draws = randomness.uniform(4, ()).numpy()
  np.testing.assert_array_equal(first_uniforms(randomness.MODEL_STREAM), model_draws)
  assert not np.array_equal(first_uniforms(randomness.BATCH_TRANSFORM_STREAM), model_draws)


def test_beta_draws_are_per_example_and_in_range():
  with randomness.draws(0, tf.constant(1, tf.int64)):
    values = randomness.beta(1000, 0.2).numpy()
  assert values.shape == (1000,) and ((values >= 0) & (values <= 1)).all()
  # Beta(0.2, 0.2) piles up near 0 and 1: mean 1/2, variance 1/(4 * 1.4).
  assert abs(values.mean() - 0.5) < 0.05 and abs(values.var() - 1 / 5.6) < 0.03
