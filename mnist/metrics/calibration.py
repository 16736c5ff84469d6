"""Expected calibration error (Guo et al. 2017): how far confidence is from accuracy."""
from mnist import metrics

BINS = 15  # Equal-width confidence bins over [0, 1].


def _ece(sums, count) -> float:
  """sums: per bin the summed confidences, then per bin the correct predictions."""
  confidence, correct = sums[:BINS], sums[BINS:]
  return float(sum(abs(c - k) for c, k in zip(confidence, correct)) / max(count, 1.0))


@metrics.register('ece', higher_is_better=False, num_sums=2 * BINS, value=_ece)
def ece(logits, labels, weights):
  """Per confidence bin, the confidences and the correct predictions summed: a bin's
  |accuracy - mean confidence| weighted by its share of examples is |their difference|
  over all examples, so the sums add across batches, replicas and workers."""
  import tensorflow as tf
  probabilities = tf.nn.softmax(logits)
  confidence = tf.reduce_max(probabilities, axis=-1)
  correct = tf.cast(tf.equal(tf.argmax(logits, axis=-1, output_type=tf.int32), labels),
                    tf.float32)
  # Bin b holds confidences in (b/BINS, (b+1)/BINS]; a confidence of exactly 0 cannot occur.
  bins = tf.clip_by_value(tf.cast(tf.math.ceil(confidence * BINS), tf.int32) - 1, 0, BINS - 1)
  per_bin = lambda values: tf.math.unsorted_segment_sum(values * weights, bins, BINS)
  return tf.concat([per_bin(confidence), per_bin(correct)], axis=0)
