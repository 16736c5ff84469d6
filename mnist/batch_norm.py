"""Batch normalisation through TensorFlow's fused kernel.

Keras 3's TensorFlow backend builds BatchNormalization from separate ops (moments,
then normalise, all in float32). FusedBatchNormV3 (oneDNN on CPU, cuDNN on GPU)
does the same in one kernel and takes bfloat16/float16 activations with float32
statistics. On this repo's 2-core CPU it made strided_cnn's mixed_bfloat16
training 1.87x faster (BUILD.md, Measured).
"""
import keras
import tensorflow as tf


class FusedBatchNormalization(keras.layers.BatchNormalization):
  """keras.layers.BatchNormalization over the channels of NHWC images, fused.

  Same variables, momentum and epsilon as the Keras layer, so checkpoints are
  interchangeable. Two differences: the moving variance averages the unbiased
  batch variance (n / (n - 1) times Keras's), as TensorFlow's kernel does; and
  under a multi-replica strategy the replicas' moving averages are kept equal.
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
    # Training: normalise with the batch's statistics, and the kernel returns the
    # updated moving averages. Inference: normalise with the moving averages.
    outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
        inputs, self.gamma, self.beta, mean=self.moving_mean,
        variance=self.moving_variance, epsilon=self.epsilon, is_training=training,
        exponential_avg_factor=1.0 - self.momentum if training else 1.0)
    if training:
      replica = tf.distribute.get_replica_context()
      if replica is not None and replica.num_replicas_in_sync > 1:
        # Keras creates the averages unaggregated, so each replica would keep its
        # own and checkpoints would save the first replica's: average them.
        mean, variance = replica.all_reduce(tf.distribute.ReduceOp.MEAN, [mean, variance])
      self.moving_mean.assign(mean)
      self.moving_variance.assign(variance)
    return tf.cast(outputs, self.compute_dtype)
