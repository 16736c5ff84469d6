"""Measures training throughput (images/s) of the training code; the last stdout line is JSON.

  python scripts/benchmark.py                        # our train step, step windows
  python scripts/benchmark.py --synthetic_data       # compute alone
  python scripts/benchmark.py --input_only           # the tf.data pipeline alone
  python scripts/benchmark.py --epochs_mode --epochs=3
  python scripts/benchmark.py --baseline=keras_fit   # ours vs Keras fit, A B A B
"""
import json
import os
import sys

from mnist import cli
from mnist import runtime

cli.define_benchmark_flags()


def main(argv):
  del argv
  config = cli.benchmark_config_from_flags()  # Validated before TensorFlow loads.
  cli.set_up_cluster(config.train)  # multi_worker: $TF_CONFIG, else from srun.
  if config.baseline and not config.role:
    runtime.check_precision(config.runtime, config.train.mixed_precision)  # As children do.
    runtime.check_devices_in_child(config.runtime)  # Refused on a GPU node without GPUs.
    from mnist.benchmark import ab  # pylint: disable=g-import-not-at-top
    command = [sys.executable, os.path.abspath(__file__), *sys.argv[1:]]
    result = ab.run(config, command)  # TensorFlow loads in the children only.
  else:
    runtime.apply_env(config.runtime, precision=config.train.mixed_precision)  # Before TF.
    from mnist.benchmark import measure  # pylint: disable=g-import-not-at-top
    result = measure.run(config)
  print(json.dumps(result), flush=True)  # The last line of stdout.


if __name__ == '__main__':
  cli.run(main)
