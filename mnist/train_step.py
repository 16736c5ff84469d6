"""The training step: gradient, the all-reduced apply-or-skip decision, the update;
and the loop that runs a window of steps in one compiled call.

No data-dependent branch runs between the steps of a call: each step computes its
update, then every variable the update wrote takes its new or its old value by a flag
all-reduced across replicas and workers (`tf.where`, as optax.apply_if_finite selects).
A cond on a device's flag would make the host wait for the device at every step (on a
GPU, where an MNIST step takes about a millisecond, that stalls the launch queue); here
the host reads the device once per call, the one tensor the call returns.
"""
import contextlib
from typing import Callable, Optional

from absl import logging
import keras
import tensorflow as tf

from mnist import batch_transforms
from mnist import errors
from mnist import losses as losses_lib
from mnist import optim
from mnist import randomness

SUM = tf.distribute.ReduceOp.SUM
# What a call of train_steps returns, in order, in one float32 vector.
OUTPUTS = ('loss_sum', 'correct', 'count', 'consumed', 'skipped')


def read(output: tf.Tensor) -> dict:
  """The host's one read of a train_steps call: its sums and counts by name."""
  values = output.numpy().tolist()
  counts = dict(zip(OUTPUTS, values))
  counts['consumed'], counts['skipped'] = int(counts['consumed']), int(counts['skipped'])
  return counts


def whole_step_compiled(strategy: tf.distribute.Strategy, jit_compile: bool) -> bool:
  """Whether --jit_compile compiles the gradient and the update in one XLA program:
  with one replica in sync. With more, the update's all-reduce runs between them
  (Keras all-reduces inside optimizer.apply, outside any XLA program), so only the
  gradient is compiled, per replica."""
  return jit_compile and strategy.num_replicas_in_sync == 1


def _check_jit_devices(strategy: tf.distribute.Strategy, jit_compile: bool):
  local_devices = (strategy.extended.worker_devices
                   if jit_compile and strategy.num_replicas_in_sync > 1 else ())
  if len(local_devices) > 1 and all('CPU' in d.upper() for d in local_devices):
    # XLA compiles for one CPU device; replica 2's variables live on logical CPU:1,
    # which the compiled step cannot read (TensorFlow's "tf.Variable on a
    # different device" XLA limitation). Over GPUs each replica compiles for its own.
    raise errors.ConfigError(
        '--jit_compile cannot be combined with --strategy=mirrored over logical CPU '
        f'devices ({len(local_devices)} of them): XLA cannot reach variables on a '
        'second CPU device. Use one of them, or GPUs.')


def next_loss_scale(optimizer: keras.optimizers.LossScaleOptimizer, overflowed, diverged):
  """Keras' LossScaleOptimizer rule without its cond: an overflow halves the scale, the
  dynamic_growth_steps-th finite step in a row doubles it; a diverged step (non-finite
  loss) changes nothing."""
  counter, scale = optimizer.step_counter.value, optimizer.dynamic_scale.value
  grow = tf.equal(counter, optimizer.dynamic_growth_steps - 1)
  new_counter = tf.where(overflowed | grow, tf.zeros_like(counter), counter + 1)
  new_scale = tf.where(overflowed, scale * 0.5, tf.where(grow, scale * 2.0, scale))
  optimizer.step_counter.assign(tf.where(diverged, counter, new_counter))
  optimizer.dynamic_scale.assign(tf.where(diverged, scale, new_scale))


@contextlib.contextmanager
def writes_masked(optimizer: keras.optimizers.Optimizer, skip):
  """Within the block, every write the optimizer's update_step makes leaves its
  variable as it was where `skip`. Ours (optim.Adam) folds the mask into its update;
  any other Keras optimizer gets a select on each write (Keras routes them all through
  its assign, assign_add and assign_sub), not a copy of every variable before it."""
  if hasattr(optimizer, 'masked'):
    with optimizer.masked(skip):
      yield
    return
  kinds = type(optimizer)
  optimizer.assign = lambda variable, value: kinds.assign(
      optimizer, variable, tf.where(skip, tf.cast(variable, value.dtype), value))
  optimizer.assign_add = lambda variable, value: kinds.assign_add(
      optimizer, variable, tf.where(skip, tf.constant(0, value.dtype), value))
  optimizer.assign_sub = lambda variable, value: kinds.assign_sub(
      optimizer, variable, tf.where(skip, tf.constant(0, value.dtype), value))
  try:
    yield
  finally:
    del optimizer.assign, optimizer.assign_add, optimizer.assign_sub


def written_directly(optimizer: keras.optimizers.Optimizer, trainable: list) -> list:
  """The variables an optimizer's apply writes around update_step, not through its
  assign methods: its step count, the weights' averages (EMA) and, with weight decay,
  the weights (Keras' _apply_weight_decay and EMA assign them themselves)."""
  return ([optimizer.iterations] + list(optim.averages(optimizer) or [])
          + (list(trainable) if optimizer.weight_decay else []))


class _Gradients:
  """A replica's half of the step: (gradients, [loss sum, correct, count], [diverged,
  overflowed] as 0/1) of its batch. Dropout and augmentation draw from (seed, step)."""

  def __init__(self, model, optimizer, global_batch_size: int, label_smoothing: float,
               sam_rho: float, seed: int, batch_stage: Optional[Callable] = None):
    self.model, self.optimizer = model, optimizer
    # The training-batch transforms (mnist/batch_transforms/), once per step.
    self.batch_stage = batch_stage or (lambda images, labels: (images, None))
    self.global_batch_size, self.label_smoothing = global_batch_size, label_smoothing
    self.sam_rho, self.seed = sam_rho, seed
    self.loss_scaled = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)

  def _scaled_loss_and_stats(self, logits, labels, targets):
    losses, stats = losses_lib.per_example_stats(logits, labels,
                                                 label_smoothing=self.label_smoothing,
                                                 targets=targets)
    # Divide by the global batch, not the replica's: the optimizer sums the
    # replicas' gradients, so N replicas train exactly like one device.
    loss = tf.nn.compute_average_loss(losses, global_batch_size=self.global_batch_size)
    return loss, self.optimizer.scale_loss(loss), stats  # Identity unless loss-scaled.

  def _sharpness_aware(self, grads, images, labels, targets, step, non_trainable_before):
    """The gradient at the weights moved sam_rho along the normalised gradient,
    through stateless_call: no variable is written. It reopens the step's draws,
    so it sees the same augmentation and dropout as the first pass, and starts from
    the batch-norm averages from before it (its updates are dropped). Per replica:
    each moves along its own gradient."""
    model = self.model
    scale = self.sam_rho / (tf.linalg.global_norm(grads) + 1e-12)  # Loss scale cancels.
    perturbed = [v.value + tf.cast(g, v.dtype) * scale
                 for v, g in zip(model.trainable_variables, grads)]
    with tf.GradientTape() as tape, randomness.draws(self.seed, step):
      tape.watch(perturbed)
      logits, _ = model.stateless_call(perturbed, non_trainable_before, images,
                                        training=True)
      _, scaled_loss, _ = self._scaled_loss_and_stats(logits, labels, targets)
    return tape.gradient(scaled_loss, perturbed)

  def __call__(self, images, labels, step):
    model = self.model
    non_trainable_before = ([tf.identity(v.value) for v in model.non_trainable_variables]
                            if self.sam_rho else None)
    with randomness.draws(self.seed, step, randomness.BATCH_TRANSFORM_STREAM):
      images, targets = self.batch_stage(images, labels)
    with tf.GradientTape() as tape, randomness.draws(self.seed, step):
      logits = model(images, training=True)
      loss, scaled_loss, stats = self._scaled_loss_and_stats(logits, labels, targets)
    grads = tape.gradient(scaled_loss, model.trainable_variables)
    if self.sam_rho:  # On the same transformed batch.
      grads = self._sharpness_aware(grads, images, labels, targets, step,
                                    non_trainable_before)
    diverged = tf.logical_not(tf.math.is_finite(loss))
    if self.loss_scaled:  # The check LossScaleOptimizer makes: float16 gradients
      # overflow now and then at the current scale; only a non-finite loss diverges.
      overflowed = tf.logical_not(tf.reduce_all(
          [tf.reduce_all(tf.math.is_finite(g)) for g in grads]))
    else:
      diverged |= tf.logical_not(tf.math.is_finite(tf.linalg.global_norm(grads)))
      overflowed = tf.zeros_like(diverged)
    return grads, stats, tf.cast(tf.stack([diverged, overflowed]), tf.float32)


class _Update:
  """A replica's update, made whatever the flags and undone where `skip`: within
  writes_masked, the optimizer's own writes; after it, a select on what Keras writes
  around them (written_directly); the loss scale by next_loss_scale."""

  def __init__(self, model, optimizer):
    self.model, self.optimizer = model, optimizer
    self.loss_scaled = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
    self.inner = optimizer.inner_optimizer if self.loss_scaled else optimizer
    self.written = written_directly(self.inner, model.trainable_variables)

  def snapshot(self) -> list:
    return [tf.identity(v.value) for v in self.written]

  def apply(self, grads):
    if self.loss_scaled:  # What LossScaleOptimizer does with finite gradients.
      scale = self.optimizer.dynamic_scale.value
      self.inner.apply([g / scale for g in grads], self.model.trainable_variables)
    else:
      self.optimizer.apply(grads, self.model.trainable_variables)  # All-reduces.

  def select(self, skip, before):
    """One replica in sync: each variable keeps its old value where `skip`."""
    for variable, old in zip(self.written, before):
      variable.assign(tf.where(skip, old, variable.value))

  def select_copies(self, strategy, skip, before):
    """More replicas (in a merge_call): each device's copy selects from its own
    snapshot by the same all-reduced flag; no collective."""
    for variable, old in zip(self.written, before):
      strategy.extended.update(
          variable.value, lambda copy, skip, old: copy.assign(tf.where(skip, old, copy)),
          args=(skip, old), group=False)

  def scale(self, overflowed, diverged):
    if self.loss_scaled:
      next_loss_scale(self.optimizer, overflowed, diverged)


def make_train_steps(state, strategy: tf.distribute.Strategy, global_batch_size: int,
                     jit_compile: bool = False, stop_on_nonfinite: bool = True,
                     label_smoothing: float = 0.0, sam_rho: float = 0.0,
                     seed: int = 0, batch_stage: Optional[Callable] = None) -> Callable:
  """Returns train_steps(iterator, num_steps) -> float32 [OUTPUTS]: the summed loss,
  correct and count of the applied steps, the batches consumed and the non-finite
  steps skipped; `read` turns it into numbers with one host read.

  A step whose loss or gradient norm is not finite is never applied. With
  stop_on_nonfinite the call consumes only up to that batch (consumed < num_steps: the
  caller names the step and stops; the call's later batches are computed, not applied);
  otherwise it is skipped and counted. sam_rho > 0: sharpness-aware minimisation
  (Foret et al. 2021), two passes per step. batch_stage: the training-batch transforms
  (mnist/batch_transforms/), (images, labels) -> (images, targets or None). Dropout,
  augmentation and the transforms draw from (seed, the step's number: state.step plus
  the batch's place in the call), so they depend on neither the replicas nor the
  resume point.
  """
  _check_jit_devices(strategy, jit_compile)
  if jit_compile:
    logging.info('--jit_compile: %s.', 'the gradient and the update in one XLA program'
                 if whole_step_compiled(strategy, jit_compile) else
                 'the gradient only, per replica (Keras all-reduces inside the update)')
  gradients = _Gradients(state.model, state.optimizer, global_batch_size, label_smoothing,
                         sam_rho, seed, batch_stage)
  update = _Update(state.model, state.optimizer)

  # No autograph for the step's functions: their branches are on Python values, and
  # converting them took a third of the first call's tracing (fast recipe, AVX2
  # imitation: 0.60 against 0.37 s, medians of 3).
  @tf.function(jit_compile=jit_compile, autograph=False)
  def whole_step(images, labels, step, halted):
    """One replica in sync: gradient, decision and update in one function (one XLA
    program with --jit_compile)."""
    grads, stats, flags = gradients(images, labels, step)
    diverged, overflowed = tf.unstack(flags > 0)
    skip = diverged | overflowed | halted
    before = update.snapshot()
    with writes_masked(update.inner, skip):
      update.apply(grads)
    update.select(skip, before)
    update.scale(overflowed, diverged | halted)
    return stats, flags

  compiled_gradients = tf.function(gradients.__call__, jit_compile=jit_compile,
                                   autograph=False)

  @tf.autograph.experimental.do_not_convert
  def replica_update(grads, skip, overflowed, diverged):
    before = update.snapshot()
    update.apply(grads)  # Within writes_masked: entered once, outside the replicas' threads.
    tf.distribute.get_replica_context().merge_call(update.select_copies,
                                                   args=(skip, before))
    update.scale(overflowed, diverged)

  def split_step(images, labels, step, halted):
    """More replicas: their gradients, one all-reduce of their flags, the update."""
    grads, stats, flags = strategy.run(compiled_gradients, args=(images, labels, step))
    # One all-reduce of [diverged, overflowed]: every replica decides alike.
    reduced = strategy.reduce(SUM, flags, axis=None)
    diverged, overflowed = tf.unstack(reduced > 0)
    skip = diverged | overflowed | halted
    with writes_masked(update.inner, skip):
      strategy.run(replica_update, args=(grads, skip, overflowed, diverged | halted))
    return strategy.reduce(SUM, stats, axis=None), reduced

  def single_step(images, labels, step, halted):
    stats, flags = strategy.run(whole_step, args=(images, labels, step, halted))
    return (strategy.experimental_local_results(stats)[0],
            strategy.experimental_local_results(flags)[0])

  one_step = single_step if strategy.num_replicas_in_sync == 1 else split_step

  @tf.function
  def train_steps(iterator, num_steps):
    totals, consumed, skipped = tf.zeros([3]), tf.constant(0.0), tf.constant(0.0)
    halted = tf.constant(False)  # stop_on_nonfinite, after a non-finite step.
    first_step = state.step.read_value()  # Advanced by the caller after the call.
    for index in tf.range(num_steps):
      images, labels = next(iterator)
      stats, flags = one_step(images, labels, first_step + tf.cast(index, tf.int64), halted)
      diverged = flags[0] > 0
      totals += tf.where(diverged | halted, 0.0, stats)
      skipped += tf.cast(diverged & tf.logical_not(halted), tf.float32)
      if stop_on_nonfinite:
        halted |= diverged
      consumed += tf.cast(tf.logical_not(halted), tf.float32)
    return tf.concat([totals, tf.stack([consumed, skipped])], axis=0)

  return train_steps


def train_steps_for(config, state, strategy: tf.distribute.Strategy) -> Callable:
  """make_train_steps with the config's settings: what training runs and what
  benchmark.py times."""
  return make_train_steps(state, strategy, config.batch_size, config.jit_compile,
                          stop_on_nonfinite=config.nan_policy == 'stop',
                          label_smoothing=config.label_smoothing, sam_rho=config.sam_rho,
                          seed=config.seed,
                          batch_stage=batch_transforms.make_stage(
                              config, state.model.output_shape[-1]))
