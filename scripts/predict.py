"""Predicts the digit in each image file (PNG, JPEG, BMP, GIF; any size, either polarity).

  python scripts/predict.py --model_dir=runs/mnist my_digit.png photo.jpg
  python scripts/predict.py --export_dir=exports/mnist/1 --output=json *.png

Each file is preprocessed as MNIST was (see mnist/preprocess.py). One line per
file on stdout; a file that cannot be read gets an error line, the others are
still predicted, and the exit status is non-zero.
"""
import functools

from absl import flags

from mnist import cli
from mnist import errors
from mnist import runtime

cli.define_predict_flags()
FLAGS = flags.FLAGS


def main(argv):
  paths = argv[1:]
  if not paths:
    raise errors.ConfigError('Name one or more image files: '
                             'predict.py --model_dir=DIR FILE...')
  if FLAGS.export_dir and FLAGS['model_dir'].present:
    raise errors.ConfigError('Give --model_dir (a checkpoint) or --export_dir '
                             '(a SavedModel), not both.')
  runtime.start(cli.runtime_config_from_flags())  # oneDNN, thread pools; loads TF.
  # pylint: disable=g-import-not-at-top
  from mnist import inference
  from mnist import predict
  # pylint: enable=g-import-not-at-top
  if FLAGS.export_dir:
    predict_fn = inference.ExportedModel(FLAGS.export_dir)
  else:
    predict_fn = functools.partial(inference.predict_probabilities,
                                   inference.load_model(FLAGS.model_dir))
  results = predict.predict_files(paths, predict_fn, FLAGS.save_preprocessed)
  for result in results:
    print(result.to_json() if FLAGS.output == 'json' else result.to_text(), flush=True)
  failed = [r.file for r in results if r.error is not None]
  if failed:
    raise errors.ImageError(f'{len(failed)} of {len(results)} files could not be '
                            f'predicted: {", ".join(failed)}.')


if __name__ == '__main__':
  cli.run(main)
