"""The input pipeline on injected and mock data, and clear errors for bad data."""
import logging
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
  with tfds.testing.mock_data(num_examples=40):  # Mock data is never kept as decoded.
    assert not os.path.exists(os.path.join(tfds.builder('mnist').data_dir, data.DECODED_DIR))


@pytest.mark.slow
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


@pytest.fixture
def prepared_copy(tmp_path, manual_dir):
  """A TFDS data dir of its own holding prepared MNIST (copied from the default one,
  prepared there first if need be), so the decoded copies written are this test's."""
  source = tfds.builder('mnist')
  if not source.is_prepared():
    data.prepare(source, manual_dir)
  data_dir = tmp_path / 'tfds'
  version_dir = data_dir / 'mnist' / str(source.version)
  shutil.copytree(source.data_dir, version_dir,
                  ignore=shutil.ignore_patterns(data.DECODED_DIR))
  return str(data_dir), version_dir


def _examples(dataset):
  images, labels = zip(*[(x.numpy(), y.numpy()) for x, y in dataset])
  return np.stack(images), np.array(labels)


@pytest.mark.slow
@pytest.mark.real_data
def test_decoded_copy_is_written_once_and_read_instead_of_the_tfds_files(prepared_copy):
  data_dir, version_dir = prepared_copy
  splits = data.load_splits('mnist', 'train[:300]', 'test[:200]', data_dir=data_dir)
  decoded = version_dir / data.DECODED_DIR
  assert sorted(os.listdir(decoded)) == sorted([
      'train%5B%3A300%5D.index', 'train%5B%3A300%5D.data-00000-of-00001',
      'test%5B%3A200%5D.index', 'test%5B%3A200%5D.data-00000-of-00001'])  # No partials.
  builder = tfds.builder('mnist', data_dir=data_dir)
  for dataset, split in ((splits.train, 'train[:300]'), (splits.eval, 'test[:200]')):
    images, labels = _examples(dataset)
    tfds_images, tfds_labels = _examples(builder.as_dataset(split=split, as_supervised=True))
    assert images.dtype == np.uint8 and images.shape == (len(labels), 28, 28, 1)
    assert np.array_equal(images, tfds_images) and np.array_equal(labels, tfds_labels)
  # Without TFDS's records, a second load still reads every example: from the copy.
  for path in version_dir.glob('*.tfrecord*'):
    path.unlink()
  again = data.load_splits('mnist', 'train[:300]', 'test[:200]', data_dir=data_dir)
  assert np.array_equal(_examples(again.train)[0], _examples(splits.train)[0])
  assert np.array_equal(_examples(again.eval)[1], _examples(splits.eval)[1])


@pytest.mark.slow
@pytest.mark.real_data
def test_a_killed_writers_partial_copy_is_never_read(prepared_copy):
  data_dir, version_dir = prepared_copy
  decoded = version_dir / data.DECODED_DIR
  decoded.mkdir()
  # A writer killed mid-way: its partial files, and a renamed data file whose index
  # (renamed last) never arrived.
  (decoded / 'train%5B%3A100%5D.partial-host-1.data-00000-of-00001').write_bytes(b'junk')
  (decoded / 'train%5B%3A100%5D.partial-host-1_0.lockfile').write_bytes(b'')
  (decoded / 'train%5B%3A100%5D.data-00000-of-00001').write_bytes(b'junk')
  splits = data.load_splits('mnist', 'train[:100]', 'test[:100]', data_dir=data_dir)
  images, labels = _examples(splits.train)
  expected = _examples(tfds.builder('mnist', data_dir=data_dir).as_dataset(
      split='train[:100]', as_supervised=True))
  assert np.array_equal(images, expected[0]) and np.array_equal(labels, expected[1])
  assert (decoded / 'train%5B%3A100%5D.index').exists()


@pytest.mark.slow
@pytest.mark.real_data
def test_an_unwritable_decoded_folder_is_a_warning_and_tfds_decodes(prepared_copy, caplog):
  data_dir, version_dir = prepared_copy
  (version_dir / data.DECODED_DIR).write_text('a file where the folder goes')
  with caplog.at_level(logging.WARNING, logger='absl'):
    splits = data.load_splits('mnist', 'train[:100]', 'test[:100]', data_dir=data_dir)
  assert 'Could not write the decoded copy of train[:100]' in caplog.text
  assert _examples(splits.train)[0].shape == (100, 28, 28, 1)
  assert not list(version_dir.glob('*partial*'))
