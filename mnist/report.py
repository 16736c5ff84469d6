"""A one-page PNG of a run: every declared metric's curves and the latest confusion matrix.

Everything is read back from the run's TensorBoard event files (TF2 writes
scalars as tensor summaries), so the report shows what TensorBoard shows.
"""
import os
from typing import Optional

from matplotlib import figure as figure_lib
import numpy as np
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.util import tensor_util

from mnist import errors
from mnist import metrics
from mnist import plots
from mnist import summaries

RUNS = ('train', 'eval')


def read_run(model_dir: str) -> dict:
  """{'train'|'eval': {tag: (steps, values)}} of scalars, plus 'confusion_matrix'."""
  history = {'confusion_matrix': None}
  for run in RUNS:
    history[run] = {}
    if not os.path.isdir(os.path.join(model_dir, run)):
      continue
    accumulator = event_accumulator.EventAccumulator(
        os.path.join(model_dir, run), size_guidance={event_accumulator.TENSORS: 0})
    accumulator.Reload()
    for tag in accumulator.Tags()[event_accumulator.TENSORS]:
      plugin = accumulator.SummaryMetadata(tag).plugin_data.plugin_name
      events = accumulator.Tensors(tag)
      if plugin == 'scalars':
        # A resumed run rewrites the steps after its checkpoint: the last value wins.
        by_step = {e.step: float(tensor_util.make_ndarray(e.tensor_proto)) for e in events}
        history[run][tag] = tuple(zip(*sorted(by_step.items())))
      elif tag == summaries.CONFUSION_COUNTS_TAG and events:
        latest = max(events, key=lambda e: e.step)
        history['confusion_matrix'] = (latest.step,
                                       tensor_util.make_ndarray(latest.tensor_proto))
  if not any(history[run] for run in RUNS):
    raise errors.DataError(
        f'{model_dir} has no TensorBoard scalars in train/ or eval/: is it a training run '
        '(scripts/train.py --model_dir=...)? Nothing to report.')
  return history


def report_figure(history: dict, title: str) -> figure_lib.Figure:
  """One panel per declared metric (mnist/metrics/), then the confusion matrix."""
  names = metrics.names()
  columns = len(names) + 1
  fig = figure_lib.Figure(figsize=(16 * columns / 3, 5), dpi=100, layout='tight')
  for column, metric in enumerate(names):
    ax = fig.add_subplot(1, columns, column + 1)
    for run, style in (('train', '.-'), ('eval', 'o-')):  # Markers: one point shows.
      if metric in history[run]:
        steps, values = history[run][metric]
        ax.plot(steps, values, style, label=f'{run} {metric}')
    ax.set_xlabel('step')
    ax.set_title(metric)
    ax.grid(alpha=0.3)
    if ax.lines:
      ax.legend()
  ax = fig.add_subplot(1, columns, columns)
  if history['confusion_matrix'] is None:
    ax.axis('off')
    ax.text(0.5, 0.5, 'no confusion matrix in eval/', ha='center', va='center')
  else:
    step, matrix = history['confusion_matrix']
    accuracy = np.trace(matrix) / max(np.sum(matrix), 1)
    plots.draw_confusion_matrix(ax, matrix, f'Eval confusion matrix at step {step} '
                                            f'(accuracy {accuracy:.4f})')
  fig.suptitle(title)
  return fig


def write_report(model_dir: str, output: Optional[str] = None) -> str:
  """Writes the report PNG (default MODEL_DIR/report.png); returns its path."""
  if not model_dir:
    raise errors.ConfigError('--model_dir must not be empty.')
  if not os.path.isdir(model_dir):
    raise errors.DataError(f'--model_dir={model_dir} does not exist.')
  history = read_run(model_dir)
  output = output or os.path.join(model_dir, 'report.png')
  png = plots.to_png(report_figure(history, os.path.abspath(model_dir)))
  with open(output, 'wb') as f:
    f.write(png)
  return output
