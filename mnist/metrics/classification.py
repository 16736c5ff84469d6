"""Loss and accuracy: the metrics every run reports first."""
from mnist import metrics


def _ratio(sums) -> float:
  return sums[0] / max(sums[1], 1.0)


@metrics.register('loss', higher_is_better=False, num_sums=2, value=_ratio)
def loss(logits, labels, weights):
  """Mean cross-entropy (no label smoothing: the eval loss is the plain one)."""
  import tensorflow as tf
  from mnist import losses
  return tf.stack([tf.reduce_sum(losses.per_example_loss(logits, labels) * weights),
                   tf.reduce_sum(weights)])


@metrics.register('accuracy', higher_is_better=True, num_sums=2, value=_ratio)
def accuracy(logits, labels, weights):
  import tensorflow as tf
  correct = tf.cast(tf.equal(tf.argmax(logits, axis=-1, output_type=tf.int32), labels),
                    tf.float32)
  return tf.stack([tf.reduce_sum(correct * weights), tf.reduce_sum(weights)])
