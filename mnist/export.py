"""Exporting a trained model as a SavedModel for TensorFlow Serving (and TFLite).

The `serving_default` signature takes raw pixels, `images`: uint8 [batch, 28, 28, 1],
and returns `probabilities`: float32 [batch, 10] and `digits`: int64 [batch].
Scaling to [0, 1] happens inside the graph, so clients send pixels as stored.
"""
import os
import shutil

import keras
import tensorflow as tf

from mnist import errors
from mnist import inference

TFLITE_FILE = 'model.tflite'


class ServingModule(tf.Module):
  """The model behind a tf.function with a fixed input signature."""

  def __init__(self, model: keras.Model):
    super().__init__(name='mnist_serving')
    self.model = model
    # Keras 3 variables wrap tf.Variables that tf.Module does not list. The
    # SavedModel finds them anyway, but the TFLite converter freezes only listed
    # ones and would silently write a model with zero weights.
    self.model_variables = [v.value for v in model.variables]
    spec = tf.TensorSpec([None, *model.input_shape[1:]], tf.uint8, name='images')
    self.serve = tf.function(self._serve, input_signature=[spec])

  def _serve(self, images):
    probabilities = inference.probabilities_graph(self.model, images)
    return {'probabilities': probabilities,
            'digits': tf.argmax(probabilities, axis=-1, output_type=tf.int64)}


def check_export_dir(export_dir: str) -> str:
  """Refuses to overwrite: a served version must never change under the server."""
  export_dir = export_dir.rstrip('/') or '/'
  if os.path.exists(export_dir) and (not os.path.isdir(export_dir) or
                                     os.listdir(export_dir)):
    raise errors.ConfigError(f'--export_dir={export_dir} already exists and is not an '
                             'empty folder; choose a new one (e.g. the next version '
                             'number) or delete it.')
  return export_dir


def export(model: keras.Model, export_dir: str, tflite: bool = False) -> dict:
  """Writes the SavedModel (and model.tflite) to export_dir; returns the paths.

  Everything is written beside export_dir first and renamed into place, so
  TensorFlow Serving, which watches the parent folder, never loads half an export.
  """
  export_dir = check_export_dir(export_dir)
  staging = export_dir + '.partial'
  shutil.rmtree(staging, ignore_errors=True)  # Left by an interrupted export.
  try:
    os.makedirs(os.path.dirname(os.path.abspath(export_dir)), exist_ok=True)
    module = ServingModule(model)
    tf.saved_model.save(module, staging,
                        signatures={inference.SIGNATURE: module.serve.get_concrete_function()})
    paths = {'saved_model': export_dir}
    if tflite:
      converter = tf.lite.TFLiteConverter.from_saved_model(
          staging, signature_keys=[inference.SIGNATURE])
      with open(os.path.join(staging, TFLITE_FILE), 'wb') as f:
        f.write(converter.convert())
      paths['tflite'] = os.path.join(export_dir, TFLITE_FILE)
    if os.path.isdir(export_dir):
      os.rmdir(export_dir)  # Empty (checked above): rename needs the name free.
    os.rename(staging, export_dir)
  except OSError as e:
    raise errors.ConfigError(f'Cannot write the export to {export_dir}: {e}') from None
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  return paths


def run(model_dir: str, export_dir: str, tflite: bool = False) -> dict:
  """Exports the latest checkpoint of the run in model_dir."""
  check_export_dir(export_dir)  # Before the slow part.
  paths = export(inference.load_model(model_dir), export_dir, tflite)
  paths['checkpoint'] = inference.latest_checkpoint(model_dir)
  return paths
