"""The shared loss and statistics."""
import numpy as np
import pytest
import tensorflow as tf

from mnist import losses


def test_label_smoothing_matches_its_definition():
  logits = tf.constant([[4.0, 1.0, -2.0]])
  labels = tf.constant([0])
  smoothed, _ = losses.per_example_stats(logits, labels, label_smoothing=0.3)
  log_p = tf.nn.log_softmax(logits).numpy()[0]
  target = np.array([0.7 + 0.1, 0.1, 0.1])  # (1 - 0.3) one-hot + 0.3 / 3 classes.
  assert float(smoothed[0]) == pytest.approx(-(target * log_p).sum(), rel=1e-5)
  plain, _ = losses.per_example_stats(logits, labels)
  assert float(plain[0]) == pytest.approx(-log_p[0], rel=1e-5)

