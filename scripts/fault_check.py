"""Kills deterministic training runs and checks every rerun ends with the uninterrupted
run's weights_sha256 and results.json (but for timings and provenance).

  python scripts/fault_check.py --runs=10 --workdir=/tmp/fault_check -- \
      --train_split='train[:6400]' --epochs=2 --checkpoint_every_steps=25

Trials take turns: killed during an epoch end (after its last step's log line: the
eval pass and the checkpoint), just before the results write (after the final epoch's
line), and at a random moment after the first checkpoint (mnist/fault_injection.py).
Flags after `--` go to scripts/train.py (`--deterministic` is always added).
Exits non-zero if any resumed run's weights or results differ.
"""
import json
import signal
import sys
import tempfile

from absl import flags

from mnist import cli
from mnist import fault_injection

flags.DEFINE_integer('runs', 5, 'How many runs to kill and resume.', lower_bound=1)
flags.DEFINE_string('workdir', None, 'Where the runs write (default: a new temp dir).')
flags.DEFINE_integer('seed', 0, 'Seed for the random kill times.')
flags.DEFINE_enum('signal', 'SIGKILL', ['SIGKILL', 'SIGTERM', 'SIGINT'], 'Signal to send.')
FLAGS = flags.FLAGS


def main(argv):
  train_flags = [*argv[1:], '--deterministic']
  workdir = FLAGS.workdir or tempfile.mkdtemp(prefix='fault_check_')
  print(f'fault_check: {FLAGS.runs} runs, {FLAGS.signal}, workdir {workdir}, '
        f'train flags {" ".join(train_flags)}', flush=True)
  expected, trials = fault_injection.fault_check(
      workdir, train_flags, FLAGS.runs, FLAGS.seed, getattr(signal, FLAGS.signal),
      log=lambda line: print(line, flush=True))
  matched = sum(t.matches for t in trials)
  print(json.dumps({'runs': len(trials), 'matched': matched,
                    'weights_matched': sum(t.weights_match for t in trials),
                    'results_matched': sum(t.results_match for t in trials),
                    'interrupted': sum(t.interrupted for t in trials),
                    'expected_sha256': expected,
                    'kill_kinds': [t.moment.kind for t in trials],
                    'killed_after_steps': [t.killed_after_step for t in trials],
                    'result_differences': [[d.key for d in t.result_differences]
                                           for t in trials]}))
  sys.exit(0 if matched == len(trials) else 1)


if __name__ == '__main__':
  cli.run(main)
