"""Loss and accuracy: the metrics every run reports first."""
from mnist import metrics


def _mean(sums, count) -> float:
  return sums[0] / max(count, 1.0)


@metrics.register('loss', higher_is_better=False, num_sums=1, value=_mean)
def loss(logits, labels, weights):
  """Mean cross-entropy (no label smoothing: the eval loss is the plain one)."""
  import tensorflow as tf
  from mnist import losses
  return tf.reduce_sum(losses.per_example_loss(logits, labels) * weights)[None]


@metrics.register('accuracy', higher_is_better=True, num_sums=1, value=_mean)
def accuracy(logits, labels, weights):
  import tensorflow as tf
  correct = tf.cast(tf.equal(tf.argmax(logits, axis=-1, output_type=tf.int32), labels),
                    tf.float32)
  return tf.reduce_sum(correct * weights)[None]
