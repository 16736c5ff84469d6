"""Shared fixtures. Tests inject data and strategies; they download nothing."""
import os

import numpy as np
import pytest

from mnist import hardware

# Under the AVX2-only imitation (ONEDNN_MAX_CPU_ISA=AVX2 on an AVX-512 CPU) oneDNN has
# no bfloat16 kernels, and the bfloat16 tests would be refused (hardware.bfloat16_problem):
# the tests run with oneDNN off, as TensorFlow runs itself on a real AVX2-only CPU (the
# scripts they start inherit it). Set before TensorFlow loads.
if hardware.bfloat16_problem('mixed_bfloat16'):
  os.environ[hardware.ONEDNN_ENV] = '0'

import tensorflow as tf  # pylint: disable=g-import-not-at-top,g-bad-import-order
from tensorflow.python.framework import config as tf_config

from mnist import cli
from mnist import data
from mnist import distribute
from mnist import train
from private_slurm import slurm_cluster  # noqa: F401  The private Slurm cluster fixture.

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_MNIST = os.path.join(os.path.dirname(REPO), 'shared', 'data', 'mnist')

# Two logical CPUs before TensorFlow initialises, so one process can test both
# the default strategy and MirroredStrategy over 2 replicas.
distribute.split_cpu(2)


def synthetic_splits(num_train=512, num_eval=300, seed=0) -> data.Splits:
  """A learnable 10-class toy: each label lights its own 4x4 patch, plus noise."""
  rng = np.random.default_rng(seed)
  def make(n):
    labels = rng.integers(0, 10, size=n)
    images = rng.integers(0, 60, size=(n, 28, 28, 1))
    for i, label in enumerate(labels):
      row, col = divmod(int(label), 5)
      images[i, 4 + 10 * row:8 + 10 * row, 2 + 5 * col:6 + 5 * col, 0] = 255
    return tf.data.Dataset.from_tensor_slices((images.astype(np.uint8),
                                               labels.astype(np.int64)))
  return data.Splits(train=make(num_train), eval=make(num_eval), num_train=num_train,
                     num_eval=num_eval, num_classes=10, image_shape=(28, 28, 1))


@pytest.fixture(autouse=True)
def _restore_op_determinism():
  """train.run(deterministic=True) turns op determinism on for the whole process;
  turn it off again so later tests (XLA has no deterministic MaxPool gradient) run
  as they would alone."""
  yield
  tf_config.disable_op_determinism()


@pytest.fixture
def splits():
  return synthetic_splits()


@pytest.fixture(scope='session')
def mirrored2():
  # One for the session, as a real run has one: a second MirroredStrategy over the
  # same devices starts its collective keys afresh, and its first gradient
  # all-reduce fails if an earlier strategy's, under the same key, had another shape.
  return tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1'])


@pytest.fixture(scope='session')  # Session: trained_run needs it too.
def manual_dir():
  """The real MNIST files; CI always has them beside the checkout."""
  path = os.environ.get('TFDS_MANUAL_DIR') or SHARED_MNIST
  if not os.path.isdir(path):
    pytest.fail(f'Real-data tests need the MNIST files in {SHARED_MNIST} or $TFDS_MANUAL_DIR.')
  return path


@pytest.fixture(scope='session')
def trained_run(tmp_path_factory, manual_dir):
  """A real run's model_dir, trained once per session for the inference tests.

  The fast recipe, read from its flagfile as scripts/train.py reads it: the picture
  tests need a model that reads digits well (99.2% of the test set), and this one
  trains in a sixth of the seed recipe's epoch (which took 68 s of setup on an
  AVX2-only EPYC). float32 on every CPU, so the tests compare the same numbers.
  """
  model_dir = str(tmp_path_factory.mktemp('trained') / 'run')
  config, _ = cli.parse_train_flags([
      f'--flagfile={os.path.join(REPO, "configs", "fast.flags")}', f'--model_dir={model_dir}',
      '--mixed_precision=float32', f'--tfds_manual_dir={manual_dir}'])
  train.run(config)
  return model_dir
