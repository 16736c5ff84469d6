"""Learning-rate schedules and weight averaging (EMA)."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from mnist import config as config_lib
from mnist import data
from mnist import optim
from mnist import train
from mnist import train_step


def _lr(schedule, step):
  return float(schedule(step)) if callable(schedule) else schedule


def test_one_cycle_values_at_known_steps():
  config = config_lib.TrainConfig(learning_rate=0.01, lr_schedule='one_cycle',
                                  warmup_fraction=0.2)
  schedule = optim.learning_rate(config, total_steps=100)
  assert _lr(schedule, 0) == pytest.approx(0.01 / 25)
  assert _lr(schedule, 10) == pytest.approx(0.01 / 25 + (0.01 - 0.01 / 25) / 2)
  assert _lr(schedule, 20) == pytest.approx(0.01)
  assert _lr(schedule, 60) == pytest.approx(0.01 - (0.01 - 0.01 / 2500) / 2)
  assert _lr(schedule, 100) == pytest.approx(0.01 / 2500, rel=1e-4)
  assert _lr(schedule, 150) == pytest.approx(0.01 / 2500, rel=1e-4)  # Held after the end.


def test_warmup_cosine_values_at_known_steps():
  config = config_lib.TrainConfig(learning_rate=0.003, lr_schedule='warmup_cosine',
                                  warmup_fraction=0.1)
  schedule = optim.learning_rate(config, total_steps=200)
  assert _lr(schedule, 0) == pytest.approx(0.003 / 25)
  assert _lr(schedule, 20) == pytest.approx(0.003)
  assert _lr(schedule, 110) == pytest.approx(0.003 / 2, rel=1e-4)  # Half-way down.
  assert _lr(schedule, 200) == pytest.approx(0.0, abs=1e-9)


def test_constant_and_adam_betas_reach_the_optimizer():
  config = config_lib.TrainConfig(learning_rate=0.002, adam_beta1=0.7, adam_beta2=0.9)
  optimizer = optim.make_optimizer(config, total_steps=10)
  assert isinstance(optimizer, keras.optimizers.Adam)
  assert (optimizer.beta_1, optimizer.beta_2) == (0.7, 0.9)
  assert float(optimizer.learning_rate) == pytest.approx(0.002)
  assert not optimizer.use_ema


def test_weight_decay_shrinks_kernels_only():
  config = config_lib.TrainConfig(learning_rate=0.01, weight_decay=0.5)
  optimizer = optim.make_optimizer(config, total_steps=10)
  model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3),
                            keras.layers.BatchNormalization()])
  for variable in model.trainable_variables:
    variable.assign(np.ones(variable.shape))
  optimizer.build(model.trainable_variables)
  # Zero gradients: Adam moves nothing, so any change is the decay.
  optimizer.apply([np.zeros(v.shape, np.float32) for v in model.trainable_variables],
                  model.trainable_variables)
  after = {v.name: v.numpy() for v in model.trainable_variables}
  np.testing.assert_allclose(after['kernel'], 1 - 0.5 * 0.01)
  for name in ('bias', 'gamma', 'beta'):
    np.testing.assert_array_equal(after[name], 1.0)


@pytest.mark.slow
def test_ema_weights_are_swapped_in_for_the_block_and_back_after(tmp_path, splits):
  config = config_lib.TrainConfig(model_dir=str(tmp_path), batch_size=32,
                                  ema_momentum=0.9)
  strategy = tf.distribute.get_strategy()
  state = train.create_state(config, splits, strategy)
  steps = train_step.make_train_steps(state, strategy, config.batch_size)
  iterator = iter(data.train_pipeline(splits.train.cache(), splits.num_train, 32, 0, 0))
  steps(iterator, tf.constant(8))
  model_vars = state.model.trainable_variables
  raw = [v.numpy() for v in model_vars]
  averages = [v.numpy() for v in state.optimizer._model_variables_moving_average]
  assert any(not np.allclose(r, a) for r, a in zip(raw, averages))
  with optim.ema_weights(state.model, state.optimizer):
    for variable, average in zip(model_vars, averages):
      np.testing.assert_array_equal(variable.numpy(), average)
  for variable, value in zip(model_vars, raw):
    np.testing.assert_array_equal(variable.numpy(), value)


def test_without_ema_the_block_changes_nothing(tmp_path, splits):
  state = train.create_state(config_lib.TrainConfig(model_dir=str(tmp_path)), splits,
                             tf.distribute.get_strategy())
  before = [v.numpy() for v in state.model.weights]
  with optim.ema_weights(state.model, state.optimizer):
    pass
  assert all(np.array_equal(a, v.numpy()) for a, v in zip(before, state.model.weights))


@pytest.mark.parametrize('skip', [False, True])
def test_our_adam_is_keras_adam_bit_for_bit_and_a_masked_step_writes_nothing(skip):
  start = np.random.default_rng(0).normal(size=(5, 3)).astype('float32')
  gradients = [tf.constant(np.random.default_rng(s).normal(size=(5, 3)), tf.float32)
               for s in range(1, 4)]
  weights = {}
  for kind in (keras.optimizers.Adam, optim.Adam):
    variable = keras.Variable(start)
    optimizer = kind(learning_rate=0.01)
    optimizer.build([variable])
    for gradient in gradients:
      if kind is optim.Adam:
        with optimizer.masked(tf.constant(False)):
          optimizer.apply([gradient], [variable])
      else:
        optimizer.apply([gradient], [variable])
    weights[kind] = variable.numpy()
    if kind is optim.Adam:
      state = [variable.numpy()] + [v.numpy() for v in optimizer.variables
                                    if v.dtype != 'int64']  # Not the step count: see train_step.
      with optimizer.masked(tf.constant(skip)):
        optimizer.apply([tf.fill([5, 3], np.inf) if skip else gradients[0]], [variable])
      after = [variable.numpy()] + [v.numpy() for v in optimizer.variables
                                    if v.dtype != 'int64']
      assert all((a == b).all() for a, b in zip(after, state)) == skip
  np.testing.assert_array_equal(weights[optim.Adam], weights[keras.optimizers.Adam])
