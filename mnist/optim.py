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
  return keras.optimizers.schedules.CosineDecay(
      initial_learning_rate=config.learning_rate * _ONE_CYCLE_START,
      decay_steps=max(total_steps - warmup_steps, 1), alpha=0.0,
      warmup_target=config.learning_rate, warmup_steps=warmup_steps)


def make_optimizer(config: config_lib.TrainConfig, total_steps: int):
  """Adam with the config's schedule, betas and weight decay; EMA of the weights when
  ema_momentum > 0."""
  optimizer = keras.optimizers.Adam(
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


def _averages(optimizer):
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
  averages = _averages(optimizer)
  if averages is None:
    return False
  for variable, average in zip(model.trainable_variables, averages):
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
