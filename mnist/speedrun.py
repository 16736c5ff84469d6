"""Runs a recipe (a flagfile) over several seeds, each in a fresh process, and measures
accuracy and time; optionally the seed recipe's time to a target in the same run.

TensorFlow-free: it starts `scripts/train.py` processes and reads what they print.
"""
import dataclasses
import os
import statistics
import time
from typing import Optional, Sequence

from mnist import fault_injection


@dataclasses.dataclass
class SeedRun:
  seed: int
  test_accuracy: float
  train_seconds: float  # First step to end of the final eval (tracing included).
  process_seconds: float  # The whole process: imports, TFDS loading, everything.
  seconds_to_target: Optional[float]  # First per-epoch eval at or above the target.


def seconds_to(eval_history: list, target: float) -> Optional[float]:
  """Seconds (from the first step) of the first per-epoch eval reaching `target`."""
  return next((e['seconds'] for e in eval_history if e['accuracy'] >= target), None)


def run_seed(name: str, train_flags: Sequence[str], seed: int, workdir: str,
             target: float) -> SeedRun:
  """Trains `train_flags` with `seed` in a fresh process under workdir/NAME_seedSEED."""
  model_dir = os.path.join(workdir, f'{name}_seed{seed}')
  command = fault_injection.train_command(model_dir, [*train_flags, f'--seed={seed}'])
  start = time.perf_counter()
  outcome = fault_injection.run(command)  # Measures time; enforces no budget.
  process_seconds = time.perf_counter() - start
  results = outcome.results
  if outcome.returncode != 0 or not results:
    raise RuntimeError(f'{name} seed {seed} failed (exit {outcome.returncode}):\n'
                       f'{outcome.stderr[-2000:]}')
  return SeedRun(seed, results['test_accuracy'], results['train_seconds'], process_seconds,
                 seconds_to(results['eval_history'], target))


def summary(runs: Sequence[SeedRun]) -> dict:
  accuracies = [r.test_accuracy for r in runs]
  return {'seeds': [r.seed for r in runs],
          'test_accuracy_mean': statistics.mean(accuracies),
          'test_accuracy_min': min(accuracies),
          'test_accuracy_stdev': statistics.stdev(accuracies) if len(runs) > 1 else 0.0,
          'train_seconds_mean': statistics.mean(r.train_seconds for r in runs),
          'train_seconds_max': max(r.train_seconds for r in runs),
          'process_seconds_mean': statistics.mean(r.process_seconds for r in runs),
          'runs': [dataclasses.asdict(r) for r in runs]}
