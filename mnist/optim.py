"""The optimizer a TrainConfig describes: Adam, a learning-rate schedule, optional
weight averaging (EMA) and, for float16, loss scaling."""
import contextlib

import keras
import numpy as np

from mnist import config as config_lib

SCHEDULES = config_lib.SCHEDULES
# One-cycle starts and ends well below the peak (peak/25 and peak/2500), as in
# the super-convergence recipes.
_ONE_CYCLE_START, _ONE_CYCLE_END = 1 / 25, 1 / 2500


@keras.saving.register_keras_serializable('mnist')
class OneCycle(keras.optimizers.schedules.LearningRateSchedule):
  """Linear warm-up from peak/25 to `peak` over `warmup_steps`, then linear decay to
  peak/2500 at `total_steps` (and held there)."""

  def __init__(self, peak: float, total_steps: int, warmup_steps: int):
    self.peak, self.total_steps, self.warmup_steps = peak, total_steps, warmup_steps

  def __call__(self, step):
    step = keras.ops.cast(step, 'float32')
    start, end = self.peak * _ONE_CYCLE_START, self.peak * _ONE_CYCLE_END
    warmup = start + (self.peak - start) * step / max(self.warmup_steps, 1)
    decay_fraction = (step - self.warmup_steps) / max(self.total_steps - self.warmup_steps, 1)
    decay = self.peak - (self.peak - end) * keras.ops.minimum(decay_fraction, 1.0)
    return keras.ops.where(step < self.warmup_steps, warmup, decay)

  def get_config(self):
    return {'peak': self.peak, 'total_steps': self.total_steps,
            'warmup_steps': self.warmup_steps}


@keras.saving.register_keras_serializable('mnist')
class CosineDecay(keras.optimizers.schedules.CosineDecay):
  """Keras' CosineDecay, its warm-up chosen by where, not by a cond on the step: the
  same values, without a data-dependent branch in the train step (on a GPU, a cond on
  the device's step counter makes the host wait for it every step)."""

  def __call__(self, step):
    if self.warmup_target is None:
      return super().__call__(step)
    initial = keras.ops.convert_to_tensor(self.initial_learning_rate)
    dtype = initial.dtype
    decay_steps = keras.ops.cast(self.decay_steps, dtype)
    warmup_target = keras.ops.cast(self.warmup_target, dtype)
    warmup_steps = keras.ops.cast(self.warmup_steps, dtype)
    step = keras.ops.minimum(keras.ops.cast(step, dtype), decay_steps + warmup_steps)
    # The warm-up's value at its unused steps (step/0 without warm-up) is discarded.
    warmup = self._warmup_function(step, warmup_steps, warmup_target, initial)
    decay = self._decay_function(step - warmup_steps, decay_steps, warmup_target, dtype)
    return keras.ops.where(step < warmup_steps, warmup, decay)


@keras.saving.register_keras_serializable('mnist')
class Adam(keras.optimizers.Adam):
  """Keras' Adam, whose update a step can cancel without a branch: within
  `masked(skip)` a step where `skip` leaves the weights and moments as they were. The
  mask is folded into the update's scalars (one select on the gradient, for a
  non-finite one); Keras' own route, a select on each of the three writes of every
  variable, cost 4-6% of a batch-64 step (AMX Xeon, medians of 3). With `skip` false
  the values are Keras', bit for bit."""

  _keep = None  # 1.0, or 0.0 to cancel; None outside masked().

  @contextlib.contextmanager
  def masked(self, skip):
    self._keep, self._skip = keras.ops.cast(keras.ops.logical_not(skip), 'float32'), skip
    try:
      yield
    finally:
      self._keep = self._skip = None

  def update_step(self, gradient, variable, learning_rate):
    if self._keep is None or self.amsgrad:
      return super().update_step(gradient, variable, learning_rate)
    # Keras' Adam.update_step, each write multiplied by keep.
    dtype = variable.dtype
    keep = keras.ops.cast(self._keep, dtype)
    lr = keras.ops.cast(learning_rate, dtype)
    gradient = keras.ops.where(self._skip, keras.ops.zeros((), dtype),
                               keras.ops.cast(gradient, dtype))
    local_step = keras.ops.cast(self.iterations + 1, dtype)
    beta_1_power = keras.ops.power(keras.ops.cast(self.beta_1, dtype), local_step)
    beta_2_power = keras.ops.power(keras.ops.cast(self.beta_2, dtype), local_step)
    m = self._momentums[self._get_variable_index(variable)]
    v = self._velocities[self._get_variable_index(variable)]
    alpha = lr * keras.ops.sqrt(1 - beta_2_power) / (1 - beta_1_power) * keep
    self.assign_add(m, keras.ops.multiply(keras.ops.subtract(gradient, m),
                                          (1 - self.beta_1) * keep))
    self.assign_add(v, keras.ops.multiply(
        keras.ops.subtract(keras.ops.square(gradient), v), (1 - self.beta_2) * keep))
    self.assign_sub(variable, keras.ops.divide(keras.ops.multiply(m, alpha),
                                               keras.ops.add(keras.ops.sqrt(v), self.epsilon)))


def learning_rate(config: config_lib.TrainConfig, total_steps: int):
  """A float for `constant`, else a schedule over the run's `total_steps`.

  The schedule spans --epochs: continuing a finished run with more epochs
  stretches it (and restarts nothing), so recipes fix --epochs up front.
  """
  if config.lr_schedule == 'constant':
    return config.learning_rate
  warmup_steps = int(config.warmup_fraction * total_steps)
  if config.lr_schedule == 'one_cycle':
    return OneCycle(config.learning_rate, total_steps, warmup_steps)
  return CosineDecay(
      initial_learning_rate=config.learning_rate * _ONE_CYCLE_START,
      decay_steps=max(total_steps - warmup_steps, 1), alpha=0.0,
      warmup_target=config.learning_rate, warmup_steps=warmup_steps)


def make_optimizer(config: config_lib.TrainConfig, total_steps: int):
  """Adam with the config's schedule, betas and weight decay; EMA of the weights when
  ema_momentum > 0."""
  optimizer = Adam(
      learning_rate=learning_rate(config, total_steps), beta_1=config.adam_beta1,
      beta_2=config.adam_beta2, weight_decay=config.weight_decay or None,
      use_ema=config.ema_momentum > 0, ema_momentum=config.ema_momentum or 0.99)
  # Kernels only: decaying biases or batch-norm scales and offsets only shifts or
  # shrinks activations, it does not regularise.
  optimizer.exclude_from_weight_decay(var_names=['bias', 'gamma', 'beta'])
  if config.mixed_precision == 'mixed_float16':
    # float16 gradients underflow without loss scaling; bfloat16 has float32's range.
    optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
  return optimizer


def averages(optimizer):
  """The weights' moving averages (EMA) the optimizer keeps, or None without EMA."""
  inner = getattr(optimizer, 'inner_optimizer', optimizer)
  # Keras keeps the EMA in the optimizer (so checkpoints hold it) but has no public
  # accessor short of finalize_variable_values, which overwrites for good.
  if not inner.use_ema:
    return None
  return inner._model_variables_moving_average  # pylint: disable=protected-access


def swap_ema(model: keras.Model, optimizer) -> bool:
  """Exchanges the model's trainable weights with their averages; False without EMA.

  Swapping (not copying) keeps both sets exact and needs no extra memory; a
  second swap restores the model.
  """
  averaged = averages(optimizer)
  if averaged is None:
    return False
  for variable, average in zip(model.trainable_variables, averaged):
    # A real copy: a tensor read from a variable can share its buffer, and would
    # change under the assign below.
    current = np.array(keras.ops.convert_to_numpy(variable.value), copy=True)
    variable.assign(average.value)
    average.assign(current)
  return True


@contextlib.contextmanager
def ema_weights(model: keras.Model, optimizer):
  """Within the block the model holds its weight averages (if any); after it, its own."""
  swapped = swap_ema(model, optimizer)
  try:
    yield
  finally:
    if swapped:
      swap_ema(model, optimizer)
