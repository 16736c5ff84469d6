"""The input pipeline on injected and mock data, and clear errors for bad data."""
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from mnist import data
from mnist import errors

from conftest import synthetic_splits


def _batches(dataset):
  return [(x.numpy(), y.numpy()) for x, y in dataset]


def test_train_pipeline_gives_full_normalised_batches_with_aligned_labels():
  splits = synthetic_splits(num_train=100)
  batches = _batches(data.train_pipeline(splits.train.cache(), 100, 32, seed=1, epoch=0))
  assert len(batches) == 3  # 100 // 32: the partial batch is dropped.
  for images, labels in batches:
    assert images.shape == (32, 28, 28, 1) and images.dtype == np.float32
    assert 0.0 <= images.min() and images.max() <= 1.0
    # Alignment: each label's own patch is the bright one.
    for image, label in zip(images, labels):
      row, col = divmod(int(label), 5)
      assert image[5 + 10 * row, 3 + 5 * col, 0] == 1.0


def test_shuffle_order_depends_only_on_seed_and_epoch():
  cached = synthetic_splits(num_train=64).train.cache()
  def order(seed, epoch, skip=0):
    return np.concatenate([y for _, y in _batches(
        data.train_pipeline(cached, 64, 8, seed=seed, epoch=epoch, skip_batches=skip))])
  assert np.array_equal(order(0, 1), order(0, 1))
  assert not np.array_equal(order(0, 1), order(0, 2))
  assert not np.array_equal(order(0, 1), order(1, 1))
  # Resuming mid-epoch replays the remaining batches exactly.
  assert np.array_equal(order(0, 1)[24:], order(0, 1, skip=3))


def test_eval_pipeline_scores_every_example_once_in_order():
  splits = synthetic_splits(num_eval=250)
  batches = [tuple(t.numpy() for t in batch)
             for batch in data.eval_pipeline(splits.eval.cache(), 250, 100)]
  assert [len(labels) for _, labels, _ in batches] == [100, 100, 100]  # Padded, static.
  weights = np.concatenate([w for _, _, w in batches])
  assert weights.sum() == 250 and np.all(weights[:250] == 1) and np.all(weights[250:] == 0)
  expected = np.array([y for _, y in splits.eval.as_numpy_iterator()])
  assert np.array_equal(np.concatenate([y for _, y, _ in batches])[:250], expected)


def test_load_splits_from_tfds_mock_data(monkeypatch):
  # mock_data replaces the download itself; say the network is there so the
  # offline fast-fail check lets the (mocked) download run.
  monkeypatch.setattr(data, '_reachable', lambda urls: True)
  with tfds.testing.mock_data(num_examples=40):
    splits = data.load_splits('mnist', 'train', 'test', manual_dir=None)
  assert (splits.num_train, splits.num_eval) == (40, 40)
  assert splits.num_classes == 10 and splits.image_shape == (28, 28, 1)
  image, label = next(iter(splits.train))
  assert image.dtype == tf.uint8 and image.shape == (28, 28, 1) and label.dtype == tf.int64


@pytest.mark.real_data
def test_bad_split_is_a_clear_error(manual_dir):
  with pytest.raises(errors.DataError, match="--train_split='validation' is not a valid"):
    data.load_splits('mnist', 'validation', 'test', manual_dir=manual_dir)


def test_unknown_dataset_is_a_clear_error():
  with pytest.raises(errors.DataError, match="'mnistt' is not a TFDS dataset"):
    data.load_splits('mnistt', 'train', 'test')


@pytest.fixture
def empty_builder(tmp_path):
  return tfds.builder('mnist', data_dir=str(tmp_path / 'tfds'))


def test_missing_manual_dir_names_the_folder_and_the_files(empty_builder, tmp_path):
  with pytest.raises(errors.DataError) as e:
    data.prepare(empty_builder, str(tmp_path / 'nowhere'))
  message = str(e.value)
  assert 'nowhere does not exist' in message
  assert 'train-images-idx3-ubyte.gz (sha256 440fcabf' in message


def test_truncated_and_corrupt_files_are_named_with_their_sha256(empty_builder, tmp_path,
                                                                  manual_dir):
  bad = tmp_path / 'bad'
  shutil.copytree(manual_dir, bad)
  os.chmod(bad, 0o755)
  for name in os.listdir(bad):
    os.chmod(bad / name, 0o644)
  with open(bad / 'train-labels-idx1-ubyte.gz', 'r+b') as f:
    f.truncate(1000)
  raw = bytearray((bad / 't10k-labels-idx1-ubyte.gz').read_bytes())
  raw[-1] ^= 0xFF  # Same size, different bytes.
  (bad / 't10k-labels-idx1-ubyte.gz').write_bytes(bytes(raw))
  os.remove(bad / 't10k-images-idx3-ubyte.gz')
  with pytest.raises(errors.DataError) as e:
    data.prepare(empty_builder, str(bad))
  message = str(e.value)
  assert 'train-labels-idx1-ubyte.gz has 1000 bytes, expected 28881' in message
  assert 't10k-labels-idx1-ubyte.gz has the wrong checksum (expected sha256 f7ae60f9' in message
  assert 't10k-images-idx3-ubyte.gz is missing (expected sha256 8d422c7b' in message
  assert not empty_builder.is_prepared()


def test_pipelines_run_without_autotune_and_in_deterministic_order():
  # Autotuning made replacing an unfinished epoch iterator stall for seconds.
  splits = synthetic_splits()
  for dataset in (data.train_pipeline(splits.train, 512, 32, seed=0, epoch=0),
                  data.eval_pipeline(splits.eval, 300, 100)):
    assert dataset.options().autotune.enabled is False
    assert dataset.options().deterministic is True
