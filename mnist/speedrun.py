"""Runs a recipe (a flagfile) over several seeds, each in a fresh process, and measures
accuracy and time; optionally the seed recipe's time to a target in the same run.

TensorFlow-free: the processes are started by the sweep's runner (`mnist/sweep/runner.py`,
one at a time, so each has every core and its time is its own) and read back from
their results.json.
"""
import dataclasses
import os
import statistics
from typing import Callable, Optional, Sequence

from mnist.sweep import runner


@dataclasses.dataclass
class SeedRun:
  seed: int
  test_accuracy: float
  train_seconds: float  # First step to end of the final eval (tracing included).
  process_seconds: Optional[float]  # The whole process; None: finished in an earlier call.
  seconds_to_target: Optional[float]  # First per-epoch eval at or above the target.


def seconds_to(eval_history: list, target: float) -> Optional[float]:
  """Seconds (from the first step) of the first per-epoch eval reaching `target`."""
  return next((e['seconds'] for e in eval_history if e['accuracy'] >= target), None)


def run_seeds(name: str, train_flags: Sequence[str], seeds: Sequence[int], workdir: str,
              target: float, on_seed: Callable[[SeedRun], None] = lambda run: None) -> list:
  """Trains `train_flags` with each seed, one process after another, under
  workdir/NAME_seedSEED (a seed already finished there is read back, not rerun)."""
  jobs = [runner.Job(f'{name}/seed{seed}', os.path.join(workdir, f'{name}_seed{seed}'),
                     (*train_flags, f'--seed={seed}'),
                     os.path.join(workdir, f'{name}_seed{seed}.log'))
          for seed in seeds]
  runs = []

  def on_done(outcome: runner.Outcome):
    if outcome.results is None:
      with open(outcome.job.log_path) as f:
        tail = f.read()[-2000:]
      raise RuntimeError(f'{outcome.job.name} failed (exit {outcome.returncode}; log '
                         f'{outcome.job.log_path}):\n{tail}')
    results = outcome.results
    run = SeedRun(results['config']['seed'], results['test_accuracy'],
                  results['train_seconds'], outcome.process_seconds,
                  seconds_to(results['eval_history'], target))
    runs.append(run)
    on_seed(run)

  runner.run_jobs(jobs, parallel=1, on_done=on_done)
  return runs


def summary(runs: Sequence[SeedRun]) -> dict:
  accuracies = [r.test_accuracy for r in runs]
  process_seconds = [r.process_seconds for r in runs if r.process_seconds is not None]
  return {'seeds': [r.seed for r in runs],
          'test_accuracy_mean': statistics.mean(accuracies),
          'test_accuracy_min': min(accuracies),
          'test_accuracy_stdev': statistics.stdev(accuracies) if len(runs) > 1 else 0.0,
          'train_seconds_mean': statistics.mean(r.train_seconds for r in runs),
          'train_seconds_max': max(r.train_seconds for r in runs),
          'process_seconds_mean': (statistics.mean(process_seconds) if process_seconds
                                   else None),
          'runs': [dataclasses.asdict(r) for r in runs]}
