"""report.png: the metric per seed for each variant, and each variant's paired
difference from the baseline with its 95% interval (a forest plot)."""
import matplotlib

matplotlib.use('Agg')  # Files only; no display here or on servers.
from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position


def draw(report: dict, path: str) -> str:
  rows = report['rows']
  positions = list(range(len(rows)))[::-1]  # The first variant on top.
  names = [row['variant'] for row in rows]
  fig, (left, right) = plt.subplots(1, 2, figsize=(11, 1.2 + 0.6 * len(rows)),
                                    sharey=True, constrained_layout=True)
  for y, row in zip(positions, rows):
    seeds = list(row['per_seed'].values())
    left.scatter(seeds, [y] * len(seeds), s=18, color='tab:gray', zorder=2)
    if row.get('ci_low') is not None:
      left.errorbar(row['mean'], y, xerr=[[row['mean'] - row['ci_low']],
                                          [row['ci_high'] - row['mean']]],
                    fmt='o', color='black', capsize=4, zorder=3)
    if row.get('difference') is not None:
      color = {'better': 'tab:green', 'worse': 'tab:red'}.get(row['verdict'], 'tab:blue')
      xerr = None
      if row.get('difference_ci_low') is not None:
        xerr = [[row['difference'] - row['difference_ci_low']],
                [row['difference_ci_high'] - row['difference']]]
      right.errorbar(row['difference'], y, xerr=xerr, fmt='o', color=color, capsize=4)
      right.annotate(row['verdict'], (row['difference'], y), textcoords='offset points',
                     xytext=(0, 7), ha='center', fontsize=8, color=color)
  right.axvline(0, color='black', linewidth=0.8)
  left.set_yticks(positions, names)
  left.set_xlabel(f'{report["metric"]}: seeds (grey), mean and 95% CI')
  better = 'higher' if report['higher_is_better'] else 'lower'
  right.set_xlabel(f'difference from the baseline, 95% CI ({better} is better)')
  fig.suptitle(f'Sweep: {report["metric"]} over {len(report["seeds"])} seeds; baseline '
               f'{report["baseline"]}; differences paired by seed')
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path
