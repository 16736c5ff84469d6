"""The SavedModel export: its signature, and predictions identical to the checkpoint's."""
import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import tensorflow as tf

from mnist import batch_norm
from mnist import data
from mnist import errors
from mnist import export
from mnist import inference
from mnist import model as model_lib
from mnist import predict

from conftest import REPO

NUM_IMAGES = 1000


@pytest.fixture(scope='module')
def exported(trained_run, tmp_path_factory):
  """scripts/export.py --tflite on the session's trained run: its JSON output."""
  export_dir = str(tmp_path_factory.mktemp('exports') / 'mnist' / '1')
  result = subprocess.run(
      [sys.executable, os.path.join(REPO, 'scripts', 'export.py'),
       f'--model_dir={trained_run}', f'--export_dir={export_dir}', '--tflite'],
      capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope='module')
def test_images(manual_dir):
  splits = data.load_splits('mnist', 'train[:1]', f'test[:{NUM_IMAGES}]',
                            manual_dir=manual_dir)
  images, _ = next(iter(splits.eval.batch(NUM_IMAGES)))
  return images.numpy()


@pytest.mark.slow
@pytest.mark.real_data
def test_saved_model_predicts_exactly_what_the_checkpoint_predicts(trained_run, exported,
                                                                   test_images):
  serve = tf.saved_model.load(exported['saved_model']).signatures['serving_default']
  assert set(serve.structured_input_signature[1]) == {'images'}
  spec = serve.structured_input_signature[1]['images']
  assert spec.dtype == tf.uint8 and spec.shape.as_list() == [None, 28, 28, 1]
  outputs = serve(images=tf.constant(test_images))
  assert outputs['probabilities'].dtype == tf.float32
  assert outputs['probabilities'].shape == (NUM_IMAGES, 10)
  assert outputs['digits'].dtype == tf.int64 and outputs['digits'].shape == (NUM_IMAGES,)

  expected = inference.predict_probabilities(inference.load_model(trained_run), test_images)
  np.testing.assert_array_equal(outputs['digits'].numpy(), expected.argmax(axis=1))
  np.testing.assert_allclose(outputs['probabilities'].numpy(), expected, rtol=1e-5,
                             atol=1e-6)


@pytest.mark.slow
@pytest.mark.real_data
def test_tflite_model_agrees_with_the_checkpoint(trained_run, exported, test_images):
  assert exported['tflite'] == os.path.join(exported['saved_model'], export.TFLITE_FILE)
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')  # tf.lite.Interpreter's deprecation notice.
    interpreter = tf.lite.Interpreter(model_path=exported['tflite'])
  outputs = interpreter.get_signature_runner('serving_default')(images=test_images)
  expected = inference.predict_probabilities(inference.load_model(trained_run), test_images)
  # A different kernel library (XNNPACK): equal up to float rounding.
  np.testing.assert_allclose(outputs['probabilities'], expected, atol=1e-4)
  assert np.mean(outputs['digits'] == expected.argmax(axis=1)) >= 0.999


@pytest.mark.slow
@pytest.mark.real_data
def test_predict_with_the_export_matches_predict_with_the_checkpoint(trained_run, exported,
                                                                     test_images, tmp_path):
  paths = []
  for i, image in enumerate(test_images[:20]):
    paths.append(str(tmp_path / f'{i}.png'))
    tf.io.write_file(paths[-1], tf.io.encode_png(image))
  from_export = predict.predict_files(paths, inference.ExportedModel(exported['saved_model']))
  model = inference.load_model(trained_run)
  from_checkpoint = predict.predict_files(
      paths, lambda images: inference.predict_probabilities(model, images))
  assert [r.digit for r in from_export] == [r.digit for r in from_checkpoint]
  for a, b in zip(from_export, from_checkpoint):
    np.testing.assert_allclose([p for _, p in a.top3], [p for _, p in b.top3], atol=1e-5)


def test_export_refuses_to_overwrite(tmp_path):
  (tmp_path / 'saved_model.pb').write_bytes(b'an earlier version')
  with pytest.raises(errors.ConfigError, match='already exists'):
    export.check_export_dir(str(tmp_path))
  assert export.check_export_dir(str(tmp_path / 'new' / '1') + '/') == \
      str(tmp_path / 'new' / '1')


@pytest.mark.slow
def test_batch_norm_model_exports_to_saved_model_and_tflite(tmp_path):
  model = model_lib.build_model('strided_cnn', batch_norm=True)
  rng = np.random.default_rng(0)
  for layer in model.layers:  # Non-trivial statistics, so a dropped BN would show.
    if isinstance(layer, batch_norm.FusedBatchNormalization):
      layer.moving_mean.assign(rng.normal(size=layer.moving_mean.shape))
      layer.moving_variance.assign(rng.uniform(0.5, 2, size=layer.moving_variance.shape))
  images = rng.integers(0, 256, size=(16, 28, 28, 1), dtype=np.uint8)
  expected = inference.predict_probabilities(model, images)
  paths = export.export(model, str(tmp_path / 'bn' / '1'), tflite=True)
  np.testing.assert_allclose(inference.ExportedModel(paths['saved_model'])(images), expected,
                             atol=1e-6)
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')
    interpreter = tf.lite.Interpreter(model_path=paths['tflite'])
  outputs = interpreter.get_signature_runner('serving_default')(images=images)
  np.testing.assert_allclose(outputs['probabilities'], expected, atol=1e-4)
