"""--baseline: ours and Keras fit measured alternately (A B A B ...), each in a fresh child.

TF-free. Every measurement is a child process of the same script, so both sides
start alike and runtime settings apply before TensorFlow loads in each. With
--baseline=keras_fit the Keras child gets stock runtime settings (the runtime
flags reset to their defaults, the inherited environment untouched); with
keras_fit_tuned it gets ours.
"""
import json
import resource
import statistics
import subprocess

from mnist import errors
from mnist.benchmark import config as benchmark_config

# Stock: what TensorFlow does by itself (not our --onednn=auto, which turns oneDNN on
# where TensorFlow leaves it off).
_STOCK_RUNTIME_FLAGS = ('--onednn=tensorflow', '--inter_op_threads=0',
                        '--intra_op_threads=0')


def child_command(command: list, role: str, baseline: str) -> list:
  """`command` (this script and its flags) as a measuring child of `role`."""
  extra = [f'--_role={role}']
  if role == 'keras_fit' and baseline == 'keras_fit':
    extra += _STOCK_RUNTIME_FLAGS
  return [*command, *extra]  # absl: the last value of a flag wins.


def _measure(command: list, label: str) -> dict:
  """Runs one child, echoing its stdout with a label; returns its last line, parsed."""
  print(f'[{label}] {" ".join(command[1:])}', flush=True)
  with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as child:
    lines = []
    for line in child.stdout:
      lines.append(line)
      if not line.startswith('{'):  # Its JSON goes into ours, whole.
        print(f'[{label}] {line}', end='', flush=True)
  if child.returncode or not lines:
    error = errors.Error(f'The {label} measurement exited with status {child.returncode}; '
                         'its error is above.')
    error.exit_code = child.returncode or 1
    raise error
  return json.loads(lines[-1])


def run(config: benchmark_config.BenchmarkConfig, command: list) -> dict:
  """Alternates config.baseline_repeats measurements of each side; returns the summary."""
  ours, theirs = [], []
  for repeat in range(1, config.baseline_repeats + 1):
    for role, results in (('ours', ours), ('keras_fit', theirs)):
      label = f'{role} {repeat}/{config.baseline_repeats}'
      results.append(_measure(child_command(command, role, config.baseline), label))

  ours_medians = [r['images_per_sec_median'] for r in ours]
  their_medians = [r['images_per_sec_median'] for r in theirs]
  ratios = [a / b for a, b in zip(ours_medians, their_medians)]
  summary = {
      'baseline': config.baseline,
      'mode': 'epochs' if config.epochs_mode else 'windows',
      'images_per_sec_median': statistics.median(ours_medians),
      'baseline_images_per_sec_median': statistics.median(their_medians),
      'ours_images_per_sec_medians': ours_medians,
      'baseline_images_per_sec_medians': their_medians,
      'ratios': ratios,
      'ratio_median': statistics.median(ratios),
      # Each child measured its own ceiling; each side's fractions, in run order.
      'ours_fractions_of_ceiling': [r['fraction_of_ceiling'] for r in ours],
      'baseline_fractions_of_ceiling': [r['fraction_of_ceiling'] for r in theirs],
      'peak_rss_mib': max(r['peak_rss_mib'] for r in ours),
      'baseline_peak_rss_mib': max(r['peak_rss_mib'] for r in theirs),
      'driver_peak_rss_mib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
      'ours': ours,
      'baseline_runs': theirs,
  }
  print(f'\nours ({len(ours)} runs), images/s medians: '
        + ', '.join(f'{v:.1f}' for v in ours_medians))
  print(f'{config.baseline} ({len(theirs)} runs), images/s medians: '
        + ', '.join(f'{v:.1f}' for v in their_medians))
  print('fractions of the matmul ceiling, ours: '
        + ', '.join(f'{v:.3f}' for v in summary['ours_fractions_of_ceiling'])
        + f'; {config.baseline}: '
        + ', '.join(f'{v:.3f}' for v in summary['baseline_fractions_of_ceiling']))
  print('ours / baseline per pair: ' + ', '.join(f'{r:.3f}' for r in ratios))
  print(f'median ratio ours / {config.baseline}: {summary["ratio_median"]:.3f}', flush=True)
  return summary
