"""scripts/speedrun.py: recipes over seeds, with the baseline's time to target."""
import json
import os
import subprocess
import sys

import pytest

from mnist import hardware
from mnist import speedrun

from conftest import REPO


def test_seconds_to_target_is_the_first_eval_reaching_it():
  history = [{'accuracy': 0.97, 'seconds': 10.0}, {'accuracy': 0.991, 'seconds': 20.0},
             {'accuracy': 0.989, 'seconds': 30.0}, {'accuracy': 0.995, 'seconds': 40.0}]
  assert speedrun.seconds_to(history, 0.99) == 20.0
  assert speedrun.seconds_to(history, 0.999) is None


def test_summary_gives_mean_min_and_spread():
  runs = [speedrun.SeedRun(0, 0.990, 10.0, 15.0, 9.0),
          speedrun.SeedRun(1, 0.992, 12.0, 17.0, 11.0)]
  report = speedrun.summary(runs)
  assert report['test_accuracy_mean'] == pytest.approx(0.991)
  assert report['test_accuracy_min'] == 0.990
  assert report['test_accuracy_stdev'] == pytest.approx(0.001 * 2 ** 0.5)  # Sample stdev.
  assert report['train_seconds_mean'] == 11.0 and report['train_seconds_max'] == 12.0
  assert report['process_seconds_mean'] == 16.0


def test_summary_of_seeds_finished_in_an_earlier_call_has_no_process_time():
  runs = [speedrun.SeedRun(0, 0.990, 10.0, None, 9.0)]
  assert speedrun.summary(runs)['process_seconds_mean'] is None


@pytest.mark.slow
@pytest.mark.real_data
def test_speedrun_script_runs_seeds_and_the_baseline(tmp_path, manual_dir):
  baseline = tmp_path / 'tiny_seed.flags'
  baseline.write_text(f'--flagfile={os.path.join(REPO, "configs", "seed.flags")}\n'
                      "--train_split=train[:1280]\n--epochs=2\n")
  result = subprocess.run(
      [sys.executable, os.path.join(REPO, 'scripts', 'speedrun.py'),
       f'--flagfile={os.path.join(REPO, "configs", "fast.flags")}',
       "--train_split=train[:2560]", '--first_seed=3', '--seeds=2',
       f'--baseline_flagfile={baseline}',
       '--target_accuracy=0.5', f'--workdir={tmp_path / "work"}',
       f'--tfds_manual_dir={manual_dir}'],
      capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(result.stdout.strip().splitlines()[-1])
  assert report['seeds'] == [3, 4]
  assert '--model=fast_strided_cnn' in report['recipe']
  assert '--train_split=train[:2560]' in report['recipe']
  assert all(run['test_accuracy'] > 0.5 for run in report['runs'])
  assert report['baseline']['seconds_to_target'] is not None
  assert report['baseline_seconds_to_target_over_recipe_train_seconds'] > 0
  assert 'seed 4: test accuracy' in result.stdout and 'stdev' in result.stdout
  # fast.flags asks for --mixed_precision=auto; each run records what it resolved to.
  expected = hardware.resolve_precision(hardware.cpu())  # No GPU in CI.
  with open(tmp_path / 'work' / 'recipe_seed3' / 'config.json') as f:
    assert json.load(f)['mixed_precision'] == expected
  assert report['runs'] and '--mixed_precision=auto' in report['recipe']
