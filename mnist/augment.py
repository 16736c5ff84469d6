"""Training-time augmentation: a Keras layer that acts only when called with training=True.

So evaluation, export and prediction see the images unchanged. It runs in float32
ahead of the model's dtype policy, and its seed-generator state is checkpointed
with the model (model.rng_state_variables).
"""
import keras
import numpy as np


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
               elastic_sigma=4.0, seed=None, **kwargs):
    super().__init__(**kwargs)
    self.shift_pixels, self.rotation_degrees, self.zoom = shift_pixels, rotation_degrees, zoom
    self.elastic_alpha, self.elastic_sigma, self.seed = elastic_alpha, elastic_sigma, seed
    self.seed_generator = keras.random.SeedGenerator(seed)
    radius = int(3 * elastic_sigma + 0.5)
    gaussian = np.exp(-np.arange(-radius, radius + 1)**2 / (2 * elastic_sigma**2))
    self._gaussian = (gaussian / gaussian.sum()).astype('float32')

  def call(self, images, training=None):
    if not training:
      return images
    batch, height, width, channels = keras.ops.shape(images)
    def uniform(limit):  # One value per image, broadcast over (row, column, channel).
      return keras.random.uniform((batch, 1, 1, 1), -limit, limit, seed=self.seed_generator)
    angle = uniform(np.deg2rad(self.rotation_degrees))
    scale = 1.0 + uniform(self.zoom)
    shift_y, shift_x = uniform(self.shift_pixels), uniform(self.shift_pixels)
    # Each output pixel reads the source where the inverse transform puts it.
    # map_coordinates runs over the whole (batch, row, column, channel) volume:
    # batch and channel coordinates are whole numbers, so nothing mixes across them.
    b, y, x, c = keras.ops.meshgrid(
        *(keras.ops.arange(n, dtype='float32') for n in (batch, height, width, channels)),
        indexing='ij')
    center_y, center_x = (height - 1) / 2, (width - 1) / 2
    cos, sin = keras.ops.cos(angle), keras.ops.sin(angle)
    source_y = center_y + (cos * (y - center_y) - sin * (x - center_x)) / scale - shift_y
    source_x = center_x + (sin * (y - center_y) + cos * (x - center_x)) / scale - shift_x
    if self.elastic_alpha:
      field = self._elastic_field(batch, height, width)
      source_y, source_x = source_y + field[..., :1], source_x + field[..., 1:]
    return keras.ops.image.map_coordinates(images, [b, source_y, source_x, c], order=1,
                                           fill_mode='constant')

  def _elastic_field(self, batch, height, width):
    """(batch, height, width, 2) displacements in pixels: rows, then columns."""
    noise = keras.random.uniform((batch, height, width, 2), -1.0, 1.0,
                                 seed=self.seed_generator)
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
            'elastic_alpha': self.elastic_alpha, 'elastic_sigma': self.elastic_sigma,
            'seed': self.seed}


def augmentation_layers(shift_pixels=2.0, rotation_degrees=10.0, zoom=0.1, elastic_alpha=0.0,
                        elastic_sigma=4.0, seed=None) -> list:
  """The training-time augmentation for these sizes: [] when every size is 0.

  The defaults (±2 px, ±10°, ±10%, no elastic distortion) are MNIST-style small
  distortions.
  """
  if not (shift_pixels or rotation_degrees or zoom or elastic_alpha):
    return []
  return [RandomDistortion(shift_pixels, rotation_degrees, zoom, elastic_alpha, elastic_sigma,
                           seed=seed)]
