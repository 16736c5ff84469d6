"""The loss and the summed statistics every training, eval and summary step shares."""
import tensorflow as tf


def per_example_loss(logits, labels, label_smoothing: float = 0.0):
  """Cross-entropy of each example, computed in float32 whatever the model's dtype.
  `labels`: int class indices, or float [batch, classes] targets (soft, from a
  training-batch transform), which label smoothing then smooths."""
  logits = tf.cast(logits, tf.float32)  # Loss and softmax in float32 under mixed precision.
  if labels.dtype.is_floating:
    return tf.keras.losses.categorical_crossentropy(labels, logits, from_logits=True,
                                                    label_smoothing=label_smoothing)
  if label_smoothing:
    return tf.keras.losses.categorical_crossentropy(
        tf.one_hot(labels, tf.shape(logits)[-1]), logits, from_logits=True,
        label_smoothing=label_smoothing)
  return tf.keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)


def per_example_stats(logits, labels, weights=None, label_smoothing: float = 0.0,
                      targets=None):
  """(per-example float32 loss, [loss sum, correct, count]) for one replica's batch.

  `weights` (1 real, 0 padding) exclude the eval set's padding from every sum. The loss
  is against `targets` where given (a training-batch transform's), else `labels`;
  correct always counts predictions equal to `labels`.
  """
  losses = per_example_loss(logits, labels if targets is None else targets,
                            label_smoothing)
  correct = tf.cast(tf.equal(tf.argmax(logits, axis=-1, output_type=tf.int32), labels),
                    tf.float32)
  if weights is None:
    weights = tf.ones_like(losses)
  return losses, tf.stack([tf.reduce_sum(losses * weights), tf.reduce_sum(correct * weights),
                           tf.reduce_sum(weights)])
