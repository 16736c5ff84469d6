"""Loading a run for inference: only the model's weights, every one of them, or a clear error."""
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from mnist import config as config_lib
from mnist import errors
from mnist import inference
from mnist import model as model_lib
from mnist import train

from conftest import synthetic_splits


@pytest.fixture(scope='module')
def synthetic_run(tmp_path_factory):
  """A run trained for one epoch on the synthetic toy: (model_dir, results)."""
  model_dir = str(tmp_path_factory.mktemp('synthetic') / 'run')
  config = config_lib.TrainConfig(model_dir=model_dir, epochs=1, batch_size=32,
                                  eval_batch_size=128, log_every_steps=100)
  return model_dir, train.run(config, datasets_override=synthetic_splits())


@pytest.mark.slow
def test_load_model_restores_the_trained_weights_and_predicts_like_training(synthetic_run):
  model_dir, results = synthetic_run
  model = inference.load_model(model_dir)
  assert model_lib.weights_sha256(model) == results['weights_sha256']
  images, labels = next(iter(synthetic_splits().eval.batch(300)))
  probabilities = inference.predict_probabilities(model, images.numpy(), batch_size=128)
  assert probabilities.shape == (300, 10) and probabilities.dtype == np.float32
  np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
  accuracy = np.mean(probabilities.argmax(axis=1) == labels.numpy())
  assert accuracy == pytest.approx(results['test_accuracy'], abs=1e-9)


def test_a_moved_run_loads_from_its_new_place(synthetic_run, tmp_path):
  model_dir, results = synthetic_run
  moved = tmp_path / 'moved'
  tf.io.gfile.makedirs(str(moved))
  for name in ('config.json', 'checkpoints'):
    os.symlink(os.path.join(model_dir, name), moved / name)
  assert inference.read_config(str(moved)).model_dir == str(moved)
  assert model_lib.weights_sha256(inference.load_model(str(moved))) == \
      results['weights_sha256']


def test_missing_config_or_checkpoint_is_a_checkpoint_error(tmp_path):
  with pytest.raises(errors.CheckpointError, match='has no config.json'):
    inference.load_model(str(tmp_path))
  (tmp_path / 'config.json').write_text(config_lib.TrainConfig().to_json())
  with pytest.raises(errors.CheckpointError, match='holds no checkpoint'):
    inference.load_model(str(tmp_path))
  (tmp_path / 'config.json').write_text('{"epochs": ')
  with pytest.raises(errors.CheckpointError, match='not a valid training config'):
    inference.read_config(str(tmp_path))


def _run_dir_with_checkpoint_of(tmp_path, model, **config_changes):
  (tmp_path / 'config.json').write_text(
      config_lib.TrainConfig(model_dir=str(tmp_path)).replace(**config_changes).to_json())
  tf.train.CheckpointManager(tf.train.Checkpoint(model=model), str(tmp_path / 'checkpoints'),
                             max_to_keep=1).save()
  return str(tmp_path)


def test_checkpoint_of_another_model_is_refused(tmp_path):
  other = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(),
                            keras.layers.Dense(10)])
  with pytest.raises(errors.CheckpointError, match='does not hold the weights'):
    inference.load_model(_run_dir_with_checkpoint_of(tmp_path, other))


def test_checkpoint_missing_some_of_the_models_variables_is_refused(tmp_path):
  # Same first layers, no logits layer: a partial restore would leave random logits.
  full = model_lib.build_model()
  truncated = keras.Sequential([keras.Input((28, 28, 1))] + full.layers[:-1])
  with pytest.raises(errors.CheckpointError, match='does not hold the weights'):
    inference.load_model(_run_dir_with_checkpoint_of(tmp_path, truncated))


def test_corrupt_checkpoint_is_refused(synthetic_run, tmp_path):
  model_dir, _ = synthetic_run
  run_dir = _run_dir_with_checkpoint_of(tmp_path, inference.load_model(model_dir))
  data_file = tf.io.gfile.glob(os.path.join(run_dir, 'checkpoints', '*.data-*'))[0]
  with open(data_file, 'r+b') as f:
    f.truncate(100)
  with pytest.raises(errors.CheckpointError, match='does not hold the weights'):
    inference.load_model(run_dir)


def test_unknown_dataset_in_config_is_a_data_error(tmp_path):
  run_dir = _run_dir_with_checkpoint_of(tmp_path, model_lib.build_model(),
                                        dataset='no_such_dataset')
  with pytest.raises(errors.DataError, match='no_such_dataset'):
    inference.load_model(run_dir)


def test_exported_model_needs_a_saved_model(tmp_path):
  with pytest.raises(errors.CheckpointError, match='holds no SavedModel'):
    inference.ExportedModel(str(tmp_path))


@pytest.mark.slow
def test_mixed_precision_run_loads_as_float32(tmp_path):
  config = config_lib.TrainConfig(model_dir=str(tmp_path / 'run'), epochs=1, batch_size=64,
                                  eval_batch_size=128, mixed_precision='mixed_float16')
  results = train.run(config, datasets_override=synthetic_splits(num_train=256))
  model = inference.load_model(config.model_dir)
  assert model.dtype_policy.name == 'float32'
  assert model_lib.weights_sha256(model) == results['weights_sha256']
