"""Evaluates a run's latest checkpoint on every example of its eval split.

  python scripts/evaluate.py --model_dir=runs/mnist
  python scripts/evaluate.py --model_dir=runs/mnist --eval_split='test[:1000]' --output=json

Prints accuracy and loss, per-class accuracy, the confusion matrix and the
positions of the misclassified examples. The data flags, when given, override
the run's config.json (e.g. --tfds_manual_dir on another machine).
"""
from absl import flags

from mnist import cli
from mnist import errors
from mnist import runtime

cli.define_evaluate_flags()
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise errors.ConfigError(f'Unexpected arguments: {" ".join(argv[1:])}.')
  runtime.start(cli.runtime_config_from_flags())  # oneDNN, thread pools; loads TF.
  # pylint: disable=g-import-not-at-top
  from mnist import evaluate
  from mnist import inference
  # pylint: enable=g-import-not-at-top
  config = cli.run_config_from_flags(inference.read_config(FLAGS.model_dir))
  results = evaluate.run(config)
  print(evaluate.to_json(results) if FLAGS.output == 'json' else evaluate.to_text(results),
        flush=True)


if __name__ == '__main__':
  cli.run(main)
