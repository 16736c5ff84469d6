"""Runs scripts/train.py processes, N at a time, each pinned to its own share of the
cores: the one mechanism for running training in processes (sweeps and speedrun).

A run whose model_dir holds a complete results.json (with the job's required_result)
is finished and skipped; any other is started with the same command, which resumes
from its checkpoints. SIGINT/SIGTERM stop every child cleanly (they checkpoint and exit
75) and raise PreemptedError.
"""
import dataclasses
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from typing import Callable, Optional, Sequence

from absl import logging

from mnist import errors
from mnist import gpu
from mnist import launch

RESULTS_FILE = 'results.json'
_POLL_SECONDS = 0.1


@dataclasses.dataclass(frozen=True)
class Job:
  name: str
  model_dir: str
  train_flags: tuple  # Without --model_dir, which the runner adds.
  log_path: str
  # The results.json value the caller needs (a sweep's metric). A results.json without
  # it is an incomplete record (a run interrupted between its last checkpoint and its
  # results): the run is not finished, so it is started again, resumes from its
  # checkpoints and completes the record. None: any results.json finishes the run.
  required_result: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class Outcome:
  job: Job
  returncode: int  # 0 for a run finished earlier and skipped.
  results: Optional[dict]  # Its results.json; None unless it finished.
  process_seconds: Optional[float]  # None when skipped.
  stopped: bool = False  # Ended by the sweep's own SIGTERM (SIGINT/SIGTERM to the sweep).

  @property
  def skipped(self) -> bool:
    return self.process_seconds is None

  @property
  def finished(self) -> bool:
    return is_complete(self.job, self.results)

  @property
  def incomplete(self) -> bool:
    """Wrote a results.json that lacks the job's required_result."""
    return self.results is not None and not self.finished


def is_complete(job: Job, results: Optional[dict]) -> bool:
  """Whether `results` (a results.json, or None) finish `job`."""
  if results is None:
    return False
  return job.required_result is None or results.get(job.required_result) is not None


def read_results(model_dir: str) -> Optional[dict]:
  try:
    with open(os.path.join(model_dir, RESULTS_FILE)) as f:
      return json.load(f)
  except (FileNotFoundError, json.JSONDecodeError):
    return None


def cpu_slots(parallel: int, cpus: Optional[Sequence[int]] = None) -> list:
  """Disjoint CPU sets, one per concurrent run; None (no pinning) for one run at a time
  or when there are fewer cores than runs."""
  cpus = sorted(os.sched_getaffinity(0) if cpus is None else cpus)
  if parallel <= 1 or parallel > len(cpus):
    return [None] * max(parallel, 1)
  share, extra = divmod(len(cpus), parallel)
  slots, start = [], 0
  for index in range(parallel):
    size = share + (1 if index < extra else 0)
    slots.append(tuple(cpus[start:start + size]))
    start += size
  return slots


def thread_flags(cpus: Optional[Sequence[int]]) -> list:
  """Thread pools sized to a run's cores (TensorFlow's own choice when unpinned)."""
  if not cpus:
    return []
  return [f'--intra_op_threads={len(cpus)}', f'--inter_op_threads={len(cpus)}']


def command(job: Job, cpus: Optional[Sequence[int]] = None,
            script: str = launch.TRAIN_SCRIPT) -> list:
  """A run's command line, for every launcher: pinned to `cpus` here, unpinned (None)
  under Slurm, which allocates the CPUs itself."""
  # Thread flags first, so a user's own --intra_op_threads in the job's flags wins.
  return [sys.executable, script, *thread_flags(cpus), *job.train_flags,
          f'--model_dir={job.model_dir}']


def run_jobs(jobs: Sequence[Job], parallel: int = 1,
             on_done: Callable[[Outcome], None] = lambda outcome: None,
             cpus: Optional[Sequence[int]] = None, script: str = launch.TRAIN_SCRIPT,
             node_gpus: Optional[int] = None) -> list:
  """Runs every unfinished job, `parallel` at a time; returns an Outcome per job, in
  order. A failed job does not stop the others. SIGINT/SIGTERM: PreemptedError.
  Tests pass another `script` that takes scripts/train.py's flags, and `node_gpus`
  (default: `gpu.node_gpu_count()`, asked only when runs go in parallel)."""
  outcomes = finished_earlier(jobs, on_done)
  pending = [job for job in jobs if job not in outcomes]
  # Each slot: its cores and, the GPU analogue, its CUDA_VISIBLE_DEVICES (gpu.gpu_slots).
  cpu_sets = cpu_slots(parallel, cpus)
  if node_gpus is None:
    node_gpus = gpu.node_gpu_count() if parallel > 1 else 0
  gpu_sets = gpu.gpu_slots(len(cpu_sets), node_gpus)
  if gpu_sets.notice:
    logging.warning('%s', gpu_sets.notice)
  free = [(cpu_set, gpu_sets.env_changes(index)) for index, cpu_set in enumerate(cpu_sets)]
  running = {}  # Popen -> (job, slot, start time)
  stop = StopRequest()
  try:
    with stop:
      while (pending and not stop.requested) or running:
        while pending and free and not stop.requested:
          job, slot = pending.pop(0), free.pop(0)
          cpu_set, gpu_env = slot
          running[start(command(job, cpu_set, script), job.log_path, cpu_set, gpu_env)] = (
              job, slot, time.monotonic())
        if stop.requested:
          stop.forward([p for p in running if p.poll() is None])
        for process in [p for p in running if p.poll() is not None]:
          job, slot, started_at = running.pop(process)
          free.append(slot)
          outcomes[job] = Outcome(job, process.returncode, read_results(job.model_dir),
                                  time.monotonic() - started_at, stop.signalled(process))
          on_done(outcomes[job])
        time.sleep(_POLL_SECONDS)
  finally:  # An error in on_done (or the runner) leaves no training behind.
    for process in running:
      if process.poll() is None:
        process.kill()
        process.wait()
  if stop.requested:
    raise preempted_error(stop.requested, jobs, outcomes)
  return [outcomes[job] for job in jobs]


def finished_earlier(jobs: Sequence[Job], on_done: Callable[[Outcome], None]) -> dict:
  """{job: its skipped Outcome} for the jobs whose model_dir holds a complete
  results.json; the others are (re)started."""
  outcomes = {}
  for job in jobs:
    results = read_results(job.model_dir)
    if is_complete(job, results):
      outcomes[job] = Outcome(job, 0, results, None)
      on_done(outcomes[job])
  return outcomes


def preempted_error(signal_name: str, jobs: Sequence[Job],
                    outcomes: dict) -> errors.PreemptedError:
  unfinished = [job.name for job in jobs
                if job not in outcomes or not outcomes[job].finished]
  return errors.PreemptedError(
      f'Received {signal_name}: stopped {len(unfinished)} unfinished run(s) '
      f'({", ".join(unfinished)}); their checkpoints are kept. Rerun the same command '
      'to resume them; finished runs are not repeated.')


def start(argv: Sequence[str], log_path: str, cpus: Optional[Sequence[int]] = None,
          env_changes: Optional[dict] = None) -> subprocess.Popen:
  """Starts a run in its own session, with `env_changes` (its GPUs) in its environment,
  its output appended to log_path after its command line."""
  os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
  env_changes = env_changes or {}
  with open(log_path, 'a') as log:  # A resumed run's log continues the first's.
    assignments = ''.join(f'{name}={shlex.quote(value)} ' for name, value in env_changes.items())
    log.write(f'$ {assignments}{shlex.join(argv)}\n')
    log.flush()

    def set_up_child():
      launch.die_with_parent()
      if cpus:
        os.sched_setaffinity(0, cpus)

    # Its own session: a terminal's Ctrl-C reaches the sweep only, which then stops
    # each child once, with SIGTERM.
    return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, preexec_fn=set_up_child,
                            start_new_session=True,
                            env={**os.environ, **env_changes} if env_changes else None)


class StopRequest:
  """SIGINT/SIGTERM to the sweep: start no more runs, SIGTERM the running ones once."""

  def __init__(self):
    self.requested = None
    self._previous = {}
    self._signalled = set()

  def __enter__(self):
    for sig in (signal.SIGINT, signal.SIGTERM):
      self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *unused):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)

  def _handle(self, signum, frame):
    del frame
    self.requested = signal.Signals(signum).name

  def signalled(self, process) -> bool:
    return process.pid in self._signalled

  def forward(self, processes):
    for process in processes:
      if process.pid not in self._signalled:
        process.send_signal(signal.SIGTERM)  # Training checkpoints and exits 75.
        self._signalled.add(process.pid)
