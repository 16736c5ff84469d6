"""Mixup: partners blended by one weight, the same on 1 device and 2 replicas, once per
step under SAM."""
import numpy as np
import pytest
import tensorflow as tf

from mnist import config as config_lib
from mnist import data
from mnist import errors
from mnist import randomness
from mnist import train
from mnist import train_step
from mnist.batch_transforms import mixup

from test_train import _train_k_steps


def test_partners_blend_images_and_targets_by_one_weight():
  config = config_lib.TrainConfig(mixup_alpha=0.4)
  images = tf.random.stateless_uniform([6, 28, 28, 1], seed=[1, 2])
  targets = tf.one_hot([0, 1, 2, 3, 4, 5], 10)
  with randomness.draws(0, tf.constant(3, tf.int64), randomness.BATCH_TRANSFORM_STREAM):
    mixed, soft = mixup.mixup(images, targets, config)
  soft = soft.numpy()
  np.testing.assert_allclose(soft.sum(axis=1), 1.0, rtol=1e-6)
  for k in range(6):
    partner = k ^ 1
    weight = soft[k, k]  # Each example's own class carries its weight, the larger.
    assert 0.5 <= weight <= 1
    assert soft[k, partner] == pytest.approx(1 - weight, abs=1e-6)
    np.testing.assert_allclose(mixed[k], weight * images[k] + (1 - weight) * images[partner],
                               atol=1e-6)
  assert len({round(float(soft[k, k]), 6) for k in range(6)}) > 1  # Per example.


def test_mixup_alpha_below_zero_is_refused():
  with pytest.raises(errors.ConfigError, match='--mixup_alpha must be >= 0'):
    config_lib.TrainConfig(mixup_alpha=-0.1).validate()


@pytest.mark.slow
def test_two_replicas_mix_and_train_exactly_like_one_device(tmp_path, splits, mirrored2):
  config = config_lib.TrainConfig(model_dir=str(tmp_path), batch_size=64,
                                  eval_batch_size=128, dropout_rate=0.5, mixup_alpha=0.2)
  one_weights, one_totals, _ = _train_k_steps(tf.distribute.get_strategy(), config,
                                              splits, k=6)
  two_weights, two_totals, _ = _train_k_steps(mirrored2, config, splits, k=6)
  assert max(float(np.max(np.abs(a - b))) for a, b in zip(one_weights, two_weights)) <= 1e-5
  np.testing.assert_allclose(one_totals, two_totals, rtol=1e-5)
  plain_weights, _, _ = _train_k_steps(tf.distribute.get_strategy(),
                                       config.replace(mixup_alpha=0.0), splits, k=6)
  assert max(float(np.max(np.abs(a - b))) for a, b in zip(one_weights, plain_weights)) > 1e-4


def test_sams_second_pass_reuses_the_transformed_batch(tmp_path, splits):
  config = config_lib.TrainConfig(model_dir=str(tmp_path), batch_size=32, sam_rho=0.05,
                                  mixup_alpha=0.2)
  strategy = tf.distribute.get_strategy()
  state = train.create_state(config, splits, strategy)
  seen = []

  def counting_stage(images, labels):
    seen.append(images)
    return mixup.mixup(images, tf.one_hot(labels, 10), config)
  steps = train_step.make_train_steps(state, strategy, config.batch_size, sam_rho=0.05,
                                      batch_stage=counting_stage)
  iterator = iter(data.train_pipeline(splits.train.cache(), splits.num_train, 32, 0, 0))
  counts = train_step.read(steps(iterator, tf.constant(2)))
  assert counts['consumed'] == 2
  assert len(seen) == 1  # Traced once for the step: both passes use its output.
