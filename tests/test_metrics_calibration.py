"""ECE, through the declaration alone: its value, its direction, its place in outputs."""
import os

import numpy as np
import pytest
import tensorflow as tf

from mnist import config as config_lib
from mnist import metrics
from mnist import train
from mnist.metrics import calibration
from mnist.sweep import spec
from mnist.sweep import statistics


def _reference_ece(probabilities, labels, bins=15):
  """The textbook loop: per bin, |accuracy - mean confidence| times its share."""
  confidence = probabilities.max(axis=-1)
  correct = probabilities.argmax(axis=-1) == labels
  edges = np.linspace(0, 1, bins + 1)
  total = 0.0
  for low, high in zip(edges[:-1], edges[1:]):
    inside = (confidence > low) & (confidence <= high)
    if inside.any():
      total += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
  return total


def test_ece_matches_the_textbook_loop_and_adds_across_batches():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(500, 10)).astype('float32') * 2
  labels = rng.integers(0, 10, size=500).astype('int32')
  weights = np.ones(500, 'float32')
  sums = sum(calibration.ece(tf.constant(logits[i:i + 100]), tf.constant(labels[i:i + 100]),
                             tf.constant(weights[i:i + 100])).numpy().astype(np.float64)
             for i in range(0, 500, 100))
  probabilities = tf.nn.softmax(logits).numpy().astype(np.float64)
  assert calibration._ece(sums, 500.0) == pytest.approx(_reference_ece(probabilities, labels),
                                                 abs=1e-5)


def test_a_perfectly_confident_right_model_has_no_calibration_error():
  logits = tf.one_hot([1, 2, 3], 10) * 100.0
  sums = calibration.ece(logits, tf.constant([1, 2, 3]), tf.ones([3])).numpy()
  assert calibration._ece(sums, 3.0) == pytest.approx(0.0, abs=1e-6)


def test_ece_is_declared_lower_is_better_for_results_and_sweeps():
  assert 'ece' in metrics.names()
  assert {'test_ece', 'validation_ece'} <= set(config_lib.RESULT_METRICS)
  assert not metrics.higher_is_better('test_ece')


@pytest.mark.slow
def test_ece_reaches_results_eval_history_and_tensorboard(tmp_path, splits):
  config = config_lib.TrainConfig(model_dir=str(tmp_path), epochs=2, batch_size=32,
                                  eval_batch_size=128)
  results = train.run(config, datasets_override=splits)
  assert 0 <= results['test_ece'] < 1
  assert all(0 <= entry['ece'] < 1 for entry in results['eval_history'])
  eval_dir = os.path.join(str(tmp_path), 'eval')
  tags = set()
  for name in os.listdir(eval_dir):
    for event in tf.compat.v1.train.summary_iterator(os.path.join(eval_dir, name)):
      tags |= {value.tag for value in event.summary.value}
  assert 'ece' in tags


def test_a_sweep_ranks_test_ece_lower_is_better():
  sweep = spec.build(['--epochs=1'], ['learning_rate=1e-3,3e-3'], [], [0, 1],
                     metric='test_ece')
  assert sweep.metric == 'test_ece' and not sweep.higher_is_better
  verdict = statistics.compare([0.02, 0.021], [0.05, 0.052], sweep.higher_is_better)
  assert verdict.verdict == 'better'  # A lower ECE than the baseline's.
