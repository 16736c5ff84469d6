"""mnist/sweep/report.py and plot.py: the numbers, the files and the picture of a sweep."""
import csv
import json

import pytest

from mnist.sweep import plot
from mnist.sweep import report as report_lib
from mnist.sweep import runner
from mnist.sweep import spec
from mnist.sweep import statistics

BASE = ['--train_split=train[:6400]', '--validation_split=train[55000:]', '--epochs=1']
# Per seed: the baseline, a variant better by 0.002-0.0025 on every seed, one within noise.
ACCURACY = {'learning_rate=1e-3': [0.990, 0.991, 0.989],
            'learning_rate=3e-3': [0.992, 0.993, 0.9915],
            'learning_rate=1e-2': [0.9915, 0.9905, 0.9890]}


def _outcomes(sweep, tmp_path, missing=()):
  outcomes = []
  for run in sweep.runs():
    job = runner.Job(run.name, str(tmp_path / run.name), (), str(tmp_path / f'{run.name}.log'))
    value = ACCURACY[run.variant.name][run.seed]
    results = None if run.name in missing else {
        'validation_accuracy': value, 'train_seconds': 10.0 + run.seed,
        'train_images_per_sec': 1000.0}
    outcomes.append(runner.Outcome(job, 0 if results else 3, results, 12.0))
  return outcomes


@pytest.fixture
def sweep():
  return spec.build(BASE, ['learning_rate=1e-3,3e-3,1e-2'], [], range(3))


def test_rows_give_estimates_paired_differences_and_verdicts(sweep, tmp_path):
  report = report_lib.build(sweep, _outcomes(sweep, tmp_path))
  base, better, noise = report['rows']
  expected = statistics.estimate(ACCURACY['learning_rate=1e-3'])
  assert (base['mean'], base['ci_low'], base['ci_high']) == (
      expected.mean, expected.ci_low, expected.ci_high)
  assert base['train_seconds'] == 11.0 and base['images_per_sec'] == 1000.0
  assert 'verdict' not in base  # The baseline is not compared with itself.
  assert better['difference'] == pytest.approx((0.002 + 0.002 + 0.0025) / 3)
  assert better['verdict'] == 'better' and better['p_value'] < 0.05
  assert noise['verdict'] == 'not resolved at 3 seeds' and noise['seeds_needed'] > 3
  assert noise['per_seed'] == {'0': 0.9915, '1': 0.9905, '2': 0.9890}


def test_failed_runs_are_listed_and_pairing_uses_the_common_seeds(sweep, tmp_path):
  report = report_lib.build(sweep, _outcomes(sweep, tmp_path,
                                             missing={'learning_rate=3e-3/seed1'}))
  assert report['failed'] == [{'run': 'learning_rate=3e-3/seed1', 'returncode': 3,
                               'log': str(tmp_path / 'learning_rate=3e-3/seed1.log')}]
  better = report['rows'][1]
  assert better['seeds'] == 2 and better['paired_seeds'] == 2
  assert 'Failed: learning_rate=3e-3/seed1 (exit 3)' in report_lib.markdown(report)


def test_report_files_markdown_csv_json_and_png(sweep, tmp_path):
  report = report_lib.build(sweep, _outcomes(sweep, tmp_path))
  paths = report_lib.write(report, str(tmp_path))
  markdown = open(paths['md']).read()
  assert '| learning_rate=3e-3 | 3 | 0.9922 |' in markdown
  assert '| baseline |' in markdown and '| better |' in markdown
  rows = list(csv.DictReader(open(paths['csv'])))
  assert [r['variant'] for r in rows] == list(ACCURACY)
  assert list(rows[0]) == list(report_lib.COLUMNS)
  assert json.load(open(paths['json']))['rows'][2]['verdict'] == 'not resolved at 3 seeds'
  png = plot.draw(report, str(tmp_path / 'report.png'))
  with open(png, 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'
