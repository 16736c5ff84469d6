"""The metric declarations: names, directions and sums that add across batches."""
import numpy as np
import pytest
import tensorflow as tf

from mnist import config as config_lib
from mnist import metrics


def test_results_sweeps_and_hparams_read_the_declarations():
  assert metrics.names()[:2] == ('loss', 'accuracy')
  assert config_lib.RESULT_METRICS == metrics.result_names()
  for name in metrics.names():
    assert {f'test_{name}', f'validation_{name}'} <= set(metrics.result_names())
    declared = next(m for m in metrics.declared() if m.name == name)
    assert metrics.higher_is_better(f'test_{name}') == declared.higher_is_better
    assert metrics.higher_is_better(f'validation_{name}') == declared.higher_is_better
  assert not metrics.higher_is_better('validation_loss')
  assert metrics.higher_is_better('test_accuracy')
  assert not metrics.higher_is_better('train_seconds')


def test_an_undeclared_result_has_no_direction():
  with pytest.raises(ValueError, match="'test_f1' is not a declared result"):
    metrics.higher_is_better('test_f1')


def test_sums_over_two_halves_add_up_to_the_whole_batch():
  rng = np.random.default_rng(0)
  logits = tf.constant(rng.normal(size=(64, 10)) * 3, tf.float32)
  labels = tf.constant(rng.integers(0, 10, size=64), tf.int32)
  weights = tf.constant([1.0] * 60 + [0.0] * 4)  # Padding counts nowhere.
  whole = metrics.batch_sums(logits, labels, weights).numpy()
  halves = (metrics.batch_sums(logits[:30], labels[:30], weights[:30]).numpy() +
            metrics.batch_sums(logits[30:], labels[30:], weights[30:]).numpy())
  np.testing.assert_allclose(whole, halves, rtol=1e-5, atol=1e-5)
  assert len(whole) == metrics.num_sums()
  values = metrics.values(whole.astype(np.float64), count=60.0)
  predictions = np.argmax(logits.numpy()[:60], axis=-1)
  assert values['accuracy'] == pytest.approx(np.mean(predictions == labels.numpy()[:60]))
  assert set(values) == set(metrics.names())
