"""Trains the MNIST CNN; rerunning with the same --model_dir resumes.

  python scripts/train.py --model_dir=runs/mnist
  python scripts/train.py --flagfile=configs/seed.flags
"""
import json

from mnist import cli
from mnist import model_dir_lock
from mnist import runtime

cli.define_train_script_flags()


def main(argv):
  del argv
  config = cli.train_config_from_flags()  # Validated before TensorFlow loads.
  cli.set_up_cluster(config)  # multi_worker: $TF_CONFIG, else from srun; the first log line.
  model_dir_lock.refuse_if_held(config.model_dir)  # A run in progress there: exit 2 now.
  # oneDNN, thread pools; loads TF.
  runtime.start(cli.runtime_config_from_flags(), precision=config.mixed_precision)
  from mnist import train  # pylint: disable=g-import-not-at-top
  results = train.run(config)
  print(json.dumps(results), flush=True)  # The last line of stdout.


if __name__ == '__main__':
  cli.run(main)
