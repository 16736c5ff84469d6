"""Kills real training processes at random moments and checks that reruns end exactly
where an uninterrupted run does (same weights_sha256). Used by scripts/fault_check.py
and the reliability tests.

TensorFlow-free: it only starts and signals `scripts/train.py` processes.
"""
import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import time
from typing import Optional, Sequence

TRAIN_SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            'scripts', 'train.py')
_POLL_SECONDS = 0.05


@dataclasses.dataclass
class Outcome:
  returncode: int
  stdout: str
  stderr: str

  @property
  def results(self) -> Optional[dict]:
    """The results.json line a finished run prints last, or None."""
    lines = self.stdout.strip().splitlines()
    try:
      return json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
      return None


def train_command(model_dir: str, flags: Sequence[str]) -> list:
  return [sys.executable, TRAIN_SCRIPT, f'--model_dir={model_dir}', *flags]


def run(command: Sequence[str], timeout: Optional[float] = None) -> Outcome:
  """Runs `command` to completion. No limit by default: speedrun and fault_check run
  users' recipes, which may train for as long as they need; tests pass a guard."""
  done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
  return Outcome(done.returncode, done.stdout, done.stderr)


def latest_checkpoint_step(model_dir: str) -> Optional[int]:
  """Reads CheckpointManager's state file: the step number of the latest checkpoint."""
  state_file = os.path.join(model_dir, 'checkpoints', 'checkpoint')
  try:
    with open(state_file) as f:
      first_line = f.readline()  # model_checkpoint_path: "ckpt-40"
  except FileNotFoundError:
    return None
  return int(first_line.rsplit('-', 1)[1].strip().strip('"'))


def run_and_signal(command: Sequence[str], model_dir: str, sig: int, delay: float,
                   timeout: float = 900) -> Outcome:
  """Starts a run, waits for its first checkpoint, then `delay` seconds, then sends `sig`.

  If the run finishes before the signal, that is returned as is.
  """
  process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
  deadline = time.monotonic() + timeout
  try:
    while latest_checkpoint_step(model_dir) is None and process.poll() is None:
      if time.monotonic() > deadline:
        raise TimeoutError(f'No checkpoint in {model_dir} after {timeout} s.')
      time.sleep(_POLL_SECONDS)
    time.sleep(delay)
    if process.poll() is None:
      process.send_signal(sig)
    stdout, stderr = process.communicate(timeout=max(deadline - time.monotonic(), 1))
  finally:
    if process.poll() is None:
      process.kill()
      process.wait()
  return Outcome(process.returncode, stdout, stderr)


@dataclasses.dataclass
class Trial:
  delay: float
  killed_after_step: Optional[int]  # Latest checkpoint when killed; None: finished first.
  returncode: int
  resumed_sha256: Optional[str]
  matches: bool


def fault_check(workdir: str, flags: Sequence[str], runs: int, seed: int = 0,
                sig: int = signal.SIGKILL, log=print) -> tuple:
  """One uninterrupted reference run, then `runs` runs killed at random moments and
  rerun with the same command. Returns (reference sha256, [Trial, ...])."""
  reference = run(train_command(os.path.join(workdir, 'reference'), flags))
  if reference.returncode != 0 or not reference.results:
    raise RuntimeError(f'The reference run failed:\n{reference.stderr[-2000:]}')
  expected = reference.results['weights_sha256']
  train_seconds = reference.results['train_seconds']
  log(f'reference: weights_sha256 {expected}  train_seconds {train_seconds:.1f}')
  rng = random.Random(seed)
  trials = []
  for index in range(runs):
    model_dir = os.path.join(workdir, f'trial{index}')
    command = train_command(model_dir, flags)
    delay = rng.uniform(0, train_seconds)
    killed = run_and_signal(command, model_dir, sig, delay)
    killed_at = latest_checkpoint_step(model_dir) if killed.returncode != 0 else None
    resumed = run(command)
    sha = resumed.results['weights_sha256'] if resumed.results else None
    trial = Trial(delay, killed_at, killed.returncode, sha, sha == expected)
    log(f'trial {index}: signal after {delay:.1f}s  exit {killed.returncode}  '
        f'resumed from step {killed_at}  '
        f'{"same weights" if trial.matches else "DIFFERENT weights: " + str(sha)}')
    trials.append(trial)
  return expected, trials
