"""Runs scripts/train.py as N workers on this machine: one MultiWorkerMirroredStrategy
cluster on 127.0.0.1, each worker with a free port and its own TF_CONFIG.

  python scripts/launch_local.py --num_workers=2 -- --model_dir=runs/two_workers \
      --train_split='train[:6400]' --epochs=1

Flags after `--` go to every worker (`--strategy=multi_worker` is added unless given).
Output is prefixed `[worker i]`. Exits 0 when every worker finishes; when one fails,
stops the others and exits with its code (128+N if killed by signal N). Rerunning
the same command resumes from the last checkpoint.
"""
import sys

from absl import flags

from mnist import cli
from mnist import launch

flags.DEFINE_integer('num_workers', 2, 'Worker processes to start.', lower_bound=1)
flags.DEFINE_string('host', '127.0.0.1', 'Address the workers listen on.')
flags.DEFINE_float('stop_grace_seconds', 10.0,
                   'After a worker fails: how long the others get to stop on their own '
                   '(SIGTERM then, SIGKILL 5 s later).', lower_bound=0)
FLAGS = flags.FLAGS


def main(argv):
  sys.exit(launch.launch(FLAGS.num_workers, argv[1:], host=FLAGS.host,
                         stop_grace_seconds=FLAGS.stop_grace_seconds))


if __name__ == '__main__':
  cli.run(main)
