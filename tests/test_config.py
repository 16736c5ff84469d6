"""Flag validation: clear messages, before TensorFlow does any work."""
import dataclasses
import os
import re
import subprocess
import sys

from absl import flags
import pytest

from mnist import cli
from mnist import config as config_lib
from mnist import errors

from conftest import REPO


@pytest.mark.parametrize('changes, message', [
    ({'batch_size': 0}, '--batch_size must be > 0'),
    ({'epochs': -1}, '--epochs must be >= 0'),
    ({'strategy': 'tpu_pod'}, '--strategy must be one of'),
    ({'mixed_precision': 'float8'}, '--mixed_precision must be one of'),
    ({'strategy': 'mirrored', 'cpu_devices': 2, 'batch_size': 63},
     '--batch_size=63 is not divisible by the 2 replicas'),
    ({'cpu_devices': 2}, 'only makes sense with --strategy=mirrored'),
    ({'learning_rate': 0.0}, '--learning_rate must be > 0'),
    ({'dropout_rate': 1.0}, '--dropout_rate must be in [0, 1)'),
    ({'width': 0.0}, '--width must be in (0, 16]'),
    ({'sam_rho': -0.05}, '--sam_rho must be >= 0'),
    ({'augment_shift_pixels': -1.0}, '--augment_shift_pixels must be in [0, 14)'),
    ({'augment_zoom': 1.0}, '--augment_zoom must be in [0, 1)'),
    ({'augment_elastic_sigma': 0.0}, '--augment_elastic_sigma must be > 0'),
    ({'augment_cutout_pixels': 28}, '--augment_cutout_pixels must be in [0, 28)'),
    ({'deterministic': True, 'jit_compile': True}, 'cannot be combined with --jit_compile'),
    ({'nan_policy': 'ignore'}, '--nan_policy must be one of'),
    ({'checkpoint_every_steps': -1}, '--checkpoint_every_steps must be >= 0'),
])
def test_invalid_config_names_the_problem(changes, message):
  with pytest.raises(errors.ConfigError, match=re.escape(message)):
    config_lib.TrainConfig(**changes).validate()


@pytest.mark.slow
def test_script_refuses_fp8_before_tensorflow_loads_and_names_auto():
  poison = os.path.join(REPO, 'tests', 'poison_tensorflow')
  result = _run_script('--mixed_precision=fp8', env={'PYTHONPATH': poison + os.pathsep + REPO})
  assert result.returncode == 2, result.stderr
  assert result.stderr.strip().splitlines()[-1] == (
      "error: --mixed_precision must be one of auto, float32, mixed_float16, "
      "mixed_bfloat16; got 'fp8'.")


def test_auto_precision_is_accepted_and_the_recipes_use_it():
  config_lib.TrainConfig(mixed_precision='auto').validate()
  for recipe in ('fast', 'best'):
    with open(os.path.join(REPO, 'configs', f'{recipe}.flags')) as f:
      precision = [line for line in f if line.startswith('--mixed_precision')]
    assert precision == ['--mixed_precision=auto\n'], recipe
  with open(os.path.join(REPO, 'configs', 'seed.flags')) as f:
    assert '--mixed_precision=float32\n' in f.read()  # The seed document's.


def test_every_problem_is_reported_at_once():
  with pytest.raises(errors.ConfigError) as e:
    config_lib.TrainConfig(batch_size=0, epochs=-2).validate()
  assert '--batch_size' in str(e.value) and '--epochs' in str(e.value)


def test_defaults_are_the_seed_recipe():
  config = config_lib.TrainConfig().validate()
  assert (config.epochs, config.batch_size, config.learning_rate) == (5, 64, 1e-3)


def _run_script(*args, env=None):
  return subprocess.run([sys.executable, os.path.join(REPO, 'scripts', 'train.py'), *args],
                        capture_output=True, text=True, timeout=120,
                        env={**os.environ, **(env or {})})


@pytest.mark.slow
def test_script_rejects_bad_flags_before_loading_tensorflow():
  # A sitecustomize-free way to prove TF was never imported: make importing it fail.
  poison = os.path.join(REPO, 'tests', 'poison_tensorflow')
  result = _run_script('--batch_size=0', '--epochs=-1',
                       env={'PYTHONPATH': poison + os.pathsep + REPO})
  assert result.returncode == 2, result.stderr
  assert 'error: --epochs must be >= 0' in result.stderr
  assert '--batch_size must be > 0' in result.stderr
  assert 'Traceback' not in result.stderr


@pytest.mark.slow
def test_script_rejects_unknown_flag_value_types():
  result = _run_script('--epochs=five')
  assert result.returncode != 0
  assert 'epochs' in result.stderr and 'Traceback' not in result.stderr


@pytest.mark.slow
def test_help_lists_every_training_flag():
  result = _run_script('--help')  # absl exits 1 after --help; the text is what counts.
  for name in config_lib.TrainConfig.__dataclass_fields__:
    assert f'--{name}' in result.stdout or f'--[no]{name}' in result.stdout, name


def test_every_config_field_declares_its_help_and_its_flag_says_it():
  flag_values = flags.FlagValues()
  cli.define_train_flags(flag_values)
  for field in dataclasses.fields(config_lib.TrainConfig):
    assert field.metadata['help'], field.name
    assert flag_values[field.name].help.startswith(field.metadata['help'])
    assert flag_values[field.name].default == field.default
  assert 'One of: seed_cnn' in flag_values['model'].help
