"""mnist/scoring.py: one eval pass gives the metrics, the confusion matrix and the
mistakes, counting each example once under one device and two replicas."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from mnist import data
from mnist import scoring

from conftest import synthetic_splits


def _model():
  keras.utils.set_random_seed(1)
  return keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(),
                           keras.layers.Dense(10)])


def _by_hand(model, splits):
  """Predictions and labels of every eval example, one batch, no strategy."""
  images, labels = next(iter(splits.eval.batch(splits.num_eval).map(
      lambda x, y: (tf.cast(x, tf.float32) / 255.0, y))))
  logits = model(images, training=False).numpy()
  return images.numpy(), labels.numpy(), logits.argmax(-1)


@pytest.mark.slow
@pytest.mark.parametrize('two_replicas', [False, True])
def test_one_pass_gives_metrics_confusion_matrix_and_mistakes(two_replicas, mirrored2):
  splits = synthetic_splits(num_eval=300)  # 300 = 2 full batches of 128 + padded 44.
  strategy = mirrored2 if two_replicas else tf.distribute.get_strategy()
  with strategy.scope():
    model = _model()
  images, labels, predictions = _by_hand(model, splits)
  dataset = data.eval_pipeline(splits.eval, splits.num_eval, 128)
  if two_replicas:
    dataset = strategy.experimental_distribute_dataset(dataset)
  step = scoring.make_eval_step(model, strategy, num_classes=10)
  metrics = scoring.evaluate(step, dataset, strategy, keep_mistakes=25)

  assert metrics['examples'] == 300  # The padding counts nowhere.
  assert metrics['accuracy'] == pytest.approx(np.mean(predictions == labels))
  expected = np.zeros((10, 10), np.int64)
  np.add.at(expected, (labels, predictions), 1)
  np.testing.assert_array_equal(metrics['confusion_matrix'], expected)
  wrong = np.flatnonzero(predictions != labels)
  assert len(wrong) > 25  # An untrained model: plenty to choose from.
  mistakes = metrics['mistakes']
  if not two_replicas:  # In order; with replicas, per batch in replica order.
    assert mistakes.labels == labels[wrong[:25]].tolist()
    assert mistakes.predictions == predictions[wrong[:25]].tolist()
    np.testing.assert_allclose(mistakes.images, images[wrong[:25]], atol=1e-6)
  assert len(mistakes.labels) == 25
  assert all(label != p for label, p in zip(mistakes.labels, mistakes.predictions))


@pytest.mark.slow
def test_no_mistakes_kept_unless_asked():
  splits = synthetic_splits(num_eval=100)
  strategy = tf.distribute.get_strategy()
  step = scoring.make_eval_step(_model(), strategy, num_classes=10)
  metrics = scoring.evaluate(step, data.eval_pipeline(splits.eval, 100, 64), strategy)
  assert 'mistakes' not in metrics and metrics['confusion_matrix'].sum() == 100
