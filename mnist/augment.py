"""Training-time augmentation: a Keras layer that acts only when called with training=True.

So evaluation, export and prediction see the images unchanged. It runs in float32
ahead of the model's dtype policy. Every parameter is drawn per example through
mnist/randomness.py: the same transform for an example of a given step on any
number of replicas, and nothing to checkpoint.
"""
import keras
import numpy as np

from mnist import randomness


class RandomDistortion(keras.layers.Layer):
  """A random shift, rotation and scale per image, then optionally an elastic
  distortion, all resampled once.

  Sizes are drawn uniformly in [-max, max] for each image. The elastic distortion
  is Simard, Steinkraus & Platt's (2003): every pixel moves by uniform noise in
  [-1, 1] per axis, smoothed by a Gaussian of `elastic_sigma` pixels and scaled by
  `elastic_alpha` (Simard's MNIST setting: 34 and 4, about 1.4 px standard
  deviation). Outside the image is zero.

  Why not keras.layers.RandomTranslation + RandomRotation + RandomZoom +
  RandomElasticTransform: chained, each one resamples bilinearly and blurs the
  strokes again (BUILD.md, Measured); and in Keras 3.15 RandomElasticTransform
  draws the x and y fields from one seed, so every pixel moves along the diagonal
  (the two displacements measured to correlate at 1.0).
  """

  def __init__(self, shift_pixels=2.0, rotation_degrees=10.0, zoom=0.1, elastic_alpha=0.0,
               elastic_sigma=4.0, **kwargs):
    super().__init__(**kwargs)
    self.shift_pixels, self.rotation_degrees, self.zoom = shift_pixels, rotation_degrees, zoom
    self.elastic_alpha, self.elastic_sigma = elastic_alpha, elastic_sigma
    radius = int(3 * elastic_sigma + 0.5)
    gaussian = np.exp(-np.arange(-radius, radius + 1)**2 / (2 * elastic_sigma**2))
    self._gaussian = (gaussian / gaussian.sum()).astype('float32')

  def call(self, images, training=None):
    if not training:
      return images
    batch, height, width, _ = keras.ops.shape(images)
    def uniform(limit):  # One value per image, broadcast over (row, column).
      return randomness.uniform(batch, (1, 1), -limit, limit)
    angle = uniform(np.deg2rad(self.rotation_degrees))
    scale = 1.0 + uniform(self.zoom)
    shift_y, shift_x = uniform(self.shift_pixels), uniform(self.shift_pixels)
    # Each output pixel reads the source where the inverse transform puts it.
    y, x = np.mgrid[:height, :width].astype('float32') - [[[(height - 1) / 2]],
                                                           [[(width - 1) / 2]]]
    cos, sin = keras.ops.cos(angle), keras.ops.sin(angle)
    source_y = (height - 1) / 2 + (cos * y - sin * x) / scale - shift_y
    source_x = (width - 1) / 2 + (sin * y + cos * x) / scale - shift_x
    if self.elastic_alpha:
      field = self._elastic_field(batch, height, width)
      source_y, source_x = source_y + field[..., 0], source_x + field[..., 1]
    return _bilinear_sample(images, source_y, source_x)

  def _elastic_field(self, batch, height, width):
    """(batch, height, width, 2) displacements in pixels: rows, then columns."""
    noise = randomness.uniform(batch, (height, width, 2), -1.0, 1.0)
    # A 2-D Gaussian is separable: blur down the columns, then along the rows.
    size = len(self._gaussian)
    taps = np.tile(self._gaussian[:, None, None], (1, 2, 1))  # One filter per axis.
    field = keras.ops.depthwise_conv(noise, taps.reshape(size, 1, 2, 1), padding='same')
    field = keras.ops.depthwise_conv(field, taps.reshape(1, size, 2, 1), padding='same')
    return field * self.elastic_alpha

  def compute_output_shape(self, input_shape):
    return input_shape

  def get_config(self):
    return {**super().get_config(), 'shift_pixels': self.shift_pixels,
            'rotation_degrees': self.rotation_degrees, 'zoom': self.zoom,
            'elastic_alpha': self.elastic_alpha, 'elastic_sigma': self.elastic_sigma}


class RandomCutout(keras.layers.Layer):
  """Zeroes one `size` x `size` square per image, centred uniformly over the image
  (DeVries & Taylor 2017, 'cutout'); near a border part of the square falls outside,
  so less is erased. Acts only when training, like RandomDistortion."""

  def __init__(self, size, **kwargs):
    super().__init__(**kwargs)
    self.size = size

  def call(self, images, training=None):
    if not training:
      return images
    batch, height, width, _ = keras.ops.shape(images)
    def centre(extent):  # One per image, broadcast over (row, column).
      return randomness.uniform(batch, (1, 1), 0.0, keras.ops.cast(extent, 'float32'))
    centre_y, centre_x = centre(height), centre(width)
    # Pixel i covers [i, i + 1); the square holds the pixels whose centres are within
    # size / 2 of its centre on both axes: `size` of them per axis away from borders.
    rows = keras.ops.reshape(keras.ops.arange(height, dtype='float32') + 0.5, (1, -1, 1))
    columns = keras.ops.reshape(keras.ops.arange(width, dtype='float32') + 0.5, (1, 1, -1))
    erased = ((keras.ops.abs(rows - centre_y) < self.size / 2) &
              (keras.ops.abs(columns - centre_x) < self.size / 2))
    return images * keras.ops.cast(~erased, images.dtype)[..., None]

  def compute_output_shape(self, input_shape):
    return input_shape

  def get_config(self):
    return {**super().get_config(), 'size': self.size}


def _bilinear_sample(images, source_y, source_x):
  """images (batch, height, width, channels) read at (batch, height, width) fractional
  source positions, bilinearly; zero outside the image.

  Four gathers from the flattened batch. keras.ops.image.map_coordinates can do
  the same over the (batch, row, column, channel) volume, but it took 66 ms per
  batch of 128 where this takes 8 and Keras's three affine layers 6 (one run, same
  load; scripts/show_augmentation.py times ours against Keras's).
  """
  batch, height, width, channels = keras.ops.shape(images)
  pixels = keras.ops.reshape(images, (-1, channels))
  first_pixel = keras.ops.reshape(keras.ops.arange(batch) * (height * width), (-1, 1, 1))
  top, left = keras.ops.floor(source_y), keras.ops.floor(source_x)
  down, right = source_y - top, source_x - left  # Weights of the lower and right pixels.
  sampled = 0.0
  for row, row_weight in ((top, 1.0 - down), (top + 1.0, down)):
    for column, column_weight in ((left, 1.0 - right), (left + 1.0, right)):
      inside = ((row >= 0) & (row <= height - 1) & (column >= 0) & (column <= width - 1))
      index = (first_pixel + keras.ops.cast(keras.ops.clip(row, 0, height - 1), 'int32') * width
               + keras.ops.cast(keras.ops.clip(column, 0, width - 1), 'int32'))
      weight = row_weight * column_weight * keras.ops.cast(inside, images.dtype)
      sampled = sampled + keras.ops.take(pixels, index, axis=0) * weight[..., None]
  return sampled


def augmentation_layers(shift_pixels=2.0, rotation_degrees=10.0, zoom=0.1, elastic_alpha=0.0,
                        elastic_sigma=4.0, cutout_pixels=0) -> list:
  """The training-time augmentation for these sizes: [] when every size is 0.

  The defaults (±2 px, ±10°, ±10%, no elastic distortion, no cutout) are MNIST-style
  small distortions. Cutout comes after the distortion, so its square stays square.
  """
  layers = []
  if shift_pixels or rotation_degrees or zoom or elastic_alpha:
    layers.append(RandomDistortion(shift_pixels, rotation_degrees, zoom, elastic_alpha,
                                   elastic_sigma))
  if cutout_pixels:
    layers.append(RandomCutout(cutout_pixels))
  return layers
