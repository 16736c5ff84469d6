"""A trained run for inference: the model rebuilt from config.json with the latest
checkpoint's weights, or an exported SavedModel; both map uint8 images to probabilities.
"""
import os

import keras
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from mnist import config as config_lib
from mnist import errors
from mnist import model as model_lib
from mnist import optim

CONFIG_FILE = 'config.json'
CHECKPOINT_DIR = 'checkpoints'
SIGNATURE = 'serving_default'


def read_config(model_dir: str) -> config_lib.TrainConfig:
  """The run's TrainConfig from MODEL_DIR/config.json, with model_dir where it is now."""
  path = os.path.join(model_dir, CONFIG_FILE)
  if not tf.io.gfile.exists(path):
    raise errors.CheckpointError(
        f'--model_dir={model_dir} has no {CONFIG_FILE}, so it is not a training run '
        '(scripts/train.py writes one when it starts). Check the path.')
  try:
    with tf.io.gfile.GFile(path) as f:
      config = config_lib.TrainConfig.from_json(f.read())
  except (ValueError, TypeError) as e:
    raise errors.CheckpointError(f'{path} is not a valid training config: {e}') from None
  return config.replace(model_dir=model_dir)  # The run may have been moved or copied.


def latest_checkpoint(model_dir: str) -> str:
  """The path of the run's newest checkpoint; CheckpointError if it has none."""
  directory = os.path.join(model_dir, CHECKPOINT_DIR)
  path = tf.train.latest_checkpoint(directory)
  if not path:
    raise errors.CheckpointError(
        f'{directory} holds no checkpoint: the run has not finished an epoch (or '
        'checkpoint interval) yet, or the folder was deleted.')
  return path


def load_model(model_dir: str, config: config_lib.TrainConfig = None) -> keras.Model:
  """Rebuilds the run's model and restores only its weights from the latest checkpoint.

  The model is built in float32 whatever precision trained it: checkpoints hold
  float32 variables under every Keras policy, and inference then needs no
  float16 kernels. The optimizer, step and epoch in the checkpoint are skipped,
  but every variable of the model must be found there, with its shape.
  """
  config = config or read_config(model_dir)
  path = latest_checkpoint(model_dir)
  image_shape, num_classes = _feature_shapes(config)
  model = model_lib.build_from_config(config, image_shape, num_classes, precision='float32')
  # With EMA, the averages (what training evaluated) live in the optimizer.
  optimizer = optim.make_optimizer(config, total_steps=1) if config.ema_momentum else None
  if optimizer:
    optimizer.build(model.trainable_variables)
  try:
    objects = {'model': model, **({'optimizer': optimizer} if optimizer else {})}
    status = tf.train.Checkpoint(**objects).restore(path)
    status.assert_existing_objects_matched()
    status.expect_partial()
  except (AssertionError, ValueError, IndexError, tf.errors.OpError) as e:
    # IndexError: a truncated file ("Read less bytes than requested").
    raise errors.CheckpointError(
        f'The checkpoint {path} does not hold the weights of the model that '
        f'{os.path.join(model_dir, CONFIG_FILE)} describes (a different model, or a '
        f'damaged file?). Details: {errors.first_line(e)}') from None
  if optimizer:
    optim.swap_ema(model, optimizer)
  return model


def _feature_shapes(config: config_lib.TrainConfig) -> tuple:
  """(image shape, number of classes) of the dataset the run trained on.

  TFDS knows them from the dataset's definition; nothing is downloaded.
  """
  try:
    features = tfds.builder(config.dataset, data_dir=config.data_dir).info.features
  except tfds.core.registered.DatasetNotFoundError:
    raise errors.DataError(f'The run trained on {config.dataset!r}, which is not a TFDS '
                           'dataset in this installation.') from None
  return tuple(features['image'].shape), features['label'].num_classes


def probabilities_graph(model: keras.Model, images: tf.Tensor) -> tf.Tensor:
  """uint8 images [N, H, W, C] -> float32 class probabilities [N, classes].

  The one definition of inference: the scaling of data.normalize, the model
  in inference mode (no dropout) and a float32 softmax. The export wraps it.
  """
  logits = model(tf.cast(images, tf.float32) / 255.0, training=False)
  return tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1)


def predict_probabilities(model: keras.Model, images: np.ndarray,
                          batch_size: int = 500) -> np.ndarray:
  """uint8 images [N, H, W, C] -> float32 probabilities [N, classes], in batches."""
  outputs = [probabilities_graph(model, tf.constant(images[start:start + batch_size]))
             for start in range(0, len(images), batch_size)]
  if not outputs:
    return np.zeros((0, model.output_shape[-1]), np.float32)
  return np.concatenate([o.numpy() for o in outputs])


class ExportedModel:
  """An exported SavedModel as a function: uint8 images [N, 28, 28, 1] -> probabilities."""

  def __init__(self, export_dir: str):
    if not tf.saved_model.contains_saved_model(export_dir):
      raise errors.CheckpointError(f'--export_dir={export_dir} holds no SavedModel; write '
                                   'one with scripts/export.py.')
    # Kept as an attribute: the signature needs the loaded object's variables alive.
    self.saved_model = tf.saved_model.load(export_dir)
    if SIGNATURE not in self.saved_model.signatures:
      raise errors.CheckpointError(f'The SavedModel in {export_dir} has no {SIGNATURE!r} '
                                   'signature; it was not written by scripts/export.py.')
    self._serve = self.saved_model.signatures[SIGNATURE]

  def __call__(self, images: np.ndarray) -> np.ndarray:
    return self._serve(images=tf.constant(images, tf.uint8))['probabilities'].numpy()
