"""Training-time augmentation: Keras layers that act only when called with training=True.

So evaluation, export and prediction see the images unchanged. The layers run in
float32 ahead of the model's dtype policy, and their seed-generator states are
checkpointed with the model (model.rng_state_variables).
"""
import keras
import numpy as np


class RandomElasticDistortion(keras.layers.Layer):
  """Elastic distortion (Simard, Steinkraus & Platt, 2003), one field per image.

  Every pixel moves by a random displacement: uniform noise in [-1, 1] for each
  axis, smoothed by a Gaussian of `sigma` pixels and scaled by `alpha`; the image
  is resampled bilinearly, with zeros outside. Simard's MNIST setting is alpha 34,
  sigma 4 (about 1.4 px standard deviation of a displacement).

  Not keras.layers.RandomElasticTransform: in Keras 3.15 it draws the x and y
  fields from one seed, so every pixel moves along the diagonal (measured: the
  two displacements correlate at 1.0), and it caps the size at alpha 2.8 px.
  """

  def __init__(self, alpha: float, sigma: float = 4.0, seed=None, **kwargs):
    super().__init__(**kwargs)
    self.alpha, self.sigma, self.seed = alpha, sigma, seed
    self.seed_generator = keras.random.SeedGenerator(seed)
    offsets = np.arange(-int(3 * sigma + 0.5), int(3 * sigma + 0.5) + 1)
    gaussian = np.exp(-offsets**2 / (2 * sigma**2))
    self._gaussian = (gaussian / gaussian.sum()).astype('float32')

  def call(self, images, training=None):
    if not training or not self.alpha:
      return images
    batch, height, width, channels = keras.ops.shape(images)
    noise = keras.random.uniform((batch, height, width, 2), -1.0, 1.0,
                                 seed=self.seed_generator)
    # A 2-D Gaussian is separable: blur down the columns, then along the rows.
    size = len(self._gaussian)
    taps = np.tile(self._gaussian[:, None, None], (1, 2, 1))  # One filter per axis.
    field = keras.ops.depthwise_conv(noise, taps.reshape(size, 1, 2, 1), padding='same')
    field = keras.ops.depthwise_conv(field, taps.reshape(1, size, 2, 1), padding='same')
    field = field * self.alpha
    # map_coordinates over the whole (batch, row, column, channel) volume: the batch
    # and channel coordinates are whole numbers, so nothing mixes across them.
    b, y, x, c = keras.ops.meshgrid(
        *(keras.ops.arange(n, dtype='float32') for n in (batch, height, width, channels)),
        indexing='ij')
    return keras.ops.image.map_coordinates(
        images, [b, y + field[..., :1], x + field[..., 1:], c], order=1,
        fill_mode='constant')

  def compute_output_shape(self, input_shape):
    return input_shape

  def get_config(self):
    return {**super().get_config(), 'alpha': self.alpha, 'sigma': self.sigma,
            'seed': self.seed}


def augmentation_layers(shift_pixels=2.0, rotation_degrees=10.0, zoom=0.1, elastic_alpha=0.0,
                        elastic_sigma=4.0, image_size=28, seed=None) -> list:
  """Random shifts, rotations and scales, each drawn per image in [-max, max], then
  (with elastic_alpha > 0) an elastic distortion.

  The defaults (±2 px, ±10°, ±10%, no elastic) are MNIST-style small distortions.
  A size of 0 leaves that layer out.
  """
  shift = shift_pixels / image_size
  layers = [
      shift and keras.layers.RandomTranslation(shift, shift, fill_mode='constant', seed=seed),
      rotation_degrees and keras.layers.RandomRotation(rotation_degrees / 360,
                                                       fill_mode='constant', seed=seed),
      zoom and keras.layers.RandomZoom(zoom, fill_mode='constant', seed=seed),
      elastic_alpha and RandomElasticDistortion(elastic_alpha, elastic_sigma, seed=seed)]
  return [layer for layer in layers if layer]
