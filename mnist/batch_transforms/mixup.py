"""Mixup (Zhang et al. 2018): training on blends of two examples and of their targets."""
from mnist import batch_transforms


@batch_transforms.register('mixup', enabled=lambda config: config.mixup_alpha > 0)
def mixup(images, targets, config):
  """Examples 2k and 2k+1 of the batch are partners; each becomes lam * itself +
  (1 - lam) * its partner, images and targets alike, with its own lam: the larger of
  b and 1 - b for b ~ Beta(alpha, alpha) (as fastai's MixUp), so an example's own
  label dominates its blend and training accuracy counts against it. Partners are
  fixed by position (the batches are shuffled every epoch), so they are the same on 1
  device and N replicas whenever each replica's batch is even; with an odd batch its
  last example is its own partner (left unmixed)."""
  import tensorflow as tf
  from mnist import randomness
  batch = tf.shape(images)[0]
  lam = randomness.beta(batch, config.mixup_alpha)
  lam = tf.maximum(lam, 1 - lam)
  partner = tf.minimum(tf.bitwise.bitwise_xor(tf.range(batch), 1), batch - 1)
  blend = lambda x, weight: weight * x + (1 - weight) * tf.gather(x, partner)
  return (blend(images, tf.reshape(lam, [-1, 1, 1, 1])),
          blend(targets, tf.reshape(lam, [-1, 1])))
