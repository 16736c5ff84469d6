"""Reliability of train.run: determinism, exact resume, NaN guard, disk full."""
import contextlib
import dataclasses
import os
import subprocess

import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator

from mnist import config as config_lib
from mnist import data
from mnist import errors
from mnist import fault_injection
from mnist import train

from conftest import synthetic_splits


def _config(tmp_path, name='run', **changes):
  return config_lib.TrainConfig(
      model_dir=str(tmp_path / name), epochs=2, batch_size=32, eval_batch_size=100,
      log_every_steps=4, deterministic=True).replace(**changes)


def _checkpoint_dir(config):
  return os.path.join(config.model_dir, 'checkpoints')


@pytest.mark.slow
def test_two_deterministic_runs_end_with_identical_weights(tmp_path, splits):
  first = train.run(_config(tmp_path, 'a'), datasets_override=splits)
  second = train.run(_config(tmp_path, 'b'), datasets_override=splits)
  assert first['weights_sha256'] == second['weights_sha256']
  other_seed = train.run(_config(tmp_path, 'c', seed=1), datasets_override=splits)
  assert other_seed['weights_sha256'] != first['weights_sha256']


@pytest.mark.parametrize('resume_step, changes', [
    (5, {}), (16, {}), (21, {}),  # Mid-epoch, epoch end, mid-epoch 2.
    (5, {'augment': True, 'augment_elastic_alpha': 34.0}),  # Its draws derive from the step.
])
@pytest.mark.slow
def test_resume_from_any_checkpoint_ends_bit_identical(tmp_path, splits, resume_step, changes):
  """Rewinds a finished run to an earlier checkpoint, as a crash would leave it: the
  same weights, and results.json the same but for timings (every epoch evaluated on
  the validation split, the test split once)."""
  splits = dataclasses.replace(splits, validation=synthetic_splits(seed=9).eval,
                               num_validation=300)
  config = _config(tmp_path, checkpoint_every_steps=1, checkpoints_to_keep=100,
                   validation_split='train[500:]', **changes)
  uninterrupted = train.run(config, datasets_override=splits)
  ckpt_dir = _checkpoint_dir(config)
  tf.compat.v1.train.update_checkpoint_state(
      ckpt_dir, os.path.join(ckpt_dir, f'ckpt-{resume_step}'))
  resumed = train.run(config, datasets_override=splits)
  assert resumed['global_step'] == uninterrupted['global_step'] == 32
  assert resumed['weights_sha256'] == uninterrupted['weights_sha256']
  assert fault_injection.compare_results(uninterrupted, resumed) == []
  assert [entry['epoch'] for entry in resumed['eval_history']] == [1, 2]


def _splits_with_nan(num_nan=1):
  """The toy splits with some training images NaN, as a corrupt input would be."""
  clean = synthetic_splits()
  images, labels = zip(*clean.train.as_numpy_iterator())
  images = np.stack(images).astype(np.float32)
  images[:num_nan] = np.nan
  train_ds = tf.data.Dataset.from_tensor_slices((images, np.array(labels)))
  return data.Splits(train=train_ds, eval=clean.eval, num_train=clean.num_train,
                     num_eval=clean.num_eval, num_classes=10, image_shape=(28, 28, 1))


@pytest.mark.slow
def test_nan_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path, splits):
  config = _config(tmp_path, epochs=1)
  train.run(config, datasets_override=splits)  # One clean epoch: ckpt-16.
  ckpt_dir = _checkpoint_dir(config)
  before = {name: os.path.getmtime(os.path.join(ckpt_dir, name))
            for name in os.listdir(ckpt_dir)}
  with pytest.raises(errors.TrainingDivergedError) as e:
    train.run(config.replace(epochs=2), datasets_override=_splits_with_nan())
  assert 'NaN or Inf at step' in str(e.value) and 'ckpt-16' in str(e.value)
  assert errors.TrainingDivergedError.exit_code != 0
  after = {name: os.path.getmtime(os.path.join(ckpt_dir, name))
           for name in os.listdir(ckpt_dir)}
  assert after == before  # Nothing written, nothing removed.
  resumed = train.run(config.replace(epochs=2), datasets_override=splits)
  assert resumed['global_step'] == 32 and np.isfinite(resumed['test_loss'])


@pytest.mark.slow  # Trains (tiny, but several seconds of tracing).
def test_nan_before_any_checkpoint_says_there_is_none(tmp_path):
  config = _config(tmp_path, epochs=1, deterministic=False, epoch_summaries=False)
  with pytest.raises(errors.TrainingDivergedError) as e:
    train.run(config, datasets_override=_splits_with_nan(num_nan=512))
  message = str(e.value)
  assert 'NaN or Inf at step 1 ' in message
  assert 'No checkpoint was written before it' in message and 'None' not in message


@pytest.mark.slow
def test_skip_step_drops_nonfinite_updates_and_counts_them(tmp_path):
  config = _config(tmp_path, epochs=1, nan_policy='skip_step')
  results = train.run(config, datasets_override=_splits_with_nan(num_nan=3))
  assert np.isfinite(results['test_loss']) and results['test_accuracy'] > 0.5
  accumulator = event_accumulator.EventAccumulator(os.path.join(config.model_dir, 'train'),
                                                   size_guidance={'tensors': 0})
  accumulator.Reload()
  skipped = sum(float(tf.make_ndarray(e.tensor_proto))
                for e in accumulator.Tensors('nonfinite_steps_skipped'))
  assert 1 <= skipped <= 3  # Three NaN images fall into at most three batches.


@contextlib.contextmanager
def _tmpfs(mount_point, size: str):
  mount_point.mkdir()
  subprocess.run(['mount', '-t', 'tmpfs', '-o', f'size={size}', 'tmpfs', str(mount_point)],
                 check=True)
  try:
    yield mount_point
  finally:
    # Lazy: TensorFlow may still hold a file of the failed save until it is collected.
    subprocess.run(['umount', '--lazy', str(mount_point)], check=True)


@pytest.fixture
def small_disk(tmp_path):
  """A 4 MiB tmpfs: room for one checkpoint of the seed CNN with Adam (~2.7 MB), not two."""
  with _tmpfs(tmp_path / 'small_disk', '4m') as mount_point:
    yield mount_point


@pytest.mark.slow
def test_disk_full_at_the_first_checkpoint_says_there_is_none(tmp_path, splits):
  with _tmpfs(tmp_path / 'tiny_disk', '1m') as mount_point:  # Not one checkpoint fits.
    config = config_lib.TrainConfig(model_dir=str(mount_point / 'run'), epochs=1,
                                    batch_size=32, log_every_steps=16)
    with pytest.raises(errors.CheckpointError) as e:
      train.run(config, datasets_override=splits)
  assert 'disk full?' in str(e.value) and 'There is no earlier checkpoint' in str(e.value)
  assert 'None' not in str(e.value)


@pytest.mark.slow
def test_disk_full_while_checkpointing_keeps_the_previous_checkpoint(small_disk, splits):
  config = config_lib.TrainConfig(model_dir=str(small_disk / 'run'), epochs=2,
                                  batch_size=32, log_every_steps=16,
                                  checkpoints_to_keep=5)
  with pytest.raises(errors.CheckpointError) as e:
    train.run(config, datasets_override=splits)
  assert 'disk full?' in str(e.value) and 'ckpt-16 is intact' in str(e.value)
  latest = tf.train.latest_checkpoint(_checkpoint_dir(config))
  assert latest.endswith('ckpt-16')
  state = train.create_state(config, splits, tf.distribute.get_strategy())
  state.checkpoint().restore(latest).assert_consumed()
  assert int(state.step) == 16
