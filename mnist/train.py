"""Training: a hand-written GradientTape step under tf.distribute, eval, checkpoints,
TensorBoard and results.json.

`run(config, datasets_override=..., strategy_override=...)` is the whole program;
tests inject data and strategies through the overrides and download nothing.
"""
import contextlib
import dataclasses
import functools
import json
import os
import signal
import tempfile
import threading
import time
from typing import Callable, Optional

from absl import logging
import keras
import tensorflow as tf

from mnist import checkpoints
from mnist import config as config_lib
from mnist import data
from mnist import device_input
from mnist import distribute
from mnist import errors
from mnist import hardware
from mnist import metrics as metrics_lib
from mnist import model as model_lib
from mnist import model_dir_lock
from mnist import optim
from mnist import provenance
from mnist import run_record
from mnist import scoring
from mnist import summaries
from mnist import train_step


@dataclasses.dataclass
class TrainState:
  """What a checkpoint holds. `step` and `epoch` count completed steps and epochs;
  `record` what results.json reports of the steps and epochs before them.

  No random-generator state: every draw of a step derives from (seed, step)
  (mnist/randomness.py)."""
  model: keras.Model
  optimizer: keras.optimizers.Optimizer
  step: tf.Variable
  epoch: tf.Variable
  record: tf.Variable  # The run's record so far, as JSON (mnist/run_record.py).

  def checkpoint(self) -> tf.train.Checkpoint:
    return tf.train.Checkpoint(model=self.model, optimizer=self.optimizer,
                               step=self.step, epoch=self.epoch,
                               **{run_record.CHECKPOINT_KEY: self.record})


def create_state(config: config_lib.TrainConfig, splits: data.Splits,
                 strategy: tf.distribute.Strategy) -> TrainState:
  """Builds model and optimizer under the strategy, so their variables are mirrored."""
  keras.utils.set_random_seed(config.seed)
  total_steps = config.epochs * data.steps_per_epoch(splits.num_train, config.batch_size)
  with strategy.scope():
    model = model_lib.build_from_config(config, splits.image_shape, splits.num_classes)
    optimizer = optim.make_optimizer(config, total_steps)
    # Keras 3 optimizers must be built inside the scope before strategy.run,
    # or the first step fails on an unfed 'cond/...' placeholder.
    optimizer.build(model.trainable_variables)
  # Counters live outside the scope: plain variables, updated from Python.
  return TrainState(model, optimizer, step=tf.Variable(0, dtype=tf.int64, name='step'),
                    epoch=tf.Variable(0, dtype=tf.int64, name='epoch'),
                    record=run_record.new_variable())


def _restore(state: TrainState, manager: '_ChiefCheckpointManager',
             recorded_precision: Optional[str], precision: str):
  """Resumes from the newest intact checkpoint, refusing a partial match. The run's
  precision may differ from the one that wrote it (--mixed_precision=auto on another
  machine): float32 and bfloat16 checkpoints are interchangeable, float16's (with loss
  scaling) are not, and the refusal names both."""
  try:
    path = manager.restore()
  except errors.CheckpointError as e:
    if recorded_precision and recorded_precision != precision:
      raise errors.CheckpointError(
          f'{e} It was written under --mixed_precision={recorded_precision} and this run '
          f'uses {precision}: pass --mixed_precision={recorded_precision} to resume it.'
      ) from None
    raise
  if path:
    trained = (f' (written under {recorded_precision}; continuing in {precision})'
               if recorded_precision and recorded_precision != precision else '')
    logging.info('Restored %s: epoch %d, step %d%s.', path, int(state.epoch),
                 int(state.step), trained)


def _recorded_precision(model_dir: str) -> Optional[str]:
  """The precision the run in model_dir was trained in so far (its config.json)."""
  try:
    with tf.io.gfile.GFile(os.path.join(model_dir, 'config.json')) as f:
      return config_lib.TrainConfig.from_json(f.read()).mixed_precision
  except (tf.errors.NotFoundError, ValueError):
    return None


def _recorded_provenance(model_dir: str) -> Optional[dict]:
  """The provenance record of the run's previous process (its config.json), with the
  segments trained so far."""
  try:
    with tf.io.gfile.GFile(os.path.join(model_dir, 'config.json')) as f:
      return json.loads(f.read()).get('provenance')
  except (tf.errors.NotFoundError, ValueError, AttributeError):
    return None


def _check_model_dir(model_dir: str):
  try:
    os.makedirs(model_dir, exist_ok=True)
  except OSError as e:
    raise errors.CheckpointError(f'--model_dir={model_dir} cannot be created: {e}') from None
  if not os.access(model_dir, os.W_OK):
    raise errors.CheckpointError(f'--model_dir={model_dir} is not writable.')


def _write_scalars(writer, step: int, scalars: dict):
  with writer.as_default(step=step):
    for name, value in scalars.items():
      tf.summary.scalar(name, value)
  writer.flush()  # Visible in TensorBoard while training runs, not only at the end.


class _StopSignals:
  """Turns SIGTERM/SIGINT into a flag the loop checks at each step boundary, so a
  preempted run saves a consistent checkpoint instead of dying mid-write."""

  def __init__(self, any_worker=None):
    self.received = None
    self._previous = {}
    # Multi-worker: a worker stopping alone would leave the others waiting in the
    # next collective, so all stop at the same step boundary or none does.
    self._any_worker = any_worker

  def should_stop(self) -> bool:
    """Whether to checkpoint and stop now; one tiny all-reduce under multi-worker."""
    if self._any_worker is None:
      return self.received is not None
    return self._any_worker(self.received is not None)

  def preempted(self, step: int, path: str) -> errors.PreemptedError:
    """The error to raise once `path` is saved; callers read the step from it."""
    who = (f'Received {self.received}' if self.received
           else 'Another worker received SIGTERM or SIGINT')
    return errors.PreemptedError(f'{who} at step {step}: saved {path}. '
                                 'Rerun the same command to resume.')

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    self.received = signal.Signals(signum).name

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


class _ChiefCheckpointManager:
  """A CheckpointManager of model_dir/checkpoints that only the chief writes to.

  Under MultiWorkerMirroredStrategy saving is collective, so every worker must
  save; the others write to a temporary directory and delete it (TensorFlow's
  multi-worker custom-loop pattern), and restore from the chief's directory,
  which must therefore be shared storage on real hosts.
  """

  def __init__(self, checkpoint: tf.train.Checkpoint, directory: str, max_to_keep: int,
               chief: bool = True, multi_worker: bool = False):
    self.directory, self.multi_worker, self._chief = directory, multi_worker, chief
    self._checkpoint = checkpoint
    self._manager = (tf.train.CheckpointManager(checkpoint, directory, max_to_keep)
                     if chief else None)
    # Not the manager's latest: after resuming past a damaged checkpoint that one
    # stays the latest in the state file until the next save.
    self._latest_intact = None

  @property
  def latest_checkpoint(self) -> Optional[str]:
    """The newest checkpoint known to be intact: the one resumed from, or saved since."""
    return self._latest_intact

  def restore(self) -> Optional[str]:
    """Restores the newest intact checkpoint of the chief's directory: the same one on
    every worker, as the choice depends only on those files."""
    self._latest_intact = checkpoints.restore(self._checkpoint, self.directory,
                                              optional=(run_record.CHECKPOINT_KEY,))
    return self._latest_intact

  def save(self, checkpoint_number: int) -> str:
    self._latest_intact = self._write(checkpoint_number)
    return self._latest_intact

  def _write(self, checkpoint_number: int) -> str:
    if self._chief:
      return self._manager.save(checkpoint_number=checkpoint_number)
    write_dir = tempfile.mkdtemp(prefix='mnist_worker_checkpoint_')
    try:
      path = tf.train.CheckpointManager(self._checkpoint, write_dir, max_to_keep=1).save(
          checkpoint_number=checkpoint_number)
    finally:
      tf.io.gfile.rmtree(write_dir)
    return os.path.join(self.directory, os.path.basename(path))  # The chief's copy.


def _save(run: '_Run', step: int, window_images: int = 0,
          window_seconds: float = 0.0) -> str:
  """Saves the weights with the run's record (and the current step window's images and
  seconds) in one checkpoint; on failure (disk full, ...) the previous checkpoint, with
  its own record, is still the latest."""
  manager = run.manager
  run_record.write(run.state.record, run.tally.now(window_images, window_seconds))
  try:
    return manager.save(checkpoint_number=step)
  except (OSError, tf.errors.OpError) as e:
    if manager.multi_worker and isinstance(e, distribute.PEER_FAILURES):
      raise  # A lost worker, not a full disk: run() reports it as such.
    raise errors.CheckpointError(
        f'Could not write the checkpoint for step {step} in {manager.directory} (disk '
        f'full?): {errors.first_line(e, 200)}. '
        + (f'The previous checkpoint {manager.latest_checkpoint} is intact; free space and '
           'rerun to resume.' if manager.latest_checkpoint else
           'There is no earlier checkpoint; free space and rerun to start again.')) from None


def _report_lost_workers(run_fn):
  """Multi-worker: a collective that fails because another worker died or went
  silent becomes a WorkerLostError (exit 75) naming it and the checkpoint to resume."""
  @functools.wraps(run_fn)
  def wrapper(config, datasets_override=None, strategy_override=None, code_override=None):
    try:
      return run_fn(config, datasets_override, strategy_override, code_override)
    except distribute.PEER_FAILURES as e:
      if not (config.strategy == 'multi_worker' or isinstance(
          strategy_override, tf.distribute.MultiWorkerMirroredStrategy)):
        raise
      latest = tf.train.latest_checkpoint(os.path.join(config.model_dir, 'checkpoints'))
      raise errors.WorkerLostError(
          f'Lost contact with another worker ({distribute.describe_peer_failure(e)}). The '
          f'last checkpoint is {latest}; restart every worker with the same command to '
          'resume from it.') from None
  return wrapper


@_report_lost_workers
def run(config: config_lib.TrainConfig, datasets_override: Optional[data.Splits] = None,
        strategy_override: Optional[tf.distribute.Strategy] = None,
        code_override: Optional[provenance.Code] = None) -> dict:
  """Trains (or resumes) to config.epochs, evaluating each epoch; returns results.json.
  `code_override`: the code version to record (default: this checkout's; tests)."""
  # Holds model_dir's lock from when _train knows this process is the chief until the
  # run ends: finished, failed, preempted (75) or diverged (3).
  with contextlib.ExitStack() as held:
    return _train(config, datasets_override, strategy_override, held, code_override)


@dataclasses.dataclass
class _Run:
  """What the training loop, the epoch end and the results share, set up once."""
  config: config_lib.TrainConfig
  strategy: tf.distribute.Strategy
  splits: data.Splits
  # One cache for the run: each epoch's pipeline reads it; a new .cache() per epoch
  # would read the split from its source again every epoch.
  train_cached: tf.data.Dataset
  state: TrainState
  manager: '_ChiefCheckpointManager'
  train_steps: Callable
  eval_step: Callable
  test_dataset: tf.distribute.DistributedDataset  # The eval split.
  epoch_eval_dataset: tf.distribute.DistributedDataset  # Validation, else the eval split.
  epoch_eval_split: str
  train_writer: tf.summary.SummaryWriter
  eval_writer: tf.summary.SummaryWriter
  extras: summaries.RunSummaries
  provenance: dict  # This process's record of what made the run, with its segments.
  machine: dict
  chief: bool
  tally: '_Tally'
  device_batches: Optional[device_input.DeviceBatches] = None  # --input_on_device.

  @property
  def steps_per_epoch(self) -> int:
    return data.steps_per_epoch(self.splits.num_train, self.config.batch_size)


class _Tally:
  """The run's record (mnist/run_record.py) as of now: the one restored with the
  checkpoint plus what this process has done since. A step window's images and seconds
  join the record when the window is logged; a checkpoint saved mid-window (preemption,
  --checkpoint_every_steps) includes the window so far."""

  def __init__(self, restored: run_record.RunRecord):
    self.record = restored
    self._start = time.perf_counter()

  def add_window(self, images: int, seconds: float):
    self.record = self.record.plus(images, seconds, 0.0)

  def now(self, window_images: int = 0, window_seconds: float = 0.0) -> run_record.RunRecord:
    return self.record.plus(window_images, window_seconds, time.perf_counter() - self._start)


def _train(config: config_lib.TrainConfig, datasets_override: Optional[data.Splits],
           strategy_override: Optional[tf.distribute.Strategy],
           held: contextlib.ExitStack,
           code_override: Optional[provenance.Code] = None) -> dict:
  config.validate()
  start_utc = provenance.utc_now()
  cpu_profile, gpu_profiles = hardware.cpu(), hardware.gpus()
  # --mixed_precision=auto: this machine's.
  config = hardware.resolve_auto(config, cpu_profile, gpu_profiles)
  _check_model_dir(config.model_dir)
  machine = hardware.as_dict(cpu_profile, gpu_profiles)
  logging.info('Hardware: %s. Precision %s.', machine['summary'], config.mixed_precision)
  emulated = hardware.emulated_precision(config.mixed_precision, cpu_profile, gpu_profiles)
  if emulated:
    logging.warning(emulated)
  if config.deterministic:
    # Process-wide and one-way: ops pick deterministic kernels from now on.
    tf.config.experimental.enable_op_determinism()
  strategy = strategy_override or distribute.strategy_from_config(config)
  run = _set_up(config, datasets_override, strategy, held, code_override, start_utc, machine)
  any_worker = (distribute.make_any_worker(strategy)
                if distribute.num_workers(strategy) > 1 else None)
  # Closed files even on error (an unmountable disk); images still being drawn first.
  with _StopSignals(any_worker) as stop_signals, contextlib.closing(run.train_writer), \
       contextlib.closing(run.eval_writer), contextlib.closing(run.extras):
    while int(run.state.epoch) < config.epochs:
      _train_epoch(run, stop_signals)
      run.state.epoch.assign_add(1)
      _end_epoch(run, stop_signals)
    epoch = int(run.state.epoch)
    if epoch and not run.tally.record.evaluated(epoch):
      # Resumed with nothing left to train from a checkpoint whose record lacks the
      # last epoch's evaluation (older code): evaluated now, not left as a hole.
      logging.info('Epoch %d is trained but its evaluation is not in the record; '
                   'evaluating it now.', epoch)
      _end_epoch(run, stop_signals)
  return _finish(run)


def _set_up(config: config_lib.TrainConfig, datasets_override: Optional[data.Splits],
            strategy: tf.distribute.Strategy, held: contextlib.ExitStack,
            code_override: Optional[provenance.Code], start_utc: str, machine: dict) -> _Run:
  """Strategy, data, state restored from the newest checkpoint, config.json, summaries."""
  recorded_precision = _recorded_precision(config.model_dir)  # Before config.json is rewritten.
  previous_record = _recorded_provenance(config.model_dir)
  # Multi-worker: only the chief writes checkpoints, summaries, config and results.
  chief, multi_worker = distribute.is_chief(strategy), distribute.num_workers(strategy) > 1
  if chief:  # One writer per model_dir: a second run is refused here, having written nothing.
    held.enter_context(model_dir_lock.hold(config.model_dir))
  if multi_worker:
    logging.info('This is %s of %d workers%s.', distribute.task_name(strategy),
                 distribute.num_workers(strategy),
                 ', the chief' if chief else '; the chief writes checkpoints and summaries')
  config_lib.check_divisible(config, strategy.num_replicas_in_sync)
  splits = datasets_override or data.load_splits(
      config.dataset, config.train_split, config.eval_split, config.data_dir,
      config.tfds_manual_dir, config.validation_split)
  if data.steps_per_epoch(splits.num_train, config.batch_size) == 0:
    raise errors.ConfigError(f'--train_split={config.train_split} has {splits.num_train} '
                             f'examples, fewer than one --batch_size={config.batch_size}.')
  test_dataset = distribute.distribute_dataset(strategy, data.eval_pipeline(
      splits.eval.cache(), splits.num_eval, config.eval_batch_size))
  epoch_eval_dataset, epoch_eval_split = test_dataset, config.eval_split
  if splits.validation:
    epoch_eval_dataset = distribute.distribute_dataset(strategy, data.eval_pipeline(
        splits.validation.cache(), splits.num_validation, config.eval_batch_size))
    epoch_eval_split = config.validation_split

  state = create_state(config, splits, strategy)
  manager = _ChiefCheckpointManager(state.checkpoint(),
                                    os.path.join(config.model_dir, 'checkpoints'),
                                    config.checkpoints_to_keep, chief, multi_worker)
  _restore(state, manager, recorded_precision, config.mixed_precision)
  restored = run_record.read(state.record, int(state.step))
  if restored.restored_without_record:
    logging.warning('The checkpoint resumed from (step %d) holds no run record (older '
                    'code): results.json reports the epochs and time from here on only.',
                    int(state.step))
  # What made the run (mnist/provenance.py), with the steps each process trained; a
  # resume under other code or packages is a warning naming both.
  record = provenance.resume(
      provenance.record(config, splits.dataset_version, code_override, start_utc),
      previous_record, int(state.step), warn=logging.warning)
  logging.info('Code %s (%s); %s.', record['code_version'], record['code']['source'],
               ', '.join(f'{k} {v}' for k, v in record['packages'].items()))
  if chief:  # After the restore: a refused resume leaves the previous record as it was.
    with tf.io.gfile.GFile(os.path.join(config.model_dir, 'config.json'), 'w') as f:
      # What scripts/evaluate, predict and export rebuild from (TrainConfig.from_json
      # reads the config's fields and ignores the record's key).
      json.dump({**dataclasses.asdict(config), 'provenance': record}, f, indent=2)
  writer = (tf.summary.create_file_writer if chief
            else lambda logdir: tf.summary.create_noop_writer())
  train_writer = writer(os.path.join(config.model_dir, 'train'))
  eval_writer = writer(
      os.path.join(config.model_dir, 'validation' if splits.validation else 'eval'))
  extras = summaries.start_run(config, state.model, strategy, splits, train_writer,
                               eval_writer, int(state.step), record)
  train_cached = splits.train.cache()
  run = _Run(config, strategy, splits, train_cached, state, manager,
             train_steps=train_step.train_steps_for(config, state, strategy),
             eval_step=scoring.make_eval_step(state.model, strategy, splits.num_classes),
             test_dataset=test_dataset, epoch_eval_dataset=epoch_eval_dataset,
             epoch_eval_split=epoch_eval_split, train_writer=train_writer,
             eval_writer=eval_writer, extras=extras, provenance=record, machine=machine,
             chief=chief, tally=_Tally(restored),
             device_batches=device_input.DeviceBatches(
                 train_cached, splits.num_train, config.batch_size, config.seed,
                 distribute.default_device()) if config.input_on_device else None)
  logging.info('Training %s on %s (%d examples, %d steps/epoch) with %s, %d replica(s), '
               'batch %d, %s.', state.model.name, config.dataset, splits.num_train,
               run.steps_per_epoch, type(strategy).__name__, strategy.num_replicas_in_sync,
               config.batch_size, config.mixed_precision)
  return run


def _train_epoch(run: _Run, stop_signals: _StopSignals):
  """The rest of the current epoch, in step windows that end at every log, checkpoint
  and epoch boundary; checkpoints every --checkpoint_every_steps and on a stop signal."""
  config, state, steps_per_epoch = run.config, run.state, run.steps_per_epoch
  boundaries = [config.log_every_steps] + (
      [config.checkpoint_every_steps] if config.checkpoint_every_steps else [])
  epoch = int(state.epoch)
  done_in_epoch = int(state.step) - epoch * steps_per_epoch
  if run.device_batches:
    iterator = run.device_batches.start_epoch(epoch, skip_batches=done_in_epoch)
  else:
    iterator = iter(distribute.distribute_dataset(run.strategy, data.train_pipeline(
        run.train_cached, run.splits.num_train, config.batch_size, config.seed,
        epoch, skip_batches=done_in_epoch)))
  step = int(state.step)  # Kept on the host from here: one device read per call below.
  window = dict.fromkeys(train_step.OUTPUTS, 0.0)
  window_start = time.perf_counter()

  def save(step: int) -> str:  # With the window so far in the record.
    return _save(run, step, int(window['count']), time.perf_counter() - window_start)

  while done_in_epoch < steps_per_epoch:
    num_steps = min([config.steps_per_loop, steps_per_epoch - done_in_epoch] +
                    [every - step % every for every in boundaries])
    # The host's one read of the call, which waits for its steps.
    counts = train_step.read(run.train_steps(iterator, tf.constant(num_steps)))
    consumed = counts['consumed']
    if consumed < num_steps:  # nan_policy=stop: the next batch was not finite.
      raise errors.TrainingDivergedError(
          f'The loss or gradient norm became NaN or Inf at step {step + consumed + 1} '
          f'(epoch {epoch + 1}); training stopped before applying it. '
          f'{_last_good_checkpoint(run.manager.latest_checkpoint)} Lower '
          '--learning_rate, or pass --nan_policy=skip_step to drop such steps.')
    window = {name: window[name] + counts[name] for name in train_step.OUTPUTS}
    state.step.assign_add(consumed)
    done_in_epoch += consumed
    step += consumed
    run.extras.after_steps(step)  # Starts or stops a --profile_steps trace.

    if step % config.log_every_steps == 0 or done_in_epoch == steps_per_epoch:
      _log_window(run, step, window, time.perf_counter() - window_start)
      window = dict.fromkeys(train_step.OUTPUTS, 0.0)
      window_start = time.perf_counter()
    if stop_signals.should_stop():
      path = save(step)
      run.train_writer.flush()
      raise stop_signals.preempted(step, path)
    if (config.checkpoint_every_steps and step % config.checkpoint_every_steps == 0
        and done_in_epoch < steps_per_epoch):  # The epoch end saves after eval.
      save(step)


def _log_window(run: _Run, step: int, window: dict, seconds: float):
  """Logs a step window's loss, accuracy and images/s, to TensorBoard too, and adds its
  images and seconds to the run's record."""
  config = run.config
  count = window['count']
  images_per_sec = count / seconds
  run.tally.add_window(int(count), seconds)
  eta = (config.epochs * run.steps_per_epoch - step) * config.batch_size / max(
      images_per_sec, 1e-9)
  skipped = window['skipped']
  count = max(count, 1)  # A window of only skipped steps.
  logging.info('step %d  epoch %d  loss %.4f  accuracy %.4f  %.0f images/s  ETA %.0fs%s',
               step, int(run.state.epoch) + 1, window['loss_sum'] / count,
               window['correct'] / count, images_per_sec, eta,
               f'  skipped {skipped:.0f} non-finite' if skipped else '')
  scalars = {'loss': window['loss_sum'] / count, 'accuracy': window['correct'] / count,
             'learning_rate': float(keras.ops.convert_to_numpy(
                 run.state.optimizer.learning_rate)),
             'images_per_sec': images_per_sec}
  if config.nan_policy == 'skip_step':
    scalars['nonfinite_steps_skipped'] = skipped
  _write_scalars(run.train_writer, step, scalars)


def _end_epoch(run: _Run, stop_signals: _StopSignals):
  """Evaluates the epoch just trained, records it and checkpoints weights and record
  together: a process killed before the save leaves the previous pair, and its rerun
  evaluates this epoch again."""
  config, state = run.config, run.state
  epoch_end_start = time.perf_counter()
  with optim.ema_weights(state.model, state.optimizer):  # No-op without EMA.
    metrics = scoring.evaluate(
        run.eval_step, run.epoch_eval_dataset, run.strategy,
        keep_mistakes=summaries.MAX_MISCLASSIFIED if config.epoch_summaries else 0)
  eval_seconds = time.perf_counter() - epoch_end_start
  matrix, mistakes = metrics.pop('confusion_matrix'), metrics.pop('mistakes', None)
  entry = {'epoch': int(state.epoch), 'step': int(state.step),
           'seconds': run.tally.now().seconds, 'split': run.epoch_eval_split, **metrics,
           'eval_seconds': eval_seconds, 'epoch_end_seconds': None}
  run.tally.record.eval_history.append(entry)
  _write_scalars(run.eval_writer, int(state.step),
                 {name: metrics[name] for name in metrics_lib.names()})
  path = _save(run, int(state.step))
  if config.epoch_summaries:  # Drawn in the background, during the next epoch.
    run.extras.on_epoch_end(int(state.step), matrix, mistakes)
  epoch_end_seconds = time.perf_counter() - epoch_end_start
  # Measured after the save: None in this checkpoint's record, in the next one's filled.
  entry['epoch_end_seconds'] = epoch_end_seconds
  logging.info('epoch %d/%d  %s %s on %d examples  saved %s  (eval %.2fs, epoch end '
               '%.2fs)', int(state.epoch), config.epochs, run.epoch_eval_split,
               '  '.join(f'{name} {metrics[name]:.4f}' for name in metrics_lib.names()),
               metrics['examples'], path, eval_seconds, epoch_end_seconds)
  if stop_signals.should_stop():
    raise stop_signals.preempted(int(state.step), path)


def _finish(run: _Run) -> dict:
  """results.json: the whole run's record, and the test split scored (once, here, when
  epochs were evaluated on a validation split: it is reported, never used to choose)."""
  config, state, record = run.config, run.state, run.tally.now()
  last = record.evaluated(int(state.epoch))  # None only for a run of 0 epochs.
  test_metrics = last if not run.splits.validation else None
  if test_metrics is None:
    with optim.ema_weights(state.model, state.optimizer):
      test_metrics = scoring.evaluate(run.eval_step, run.test_dataset, run.strategy)
    record = run.tally.now()  # With the test evaluation's time.
  results = {
      **{f'test_{name}': test_metrics[name] for name in metrics_lib.names()},
      'test_examples': test_metrics['examples'],
      'global_step': int(state.step),
      'epochs_completed': int(state.epoch),
      'train_seconds': record.seconds,  # Summed over the run's processes.
      'train_images_per_sec': record.images_per_sec,
      'weights_sha256': model_lib.weights_sha256(state.model),
      'num_replicas': run.strategy.num_replicas_in_sync,
      'eval_history': record.eval_history,  # Every epoch of the run, with seconds.
      'config': dataclasses.asdict(config),
      'hardware': run.machine,  # What these figures were measured on.
      'provenance': provenance.finish(run.provenance, int(state.step)),  # What made them.
  }
  if run.splits.validation and last:
    results.update({f'validation_{name}': last.get(name) for name in metrics_lib.names()},
                   validation_examples=last['examples'])
  if run.chief:
    _write_json(os.path.join(config.model_dir, 'results.json'), results)
  run.extras.end_run(results)  # Test metrics into the HParams table; ends a trace.
  return results


def _last_good_checkpoint(path: Optional[str]) -> str:
  if path:
    return f'The last good checkpoint, {path}, is untouched.'
  return 'No checkpoint was written before it, so rerunning starts from step 0.'


def _write_json(path: str, value: dict):
  """Writes atomically: a reader never sees half a file."""
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(value, f, indent=2)
  os.replace(tmp, path)
