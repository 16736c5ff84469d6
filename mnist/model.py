"""Models, selected by name. The seed's CNN is the default."""
import hashlib
from typing import Sequence

import keras

from mnist import augment as augment_lib
from mnist import batch_norm as batch_norm_lib
from mnist import errors
from mnist import hardware
from mnist import randomness


def _conv(filters, size, batch_norm, dtype, padding='valid', strides=1):
  """Conv + ReLU; with batch_norm, Conv (no bias: BN has one) + BN + ReLU."""
  if not batch_norm:
    return [keras.layers.Conv2D(filters, size, strides, padding=padding, activation='relu',
                                dtype=dtype)]
  return [keras.layers.Conv2D(filters, size, strides, padding=padding, use_bias=False,
                              dtype=dtype),
          batch_norm_lib.FusedBatchNormalization(dtype=dtype),
          keras.layers.ReLU(dtype=dtype)]


def _head(units, num_classes, dropout_rate, dtype):
  return [keras.layers.Flatten(dtype=dtype),
          keras.layers.Dense(units, activation='relu', dtype=dtype),
          randomness.ExampleDropout(dropout_rate, dtype=dtype),
          keras.layers.Dense(num_classes, dtype=dtype)]


def _widths(width, *channels):
  """The channel counts scaled by `width` (at least one channel each)."""
  return [max(1, round(c * width)) for c in channels]


def seed_cnn(num_classes, dtype=None, dropout_rate=0.5, batch_norm=False, width=1.0) -> list:
  """The seed document's CNN: two conv/pool blocks, a 128-unit layer, dropout, logits.
  About 15.4 MFLOP per training image."""
  c1, c2, units = _widths(width, 32, 64, 128)
  return (_conv(c1, 3, batch_norm, dtype) + [keras.layers.MaxPooling2D(2, dtype=dtype)] +
          _conv(c2, 3, batch_norm, dtype) + [keras.layers.MaxPooling2D(2, dtype=dtype)] +
          _head(units, num_classes, dropout_rate, dtype))


def _fast_cnn_layers(num_classes, dtype, dropout_rate, batch_norm, width,
                     strided_first: bool) -> list:
  """5x5 conv 24, then a max-pool (or, strided_first, the conv at stride 2 instead),
  3x3 conv 32, max-pool, fc 256."""
  c1, c2, units = _widths(width, 24, 32, 256)
  first = (_conv(c1, 5, batch_norm, dtype, strides=2) if strided_first else
           _conv(c1, 5, batch_norm, dtype) + [keras.layers.MaxPooling2D(2, dtype=dtype)])
  return (first + _conv(c2, 3, batch_norm, dtype) +
          [keras.layers.MaxPooling2D(2, dtype=dtype)] +
          _head(units, num_classes, dropout_rate, dtype))


def fast_cnn(num_classes, dtype=None, dropout_rate=0.0, batch_norm=False, width=1.0) -> list:
  """A small CNN for time-to-99% (5x5 conv 24, 3x3 conv 32, fc 256): about half the
  seed CNN's FLOPs, after a well-known one-epoch MNIST speed study."""
  return _fast_cnn_layers(num_classes, dtype, dropout_rate, batch_norm, width,
                          strided_first=False)


def fast_strided_cnn(num_classes, dtype=None, dropout_rate=0.0, batch_norm=False,
                     width=1.0) -> list:
  """fast_cnn with a stride-2 first conv in place of its first max-pool: the fast
  recipe's model. 21% fewer FLOPs, but the 1-channel 5x5 conv and the pool over its
  output were a third of fast_cnn's step on an AVX2 float32 CPU: 1.3x its images/s
  there, the same test accuracy (BUILD.md)."""
  return _fast_cnn_layers(num_classes, dtype, dropout_rate, batch_norm, width,
                          strided_first=True)


def wide_cnn(num_classes, dtype=None, dropout_rate=0.4, batch_norm=True, width=1.0) -> list:
  """Two double-conv blocks (32, 64) and a 256-unit layer: for the best single-model
  accuracy with augmentation; about 4x the seed CNN's FLOPs."""
  pool = lambda: [keras.layers.MaxPooling2D(2, dtype=dtype)]
  c1, c2, units = _widths(width, 32, 64, 256)
  return (_conv(c1, 3, batch_norm, dtype) + _conv(c1, 3, batch_norm, dtype) + pool() +
          _conv(c2, 3, batch_norm, dtype) + _conv(c2, 3, batch_norm, dtype) + pool() +
          _head(units, num_classes, dropout_rate, dtype))


def strided_cnn(num_classes, dtype=None, dropout_rate=0.4, batch_norm=True,
                width=1.0) -> list:
  """Two blocks of conv 3x3, conv 3x3 and a stride-2 5x5 conv (learned downsampling
  in place of max-pooling), dropout after each block, a 4x4 conv to 128 and the
  logits; after C. Deotte's Kaggle MNIST architecture study. About 1.5x wide_cnn's
  FLOPs. `dropout_rate` applies to all three dropout layers.
  """
  drop = lambda: [randomness.ExampleDropout(dropout_rate, dtype=dtype)]
  def block(filters):
    return (_conv(filters, 3, batch_norm, dtype) + _conv(filters, 3, batch_norm, dtype) +
            _conv(filters, 5, batch_norm, dtype, padding='same', strides=2) + drop())
  c1, c2, c3 = _widths(width, 32, 64, 128)
  return (block(c1) + block(c2) + _conv(c3, 4, batch_norm, dtype) +  # 28 -> 12 -> 4 -> 1.
          [keras.layers.Flatten(dtype=dtype)] + drop() +
          [keras.layers.Dense(num_classes, dtype=dtype)])


def deep_cnn(num_classes, dtype=None, dropout_rate=0.0, batch_norm=True, width=1.0) -> list:
  """Ten 3x3 'valid' convs from 32 to 176 channels and no pooling (28 -> 8), then the
  logits: An et al. 2020's M3 ('An Ensemble of Simple Convolutional Neural Network
  Models for MNIST Digit Recognition'), which keeps full resolution and lets the
  receptive field grow one 3x3 step at a time. About 11x strided_cnn's multiply-adds;
  its authors trained it 150 epochs (BUILD.md, Measured)."""
  channels = _widths(width, *range(32, 177, 16))
  convs = [layer for c in channels for layer in _conv(c, 3, batch_norm, dtype)]
  return (convs + [keras.layers.Flatten(dtype=dtype),
                   randomness.ExampleDropout(dropout_rate, dtype=dtype),
                   keras.layers.Dense(num_classes, dtype=dtype)])


MODELS = {'seed_cnn': seed_cnn, 'fast_cnn': fast_cnn, 'fast_strided_cnn': fast_strided_cnn,
          'wide_cnn': wide_cnn, 'strided_cnn': strided_cnn, 'deep_cnn': deep_cnn}


def build_model(name: str = 'seed_cnn', input_shape=(28, 28, 1), num_classes: int = 10,
                precision: str = 'float32', dropout_rate: float = 0.5,
                batch_norm: bool = False, width: float = 1.0,
                augmentation: Sequence = ()) -> keras.Model:
  """A built Keras model that maps float32 images in [0, 1] to logits.

  The dtype policy is passed to each layer rather than set globally, so two
  models of different precision can live in one process (as tests do). Logits
  come out in the compute dtype; the loss casts them to float32. `width` scales
  every conv's and hidden dense layer's channels. `augmentation`: training-only
  layers (mnist/augment.py) that run first.
  """
  if name not in MODELS:
    raise ValueError(f'Unknown model {name!r}; known: {", ".join(MODELS)}.')
  if problem := hardware.bfloat16_problem(precision):  # Not TensorFlow's abort.
    raise errors.ConfigError(problem)
  policy = keras.DTypePolicy(precision)
  layers = MODELS[name](num_classes, dtype=policy, dropout_rate=dropout_rate,
                        batch_norm=batch_norm, width=width)
  return keras.Sequential([keras.Input(shape=input_shape), *augmentation, *layers], name=name)


def build_from_config(config, input_shape, num_classes, precision=None) -> keras.Model:
  """The model a TrainConfig describes (training, evaluation, export all use this)."""
  return build_model(config.model, input_shape=input_shape, num_classes=num_classes,
                     precision=precision or config.mixed_precision,
                     dropout_rate=config.dropout_rate, batch_norm=config.batch_norm,
                     width=config.width,
                     augmentation=augment_lib.augmentation_layers(
                         config.augment_shift_pixels, config.augment_rotation_degrees,
                         config.augment_zoom, config.augment_elastic_alpha,
                         config.augment_elastic_sigma,
                         cutout_pixels=config.augment_cutout_pixels)
                     if config.augment else ())


def weights_sha256(model: keras.Model) -> str:
  """A fingerprint of the weights (order, shapes, dtypes and bytes) for comparing runs.

  Positions, not names: Keras numbers layer names per process ('conv2d_3'), so
  names would differ between two runs of the same model.
  """
  digest = hashlib.sha256()
  for index, variable in enumerate(model.weights):
    value = keras.ops.convert_to_numpy(variable.value)
    digest.update(f'{index}:{value.shape}:{value.dtype};'.encode())
    digest.update(value.tobytes())
  return digest.hexdigest()

