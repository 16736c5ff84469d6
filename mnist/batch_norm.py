"""Batch normalisation through TensorFlow's fused kernel.

Keras 3's TensorFlow backend builds BatchNormalization from separate ops (moments,
then normalise, all in float32). FusedBatchNormV3 (oneDNN on CPU, cuDNN on GPU)
does the same in one kernel and takes bfloat16/float16 activations with float32
statistics. On this repo's 2-core CPU it made strided_cnn's mixed_bfloat16
training 1.87x faster (BUILD.md, Measured).

Under several replicas the kernel would see only its replica's slice of the batch,
so training there takes the statistics of the global batch instead (all-reduced
sums, as Keras's synchronized=True) and normalises with them; one device keeps the
fused kernel.
"""
import keras
import tensorflow as tf


class FusedBatchNormalization(keras.layers.BatchNormalization):
  """keras.layers.BatchNormalization over the channels of NHWC images, fused.

  Same variables, momentum and epsilon as the Keras layer, so checkpoints are
  interchangeable. Two differences: the moving variance averages the unbiased
  batch variance (n / (n - 1) times Keras's), as TensorFlow's kernel does; and
  under a multi-replica strategy it is synchronized (as Keras's
  `synchronized=True`): the global batch's statistics, on every replica alike.
  """

  def build(self, input_shape):
    if len(input_shape) != 4 or self.axis not in (-1, 3) or not (self.scale and self.center):
      raise ValueError('FusedBatchNormalization normalises the channels (last axis) of '
                       '4-D NHWC inputs, with scale and center; got shape '
                       f'{tuple(input_shape)}, axis {self.axis}.')
    super().build(input_shape)

  def call(self, inputs, training=None, mask=None):
    if mask is not None:
      raise ValueError('FusedBatchNormalization does not take a mask.')
    training = bool(training) and self.trainable
    replica = tf.distribute.get_replica_context()
    if training and replica is not None and replica.num_replicas_in_sync > 1:
      return self._synchronized_training_call(inputs, replica)
    # Training: normalise with the batch's statistics, and the kernel returns the
    # updated moving averages. Inference: normalise with the moving averages.
    outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
        inputs, self.gamma, self.beta, mean=self.moving_mean,
        variance=self.moving_variance, epsilon=self.epsilon, is_training=training,
        exponential_avg_factor=1.0 - self.momentum if training else 1.0)
    if training:
      self.moving_mean.assign(mean)
      self.moving_variance.assign(variance)
    return tf.cast(outputs, self.compute_dtype)

  def _synchronized_training_call(self, inputs, replica):
    """Normalises with the global batch's mean and variance (differentiable through
    the all-reduces) and moves the averages toward them as the kernel would: every
    replica computes the same values, so the averages stay equal across replicas."""
    inputs = tf.cast(inputs, tf.float32)  # Statistics in float32, as the kernel keeps them.
    axes = [0, 1, 2]
    # Replicas get equal slices, so the global count needs no all-reduce.
    count = tf.cast(tf.reduce_prod(tf.shape(inputs)[:3]) * replica.num_replicas_in_sync,
                    tf.float32)
    sum_ = lambda x: replica.all_reduce(tf.distribute.ReduceOp.SUM, tf.reduce_sum(x, axes))
    mean = sum_(inputs) / count
    # Two passes, as the kernel does: Keras's one-pass E[x^2] - E[x]^2 (its
    # synchronized moments) loses digits to cancellation, enough to make 2 replicas
    # drift from one device after a few Adam steps.
    variance = sum_(tf.square(inputs - mean)) / count
    outputs = tf.nn.batch_normalization(inputs, mean, variance, self.beta, self.gamma,
                                        self.epsilon)
    unbiased = variance * count / tf.maximum(count - 1.0, 1.0)
    update = 1.0 - self.momentum
    self.moving_mean.assign(self.moving_mean * (1 - update) + tf.stop_gradient(mean) * update)
    self.moving_variance.assign(self.moving_variance * (1 - update) +
                                tf.stop_gradient(unbiased) * update)
    return tf.cast(outputs, self.compute_dtype)
