"""mnist/sweep/report.py and plot.py: the numbers, the files and the picture of a sweep."""
import csv
import dataclasses
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
                               'reason': 'exit 3',
                               'log': str(tmp_path / 'learning_rate=3e-3/seed1.log')}]
  better = report['rows'][1]
  assert better['seeds'] == 2 and better['paired_seeds'] == 2
  assert 'Failed: learning_rate=3e-3/seed1 (exit 3)' in report_lib.markdown(report)


def test_a_run_exiting_0_without_the_metric_is_reported_as_such(sweep, tmp_path):
  # Issue #29: resumed with nothing left to train, it wrote results without its metric.
  outcomes = _outcomes(sweep, tmp_path)
  lacking = outcomes[4]
  outcomes[4] = dataclasses.replace(lacking, results={'train_seconds': 3.0})
  report = report_lib.build(sweep, outcomes)
  reason = 'exited 0 but its results.json has no validation_accuracy'
  assert [(f['run'], f['returncode'], f['reason']) for f in report['failed']] == [
      (lacking.job.name, 0, reason)]
  assert report['rows'][1]['seeds'] == 2
  assert f'Failed: {lacking.job.name} ({reason}); log: ' in report_lib.markdown(report)


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


PACKAGES = {'python': '3.11.7', 'tensorflow': '2.21.0'}


def _with_code(outcomes, version_of):
  """The outcomes with a provenance record naming the code version version_of(run)."""
  return [dataclasses.replace(o, results={**o.results, 'provenance': {
      'code_version': version_of(o.job.name), 'packages': PACKAGES}})
          for o in outcomes]


def test_report_names_the_code_and_packages_of_a_single_version_sweep(sweep, tmp_path):
  outcomes = _with_code(_outcomes(sweep, tmp_path), lambda name: '1a2b3c4d')
  report = report_lib.build(sweep, outcomes, {'provenance': {'code_version': '1a2b3c4d'}})
  assert list(report['code_versions']) == ['1a2b3c4d']
  assert sorted(report['code_versions']['1a2b3c4d']) == sorted(o.job.name for o in outcomes)
  assert not report['spans_code_versions']
  assert report['packages'] == [{'versions': PACKAGES, 'runs': report['code_versions'][
      '1a2b3c4d']}]
  markdown = report_lib.markdown(report)
  assert 'The sweep started under code `1a2b3c4d`.' in markdown
  assert '- code `1a2b3c4d`: every run' in markdown
  assert '- packages python 3.11.7, tensorflow 2.21.0: every run' in markdown
  assert 'spans' not in markdown
  rows = list(csv.DictReader(open(report_lib.write(report, str(tmp_path))['csv'])))
  assert {r['code'] for r in rows} == {'1a2b3c4d'}
  assert {r['packages'] for r in rows} == {'python 3.11.7, tensorflow 2.21.0'}


def test_a_sweep_spanning_code_versions_says_so_and_marks_each_run(sweep, tmp_path):
  outcomes = _with_code(_outcomes(sweep, tmp_path),
                        lambda name: 'bbbbbbbb+dirty.cc' if name.endswith('seed2')
                        else 'aaaaaaaa')
  outcomes[0] = dataclasses.replace(outcomes[0], results={  # Written by older code.
      k: v for k, v in outcomes[0].results.items() if k != 'provenance'})
  report = report_lib.build(sweep, outcomes, {
      'provenance': {'code_version': 'aaaaaaaa'},
      'code_changes': [{'code_version': 'bbbbbbbb+dirty.cc'}]})
  assert report['spans_code_versions']
  assert report['code_versions']['bbbbbbbb+dirty.cc'] == [
      'learning_rate=1e-3/seed2', 'learning_rate=3e-3/seed2', 'learning_rate=1e-2/seed2']
  assert report['code_versions']['unknown'] == ['learning_rate=1e-3/seed0']
  base, better, _ = report['rows']
  assert base['code_versions'] == {'0': 'unknown', '1': 'aaaaaaaa',
                                   '2': 'bbbbbbbb+dirty.cc'}
  assert better['code'] == 'aaaaaaaa (seeds 0, 1); bbbbbbbb+dirty.cc (seed 2)'
  markdown = report_lib.markdown(report)
  assert '**The comparison spans several code or package versions**' in markdown
  assert ('changes allowed since (--allow_code_change): `bbbbbbbb+dirty.cc`'
          in markdown)
  assert ('- code `bbbbbbbb+dirty.cc`: learning_rate=1e-3/seed2, learning_rate=3e-3/seed2, '
          'learning_rate=1e-2/seed2') in markdown
  assert '| aaaaaaaa (seeds 0, 1); bbbbbbbb+dirty.cc (seed 2) |' in markdown
  written = json.load(open(report_lib.write(report, str(tmp_path))['json']))
  assert written['spans_code_versions'] and written['rows'][1]['code'] == better['code']
