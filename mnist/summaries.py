"""TensorBoard extras beyond the loop's scalars: images, histograms, HParams, profiles.

train.py calls in at a few points: `start_run` (hyperparameters, and what made the
run: mnist/provenance.py's record as a table in the Text dashboard, its code version
as an HParams column), `after_steps` (an integer comparison, for the profiler),
`on_epoch_end` (the eval pass's confusion matrix and mistakes, histograms; drawn on a
background thread), `end_run` and `close`.
The train step is exactly as it is without them.
"""
from concurrent import futures
import dataclasses
from typing import Optional

from absl import logging
import numpy as np
import tensorflow as tf
from tensorboard.compat.proto import summary_pb2
from tensorboard.plugins.hparams import api as hp

from mnist import config as config_lib
from mnist import data
from mnist import distribute
from mnist import losses as losses_lib
from mnist import plots
from mnist import provenance

SUM = tf.distribute.ReduceOp.SUM
MAX_MISCLASSIFIED = 25
# Raw counts beside the rendered image, so scripts/report.py can redraw them.
# TensorBoard shows no dashboard for this plugin name and ignores it.
CONFUSION_COUNTS_TAG = 'confusion_matrix_counts'
CONFUSION_COUNTS_PLUGIN = 'mnist_confusion_counts'


# The Text tag of the run's provenance (mnist/provenance.py).
PROVENANCE_TAG = 'provenance'


def start_run(config, model, strategy, splits, train_writer, eval_writer,
              step: int, record: Optional[dict] = None) -> 'RunSummaries':
  """Writes the run's hyperparameters and provenance `record` (at `step`, so each
  process of a resumed run adds its own); starts the profile if it covers the next step."""
  summaries = RunSummaries(config, model, strategy, splits, train_writer, eval_writer)
  summaries.write_hparams(config, record['code_version'] if record else None)
  if record:
    summaries.write_provenance(record, step)
  summaries.after_steps(step)
  return summaries


def _stable_names(model) -> list:
  """'02_conv2d/kernel' for each trainable variable: the layer's position and type.

  Keras numbers layer names per process ('conv2d_7'), so variable paths would
  give the same layer different tags in different runs.
  """
  return [f'{index:02d}_{type(layer).__name__.lower()}/{variable.name}'
          for index, layer in enumerate(model.layers)
          for variable in layer.trainable_variables]


class RunSummaries:
  """Per-run TensorBoard state: writers, the extra tf.functions and the profiler."""

  def __init__(self, config, model, strategy, splits, train_writer, eval_writer):
    self._model = model
    self._train_writer, self._eval_writer = train_writer, eval_writer
    # Multi-worker: every worker runs the collective steps below, only the chief
    # writes (the train loop gives the others no-op writers too) or profiles.
    self._chief = distribute.is_chief(strategy)
    # The run's own directory holds HParams and test metrics: TensorBoard makes
    # each run directory one row (a "session") of the HParams table.
    self._run_writer = (tf.summary.create_file_writer(config.model_dir) if self._chief
                        else tf.summary.create_noop_writer())
    self._model_dir = config.model_dir
    self._profile_range = config.profile_step_range() if self._chief else None
    self._profiling = False
    # Images and histograms (about 1 s an epoch for the seed CNN) are drawn off the
    # training thread, one job at a time, in order.
    self._drawing = futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix='summaries')
    self._pending = []
    self._gradient_step = _make_gradient_step(model, strategy, config.batch_size)
    # A fixed batch, so gradient norms from different epochs are comparable.
    probe = splits.train.take(config.batch_size).cache().batch(config.batch_size)
    self._probe_batch = distribute.distribute_dataset(strategy, probe.map(data.normalize))

  def write_hparams(self, config, code_version: Optional[str] = None):
    values = {name: '' if value is None else value
              for name, value in dataclasses.asdict(config).items()}
    if code_version:  # Which code made the row: a sweep's runs can be told apart.
      values[provenance.CODE_VERSION_HPARAM] = code_version
    # No hp.hparams_config: without one, TensorBoard infers each column's type,
    # range and whether it differs from all runs under --logdir, which a config
    # written by a single run of a sweep cannot know. Metrics are then every
    # scalar of the run, among them test_accuracy and test_loss from end_run.
    with self._run_writer.as_default(step=0):
      hp.hparams(values)
    self._run_writer.flush()

  def write_provenance(self, record: dict, step: int):
    """The record as a Markdown table in the Text dashboard, in the run's own folder."""
    with self._run_writer.as_default(step=step):
      tf.summary.text(PROVENANCE_TAG, provenance.markdown(record),
                      description='What made this run: code, packages, command, data.')
    self._run_writer.flush()

  def after_steps(self, step: int):
    """Starts or stops the --profile_steps trace; `step` counts completed steps."""
    if not self._profile_range:
      return
    start, end = self._profile_range
    if not self._profiling and start <= step + 1 <= end:
      try:
        # Into model_dir itself: TensorBoard's Profile tab lists <run>/plugins/profile.
        tf.profiler.experimental.start(self._model_dir)
        self._profiling = True
        logging.info('Profiling from step %d to %d into %s/plugins/profile.', step + 1,
                     end, self._model_dir)
      except tf.errors.AlreadyExistsError:
        logging.warning('Another profiler is running in this process; no trace written.')
        self._profile_range = None
    elif self._profiling and step >= end:
      self._stop_profiler()

  def _draw_eval(self, step, matrix, mistakes):
    with self._eval_writer.as_default(step=step):
      tf.summary.image('confusion_matrix',
                       _png_batch(plots.confusion_matrix_figure(matrix)))
      tf.summary.image('misclassified', _png_batch(plots.misclassified_figure(
          mistakes.images, mistakes.labels, mistakes.predictions)),
                       description='Up to 25 eval digits, titled true→predicted.')
      tf.summary.write(CONFUSION_COUNTS_TAG, tf.constant(matrix, tf.int64),
                       metadata=summary_pb2.SummaryMetadata(
                           plugin_data=summary_pb2.SummaryMetadata.PluginData(
                               plugin_name=CONFUSION_COUNTS_PLUGIN)))
    self._eval_writer.flush()

  def _submit(self, draw, *args):
    """Runs `draw` on the drawing thread once the previous epoch's work is done."""
    if len(self._pending) > 1:  # At most one epoch's histograms and images queued.
      self._wait_for_drawing()
    self._pending.append(self._drawing.submit(draw, *args))

  def _wait_for_drawing(self):
    pending, self._pending = self._pending, []
    for future in pending:
      future.result()  # Raises what the drawing raised.

  def close(self):
    """Finishes the images still being drawn; call before closing the eval writer."""
    try:
      self._wait_for_drawing()
    finally:
      self._drawing.shutdown(wait=True)

  def on_epoch_end(self, step: int, matrix: np.ndarray, mistakes):
    """The eval pass's confusion matrix and misclassified digits (a scoring.Mistakes),
    weight and gradient histograms and gradient norms on the fixed batch: the
    gradients here, the drawing on the background thread from copies, so it overlaps
    the next epoch's steps rather than the epoch end.

    Multi-worker: every worker computes the gradients (collective); the chief draws.
    The matrix counts every worker's examples; the digits are the chief's replicas'.
    """
    images, labels = next(iter(self._probe_batch))
    gradients = self._gradient_step(images, labels)
    if not self._chief:
      return
    values = [(name, variable.numpy(), gradient.numpy()) for name, variable, gradient in
              zip(_stable_names(self._model), self._model.trainable_variables, gradients)]
    self._submit(self._draw_histograms, step, values)
    self._submit(self._draw_eval, step, matrix, mistakes)

  def _draw_histograms(self, step, values):
    with self._train_writer.as_default(step=step):
      for name, variable, gradient in values:
        tf.summary.histogram(f'weights/{name}', variable)
        tf.summary.histogram(f'gradients/{name}', gradient)
        tf.summary.scalar(f'gradient_norm/{name}', tf.norm(gradient))
      tf.summary.scalar('gradient_norm/global',
                        tf.linalg.global_norm([gradient for _, _, gradient in values]))
    self._train_writer.flush()

  def end_run(self, results: dict):
    """Stops an unfinished trace and adds the final metrics to the HParams row."""
    if self._profiling:
      self._stop_profiler()
    with self._run_writer.as_default(step=results['global_step']):
      for name in config_lib.RESULT_METRICS:
        if results.get(name) is not None:
          tf.summary.scalar(name, results[name])
    self._run_writer.close()

  def _stop_profiler(self):
    tf.profiler.experimental.stop()
    self._profiling = False
    self._profile_range = None  # One trace per run.

def _make_gradient_step(model, strategy, global_batch_size):
  """Gradients of the mean loss of one batch, summed over replicas; applies nothing."""
  @tf.function
  def gradient_step(images, labels):
    def replica_step(images, labels):
      with tf.GradientTape() as tape:
        # training=False: dropout would advance the model's RNG state and so
        # change which masks the next training steps draw.
        losses = losses_lib.per_example_loss(model(images, training=False), labels)
        loss = tf.nn.compute_average_loss(losses, global_batch_size=global_batch_size)
      return tape.gradient(loss, model.trainable_variables)
    # One reduce per gradient: MultiWorkerMirroredStrategy's reduce packs a list
    # into one tensor, which fails for tensors of different shapes.
    return [strategy.reduce(SUM, gradient, axis=None)
            for gradient in strategy.run(replica_step, args=(images, labels))]
  return gradient_step


def _png_batch(fig):
  """A matplotlib figure as the [1, H, W, 3] uint8 batch tf.summary.image takes."""
  return tf.expand_dims(tf.image.decode_png(plots.to_png(fig), channels=3), 0)
