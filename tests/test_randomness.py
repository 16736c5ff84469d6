"""Per-example randomness: the same draws for an example on one device and on 2 replicas."""
import numpy as np
import pytest
import tensorflow as tf

from mnist import augment
from mnist import randomness

GLOBAL_BATCH = 8


def _ramps():
  """Images whose pixels hold their own (row, column): warping them shows the transform."""
  rows, columns = np.indices((28, 28)).astype(np.float32)
  return np.repeat(np.stack([rows, columns], -1)[None], GLOBAL_BATCH, axis=0)


def _train_call(strategy, layer, inputs, seed=3, step=5):
  """The layer's training output for the global batch `inputs`, each replica given its
  slice in order (as distribute_dataset splits a batch), concatenated back."""
  dataset = strategy.experimental_distribute_dataset(
      tf.data.Dataset.from_tensors(inputs))

  @tf.function
  def call(batch):
    def replica_fn(batch):
      with randomness.draws(seed, tf.constant(step, tf.int64)):
        return layer(batch, training=True)
    return strategy.run(replica_fn, args=(batch,))
  outputs = call(next(iter(dataset)))
  return np.concatenate([t.numpy() for t in strategy.experimental_local_results(outputs)])


@pytest.mark.parametrize('make_layer, make_inputs', [
    (lambda: randomness.ExampleDropout(0.5), lambda: np.ones((GLOBAL_BATCH, 6, 6, 4),
                                                             np.float32)),
    (lambda: augment.RandomDistortion(2, 10, 0.1, elastic_alpha=34), _ramps),
    (lambda: augment.RandomCutout(8), lambda: np.ones((GLOBAL_BATCH, 28, 28, 1), np.float32)),
])
@pytest.mark.slow
def test_each_example_draws_the_same_on_one_device_and_two_replicas(mirrored2, make_layer,
                                                                    make_inputs):
  layer, inputs = make_layer(), make_inputs()
  one = _train_call(tf.distribute.get_strategy(), layer, inputs)
  two = _train_call(mirrored2, layer, inputs)
  np.testing.assert_allclose(two, one, atol=1e-5)
  assert not np.allclose(one, inputs)  # It does draw something...
  assert not np.allclose(one[0], one[GLOBAL_BATCH // 2])  # ...and per example.


def test_draws_depend_on_seed_and_step_only():
  layer = randomness.ExampleDropout(0.5)
  inputs = np.ones((GLOBAL_BATCH, 64), np.float32)
  strategy = tf.distribute.get_strategy()
  first = _train_call(strategy, layer, inputs, seed=3, step=5)
  np.testing.assert_array_equal(_train_call(strategy, layer, inputs, seed=3, step=5), first)
  assert not np.array_equal(_train_call(strategy, layer, inputs, seed=3, step=6), first)
  assert not np.array_equal(_train_call(strategy, layer, inputs, seed=4, step=5), first)


def test_dropout_keeps_about_one_minus_rate_scaled_up_and_is_off_at_inference():
  layer = randomness.ExampleDropout(0.25)
  inputs = np.ones((GLOBAL_BATCH, 1000), np.float32)
  outputs = _train_call(tf.distribute.get_strategy(), layer, inputs)
  assert set(np.unique(outputs)) == {0.0, np.float32(1 / 0.75)}
  assert abs((outputs == 0).mean() - 0.25) < 0.02
  np.testing.assert_array_equal(layer(inputs, training=False), inputs)
