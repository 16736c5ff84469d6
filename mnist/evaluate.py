"""Evaluating a trained run's latest checkpoint: every declared metric over every eval
example, per-class accuracy, the confusion matrix and the misclassified indices.
"""
import json

import numpy as np
import tensorflow as tf

from mnist import config as config_lib
from mnist import data
from mnist import inference
from mnist import metrics
from mnist import scoring


def evaluate_model(model, dataset: tf.data.Dataset, num_examples: int, batch_size: int,
                   num_classes: int) -> dict:
  """Scores every example of an unbatched (uint8 image, label) dataset, in order, with
  training's eval pass (mnist/scoring.py): every declared metric, per class, the
  confusion matrix and the misclassified positions. data.eval_pipeline pads the last
  batch with weight-0 examples, which count nowhere."""
  strategy = tf.distribute.get_strategy()
  scored = scoring.evaluate(scoring.make_eval_step(model, strategy, num_classes),
                            data.eval_pipeline(dataset, num_examples, batch_size),
                            strategy, keep_predictions=True)
  confusion = scored['confusion_matrix']
  per_class = confusion.sum(axis=1)
  return {
      'examples': scored['examples'],
      **{name: scored[name] for name in metrics.names()},
      # None for a class with no example in the split.
      'per_class_accuracy': [float(confusion[c, c] / per_class[c]) if per_class[c] else None
                             for c in range(num_classes)],
      'per_class_examples': per_class.tolist(),
      'confusion_matrix': confusion.tolist(),  # Rows: true label; columns: predicted.
      'misclassified': np.flatnonzero(scored['predictions'] != scored['labels']).tolist(),
  }


def run(config: config_lib.TrainConfig) -> dict:
  """Evaluates the latest checkpoint in config.model_dir on config.eval_split."""
  checkpoint = inference.latest_checkpoint(config.model_dir)
  model = inference.load_model(config.model_dir, config)
  splits = data.load_splits(config.dataset, config.train_split, config.eval_split,
                            config.data_dir, config.tfds_manual_dir)
  results = {'model_dir': config.model_dir, 'checkpoint': checkpoint,
             'dataset': config.dataset, 'eval_split': config.eval_split}
  results.update(evaluate_model(model, splits.eval, splits.num_eval,
                                config.eval_batch_size, splits.num_classes))
  return results


def to_json(results: dict) -> str:
  return json.dumps(results)


def to_text(results: dict) -> str:
  """A report for people: totals, per class, the confusion matrix, the mistakes."""
  num_classes = len(results['confusion_matrix'])
  lines = [f'checkpoint: {results["checkpoint"]}',
           f'{results["dataset"]} {results["eval_split"]}: {results["examples"]} examples, '
           + ', '.join(f'{name} {results[name]:.4f}' for name in metrics.names()
                       if name in results),
           '', 'per-class accuracy:']
  for c, (accuracy, count) in enumerate(zip(results['per_class_accuracy'],
                                            results['per_class_examples'])):
    shown = 'n/a' if accuracy is None else f'{accuracy:.4f}'
    lines.append(f'  {c}: {shown}  ({results["confusion_matrix"][c][c]}/{count})')
  width = max(5, len(str(max(results['per_class_examples'] or [0]))) + 1)
  lines += ['', 'confusion matrix (rows: true label, columns: predicted):',
            ' ' * 6 + ''.join(f'{c:>{width}}' for c in range(num_classes))]
  for c, row in enumerate(results['confusion_matrix']):
    lines.append(f'{c:>6}' + ''.join(f'{n:>{width}}' for n in row))
  mistakes = results['misclassified']
  lines += ['', f'misclassified ({len(mistakes)}; positions in {results["eval_split"]}):']
  for start in range(0, len(mistakes), 12):
    lines.append('  ' + ' '.join(str(i) for i in mistakes[start:start + 12]))
  return '\n'.join(lines)
