"""Resuming past damaged checkpoints: damage is told apart from a mismatch."""
import glob
import logging
import os
import shutil

import pytest
import tensorflow as tf

from mnist import checkpoints
from mnist import config as config_lib
from mnist import errors
from mnist import train

from conftest import synthetic_splits


def _config(model_dir, **changes):
  """Two epochs of 16 steps, a checkpoint every 4: ckpt-24, -28 and -32 are kept."""
  return config_lib.TrainConfig(
      model_dir=model_dir, epochs=2, batch_size=32, eval_batch_size=100,
      log_every_steps=4, checkpoint_every_steps=4, checkpoints_to_keep=3,
      deterministic=True).replace(**changes)


@pytest.fixture(scope='module')
def finished_run(tmp_path_factory):
  model_dir = str(tmp_path_factory.mktemp('finished') / 'run')
  results = train.run(_config(model_dir), datasets_override=synthetic_splits())
  return model_dir, results


@pytest.fixture
def run_copy(finished_run, tmp_path):
  """A copy of the finished run to damage, and the finished run's results."""
  model_dir, results = finished_run
  copy = str(tmp_path / 'run')
  shutil.copytree(model_dir, copy)
  return copy, results


def _prefix(model_dir, step):
  return os.path.join(model_dir, 'checkpoints', f'ckpt-{step}')


def _data_file(prefix):
  [path] = glob.glob(prefix + '.data-*')
  return path


def _truncate(prefix):
  os.truncate(_data_file(prefix), 1000)  # As `truncate -s 1000` leaves it.


def _flip_byte(prefix):
  path = _data_file(prefix)
  with open(path, 'r+b') as f:
    f.seek(os.path.getsize(path) // 2)
    byte = f.read(1)[0]
    f.seek(-1, os.SEEK_CUR)
    f.write(bytes([byte ^ 0x01]))


def _delete_data(prefix):
  os.remove(_data_file(prefix))


DAMAGES = {'truncated': _truncate, 'flipped_byte': _flip_byte, 'missing_data': _delete_data}


def _file_bytes(model_dir):
  folder = os.path.join(model_dir, 'checkpoints')
  return {name: open(os.path.join(folder, name), 'rb').read()
          for name in sorted(os.listdir(folder))}


def _restore_into_new_state(model_dir):
  config = _config(model_dir)
  state = train.create_state(config, synthetic_splits(), tf.distribute.get_strategy())
  path = checkpoints.restore(state.checkpoint(), os.path.join(model_dir, 'checkpoints'))
  return path, state


@pytest.mark.slow
@pytest.mark.parametrize('damage', ['truncated', 'flipped_byte'])
def test_rerun_resumes_from_the_previous_checkpoint_with_a_warning(run_copy, damage,
                                                                   caplog):
  model_dir, finished = run_copy
  DAMAGES[damage](_prefix(model_dir, 32))
  with caplog.at_level(logging.INFO):
    resumed = train.run(_config(model_dir), datasets_override=synthetic_splits())
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert any(f'{_prefix(model_dir, 32)} is damaged' in w and
             f'resuming from {_prefix(model_dir, 28)}' in w for w in warnings), warnings
  assert f'Restored {_prefix(model_dir, 28)}: epoch 1, step 28.' in caplog.messages
  assert resumed['global_step'] == 32
  assert resumed['weights_sha256'] == finished['weights_sha256']
  # Training reached step 32 again: the manager wrote an intact ckpt-32 over it.
  assert checkpoints.damage(_prefix(model_dir, 32)) is None


@pytest.mark.parametrize('damage', sorted(DAMAGES))
def test_restore_skips_the_damaged_latest_and_leaves_its_files(run_copy, damage):
  model_dir, _ = run_copy
  DAMAGES[damage](_prefix(model_dir, 32))
  before = _file_bytes(model_dir)
  path, state = _restore_into_new_state(model_dir)
  assert path == _prefix(model_dir, 28) and int(state.step) == 28
  assert _file_bytes(model_dir) == before


def test_restore_goes_back_past_every_damaged_checkpoint(run_copy):
  model_dir, _ = run_copy
  _flip_byte(_prefix(model_dir, 32))
  _truncate(_prefix(model_dir, 28))
  path, state = _restore_into_new_state(model_dir)
  assert path == _prefix(model_dir, 24) and int(state.step) == 24


def test_no_intact_checkpoint_refuses_naming_the_damaged_and_what_to_do(run_copy):
  model_dir, _ = run_copy
  for step in (24, 28, 32):
    _truncate(_prefix(model_dir, step))
  before = _file_bytes(model_dir)
  with pytest.raises(errors.CheckpointError) as e:
    train.run(_config(model_dir), datasets_override=synthetic_splits())
  message = str(e.value)
  assert 'No intact checkpoint' in message
  assert all(f'ckpt-{step} is damaged' in message for step in (24, 28, 32))
  assert 'new --model_dir' in message and 'delete the damaged checkpoints' in message
  assert e.value.exit_code == 2
  assert _file_bytes(model_dir) == before


def test_checkpoint_of_another_model_is_still_a_mismatch(run_copy, caplog):
  model_dir, _ = run_copy
  with pytest.raises(errors.CheckpointError,
                     match='ckpt-32 does not match this model and flags') as e:
    train.run(_config(model_dir, model='fast_cnn'), datasets_override=synthetic_splits())
  assert e.value.exit_code == 2
  assert not any('damaged' in message for message in caplog.messages)


def _write_legacy_checkpoint(model_dir, num_rng_states=2):
  """A checkpoint as the code before per-example randomness wrote it: model, optimizer,
  step and epoch plus the seed generators' states under `rng/`."""
  config = _config(model_dir, epochs=1)
  state = train.create_state(config, synthetic_splits(), tf.distribute.get_strategy())
  state.step.assign(16)
  state.epoch.assign(1)
  rng = [tf.Variable([7, i], dtype=tf.int64) for i in range(num_rng_states)]
  tf.train.CheckpointManager(
      tf.train.Checkpoint(model=state.model, optimizer=state.optimizer, step=state.step,
                          epoch=state.epoch, rng=rng),
      os.path.join(model_dir, 'checkpoints'), max_to_keep=3).save(checkpoint_number=16)
  return config


@pytest.mark.slow
def test_checkpoint_with_old_rng_states_restores_and_they_are_not_saved_again(tmp_path,
                                                                              caplog):
  config = _write_legacy_checkpoint(str(tmp_path / 'run'))
  with caplog.at_level(logging.WARNING):
    results = train.run(config.replace(epochs=2), datasets_override=synthetic_splits())
  assert 'from before per-example randomness' in caplog.text
  assert results['global_step'] == 32  # Resumed at step 16, not from scratch.
  names = [name for name, _ in tf.train.list_variables(_prefix(config.model_dir, 32))]
  assert not [name for name in names if name.startswith('rng/')]


def test_old_checkpoint_of_another_model_is_still_a_mismatch(tmp_path):
  config = _write_legacy_checkpoint(str(tmp_path / 'run'))
  with pytest.raises(errors.CheckpointError, match='does not match this model and flags'):
    train.run(config.replace(model='fast_cnn', epochs=2),
              datasets_override=synthetic_splits())
