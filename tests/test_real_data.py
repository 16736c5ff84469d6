"""End to end on the real MNIST files (../shared/data/mnist), as a user runs it. CI runs these."""
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO

pytestmark = pytest.mark.real_data


def _train(*flags, env=None):
  return subprocess.run([sys.executable, os.path.join(REPO, 'scripts', 'train.py'), *flags],
                        capture_output=True, text=True, timeout=900,
                        env={**os.environ, **(env or {})})


@pytest.mark.slow
def test_short_real_run_scores_all_10000_test_images(tmp_path, manual_dir):
  model_dir = str(tmp_path / 'run')
  result = _train(f'--model_dir={model_dir}', "--train_split=train[:6400]", '--epochs=1',
                  '--log_every_steps=25', f'--tfds_manual_dir={manual_dir}')
  assert result.returncode == 0, result.stderr[-3000:]
  results = json.loads(result.stdout.strip().splitlines()[-1])  # The last line is JSON.
  assert results['test_examples'] == 10000
  assert results['test_accuracy'] > 0.9  # 100 steps of Adam on real digits.
  assert results['global_step'] == 100
  with open(os.path.join(model_dir, 'results.json')) as f:
    assert json.load(f) == results
  assert 'images/s' in result.stderr and 'ETA' in result.stderr  # Progress lines.
  assert os.listdir(os.path.join(model_dir, 'train'))
  assert os.listdir(os.path.join(model_dir, 'eval'))


@pytest.mark.slow
def test_missing_data_fails_fast_naming_the_files(tmp_path):
  result = _train(f'--model_dir={tmp_path / "run"}', f'--data_dir={tmp_path / "tfds"}',
                  f'--tfds_manual_dir={tmp_path / "no_such_dir"}')
  assert result.returncode == 2
  assert 'no_such_dir does not exist' in result.stderr
  assert 'train-images-idx3-ubyte.gz (sha256 440fcabf' in result.stderr
  assert 'Traceback' not in result.stderr


@pytest.mark.slow
def test_manual_dir_falls_back_to_the_environment(tmp_path):
  result = _train(f'--model_dir={tmp_path / "run"}', f'--data_dir={tmp_path / "tfds"}',
                  env={'TFDS_MANUAL_DIR': str(tmp_path / 'from_env')})
  assert result.returncode == 2
  assert 'from_env does not exist' in result.stderr
