"""The sweep's report: per variant the metric's mean, standard error and 95% interval,
training time and speed; against the baseline the paired difference over the same
seeds, its interval, p-value and a verdict. Written as Markdown, CSV and JSON.
"""
import csv
import json
import os
import statistics as py_statistics

from mnist.sweep import spec as spec_lib
from mnist.sweep import statistics

COLUMNS = ('variant', 'flags', 'seeds', 'mean', 'stderr', 'ci_low', 'ci_high',
           'train_seconds', 'images_per_sec', 'difference', 'difference_ci_low',
           'difference_ci_high', 'p_value', 'verdict', 'seeds_needed')


def build(sweep: spec_lib.Sweep, outcomes) -> dict:
  """Everything the report says, from the finished runs among `outcomes`."""
  values = {v.name: {} for v in sweep.variants}  # name -> {seed: results}
  failed = []
  for outcome in outcomes:
    run_variant, seed = outcome.job.name.rsplit('/seed', 1)
    if outcome.results is not None and outcome.results.get(sweep.metric) is not None:
      values[run_variant][int(seed)] = outcome.results
    else:
      failed.append({'run': outcome.job.name, 'returncode': outcome.returncode,
                     'log': outcome.job.log_path})
  baseline = values[sweep.baseline]
  rows = []
  for variant in sweep.variants:
    runs = values[variant.name]
    row = {'variant': variant.name, 'flags': ' '.join(variant.flags),
           'seeds': len(runs)}
    if runs:
      row.update(_describe(sweep.metric, runs))
    common = sorted(set(runs) & set(baseline))
    if variant.name != sweep.baseline and common:
      row.update(_compare(sweep, [runs[s][sweep.metric] for s in common],
                          [baseline[s][sweep.metric] for s in common]))
    row['per_seed'] = {str(s): runs[s][sweep.metric] for s in sorted(runs)}
    rows.append(row)
  return {'metric': sweep.metric, 'higher_is_better': sweep.higher_is_better,
          'baseline': sweep.baseline, 'seeds': list(sweep.seeds),
          'base_flags': list(sweep.base_flags), 'rows': rows, 'failed': failed}


def _describe(metric, runs: dict) -> dict:
  estimate = statistics.estimate([r[metric] for r in runs.values()])
  speeds = [r['train_images_per_sec'] for r in runs.values()
            if r.get('train_images_per_sec')]
  return {'mean': estimate.mean, 'stderr': estimate.stderr, 'ci_low': estimate.ci_low,
          'ci_high': estimate.ci_high,
          'train_seconds': py_statistics.mean(r['train_seconds'] for r in runs.values()),
          'images_per_sec': py_statistics.mean(speeds) if speeds else None}


def _compare(sweep, values, baseline) -> dict:
  comparison = statistics.compare(values, baseline, sweep.higher_is_better)
  d = comparison.difference
  verdict = comparison.verdict
  if verdict == 'not resolved':
    verdict = f'not resolved at {comparison.n} seeds'
  return {'difference': d.mean, 'difference_ci_low': d.ci_low,
          'difference_ci_high': d.ci_high, 'p_value': comparison.p_value,
          'verdict': verdict, 'seeds_needed': comparison.seeds_needed,
          'paired_seeds': comparison.n}


def _text(value, digits=4) -> str:
  if value is None:
    return ''
  if isinstance(value, float):
    return f'{value:.{digits}f}' if abs(value) < 100 else f'{value:,.0f}'
  return str(value)


def markdown(report: dict) -> str:
  """A table a person reads: one row per variant, the baseline first among equals."""
  direction = 'higher' if report['higher_is_better'] else 'lower'
  lines = [f'# Sweep: {report["metric"]} ({direction} is better), baseline '
           f'`{report["baseline"]}`', '',
           f'Base flags: `{" ".join(report["base_flags"]) or "(none)"}`; seeds '
           f'{", ".join(map(str, report["seeds"]))}. Intervals are 95% t-intervals over '
           'seeds; differences are paired by seed (paired t-test).', '',
           '| variant | seeds | mean | ± stderr | 95% CI | train s | images/s | '
           'difference | 95% CI | p | verdict | seeds needed |',
           '| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | --- | ---: | --- | ---: |']
  for row in report['rows']:
    ci = (f'[{_text(row["ci_low"])}, {_text(row["ci_high"])}]'
          if row.get('ci_low') is not None else '')
    dci = (f'[{_text(row["difference_ci_low"])}, {_text(row["difference_ci_high"])}]'
           if row.get('difference_ci_low') is not None else '')
    verdict = 'baseline' if row['variant'] == report['baseline'] else row.get('verdict', '')
    lines.append(
        f'| {row["variant"]} | {row["seeds"]} | {_text(row.get("mean"))} | '
        f'{_text(row.get("stderr"))} | {ci} | {_text(row.get("train_seconds"), 1)} | '
        f'{_text(row.get("images_per_sec"), 0)} | {_text(row.get("difference"))} | {dci} | '
        f'{_text(row.get("p_value"), 3)} | {verdict} | {_text(row.get("seeds_needed"))} |')
  for failure in report['failed']:
    lines.append(f'\nFailed: {failure["run"]} (exit {failure["returncode"]}); log: '
                 f'{failure["log"]}')
  return '\n'.join(lines) + '\n'


def write(report: dict, sweep_dir: str) -> dict:
  """report.md, report.csv and report.json in sweep_dir; returns their paths."""
  paths = {kind: os.path.join(sweep_dir, f'report.{kind}') for kind in ('md', 'csv', 'json')}
  with open(paths['md'], 'w') as f:
    f.write(markdown(report))
  with open(paths['csv'], 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction='ignore')
    writer.writeheader()
    writer.writerows(report['rows'])
  with open(paths['json'], 'w') as f:
    json.dump(report, f, indent=2)
  return paths
