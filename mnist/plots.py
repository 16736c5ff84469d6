"""Matplotlib figures shared by TensorBoard image summaries and scripts/report.py.

No TensorFlow here: figures are built from numpy arrays and rendered to PNG with
the Agg canvas (no display, no pyplot global state), so they work in any process.
"""
import io

from matplotlib import figure as figure_lib
import numpy as np


def to_png(fig: figure_lib.Figure) -> bytes:
  buffer = io.BytesIO()
  fig.savefig(buffer, format='png', facecolor='white')
  return buffer.getvalue()


def draw_confusion_matrix(ax, matrix: np.ndarray, title: str = 'Confusion matrix'):
  """Counts with true classes as rows, so row i shows where digit i's examples went."""
  matrix = np.asarray(matrix)
  num_classes = matrix.shape[0]
  # Log colour scale: the diagonal dwarfs the errors, which are what one looks for.
  ax.imshow(np.log1p(matrix), cmap='Blues')
  threshold = np.log1p(matrix).max() / 2
  for true in range(num_classes):
    for predicted in range(num_classes):
      count = int(round(matrix[true, predicted]))
      if count:
        ax.text(predicted, true, str(count), ha='center', va='center', fontsize=7,
                color='white' if np.log1p(count) > threshold else 'black')
  ax.set_xticks(range(num_classes))
  ax.set_yticks(range(num_classes))
  ax.set_xlabel('predicted')
  ax.set_ylabel('true')
  ax.set_title(title)


def confusion_matrix_figure(matrix: np.ndarray) -> figure_lib.Figure:
  fig = figure_lib.Figure(figsize=(5, 5), dpi=100, layout='tight')
  accuracy = np.trace(matrix) / max(np.sum(matrix), 1)
  draw_confusion_matrix(fig.add_subplot(), matrix,
                        f'Confusion matrix ({int(np.sum(matrix))} examples, '
                        f'accuracy {accuracy:.4f})')
  return fig


def misclassified_figure(images: np.ndarray, labels, predictions,
                         columns: int = 5) -> figure_lib.Figure:
  """A grid of [N, H, W, 1] images in [0, 1], each titled 'true→predicted'."""
  rows = max(1, -(-len(images) // columns))
  fig = figure_lib.Figure(figsize=(1.3 * columns, 1.45 * rows), dpi=100, layout='tight')
  for index in range(rows * columns):
    ax = fig.add_subplot(rows, columns, index + 1)
    ax.axis('off')
    if index < len(images):
      ax.imshow(np.squeeze(images[index], axis=-1), cmap='gray_r', vmin=0, vmax=1)
      ax.set_title(f'{labels[index]}→{predictions[index]}', fontsize=10, color='firebrick')
  if not len(images):
    fig.text(0.5, 0.5, 'no misclassified examples', ha='center', va='center')
  return fig
