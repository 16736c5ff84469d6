"""Evaluation: every example counted once (padding excluded), confusion matrix, mistakes."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from mnist import evaluate
from mnist import inference

from conftest import REPO
from conftest import synthetic_splits


def _always_three(images, training=False):
  """A stand-in model: logit 5 for class 3, 0 for the others, whatever the image."""
  del training
  return tf.one_hot(tf.fill([tf.shape(images)[0]], 3), 10) * 5.0


def test_padding_is_excluded_and_every_number_follows_from_the_predictions():
  splits = synthetic_splits(num_eval=300)  # Batches of 128: the last is padded by 84.
  labels = np.array([int(label) for _, label in splits.eval.as_numpy_iterator()])
  results = evaluate.evaluate_model(_always_three, splits.eval, 300, batch_size=128,
                                    num_classes=10)
  assert results['examples'] == 300
  confusion = np.array(results['confusion_matrix'])
  assert confusion.sum() == 300
  assert (confusion[:, 3] == np.bincount(labels, minlength=10)).all()  # All in column 3.
  assert results['accuracy'] == pytest.approx(np.mean(labels == 3))
  assert results['misclassified'] == np.flatnonzero(labels != 3).tolist()
  assert results['per_class_accuracy'][3] == 1.0
  assert results['per_class_accuracy'][0] == 0.0  # Padding has label 0: not counted.
  right, wrong = math.log(1 + 9 * math.exp(-5)), 5 + math.log(1 + 9 * math.exp(-5))
  expected_loss = np.mean(np.where(labels == 3, right, wrong))
  assert results['loss'] == pytest.approx(expected_loss, rel=1e-5)


def test_text_report_shows_totals_classes_matrix_and_mistakes():
  results = {'checkpoint': 'run/checkpoints/ckpt-9', 'dataset': 'mnist', 'eval_split': 'test',
             'examples': 4, 'accuracy': 0.5, 'loss': 1.25,
             'per_class_accuracy': [1.0, 0.0, None], 'per_class_examples': [2, 2, 0],
             'confusion_matrix': [[2, 0, 0], [1, 0, 1], [0, 0, 0]], 'misclassified': [1, 3]}
  lines = evaluate.to_text(results).splitlines()
  assert 'mnist test: 4 examples, loss 1.2500, accuracy 0.5000' in lines
  assert '  2: n/a  (0/0)' in lines
  assert lines[lines.index('confusion matrix (rows: true label, columns: predicted):') + 2] \
      .split() == ['0', '2', '0', '0']
  assert lines[-1].split() == ['1', '3']


@pytest.mark.slow
@pytest.mark.real_data
def test_evaluate_scores_all_10000_test_images_like_training_did(trained_run):
  config = inference.read_config(trained_run)
  results = evaluate.run(config)
  with open(os.path.join(trained_run, 'results.json')) as f:
    trained = json.load(f)
  assert results['examples'] == 10000
  confusion = np.array(results['confusion_matrix'])
  assert confusion.shape == (10, 10) and confusion.sum() == 10000
  assert np.trace(confusion) + len(results['misclassified']) == 10000
  assert results['per_class_examples'] == confusion.sum(axis=1).tolist()
  assert results['per_class_examples'][1] == 1135  # MNIST's test set has 1,135 ones.
  # The same weights on the same images: what training measured, to float rounding.
  assert results['accuracy'] == pytest.approx(trained['test_accuracy'], abs=2e-4)
  assert results['loss'] == pytest.approx(trained['test_loss'], rel=1e-3)


@pytest.mark.slow
@pytest.mark.real_data
def test_script_data_flags_override_the_runs_config(trained_run, manual_dir):
  result = subprocess.run(
      [sys.executable, os.path.join(REPO, 'scripts', 'evaluate.py'),
       f'--model_dir={trained_run}', "--eval_split=test[:1000]", '--eval_batch_size=300',
       f'--tfds_manual_dir={manual_dir}', '--output=json'],
      capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  results = json.loads(result.stdout)
  assert results['eval_split'] == 'test[:1000]' and results['examples'] == 1000
  assert np.array(results['confusion_matrix']).sum() == 1000
  assert all(0 <= i < 1000 for i in results['misclassified'])
  assert results['accuracy'] > 0.95
