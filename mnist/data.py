"""Input: TFDS splits streamed into tf.data pipelines (cache, shuffle, batch, prefetch).

Images stay uint8 in the cache (4x less memory than float32) and are normalised
to float32 [0, 1] once per batch, where the work is vectorised.
"""
import dataclasses
import hashlib
import os
import socket
from typing import Optional
from urllib import parse

from absl import logging
import tensorflow as tf
import tensorflow_datasets as tfds

from mnist import errors

_NETWORK_PROBE_SECONDS = 3
# Batches prepared ahead of the step. The pipeline makes a batch in ~0.3 ms, so
# two keep the step fed whatever it runs on.
PREFETCH_BATCHES = 2
# Beside TFDS's prepared files (in their versioned folder, so it goes with them): each
# split's decoded (image, label) examples in tf.data's cache format, one file per split.
DECODED_DIR = 'decoded_supervised'


def _pipeline_options() -> tf.data.Options:
  """tf.data autotuning off. With it on, replacing a training iterator that was not
  run to its end (every epoch's: the dropped remainder stays unread) blocked for
  4-20 s with the CPU idle while the old iterator's autotuning thread shut down
  (measured here: 4.3 s in an input-only loop, ~10 s between epochs in training;
  0.03 s with it off). This pipeline has nothing left to tune: no parallel map,
  and a fixed prefetch depth."""
  options = tf.data.Options()
  options.autotune.enabled = False
  options.deterministic = True
  return options


@dataclasses.dataclass(frozen=True)
class Splits:
  """Unbatched (uint8 image [H, W, C], int64 label) datasets and their sizes.

  Tests build one from tensors and pass it to `train.run(datasets_override=...)`.
  """
  train: tf.data.Dataset
  eval: tf.data.Dataset
  num_train: int
  num_eval: int
  num_classes: int
  image_shape: tuple
  validation: Optional[tf.data.Dataset] = None  # Carved from the training data.
  num_validation: int = 0
  dataset_version: Optional[str] = None  # The TFDS builder's version read; None: injected.


def load_splits(dataset: str, train_split: str, eval_split: str,
                data_dir: Optional[str] = None, manual_dir: Optional[str] = None,
                validation_split: str = '') -> Splits:
  """Loads the TFDS splits, preparing the dataset first if needed."""
  builder = _builder(dataset, data_dir)
  if not builder.is_prepared():
    try:
      prepare(builder, manual_dir)
    except errors.DataError:
      # Another process (a parallel sweep run, a second worker) may have finished
      # preparing it first: TFDS then fails to rename its own copy into place.
      builder = _builder(dataset, data_dir)
      if not builder.is_prepared():
        raise
  features = builder.info.features
  if 'image' not in features or 'label' not in features:
    raise errors.DataError(f'--dataset={dataset} is not an image-classification dataset '
                           "(it needs 'image' and 'label' features).")
  requested = [('train_split', train_split), ('eval_split', eval_split)]
  if validation_split:
    requested.append(('validation_split', validation_split))
  datasets, sizes = [], []
  for flag, split in requested:
    try:
      ds = builder.as_dataset(split=split, as_supervised=True, shuffle_files=False)
      size = int(ds.cardinality())  # TFDS knows it; mock data has no split info.
      if size < 0:
        size = builder.info.splits[split].num_examples
    except (ValueError, KeyError, AssertionError) as e:
      raise errors.DataError(f'--{flag}={split!r} is not a valid split of {dataset} '
                             f'(it has {", ".join(builder.info.splits)}): {e}') from None
    datasets.append(_decoded(ds, builder, split))
    sizes.append(size)
  return Splits(train=datasets[0], eval=datasets[1], num_train=sizes[0],
                num_eval=sizes[1], num_classes=features['label'].num_classes,
                image_shape=tuple(features['image'].shape),
                validation=datasets[2] if validation_split else None,
                num_validation=sizes[2] if validation_split else 0,
                dataset_version=str(builder.version))


def _decoded(ds: tf.data.Dataset, builder, split: str) -> tf.data.Dataset:
  """The split read from its decoded copy, written on first use.

  TFDS parses and decodes every example in its own tf.data call: 2.1-2.6 s for
  MNIST's 60,000 training images on an AMD EPYC (Zen 4), paid by every run before
  its first step (a quarter of the fast recipe). Reading tf.data's cache file of
  the decoded split takes 0.2 s. The copy is written under a name of this process's
  own and renamed into place when complete, so a killed run or a second process
  writing at the same time leaves no partial copy to read. A folder that cannot be
  written is a warning: the run then decodes as before. Datasets TFDS has not
  prepared (tfds.testing.mock_data's) are read as they are.
  """
  if not builder.is_prepared():
    return ds
  prefix = os.path.join(builder.data_dir, DECODED_DIR, parse.quote(split, safe=''))
  if tf.io.gfile.exists(prefix + '.index'):
    return ds.cache(prefix)
  partial = f'{prefix}.partial-{socket.gethostname()}-{os.getpid()}'
  try:
    tf.io.gfile.makedirs(os.path.dirname(prefix))
    for _ in ds.cache(partial).batch(4096).with_options(_pipeline_options()):
      pass
    data_files = tf.io.gfile.glob(partial + '.data-*')
    for path in data_files + [partial + '.index']:  # The index last: it marks completion.
      tf.io.gfile.rename(path, prefix + path[len(partial):], overwrite=True)
  except (tf.errors.OpError, OSError) as e:
    logging.warning('Could not write the decoded copy of %s to %s (%s); this run decodes '
                    'it from the TFDS files.', split, prefix, e)
    for path in tf.io.gfile.glob(partial + '*'):
      tf.io.gfile.remove(path)
    return ds
  return ds.cache(prefix)


def _builder(dataset: str, data_dir: Optional[str]):
  try:
    return tfds.builder(dataset, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    raise errors.DataError(f'--dataset={dataset!r} is not a TFDS dataset; see '
                           'tfds.list_builders() for the names, e.g. mnist.') from None


def prepare(builder, manual_dir: Optional[str]):
  """Builds the dataset from `manual_dir`, or downloads it, failing fast with a clear error.

  TFDS itself verifies each file's size and sha256; checking them first lets us
  name the bad file, and spares a minutes-long download retry loop offline.
  """
  expected = builder.url_infos or {}
  if manual_dir:
    if not os.path.isdir(manual_dir):
      raise errors.DataError(f'The TFDS manual dir {manual_dir} does not exist. '
                             + _needed_files_text(builder.name, expected))
    _verify_files(builder.name, manual_dir, expected)
  elif expected and not _reachable(expected):
    raise errors.DataError(f'{builder.name} is not prepared in {builder.data_dir} and '
                           'cannot be downloaded (no network). '
                           + _needed_files_text(builder.name, expected))
  try:
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  except Exception as e:  # TFDS raises many types; name the step that failed.
    raise errors.DataError(f'TFDS could not prepare {builder.name} from '
                           f'{manual_dir or "the network"}: {e}') from e


def _verify_files(name, manual_dir, expected):
  problems = []
  for info in expected.values():
    path = os.path.join(manual_dir, info.filename)
    if not os.path.exists(path):
      problems.append(f'{info.filename} is missing (expected sha256 {info.checksum})')
      continue
    size, expected_size = os.path.getsize(path), int(info.size)
    if size != expected_size:
      problems.append(f'{path} has {size} bytes, expected {expected_size} '
                      f'(truncated or wrong file; expected sha256 {info.checksum})')
    elif _sha256(path) != info.checksum:
      problems.append(f'{path} has the wrong checksum (expected sha256 {info.checksum})')
  if problems:
    raise errors.DataError(f'The TFDS manual dir {manual_dir} cannot build {name}: '
                           + '; '.join(problems) + '.')


def _needed_files_text(name, expected):
  if not expected:
    return f'Put the original files of {name} in a folder and pass it as --tfds_manual_dir.'
  files = ', '.join(f'{i.filename} (sha256 {i.checksum})' for i in expected.values())
  return (f'{name} needs these files: {files}. Put them in one folder and pass it as '
          '--tfds_manual_dir=DIR or set TFDS_MANUAL_DIR=DIR.')


def _sha256(path):
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(1 << 20), b''):
      digest.update(chunk)
  return digest.hexdigest()


def _reachable(expected) -> bool:
  """True if the first download host accepts a TCP connection within a few seconds."""
  url = parse.urlparse(next(iter(expected)))
  port = url.port or (443 if url.scheme == 'https' else 80)
  try:
    socket.create_connection((url.hostname, port), timeout=_NETWORK_PROBE_SECONDS).close()
    return True
  except OSError:
    return False


def normalize(images, labels):
  """uint8 [0, 255] -> float32 [0, 1]; labels int32 (what sparse CE and argmax compare)."""
  return tf.cast(images, tf.float32) / 255.0, tf.cast(labels, tf.int32)


def epoch_seed(seed: int, epoch: int) -> int:
  """The shuffle seed of one epoch: the order depends only on (seed, epoch), so a
  resumed run replays exactly the order the interrupted one would have seen."""
  return (seed * 1_000_003 + epoch) % (2**31 - 1)


def train_pipeline(cached: tf.data.Dataset, num_examples: int, batch_size: int,
                   seed: int, epoch: int, skip_batches: int = 0) -> tf.data.Dataset:
  """One epoch of shuffled, full, normalised batches from an already-cached dataset.

  The last partial batch is dropped so every step has the same global batch
  (and static shapes); the shuffle draws different examples into it each epoch.
  """
  ds = cached.shuffle(num_examples, seed=epoch_seed(seed, epoch),
                      reshuffle_each_iteration=False)
  ds = ds.batch(batch_size, drop_remainder=True)
  if skip_batches:
    ds = ds.skip(skip_batches)
  return ds.map(normalize).prefetch(PREFETCH_BATCHES).with_options(_pipeline_options())


def eval_pipeline(cached: tf.data.Dataset, num_examples: int,
                  batch_size: int) -> tf.data.Dataset:
  """Every example exactly once, in order, as (images, labels, weights) full batches.

  The last batch is padded with weight-0 examples instead of left partial: every
  replica then gets a non-empty batch of one static shape (an empty replica
  batch crashes oneDNN's conv kernels), and the weights keep the count exact.
  """
  padding = -num_examples % batch_size
  element_spec = cached.element_spec
  pad = tf.data.Dataset.from_tensors(
      (tf.zeros(element_spec[0].shape, element_spec[0].dtype),
       tf.zeros(element_spec[1].shape, element_spec[1].dtype))).repeat(padding)
  weighted = cached.map(lambda image, label: (image, label, 1.0)).concatenate(
      pad.map(lambda image, label: (image, label, 0.0)))
  return weighted.batch(batch_size).map(
      lambda images, labels, weights: (*normalize(images, labels), weights)
  ).prefetch(PREFETCH_BATCHES).with_options(_pipeline_options())


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
  return num_examples // batch_size
