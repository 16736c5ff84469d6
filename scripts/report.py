"""Draws a run's loss and accuracy curves and latest confusion matrix into one PNG.

  python scripts/report.py --model_dir=runs/mnist   # writes runs/mnist/report.png
  python scripts/report.py --model_dir=runs/mnist --output=/tmp/mnist.png
"""
from absl import flags

from mnist import cli

cli.define_report_flags()
FLAGS = flags.FLAGS


def main(argv):
  del argv
  from mnist import report  # pylint: disable=g-import-not-at-top
  print(report.write_report(FLAGS.model_dir, FLAGS.output), flush=True)


if __name__ == '__main__':
  cli.run(main)
