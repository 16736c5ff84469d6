"""Exports a run's latest checkpoint as a SavedModel for TensorFlow Serving (and TFLite).

  python scripts/export.py --model_dir=runs/mnist --export_dir=exports/mnist/1 --tflite

Signature `serving_default`: images uint8 [batch, 28, 28, 1] (raw pixels) ->
probabilities float32 [batch, 10], digits int64 [batch].
"""
import json

from absl import flags

from mnist import cli
from mnist import errors
from mnist import runtime

cli.define_export_flags()
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise errors.ConfigError(f'Unexpected arguments: {" ".join(argv[1:])}.')
  if not FLAGS.export_dir:
    raise errors.ConfigError('--export_dir is required: the SavedModel folder to create.')
  runtime.start(cli.runtime_config_from_flags())  # oneDNN, thread pools; loads TF.
  from mnist import export  # pylint: disable=g-import-not-at-top
  paths = export.run(FLAGS.model_dir, FLAGS.export_dir, tflite=FLAGS.tflite)
  print(json.dumps(paths), flush=True)


if __name__ == '__main__':
  cli.run(main)
