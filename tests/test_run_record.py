"""The run's record (mnist/run_record.py) and what train.run makes of it: results.json
tells the whole run however often it was interrupted or continued."""
import dataclasses
import json
import os

import pytest
import tensorflow as tf

from mnist import config as config_lib
from mnist import fault_injection
from mnist import run_record
from mnist import train

from conftest import synthetic_splits


def test_record_round_trips_through_json_and_sums_a_process_s_work():
  record = run_record.RunRecord(eval_history=[{'epoch': 1, 'loss': 0.1}],
                                images_trained=640, seconds_in_steps=2.0, seconds=3.0)
  assert run_record.RunRecord.from_json(record.to_json()) == record
  later = record.plus(images=320, seconds_in_steps=1.0, seconds=2.5)
  assert (later.images_trained, later.seconds_in_steps, later.seconds) == (960, 3.0, 5.5)
  assert later.images_per_sec == 320.0
  assert record.images_trained == 640  # plus() copies.
  assert later.evaluated(1) == {'epoch': 1, 'loss': 0.1} and later.evaluated(2) is None


def test_no_record_is_empty_and_says_so_only_after_steps_were_trained():
  assert run_record.RunRecord.from_json('') == run_record.RunRecord()
  assert run_record.RunRecord.from_json('', restored_step=0).images_per_sec is None
  assert run_record.RunRecord.from_json('', restored_step=5).restored_without_record
  assert 'restored_without_record' not in json.loads(run_record.RunRecord().to_json())


def test_variable_holds_the_record_and_checkpoints_with_it(tmp_path):
  variable = run_record.new_variable()
  assert run_record.read(variable, 0) == run_record.RunRecord()
  record = run_record.RunRecord(eval_history=[{'epoch': 1}], images_trained=3)
  run_record.write(variable, record)
  path = tf.train.Checkpoint(record=variable).save(str(tmp_path / 'ckpt'))
  restored = run_record.new_variable()
  tf.train.Checkpoint(record=restored).restore(path).assert_consumed()
  assert run_record.read(restored, 7) == record


def _validation_splits():
  """The toy splits with a validation split: epochs are evaluated on it, test once."""
  splits = synthetic_splits()
  return dataclasses.replace(splits, validation=synthetic_splits(seed=9).eval,
                             num_validation=300)


def _config(tmp_path, name, **changes):
  return config_lib.TrainConfig(
      model_dir=str(tmp_path / name), epochs=2, batch_size=32, eval_batch_size=100,
      log_every_steps=4, deterministic=True, validation_split='train[500:]').replace(**changes)


def _checkpointed_record(path: str) -> run_record.RunRecord:
  reader = tf.train.load_checkpoint(path)
  value = reader.get_tensor(f'{run_record.CHECKPOINT_KEY}/.ATTRIBUTES/VARIABLE_VALUE')
  return run_record.RunRecord.from_json(value.decode())


@pytest.mark.slow
def test_each_checkpoint_holds_the_record_of_the_steps_before_it(tmp_path):
  config = _config(tmp_path, 'run', checkpoint_every_steps=4, checkpoints_to_keep=100)
  results = train.run(config, datasets_override=_validation_splits())
  checkpoints = os.path.join(config.model_dir, 'checkpoints')
  mid_epoch_2 = _checkpointed_record(os.path.join(checkpoints, 'ckpt-20'))
  assert [e['epoch'] for e in mid_epoch_2.eval_history] == [1]  # Epoch 2 not yet ended.
  assert mid_epoch_2.images_trained == 20 * 32
  end = _checkpointed_record(os.path.join(checkpoints, 'ckpt-32'))
  assert [e['epoch'] for e in end.eval_history] == [1, 2]
  assert end.images_trained == 32 * 32
  assert end.eval_history[1]['loss'] == results['validation_loss']
  # The epoch-end seconds are measured after the epoch's save: the next save has them.
  assert end.eval_history[0]['epoch_end_seconds'] > 0
  assert end.eval_history[1]['epoch_end_seconds'] is None


@pytest.mark.slow
def test_results_deleted_after_the_last_checkpoint_are_written_whole_again(tmp_path):
  """Finding 1 of #29: killed after the final checkpoint, before results.json."""
  splits = _validation_splits()
  config = _config(tmp_path, 'run', epochs=1)
  first = train.run(config, datasets_override=splits)
  os.remove(os.path.join(config.model_dir, 'results.json'))
  again = train.run(config, datasets_override=splits)
  assert again['validation_accuracy'] == first['validation_accuracy']
  assert again['eval_history'][0]['loss'] == first['eval_history'][0]['loss']
  assert again['train_images_per_sec'] is not None
  assert fault_injection.compare_results(first, again) == []
  with open(os.path.join(config.model_dir, 'results.json')) as f:
    assert json.load(f)['validation_loss'] == first['validation_loss']


@pytest.mark.slow
def test_a_continued_run_reports_every_epoch_like_an_uninterrupted_one(tmp_path):
  """Finding 2 of #29: 2 epochs, then continued to 4 in the same model_dir."""
  splits = _validation_splits()
  config = _config(tmp_path, 'continued', checkpoint_every_steps=5)
  two = train.run(config, datasets_override=splits)
  continued = train.run(config.replace(epochs=4), datasets_override=splits)
  straight = train.run(_config(tmp_path, 'straight', epochs=4, checkpoint_every_steps=5),
                       datasets_override=splits)
  assert [e['epoch'] for e in continued['eval_history']] == [1, 2, 3, 4]
  assert continued['eval_history'][:2] == two['eval_history'][:1] + [
      {**two['eval_history'][1], 'epoch_end_seconds': None}]  # Saved before measured.
  assert fault_injection.compare_results(straight, continued) == []
  assert continued['train_seconds'] > two['train_seconds']


@pytest.mark.slow
def test_a_checkpoint_without_a_record_resumes_and_its_missing_evaluation_is_made(tmp_path):
  """Older code's checkpoints hold no record: they restore whole, and a run with nothing
  left to train evaluates its last epoch instead of reporting no validation metrics."""
  splits = _validation_splits()
  config = _config(tmp_path, 'old', epochs=1)
  reference = train.run(config.replace(model_dir=str(tmp_path / 'new')),
                        datasets_override=splits)
  strategy = tf.distribute.get_strategy()
  state = train.create_state(config, splits, strategy)
  new_checkpoint = os.path.join(tmp_path, 'new', 'checkpoints', 'ckpt-16')
  state.checkpoint().restore(new_checkpoint).assert_consumed()
  old_style = tf.train.Checkpoint(model=state.model, optimizer=state.optimizer,
                                  step=state.step, epoch=state.epoch)
  tf.train.CheckpointManager(old_style, os.path.join(config.model_dir, 'checkpoints'),
                             max_to_keep=1).save(checkpoint_number=16)
  resumed = train.run(config, datasets_override=splits)
  assert resumed['weights_sha256'] == reference['weights_sha256']
  assert resumed['validation_loss'] == pytest.approx(reference['validation_loss'], abs=1e-6)
  assert [e['epoch'] for e in resumed['eval_history']] == [1]
  assert _checkpointed_record(os.path.join(config.model_dir, 'checkpoints', 'ckpt-16')
                              ).eval_history[0]['epoch'] == 1  # Saved with it.
