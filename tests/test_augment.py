"""Augmentation: sizes as asked, label-preserving moves, off at evaluation, no state."""
import keras
import numpy as np

from mnist import augment
from mnist import config as config_lib
from mnist import model as model_lib

ROWS, COLS = np.indices((28, 28)).astype(np.float32)


def _digit_like_batch(n=8):
  images = np.zeros((n, 28, 28, 1), np.float32)
  images[:, 10:18, 12:16, 0] = 1.0  # A bar in the middle.
  return images


def _ink_centers(images):
  mass = images[..., 0].sum(axis=(1, 2))
  return np.stack([(ROWS * images[..., 0]).sum(axis=(1, 2)) / mass,
                   (COLS * images[..., 0]).sum(axis=(1, 2)) / mass], axis=1)


def _displacements(layer, n=32):
  """(rows, columns) each source pixel is read from, minus its own position, for n images.

  Bilinear resampling of a coordinate ramp returns the sampled coordinate, so
  warping ramps reveals the transform itself. Only the inner 16x16 pixels, away
  from the zero fill at the borders.
  """
  ramps = np.repeat(np.stack([ROWS, COLS], -1)[None], n, axis=0)
  warped = keras.ops.convert_to_numpy(layer(ramps, training=True))
  inner = np.s_[:, 6:22, 6:22]
  return (warped[..., 0] - ROWS)[inner], (warped[..., 1] - COLS)[inner]


def test_augmentation_keeps_shape_dtype_and_moves_ink_only_a_little():
  keras.utils.set_random_seed(0)
  images = _digit_like_batch()
  [layer] = augment.augmentation_layers(elastic_alpha=34)
  augmented = keras.ops.convert_to_numpy(layer(images, training=True))
  assert augmented.shape == images.shape and augmented.dtype == np.float32
  assert not np.allclose(augmented, images)  # It does something...
  assert (augmented[..., 0].sum(axis=(1, 2)) > 0).all()
  # ...but the ink stays near where it was (2 px of shift plus an elastic field of
  # 1.4 px standard deviation): labels hold.
  assert np.abs(_ink_centers(augmented) - 13.5).max() < 5.5


def test_shift_moves_every_pixel_alike_within_its_size():
  dy, dx = _displacements(augment.RandomDistortion(3, 0, 0), n=64)
  for d in (dy, dx):
    assert np.ptp(d, axis=(1, 2)).max() < 1e-3  # One shift per image.
    assert 2 < np.abs(d).max() <= 3 + 1e-3  # Never beyond the size, past the default 2.


def test_rotation_turns_about_the_center_within_its_size():
  dy, dx = _displacements(augment.RandomDistortion(0, 10, 0))
  ry, rx = ROWS[6:22, 6:22] - 13.5, COLS[6:22, 6:22] - 13.5
  # A rotation keeps the distance from the center...
  assert np.abs(np.hypot(ry + dy, rx + dx) - np.hypot(ry, rx)).max() < 1e-3
  # ...and turns every pixel of an image by the same angle, at most 10 degrees.
  angles = np.arctan2(ry + dy, rx + dx) - np.arctan2(ry, rx)
  angles = (angles + np.pi) % (2 * np.pi) - np.pi
  assert np.ptp(angles, axis=(1, 2)).max() < 1e-3
  assert np.deg2rad(5) < np.abs(angles).max() <= np.deg2rad(10) + 1e-4


def test_zoom_scales_about_the_center_within_its_size():
  dy, dx = _displacements(augment.RandomDistortion(0, 0, 0.1))
  ry, rx = ROWS[6:22, 6:22] - 13.5, COLS[6:22, 6:22] - 13.5
  ratio_y, ratio_x = (ry + dy) / ry, (rx + dx) / rx  # Source over output distance: 1/scale.
  assert np.abs(ratio_y - ratio_x).max() < 1e-3
  assert np.ptp(ratio_y, axis=(1, 2)).max() < 1e-3  # One scale per image.
  assert (1 / 1.1 - 1e-3 <= ratio_y).all() and (ratio_y <= 1 / 0.9 + 1e-3).all()


def test_elastic_displacements_are_smooth_independent_per_axis_and_sized_by_alpha():
  dy, dx = _displacements(augment.RandomDistortion(0, 0, 0, elastic_alpha=34,
                                                   elastic_sigma=4))
  # Uniform [-1, 1] noise blurred by a unit-sum Gaussian has standard deviation
  # sqrt(1/3 / (4 pi sigma^2)) = 0.041 at sigma 4, so 1.38 px at alpha 34.
  for d in (dx, dy):
    assert 1.0 < d.std() < 1.8
    assert np.corrcoef(d[:, :, :-1].ravel(), d[:, :, 1:].ravel())[0, 1] > 0.9  # Smooth.
  assert abs(np.corrcoef(dx.ravel(), dy.ravel())[0, 1]) < 0.2  # Not along a diagonal.
  assert np.abs(dx[0] - dx[1]).max() > 0.5  # A new field for every image.


def test_sizes_of_zero_mean_no_augmentation():
  assert augment.augmentation_layers(0, 0, 0, 0) == []
  images = _digit_like_batch()
  np.testing.assert_allclose(augment.RandomDistortion(0, 0, 0)(images, training=True), images,
                             atol=1e-6)


def test_augmentation_is_off_at_evaluation_and_holds_no_state():
  keras.utils.set_random_seed(0)
  plain = model_lib.build_model(dropout_rate=0.0)
  augmented = model_lib.build_model(
      dropout_rate=0.0, augmentation=augment.augmentation_layers(elastic_alpha=34,
                                                                 cutout_pixels=6))
  augmented.set_weights(plain.get_weights())
  images = _digit_like_batch()
  np.testing.assert_array_equal(augmented(images, training=False),
                                plain(images, training=False))
  assert not np.allclose(augmented(images, training=True), plain(images, training=True))
  # Draws derive from (seed, step): no generator state for checkpoints to carry.
  assert len(augmented.variables) == len(plain.variables)


def test_config_builds_the_augmentation_it_names():
  config = config_lib.TrainConfig(augment=True, augment_shift_pixels=3, augment_zoom=0.0,
                                  augment_elastic_alpha=20, augment_elastic_sigma=5)
  [layer] = model_lib.build_from_config(config, (28, 28, 1), 10).layers[:1]
  assert isinstance(layer, augment.RandomDistortion)
  assert (layer.shift_pixels, layer.rotation_degrees, layer.zoom, layer.elastic_alpha,
          layer.elastic_sigma) == (3, 10, 0, 20, 5)
  assert not any(isinstance(layer, augment.RandomDistortion) for layer in
                 model_lib.build_from_config(config.replace(augment=False), (28, 28, 1),
                                             10).layers)


def test_cutout_zeroes_one_square_per_image_only_when_training():
  keras.utils.set_random_seed(0)
  layer = augment.RandomCutout(8)
  images = np.ones((256, 28, 28, 1), np.float32)
  np.testing.assert_array_equal(layer(images, training=False), images)
  erased = keras.ops.convert_to_numpy(layer(images, training=True))[..., 0] == 0
  counts = erased.sum(axis=(1, 2))
  for image, count in zip(erased, counts):  # One axis-aligned rectangle, at most 8x8.
    rows, columns = np.nonzero(image.any(axis=1))[0], np.nonzero(image.any(axis=0))[0]
    assert len(rows) <= 8 and len(columns) <= 8
    assert count == len(rows) * len(columns)
  assert (counts == 64).mean() > 0.3  # Centres away from the borders erase all 64.
  assert 0 < counts.min() < 64  # Squares centred near a border are cut off by it.
  centres = [np.argwhere(image).mean(axis=0) for image in erased]
  assert np.ptp(centres, axis=0).min() > 20  # Centres spread over the whole image.


def test_config_adds_cutout_after_the_distortion():
  config = config_lib.TrainConfig(augment=True, augment_cutout_pixels=6)
  model = model_lib.build_from_config(config, (28, 28, 1), 10)
  distortion, cutout = model.layers[:2]
  assert isinstance(distortion, augment.RandomDistortion)
  assert isinstance(cutout, augment.RandomCutout) and cutout.size == 6
  only_cutout = augment.augmentation_layers(0, 0, 0, cutout_pixels=6)
  assert [type(layer) for layer in only_cutout] == [augment.RandomCutout]
