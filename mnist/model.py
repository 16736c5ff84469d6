"""Models built by name from the registry (mnist/models/). The seed's CNN is the default."""
import hashlib
from typing import Sequence

import keras

from mnist import augment as augment_lib
from mnist import errors
from mnist import hardware
from mnist import models


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
  model = models.get(name)  # ValueError naming the known ones.
  if problem := hardware.bfloat16_problem(precision):  # Not TensorFlow's abort.
    raise errors.ConfigError(problem)
  policy = keras.DTypePolicy(precision)
  options = dict(dropout_rate=dropout_rate, batch_norm=batch_norm, width=width)
  layers = model.build(num_classes, dtype=policy,
                       **{option: options[option] for option in model.takes})
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

