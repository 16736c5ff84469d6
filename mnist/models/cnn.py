"""The convolutional networks. Keras is imported inside the builders: the registry
(mnist/models/__init__.py) is read before TensorFlow loads."""
from mnist import models


def _conv(filters, size, batch_norm, dtype, padding='valid', strides=1):
  """Conv + ReLU; with batch_norm, Conv (no bias: BN has one) + BN + ReLU."""
  import keras
  from mnist import batch_norm as batch_norm_lib
  if not batch_norm:
    return [keras.layers.Conv2D(filters, size, strides, padding=padding, activation='relu',
                                dtype=dtype)]
  return [keras.layers.Conv2D(filters, size, strides, padding=padding, use_bias=False,
                              dtype=dtype),
          batch_norm_lib.FusedBatchNormalization(dtype=dtype),
          keras.layers.ReLU(dtype=dtype)]


def _head(units, num_classes, dropout_rate, dtype):
  import keras
  from mnist import randomness
  return [keras.layers.Flatten(dtype=dtype),
          keras.layers.Dense(units, activation='relu', dtype=dtype),
          randomness.ExampleDropout(dropout_rate, dtype=dtype),
          keras.layers.Dense(num_classes, dtype=dtype)]


def _widths(width, *channels):
  """The channel counts scaled by `width` (at least one channel each)."""
  return [max(1, round(c * width)) for c in channels]


@models.register(takes=models.OPTIONS)
def seed_cnn(num_classes, dtype=None, dropout_rate=0.5, batch_norm=False, width=1.0) -> list:
  """The seed document's CNN: two conv/pool blocks, a 128-unit layer, dropout, logits.
  About 15.4 MFLOP per training image."""
  import keras
  c1, c2, units = _widths(width, 32, 64, 128)
  return (_conv(c1, 3, batch_norm, dtype) + [keras.layers.MaxPooling2D(2, dtype=dtype)] +
          _conv(c2, 3, batch_norm, dtype) + [keras.layers.MaxPooling2D(2, dtype=dtype)] +
          _head(units, num_classes, dropout_rate, dtype))


def _fast_cnn_layers(num_classes, dtype, dropout_rate, batch_norm, width,
                     strided_first: bool) -> list:
  """5x5 conv 24, then a max-pool (or, strided_first, the conv at stride 2 instead),
  3x3 conv 32, max-pool, fc 256."""
  import keras
  c1, c2, units = _widths(width, 24, 32, 256)
  first = (_conv(c1, 5, batch_norm, dtype, strides=2) if strided_first else
           _conv(c1, 5, batch_norm, dtype) + [keras.layers.MaxPooling2D(2, dtype=dtype)])
  return (first + _conv(c2, 3, batch_norm, dtype) +
          [keras.layers.MaxPooling2D(2, dtype=dtype)] +
          _head(units, num_classes, dropout_rate, dtype))


@models.register(takes=models.OPTIONS)
def fast_cnn(num_classes, dtype=None, dropout_rate=0.0, batch_norm=False, width=1.0) -> list:
  """A small CNN for time-to-99% (5x5 conv 24, 3x3 conv 32, fc 256): about half the
  seed CNN's FLOPs, after a well-known one-epoch MNIST speed study."""
  return _fast_cnn_layers(num_classes, dtype, dropout_rate, batch_norm, width,
                          strided_first=False)


@models.register(takes=models.OPTIONS)
def fast_strided_cnn(num_classes, dtype=None, dropout_rate=0.0, batch_norm=False,
                     width=1.0) -> list:
  """fast_cnn with a stride-2 first conv in place of its first max-pool: the fast
  recipe's model. 21% fewer FLOPs, but the 1-channel 5x5 conv and the pool over its
  output were a third of fast_cnn's step on an AVX2 float32 CPU: 1.3x its images/s
  there, the same test accuracy (BUILD.md)."""
  return _fast_cnn_layers(num_classes, dtype, dropout_rate, batch_norm, width,
                          strided_first=True)


@models.register(takes=models.OPTIONS)
def wide_cnn(num_classes, dtype=None, dropout_rate=0.4, batch_norm=True, width=1.0) -> list:
  """Two double-conv blocks (32, 64) and a 256-unit layer: for the best single-model
  accuracy with augmentation; about 4x the seed CNN's FLOPs."""
  import keras
  pool = lambda: [keras.layers.MaxPooling2D(2, dtype=dtype)]
  c1, c2, units = _widths(width, 32, 64, 256)
  return (_conv(c1, 3, batch_norm, dtype) + _conv(c1, 3, batch_norm, dtype) + pool() +
          _conv(c2, 3, batch_norm, dtype) + _conv(c2, 3, batch_norm, dtype) + pool() +
          _head(units, num_classes, dropout_rate, dtype))


@models.register(takes=models.OPTIONS)
def strided_cnn(num_classes, dtype=None, dropout_rate=0.4, batch_norm=True,
                width=1.0) -> list:
  """Two blocks of conv 3x3, conv 3x3 and a stride-2 5x5 conv (learned downsampling
  in place of max-pooling), dropout after each block, a 4x4 conv to 128 and the
  logits; after C. Deotte's Kaggle MNIST architecture study. About 1.5x wide_cnn's
  FLOPs. `dropout_rate` applies to all three dropout layers.
  """
  import keras
  from mnist import randomness
  drop = lambda: [randomness.ExampleDropout(dropout_rate, dtype=dtype)]
  def block(filters):
    return (_conv(filters, 3, batch_norm, dtype) + _conv(filters, 3, batch_norm, dtype) +
            _conv(filters, 5, batch_norm, dtype, padding='same', strides=2) + drop())
  c1, c2, c3 = _widths(width, 32, 64, 128)
  return (block(c1) + block(c2) + _conv(c3, 4, batch_norm, dtype) +  # 28 -> 12 -> 4 -> 1.
          [keras.layers.Flatten(dtype=dtype)] + drop() +
          [keras.layers.Dense(num_classes, dtype=dtype)])


@models.register(takes=models.OPTIONS)
def deep_cnn(num_classes, dtype=None, dropout_rate=0.0, batch_norm=True, width=1.0) -> list:
  """Ten 3x3 'valid' convs from 32 to 176 channels and no pooling (28 -> 8), then the
  logits: An et al. 2020's M3 ('An Ensemble of Simple Convolutional Neural Network
  Models for MNIST Digit Recognition'), which keeps full resolution and lets the
  receptive field grow one 3x3 step at a time. About 11x strided_cnn's multiply-adds;
  its authors trained it 150 epochs (BUILD.md, Measured)."""
  import keras
  from mnist import randomness
  channels = _widths(width, *range(32, 177, 16))
  convs = [layer for c in channels for layer in _conv(c, 3, batch_norm, dtype)]
  return (convs + [keras.layers.Flatten(dtype=dtype),
                   randomness.ExampleDropout(dropout_rate, dtype=dtype),
                   keras.layers.Dense(num_classes, dtype=dtype)])
