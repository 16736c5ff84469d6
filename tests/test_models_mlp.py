"""The MLP, through the registry alone: built, trained, refused what it does not take."""
import os
import subprocess
import sys

import keras
import pytest

from mnist import config as config_lib
from mnist import errors
from mnist import model as model_lib
from mnist import train

from conftest import REPO


def test_mlp_is_two_hidden_layers_of_512_with_dropout():
  model = model_lib.build_model('mlp', dropout_rate=0.3)
  dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
  assert [layer.units for layer in dense] == [512, 512, 10]
  assert not any(isinstance(layer, keras.layers.Conv2D) for layer in model.layers)
  assert [layer.rate for layer in model.layers if hasattr(layer, 'rate')] == [0.3, 0.3]
  wide = model_lib.build_model('mlp', width=0.5)
  assert [layer.units for layer in wide.layers
          if isinstance(layer, keras.layers.Dense)] == [256, 256, 10]


def test_batch_norm_is_refused_for_the_mlp():
  with pytest.raises(errors.ConfigError, match='--model=mlp does not take --batch_norm'):
    config_lib.TrainConfig(model='mlp', batch_norm=True).validate()


def test_the_refusal_exits_2_before_tensorflow_loads(tmp_path):
  env = {**os.environ,
         'PYTHONPATH': os.path.join(REPO, 'tests', 'poison_tensorflow') + os.pathsep + REPO}
  result = subprocess.run(
      [sys.executable, os.path.join(REPO, 'scripts', 'train.py'), '--model=mlp',
       '--batch_norm', f'--model_dir={tmp_path}'], env=env, capture_output=True, text=True,
      timeout=60)
  assert result.returncode == 2, result.stderr[-2000:]
  assert '--model=mlp does not take --batch_norm' in result.stderr


@pytest.mark.slow
def test_mlp_trains_and_records_its_name(tmp_path, splits):
  config = config_lib.TrainConfig(model_dir=str(tmp_path), model='mlp', epochs=2,
                                  batch_size=32, eval_batch_size=128)
  results = train.run(config, datasets_override=splits)
  assert results['test_accuracy'] > 0.9
  assert results['config']['model'] == 'mlp'
