"""The model registry: names and options read before TensorFlow, options a model does
not take refused."""
import dataclasses

import pytest

from mnist import config as config_lib
from mnist import errors
from mnist import models


def test_the_config_offers_every_registered_model():
  assert set(config_lib.MODELS) == set(models.names()) >= {'seed_cnn', 'deep_cnn'}
  for name in models.names():
    assert set(models.get(name).takes) <= set(models.OPTIONS)


def test_every_option_is_a_config_field():
  fields = {field.name for field in dataclasses.fields(config_lib.TrainConfig)}
  assert set(models.OPTIONS) <= fields


@pytest.fixture
def plain_model(monkeypatch):
  """A model registered for the test only, taking dropout alone."""
  monkeypatch.setattr(models, '_REGISTRY', dict(models._REGISTRY))  # pylint: disable=protected-access
  monkeypatch.setattr(config_lib, 'MODELS', models.names() + ('plain',))

  @models.register(takes=('dropout_rate',))
  def plain(num_classes, dtype=None, dropout_rate=0.0):
    del dtype, dropout_rate
    return [num_classes]
  return 'plain'


@pytest.mark.parametrize('option, value', [('batch_norm', True), ('width', 2.0)])
def test_an_option_the_model_does_not_take_is_refused_naming_it(plain_model, option, value):
  with pytest.raises(errors.ConfigError,
                     match=f'--model=plain does not take --{option} .it takes --dropout_rate'):
    config_lib.TrainConfig(model=plain_model, **{option: value}).validate()


def test_options_the_model_takes_or_left_at_default_are_accepted(plain_model):
  config_lib.TrainConfig(model=plain_model, dropout_rate=0.2).validate()


def test_a_model_with_an_unknown_option_or_a_taken_name_is_not_registered(plain_model):
  with pytest.raises(ValueError, match='Unknown model options'):
    models.register(takes=('depth',))
  with pytest.raises(ValueError, match="Two models are named 'plain'"):
    @models.register(takes=())
    def plain():
      pass
