"""Runs variants x seeds of scripts/train.py in parallel processes and reports which
differences from a baseline are real (paired confidence intervals over seeds).

  python scripts/sweep.py --sweep_dir=runs/sweeps/lr --seeds=3 --parallel=2 \
      --vary='learning_rate=1e-3,3e-3' --vary='batch_norm=true,false' -- \
      --flagfile=configs/seed.flags --train_split='train[:55000]' \
      --validation_split='train[55000:]'

On a Slurm cluster, --launcher=slurm submits the unfinished runs as one job array
(--parallel=K: at most K at once) and waits for it:

  python scripts/sweep.py --launcher=slurm --slurm_flags='--partition=gpu --gres=gpu:1' \
      --sweep_dir=runs/sweeps/lr --seeds=3 --parallel=4 --vary='learning_rate=1e-3,3e-3' -- \
      --flagfile=configs/seed.flags

Flags after `--` are the base every variant shares. Rerunning the same command skips
finished runs and resumes interrupted ones. `tensorboard --logdir=SWEEP_DIR` shows
every run in the HParams dashboard.
"""
import functools
import os

from absl import flags

from mnist import cli
from mnist import errors
from mnist.sweep import driver
from mnist.sweep import runner
from mnist.sweep import slurm
from mnist.sweep import spec

flags.DEFINE_string('sweep_dir', None, 'Required. The runs, their logs and the report go '
                    'here; rerunning with the same folder resumes the sweep.')
flags.DEFINE_multi_string('vary', [], 'FLAG=V1,V2,...: a grid axis; several --vary '
                          'make the grid of all their combinations.')
flags.DEFINE_multi_string('variant', [], "NAME:FLAGS: a hand-made variant, e.g. "
                          "'bn:--batch_norm --learning_rate=3e-3' (instead of --vary).")
flags.DEFINE_string('baseline', None, 'The variant the others are compared with '
                    '(default: the first).')
flags.DEFINE_integer('seeds', 3, 'Seeds per variant (--first_seed onwards).', lower_bound=1)
flags.DEFINE_integer('first_seed', 0, 'The first seed.', lower_bound=0)
flags.DEFINE_integer('parallel', 1, 'Runs at once: locally each pinned to its own share of '
                     'the cores with thread pools to match; on Slurm the job array\'s %K.',
                     lower_bound=1)
flags.DEFINE_enum('launcher', 'local', ['local', 'slurm'], 'local: processes on this '
                  'machine. slurm: the unfinished runs as one Slurm job array (sbatch), '
                  'which the sweep waits for and reports.')
flags.DEFINE_string('slurm_flags', '', "--launcher=slurm: sbatch options for every run, "
                    "e.g. '--partition=gpu --time=2:00:00 --cpus-per-task=8 --gres=gpu:1'.")
flags.DEFINE_string('metric', None, 'results.json value to compare: ' +
                    ', '.join(spec.METRICS) + ' (default: validation_accuracy when every '
                    'run has --validation_split, else test_accuracy).')
flags.DEFINE_bool('allow_code_change', False, 'Resume a sweep started under another '
                  'code version (commit or uncommitted changes), which is refused '
                  "otherwise; the report then names each run's code version.")
flags.mark_flag_as_required('sweep_dir')
FLAGS = flags.FLAGS


def main(argv):
  sweep = spec.build(argv[1:], FLAGS.vary, FLAGS.variant,
                     range(FLAGS.first_seed, FLAGS.first_seed + FLAGS.seeds),
                     FLAGS.baseline, FLAGS.metric)  # Validated before any run starts.
  run_jobs = runner.run_jobs
  if FLAGS.launcher == 'slurm':
    run_jobs = functools.partial(slurm.run_jobs,
                                 work_dir=os.path.join(FLAGS.sweep_dir, 'slurm'),
                                 sbatch_flags=FLAGS.slurm_flags)
    slurm.check_sbatch_flags(FLAGS.slurm_flags)
  elif FLAGS.slurm_flags:
    raise errors.ConfigError('--slurm_flags needs --launcher=slurm.')
  driver.run(sweep, FLAGS.sweep_dir, FLAGS.parallel,
             allow_code_change=FLAGS.allow_code_change, run_jobs=run_jobs)


if __name__ == '__main__':
  cli.run(main)
