"""The loss and the summed statistics every training, eval and summary step shares."""
import tensorflow as tf


def per_example_loss(logits, labels, label_smoothing: float = 0.0):
  """Cross-entropy of each example, computed in float32 whatever the model's dtype."""
  logits = tf.cast(logits, tf.float32)  # Loss and softmax in float32 under mixed precision.
  if label_smoothing:
    return tf.keras.losses.categorical_crossentropy(
        tf.one_hot(labels, tf.shape(logits)[-1]), logits, from_logits=True,
        label_smoothing=label_smoothing)
  return tf.keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)


def per_example_stats(logits, labels, weights=None, label_smoothing: float = 0.0):
  """(per-example float32 loss, [loss sum, correct, count]) for one replica's batch.

  `weights` (1 real, 0 padding) exclude the eval set's padding from every sum.
  """
  losses = per_example_loss(logits, labels, label_smoothing)
  correct = tf.cast(tf.equal(tf.argmax(logits, axis=-1, output_type=tf.int32), labels),
                    tf.float32)
  if weights is None:
    weights = tf.ones_like(losses)
  return losses, tf.stack([tf.reduce_sum(losses * weights), tf.reduce_sum(correct * weights),
                           tf.reduce_sum(weights)])
