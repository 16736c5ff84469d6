"""scripts/report.py: a PNG of a run's curves and confusion matrix, or a clear error."""
import os
import subprocess
import sys

import pytest

from mnist import config as config_lib
from mnist import errors
from mnist import report
from mnist import train

from conftest import REPO, synthetic_splits


def _run_script(*args):
  return subprocess.run([sys.executable, os.path.join(REPO, 'scripts', 'report.py'), *args],
                        capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_report_reads_the_curves_and_latest_confusion_matrix_of_a_run(tmp_path):
  config = config_lib.TrainConfig(model_dir=str(tmp_path / 'run'), epochs=2, batch_size=64,
                                  eval_batch_size=100, log_every_steps=4)
  results = train.run(config, datasets_override=synthetic_splits(num_train=256))
  history = report.read_run(config.model_dir)
  assert history['train']['loss'][0] == (4, 8)  # Steps of the logged windows.
  assert history['eval']['accuracy'][1][-1] == pytest.approx(results['test_accuracy'])
  step, matrix = history['confusion_matrix']
  assert step == 8 and matrix.sum() == 300

  result = _run_script(f'--model_dir={config.model_dir}')
  assert result.returncode == 0, result.stderr
  output = os.path.join(config.model_dir, 'report.png')
  assert result.stdout.strip().splitlines()[-1] == output
  with open(output, 'rb') as f:
    png = f.read()
  assert png.startswith(b'\x89PNG') and len(png) > 10_000

  other = str(tmp_path / 'elsewhere.png')
  assert report.write_report(config.model_dir, other) == other and os.path.getsize(other)


@pytest.mark.slow
def test_a_dir_without_events_is_a_clear_error(tmp_path):
  empty = tmp_path / 'empty'
  (empty / 'train').mkdir(parents=True)
  result = _run_script(f'--model_dir={empty}')
  assert result.returncode == 2
  assert f'error: {empty} has no TensorBoard scalars in train/ or eval/' in result.stderr
  assert 'Traceback' not in result.stderr
  assert not os.path.exists(empty / 'report.png')
  with pytest.raises(errors.DataError, match='does not exist'):
    report.write_report(str(tmp_path / 'missing'))
