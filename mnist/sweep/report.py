"""The sweep's report: per variant the metric's mean, standard error and 95% interval,
training time and speed; against the baseline the paired difference over the same
seeds, its interval, p-value and a verdict; the code versions and packages of the runs
(from each results.json's provenance record), saying so when they span several versions.
Written as Markdown, CSV and JSON.
"""
import csv
import json
import os
import statistics as py_statistics
from typing import Optional

from mnist import provenance
from mnist.sweep import spec as spec_lib
from mnist.sweep import statistics

COLUMNS = ('variant', 'flags', 'seeds', 'mean', 'stderr', 'ci_low', 'ci_high',
           'train_seconds', 'images_per_sec', 'difference', 'difference_ci_low',
           'difference_ci_high', 'p_value', 'verdict', 'seeds_needed', 'code', 'packages')
UNKNOWN = 'unknown'  # A run whose results.json holds no provenance record (older code).


def build(sweep: spec_lib.Sweep, outcomes, sweep_record: Optional[dict] = None) -> dict:
  """Everything the report says, from the finished runs among `outcomes`;
  `sweep_record`: sweep.json's (the code the sweep started with, changes allowed since)."""
  values = {v.name: {} for v in sweep.variants}  # name -> {seed: results}
  failed = []
  for outcome in outcomes:
    run_variant, seed = outcome.job.name.rsplit('/seed', 1)
    if outcome.results is not None and outcome.results.get(sweep.metric) is not None:
      values[run_variant][int(seed)] = outcome.results
    else:
      failed.append({'run': outcome.job.name, 'returncode': outcome.returncode,
                     'reason': failure_reason(outcome, sweep.metric),
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
    row['code_versions'] = {str(s): _code_version(runs[s]) for s in sorted(runs)}
    row['code'] = _by_value(row['code_versions'], 'seed')
    row['packages'] = _by_value({str(s): _packages_text(runs[s]) for s in sorted(runs)},
                                'seed')
    rows.append(row)
  finished = {f'{variant}/seed{seed}': results for variant, runs in values.items()
              for seed, results in runs.items()}
  code_versions, packages = {}, []
  for name, results in finished.items():
    code_versions.setdefault(_code_version(results), []).append(name)
    versions = (results.get('provenance') or {}).get('packages')
    entry = next((p for p in packages if p['versions'] == versions), None)
    if entry is None:
      packages.append(entry := {'versions': versions, 'runs': []})
    entry['runs'].append(name)
  started = (sweep_record or {}).get('provenance', {}).get('code_version')
  return {'metric': sweep.metric, 'higher_is_better': sweep.higher_is_better,
          'baseline': sweep.baseline, 'seeds': list(sweep.seeds),
          'base_flags': list(sweep.base_flags), 'rows': rows, 'failed': failed,
          'code_versions': code_versions, 'packages': packages,
          'spans_code_versions': len(code_versions) > 1 or len(packages) > 1,
          'sweep_code_version': started,
          'code_changes_allowed': [c['code_version'] for c in
                                   (sweep_record or {}).get('code_changes', [])]}


def failure_reason(outcome, metric: Optional[str] = None) -> str:
  """Why a run has no value in the report: its exit code, or, when it wrote a
  results.json without the metric (e.g. resumed after its last checkpoint with nothing
  left to train, under code that did not complete the record), that it did."""
  metric = metric or outcome.job.required_result
  if outcome.results is not None and metric and outcome.results.get(metric) is None:
    return f'exited {outcome.returncode} but its results.json has no {metric}'
  return f'exit {outcome.returncode}'


def _code_version(results: dict) -> str:
  return (results.get('provenance') or {}).get('code_version') or UNKNOWN


def _packages_text(results: dict) -> str:
  return provenance.describe_packages((results.get('provenance') or {}).get('packages'),
                                      UNKNOWN)


def _by_value(per_key: dict, key_name: str) -> str:
  """'A' when every key has the same value, else 'A (seeds 0, 2); B (seed 1)'."""
  groups = {}
  for key, value in per_key.items():
    groups.setdefault(value, []).append(key)
  if len(groups) <= 1:
    return next(iter(groups), '')
  return '; '.join(f'{value} ({key_name}{"s" if len(keys) > 1 else ""} {", ".join(keys)})'
                   for value, keys in groups.items())


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
           *_provenance_lines(report), '',
           '| variant | seeds | mean | ± stderr | 95% CI | train s | images/s | '
           'difference | 95% CI | p | verdict | seeds needed | code |',
           '| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | --- | ---: | --- | ---: '
           '| --- |']
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
        f'{_text(row.get("p_value"), 3)} | {verdict} | {_text(row.get("seeds_needed"))} | '
        f'{row.get("code", "")} |')
  for failure in report['failed']:
    lines.append(f'\nFailed: {failure["run"]} ({failure["reason"]}); log: {failure["log"]}')
  return '\n'.join(lines) + '\n'


def _provenance_lines(report: dict) -> list:
  """What code and packages the numbers come from; a warning when they are mixed."""
  code_versions = report.get('code_versions', {})
  packages = report.get('packages', [])
  lines = []  # Paragraphs, then a list: Markdown needs the blank lines between them.
  if report.get('spans_code_versions'):
    lines += ['**The comparison spans several code or package versions**: differences '
              'between runs may come from the code, not only from the variants.', '']
  started = report.get('sweep_code_version')
  allowed = report.get('code_changes_allowed')
  if started:
    lines += [f'The sweep started under code `{started}`' + (
        f'; changes allowed since (--allow_code_change): '
        f'{", ".join(f"`{v}`" for v in allowed)}.' if allowed else '.'), '']
  for version, runs in code_versions.items():
    lines.append(f'- code `{version}`: {_runs_text(runs, code_versions)}')
  for entry in packages:
    lines.append(f'- packages {provenance.describe_packages(entry["versions"], UNKNOWN)}: '
                 f'{_runs_text(entry["runs"], packages)}')
  return lines


def _runs_text(runs: list, groups) -> str:
  return 'every run' if len(groups) == 1 else ', '.join(runs)


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
