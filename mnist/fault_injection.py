"""Kills real training processes and checks that reruns end exactly where an
uninterrupted run does: the same weights_sha256 and the same results.json but for
timings and provenance. Used by scripts/fault_check.py and the reliability tests.

Kill moments: random ones (after the first checkpoint), and ones aimed at the moments
a record is most easily lost, found by watching the run's log: an epoch end (its last
step's log line, then the eval pass and the checkpoint) and the end of the run (the
final epoch's line, then the test pass and the results.json write).

TensorFlow-free: it only starts and signals `scripts/train.py` processes.
"""
import dataclasses
import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import threading
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


# A kill moment's kind: aimed at an epoch end, at the results write, or at random.
EPOCH_END, RESULTS_WRITE, RANDOM = 'epoch_end', 'results_write', 'random'
# Trial i's kind is KIND_CYCLE[i % 3]: the first three trials cover every kind.
KIND_CYCLE = (EPOCH_END, RESULTS_WRITE, RANDOM)


# The log line after the last epoch's checkpoint, 'epoch 2/2  validation loss ...
# saved ...': the only one whose epoch is the run's number of epochs.
FINAL_EPOCH_LINE = re.compile(r'(^|\s)epoch (\d+)/\2  ')


@dataclasses.dataclass(frozen=True)
class KillMoment:
  """When a trial's signal goes: `delay` seconds, drawn from [0, window], after its
  trigger: the log line of `step`, the last of `epoch` (EPOCH_END: the eval pass and
  the checkpoint follow), the final epoch's line (RESULTS_WRITE: the test pass and
  results.json follow), or the first checkpoint (RANDOM)."""
  kind: str
  delay: float
  window: float
  epoch: Optional[int] = None
  step: Optional[int] = None

  def trigger(self) -> Optional['re.Pattern']:
    """The stderr line (train.py's log) the delay counts from; None: the first
    checkpoint."""
    if self.kind == EPOCH_END:  # 'step 20  epoch 1  loss ...', the epoch's last window.
      return re.compile(rf'(^|\s)step {self.step}  epoch {self.epoch}  ')
    if self.kind == RESULTS_WRITE:
      return FINAL_EPOCH_LINE
    return None

  def bound(self) -> Optional['re.Pattern']:
    """The line by which the signal goes even if the delay has not passed: EPOCH_END's
    own epoch line, logged after its checkpoint ('epoch 1/2  ... saved ...')."""
    if self.kind == EPOCH_END:
      return re.compile(rf'(^|\s)epoch {self.epoch}/\d+  ')
    return None

  def describe(self) -> str:
    if self.kind == EPOCH_END:
      return (f'epoch end: {self.delay:.2f}s after epoch {self.epoch}\'s last step '
              f'{self.step} (window {self.window:.2f}s: eval and checkpoint)')
    if self.kind == RESULTS_WRITE:
      return (f'results write: {self.delay:.2f}s after the final epoch\'s line (window '
              f'{self.window:.2f}s: to results.json written)')
    return f'random: {self.delay:.2f}s after the first checkpoint'


def plan_kill_moments(runs: int, rng: random.Random, reference: dict,
                      results_window: float) -> list:
  """A KillMoment per trial, kinds in KIND_CYCLE order. EPOCH_END picks an epoch at
  random and draws over that epoch's end in the reference run (epoch_end_seconds: its
  eval pass, summaries and checkpoint); RESULTS_WRITE over `results_window` (the
  reference's seconds from its final epoch's line to its results.json); RANDOM over
  the reference's train_seconds, as fault_check always did."""
  history = reference['eval_history']
  moments = []
  for index in range(runs):
    kind = KIND_CYCLE[index % len(KIND_CYCLE)]
    if kind == EPOCH_END:
      entry = rng.choice(history)
      window = entry['epoch_end_seconds']
      moments.append(KillMoment(kind, rng.uniform(0, window), window, entry['epoch'],
                                entry['step']))
    elif kind == RESULTS_WRITE:
      moments.append(KillMoment(kind, rng.uniform(0, results_window), results_window))
    else:
      window = reference['train_seconds']
      moments.append(KillMoment(kind, rng.uniform(0, window), window))
  return moments


def results_window(reference: dict, final_line_time: Optional[float],
                   results_written_time: Optional[float]) -> float:
  """Seconds from the reference's final epoch line to its results.json write (wall
  clock, the file's mtime); the final eval pass's seconds if either is unknown."""
  if final_line_time is not None and results_written_time is not None:
    measured = results_written_time - final_line_time
    if measured > 0:
      return measured
  return reference['eval_history'][-1]['eval_seconds']


class _Watched:
  """A process whose stderr is read line by line as it comes, noting when the first
  line matching each of `patterns` ({name: pattern}) arrived: seen[name] is set then,
  at[name] holds its monotonic and wall-clock times."""

  def __init__(self, command: Sequence[str], patterns: dict):
    self.process = subprocess.Popen(command, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
    self.seen = {name: threading.Event() for name in patterns}
    self.at = {}
    self._patterns = patterns
    self._stdout, self._stderr = [], []
    self._readers = [threading.Thread(target=self._read, args=(stream, lines, watch),
                                      daemon=True)
                     for stream, lines, watch in ((self.process.stdout, self._stdout, False),
                                                  (self.process.stderr, self._stderr, True))]
    for reader in self._readers:
      reader.start()

  def _read(self, stream, lines: list, watch: bool):
    for line in stream:
      for name, pattern in self._patterns.items() if watch else ():
        if not self.seen[name].is_set() and pattern.search(line):
          self.at[name] = (time.monotonic(), time.time())
          self.seen[name].set()
      lines.append(line)

  def finish(self, deadline: Optional[float]) -> Outcome:
    timeout = None if deadline is None else max(deadline - time.monotonic(), 1)
    try:
      self.process.wait(timeout)
    finally:
      if self.process.poll() is None:
        self.process.kill()
        self.process.wait()
    for reader in self._readers:
      reader.join()
    return Outcome(self.process.returncode, ''.join(self._stdout), ''.join(self._stderr))


# How a trial's signal went: after its delay, at the bounding line, or not at all (the
# run ended first, or never logged the trigger).
AFTER_DELAY, AT_BOUND, NOT_SENT = 'after the delay', 'at the bounding line', 'not sent'


def run_and_signal_after_line(command: Sequence[str], trigger: 're.Pattern', sig: int,
                              delay: float, until: Optional['re.Pattern'] = None,
                              timeout: Optional[float] = None) -> tuple:
  """Starts a run, waits for a stderr line matching `trigger`, then `delay` seconds,
  then sends `sig`; sooner if a line matching `until` comes first, so a run faster
  than the one the delay was sized on is still signalled within the moment aimed at.
  Returns (Outcome, AFTER_DELAY, AT_BOUND or NOT_SENT); a run that ends first is
  returned as is."""
  deadline = None if timeout is None else time.monotonic() + timeout
  watched = _Watched(command, {'trigger': trigger, **({'until': until} if until else {})})
  how = NOT_SENT
  try:
    while not watched.seen['trigger'].wait(_POLL_SECONDS) and watched.process.poll() is None:
      if deadline is not None and time.monotonic() > deadline:
        raise TimeoutError(f'No line matching {trigger.pattern!r} after {timeout} s.')
    if watched.seen['trigger'].is_set():
      signal_at = watched.at['trigger'][0] + delay
      bound = watched.seen.get('until') or threading.Event()  # Never set without `until`.
      while watched.process.poll() is None and not bound.is_set():
        remaining = signal_at - time.monotonic()
        if remaining <= 0:
          break
        bound.wait(min(_POLL_SECONDS, remaining))
      if watched.process.poll() is None:
        watched.process.send_signal(sig)
        how = AT_BOUND if bound.is_set() else AFTER_DELAY
  finally:
    outcome = watched.finish(deadline)
  return outcome, how


def run_reference(command: Sequence[str], model_dir: str,
                  timeout: Optional[float] = None) -> tuple:
  """Runs the uninterrupted reference to completion; returns (Outcome, the wall-clock
  times of its final epoch's line and of its results.json write, None if unknown),
  which size the RESULTS_WRITE window."""
  deadline = None if timeout is None else time.monotonic() + timeout
  watched = _Watched(command, {'final epoch': FINAL_EPOCH_LINE})
  outcome = watched.finish(deadline)
  try:
    written = os.path.getmtime(os.path.join(model_dir, 'results.json'))
  except OSError:
    written = None
  return outcome, watched.at.get('final epoch', (None, None))[1], written


# Results that differ between any two runs however exact: timings, and what made and
# hosted the run (`provenance` lists each process; `hardware` is where it ran).
_UNCOMPARED = ('train_seconds', 'train_images_per_sec', 'provenance', 'hardware')
_UNCOMPARED_CONFIG = ('model_dir',)  # Each trial has its own.
_UNCOMPARED_EVAL = ('seconds', 'eval_seconds', 'epoch_end_seconds')
ABSENT = '<absent>'


@dataclasses.dataclass(frozen=True)
class ResultDifference:
  key: str  # 'test_loss', 'config.seed', 'eval_history[epoch=1].accuracy', ...
  reference: object  # ABSENT when only the resumed run has the key.
  resumed: object  # ABSENT when the resumed run lacks it.

  def describe(self) -> str:
    if self.resumed is ABSENT:
      return f'{self.key} (absent after resume)'
    if self.reference is ABSENT:
      return f'{self.key} (only after resume)'
    if isinstance(self.reference, (dict, list)) or isinstance(self.resumed, (dict, list)):
      return f'{self.key} (differs)'
    return f'{self.key} ({self.reference!r} -> {self.resumed!r})'


def compare_results(reference: dict, resumed: dict) -> list:
  """The ResultDifferences between two results.json of the same deterministic run,
  ignoring timings and provenance (_UNCOMPARED...). eval_history entries are matched
  by their epoch, so a missing epoch is one difference, not a shift of all later ones.
  Empty: the resumed run's record is the uninterrupted one's."""
  reference = {k: v for k, v in reference.items() if k not in _UNCOMPARED}
  resumed = {k: v for k, v in resumed.items() if k not in _UNCOMPARED}
  for results in (reference, resumed):
    if isinstance(results.get('config'), dict):
      results['config'] = {k: v for k, v in results['config'].items()
                           if k not in _UNCOMPARED_CONFIG}
    if isinstance(results.get('eval_history'), list):
      results['eval_history'] = _by_epoch(results['eval_history'])
  return _differences(reference, resumed, '')


def _by_epoch(history: list) -> dict:
  entries = {}
  for index, entry in enumerate(history):
    if isinstance(entry, dict):
      label = f'[epoch={entry["epoch"]}]' if 'epoch' in entry else f'[{index}]'
      entries[label] = {k: v for k, v in entry.items() if k not in _UNCOMPARED_EVAL}
    else:
      entries[f'[{index}]'] = entry
  return entries


def _differences(reference, resumed, key: str) -> list:
  if isinstance(reference, dict) and isinstance(resumed, dict):
    found = []
    for name in sorted(set(reference) | set(resumed), key=str):
      child = f'{key}{name}' if name.startswith('[') else (
          f'{key}.{name}' if key else name)
      found += _differences(reference.get(name, ABSENT), resumed.get(name, ABSENT), child)
    return found
  if _same(reference, resumed):
    return []
  return [ResultDifference(key, reference, resumed)]


def _same(a, b) -> bool:
  if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
    return True  # A diverged metric is NaN in both.
  return type(a) is type(b) and a == b


@dataclasses.dataclass
class Trial:
  moment: KillMoment
  killed_after_step: Optional[int]  # Latest checkpoint when killed; None: finished first.
  returncode: int
  resumed_sha256: Optional[str]
  weights_match: bool
  result_differences: list  # ResultDifferences from the reference's results.json.

  @property
  def delay(self) -> float:
    return self.moment.delay

  @property
  def interrupted(self) -> bool:
    """Ended by the signal (possibly before any checkpoint), not finished first."""
    return self.returncode != 0

  @property
  def results_match(self) -> bool:
    return not self.result_differences

  @property
  def matches(self) -> bool:
    return self.weights_match and self.results_match


def fault_check(workdir: str, flags: Sequence[str], runs: int, seed: int = 0,
                sig: int = signal.SIGKILL, log=print) -> tuple:
  """One uninterrupted reference run, then `runs` runs killed at the moments
  plan_kill_moments draws and rerun with the same command; each rerun's weights and
  results.json are compared with the reference's. Returns (reference sha256,
  [Trial, ...])."""
  reference_dir = os.path.join(workdir, 'reference')
  outcome, final_line_time, written = run_reference(train_command(reference_dir, flags),
                                                    reference_dir)
  if outcome.returncode != 0 or not outcome.results:
    raise RuntimeError(f'The reference run failed:\n{outcome.stderr[-2000:]}')
  reference = outcome.results
  expected = reference['weights_sha256']
  window = results_window(reference, final_line_time, written)
  log(f'reference: weights_sha256 {expected}  train_seconds '
      f'{reference["train_seconds"]:.1f}  final epoch line to results.json {window:.2f}s')
  rng = random.Random(seed)
  trials = []
  for index, moment in enumerate(plan_kill_moments(runs, rng, reference, window)):
    model_dir = os.path.join(workdir, f'trial{index}')
    command = train_command(model_dir, flags)
    trigger = moment.trigger()
    how = ''
    if trigger is None:
      killed = run_and_signal(command, model_dir, sig, moment.delay)
    else:
      killed, sent = run_and_signal_after_line(command, trigger, sig, moment.delay,
                                               until=moment.bound())
      how = f'  signal {sent}'
    killed_at = latest_checkpoint_step(model_dir) if killed.returncode != 0 else None
    resumed = run(command)
    results = resumed.results
    sha = results['weights_sha256'] if results else None
    differences = (compare_results(reference, results) if results else
                   [ResultDifference('results.json', reference, ABSENT)])
    trial = Trial(moment, killed_at, killed.returncode, sha, sha == expected, differences)
    log(f'trial {index}: {moment.describe()}{how}  exit {killed.returncode}  resumed from '
        f'step {killed_at}  '
        f'{"same weights" if trial.weights_match else "DIFFERENT weights: " + str(sha)}  '
        + ('same results' if trial.results_match else 'DIFFERENT results: ' +
           ', '.join(d.describe() for d in differences)))
    trials.append(trial)
  return expected, trials
