"""Augmentation: shapes, sizes, label-preserving moves, off at evaluation, checkpointed RNG."""
import keras
import numpy as np

from mnist import augment
from mnist import config as config_lib
from mnist import model as model_lib


def _digit_like_batch(n=8):
  images = np.zeros((n, 28, 28, 1), np.float32)
  images[:, 10:18, 12:16, 0] = 1.0  # A bar in the middle.
  return images


def _ink_centers(images):
  rows, cols = np.indices(images.shape[1:3])
  mass = images[..., 0].sum(axis=(1, 2))
  return np.stack([(rows * images[..., 0]).sum(axis=(1, 2)) / mass,
                   (cols * images[..., 0]).sum(axis=(1, 2)) / mass], axis=1)


def _apply(layers, images):
  for layer in layers:
    images = layer(images, training=True)
  return keras.ops.convert_to_numpy(images)


def test_augmentation_keeps_shape_dtype_and_moves_ink_only_a_little():
  keras.utils.set_random_seed(0)
  images = _digit_like_batch()
  augmented = _apply(augment.augmentation_layers(elastic_alpha=34), images)
  assert augmented.shape == images.shape and augmented.dtype == np.float32
  assert not np.allclose(augmented, images)  # It does something...
  assert (augmented[..., 0].sum(axis=(1, 2)) > 0).all()
  # ...but the ink stays near where it was: labels hold.
  assert np.abs(_ink_centers(augmented) - 13.5).max() < 4


def test_augmentation_sizes_are_flags_and_zero_leaves_a_layer_out():
  keras.utils.set_random_seed(0)
  layers = augment.augmentation_layers(shift_pixels=3, rotation_degrees=0, zoom=0)
  assert [type(layer).__name__ for layer in layers] == ['RandomTranslation']
  images = _digit_like_batch(64)
  moves = np.abs(_ink_centers(_apply(layers, images)) - _ink_centers(images))
  assert moves.max() <= 3 + 1e-3  # Never beyond the flag...
  assert moves.max() > 2  # ...and past the default's 2 px.
  assert augment.augmentation_layers(0, 0, 0) == []
  assert [type(layer).__name__ for layer in augment.augmentation_layers(0, 0, 0, 34)] == [
      'RandomElasticDistortion']


def test_elastic_displacements_are_smooth_independent_per_axis_and_sized_by_alpha():
  # Bilinear resampling of a coordinate ramp returns the sampled coordinate, so
  # warping ramps reveals the displacement field itself.
  rows, cols = np.indices((28, 28)).astype(np.float32)
  ramps = np.repeat(np.stack([rows, cols], -1)[None], 32, axis=0)
  layer = augment.RandomElasticDistortion(alpha=34, sigma=4, seed=1)
  warped = keras.ops.convert_to_numpy(layer(ramps, training=True))
  inner = np.s_[:, 6:22, 6:22]  # Away from the zero fill at the borders.
  dy, dx = (warped[..., 0] - rows)[inner], (warped[..., 1] - cols)[inner]
  # Uniform [-1, 1] noise blurred by a unit-sum Gaussian has standard deviation
  # sqrt(1/3 / (4 pi sigma^2)) = 0.041 at sigma 4, so 1.38 px at alpha 34.
  for d in (dx, dy):
    assert 1.0 < d.std() < 1.8
    assert np.corrcoef(d[:, :, :-1].ravel(), d[:, :, 1:].ravel())[0, 1] > 0.9  # Smooth.
  assert abs(np.corrcoef(dx.ravel(), dy.ravel())[0, 1]) < 0.2  # Not along a diagonal.
  assert np.abs(dx[0] - dx[1]).max() > 0.5  # A new field for every image.


def test_elastic_is_identity_at_evaluation_and_with_alpha_zero():
  images = _digit_like_batch()
  layer = augment.RandomElasticDistortion(alpha=34)
  np.testing.assert_array_equal(layer(images, training=False), images)
  np.testing.assert_array_equal(
      augment.RandomElasticDistortion(alpha=0)(images, training=True), images)


def test_augmentation_is_off_at_evaluation_and_its_rng_is_checkpointed():
  keras.utils.set_random_seed(0)
  plain = model_lib.build_model(dropout_rate=0.0)
  augmented = model_lib.build_model(
      dropout_rate=0.0, augmentation=augment.augmentation_layers(elastic_alpha=34))
  augmented.set_weights(plain.get_weights())
  images = _digit_like_batch()
  np.testing.assert_array_equal(augmented(images, training=False),
                                plain(images, training=False))
  assert not np.allclose(augmented(images, training=True), plain(images, training=True))
  elastic = augmented.layers[3]
  assert isinstance(elastic, augment.RandomElasticDistortion)
  assert id(elastic.seed_generator.state) in {
      id(v) for v in model_lib.rng_state_variables(augmented)}


def test_config_builds_the_augmentation_it_names():
  config = config_lib.TrainConfig(augment=True, augment_zoom=0.0, augment_elastic_alpha=20,
                                  augment_elastic_sigma=5)
  model = model_lib.build_from_config(config, (28, 28, 1), 10)
  names = [type(layer).__name__ for layer in model.layers[:3]]
  assert names == ['RandomTranslation', 'RandomRotation', 'RandomElasticDistortion']
  assert (model.layers[2].alpha, model.layers[2].sigma) == (20, 5)
  assert not any('Random' in type(layer).__name__ for layer in
                 model_lib.build_from_config(config.replace(augment=False), (28, 28, 1),
                                             10).layers)
