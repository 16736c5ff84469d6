"""Runs a recipe over several seeds and reports accuracy and time, per seed and overall.

  python scripts/speedrun.py --flagfile=configs/fast.flags --seeds=5 \
      --baseline_flagfile=configs/seed.flags

The recipe is every training flag given (a flagfile, plus any overrides after it);
it is validated first, then each seed trains in a fresh process
(`scripts/train.py ... --seed=S`). Training seconds run from the first step to the
end of the final eval, tracing included; TFDS preparation and the one-time decoded
copy of each split (mnist/data.py) excluded; process seconds are the whole process.
With --baseline_flagfile, that recipe runs once (seed 0) in the same invocation, and
the ratio of its time to --target_accuracy over the recipe's mean training seconds
is printed.
"""
import json
import tempfile

from absl import flags

from mnist import cli
from mnist import runtime
from mnist import speedrun

cli.define_train_script_flags()  # The runtime ones are passed on to every training process.
flags.DEFINE_integer('seeds', 5, 'How many seeds (--first_seed onwards).', lower_bound=1)
flags.DEFINE_integer('first_seed', 0, 'The first seed; more seeds can then be added later.',
                     lower_bound=0)
flags.DEFINE_string('baseline_flagfile', None,
                    'Also run this recipe once (seed 0) and compare times to the target.')
flags.DEFINE_float('target_accuracy', 0.99, 'Accuracy whose time to reach is compared.')
flags.DEFINE_string('workdir', None, 'Where the runs write (default: a new temp dir).')
FLAGS = flags.FLAGS


def main(argv):
  del argv
  config, runtime_config = cli.train_config_from_flags(), cli.runtime_config_from_flags()
  runtime.check_precision(runtime_config, config.mixed_precision)  # Up front, as the flags.
  # A GPU node where TensorFlow lists no GPU: refused now, not in every seed's process.
  runtime.check_devices_in_child(runtime_config)
  recipe = cli.config_to_flags(config) + runtime.to_flags(runtime_config)
  workdir = FLAGS.workdir or tempfile.mkdtemp(prefix='speedrun_')
  print(f'speedrun: {FLAGS.seeds} seeds of {" ".join(recipe)}; workdir {workdir}',
        flush=True)

  def print_seed(run):
    process = (f'{run.process_seconds:.1f}s' if run.process_seconds is not None
               else '(finished earlier)')
    print(f'seed {run.seed}: test accuracy {run.test_accuracy:.4f}  train '
          f'{run.train_seconds:.1f}s  process {process}', flush=True)

  runs = speedrun.run_seeds('recipe', recipe,
                            range(FLAGS.first_seed, FLAGS.first_seed + FLAGS.seeds),
                            workdir, FLAGS.target_accuracy, print_seed)
  report = {'recipe': recipe, **speedrun.summary(runs)}
  print(f'recipe: test accuracy mean {report["test_accuracy_mean"]:.4f}  min '
        f'{report["test_accuracy_min"]:.4f}  stdev {report["test_accuracy_stdev"]:.4f}  '
        f'train seconds mean '
        f'{report["train_seconds_mean"]:.1f}  max {report["train_seconds_max"]:.1f}  '
        f'process seconds mean {report["process_seconds_mean"] or 0:.1f}', flush=True)
  if FLAGS.baseline_flagfile:
    base, = speedrun.run_seeds('baseline', [f'--flagfile={FLAGS.baseline_flagfile}'], [0],
                               workdir, FLAGS.target_accuracy)
    report['baseline'] = {'flagfile': FLAGS.baseline_flagfile, **base.__dict__}
    if base.seconds_to_target is None:
      print(f'baseline {FLAGS.baseline_flagfile}: never reached {FLAGS.target_accuracy} '
            f'(final {base.test_accuracy:.4f} after {base.train_seconds:.1f}s)')
    else:
      ratio = base.seconds_to_target / report['train_seconds_mean']
      report['baseline_seconds_to_target_over_recipe_train_seconds'] = ratio
      print(f'baseline {FLAGS.baseline_flagfile}: reached {FLAGS.target_accuracy} after '
            f'{base.seconds_to_target:.1f}s of training (final {base.test_accuracy:.4f}); '
            f'the recipe trains {ratio:.1f}x faster')
  print(json.dumps(report))


if __name__ == '__main__':
  cli.run(main)
