"""Runs a sweep's unfinished runs as one Slurm job array (scripts/sweep.py
--launcher=slurm), with the local runner's contract: an Outcome per run, finished
runs skipped, SIGINT/SIGTERM -> PreemptedError.

Submission N writes, under WORK_DIR (SWEEP_DIR/slurm):
  array-N.json  the index -> run table: array task i runs row i's command, the one
                runner.command builds for the local launcher, unpinned (Slurm
                allocates the CPUs), its output appended to the run's own log;
  array-N.sh    the batch script every task runs (`python -m mnist.sweep.slurm`);
  array-N/      each task's exit record (i.json: exit code, seconds) and Slurm's own
                output for it (i.out).
The sweep polls squeue (no accounting database needed) until every task has left the
queue, reading the exit records as they appear. SIGINT/SIGTERM: scancel the array
(Slurm sends running tasks SIGTERM: they checkpoint and exit 75), wait for them, raise
PreemptedError.

TensorFlow-free.
"""
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from typing import Callable, Optional, Sequence

from mnist import errors
from mnist import launch
from mnist.sweep import runner

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_POLL_SECONDS = 2.0
# sbatch options the launcher sets itself; --slurm_flags may not override them.
_OWNED_OPTIONS = ('--array', '-a', '--wrap', '--output', '-o', '--error', '-e', '--parsable')
# Ended without an exit record (killed before writing one): the exit code to report.
_ENDED_BY_SLURM = {'PREEMPTED': errors.PreemptedError.exit_code,
                   'TIMEOUT': errors.PreemptedError.exit_code,
                   'CANCELLED': errors.PreemptedError.exit_code,
                   'COMPLETED': 0}
_CLIENT_TIMEOUT_SECONDS = 60


def array_spec(count: int, parallel: int) -> str:
  """sbatch --array for `count` tasks, at most `parallel` at once: '0-3%2'."""
  return f'0-{count - 1}%{parallel}'


def check_sbatch_flags(text: str) -> list:
  """--slurm_flags split as a shell would; ConfigError for options the launcher owns."""
  try:
    options = shlex.split(text)
  except ValueError as e:
    raise errors.ConfigError(f'--slurm_flags={text!r} cannot be split: {e}.') from None
  owned = [o for o in options if o.split('=', 1)[0] in _OWNED_OPTIONS]
  if owned:
    raise errors.ConfigError(
        f'--slurm_flags may not set {", ".join(owned)}: the sweep builds the job array '
        'and writes each run\'s output to its own log. Pass partition, time, CPUs, GPUs '
        "and the like, e.g. --slurm_flags='--partition=gpu --time=2:00:00 --gres=gpu:1'.")
  return options


def task_table(jobs: Sequence[runner.Job], script: str = launch.TRAIN_SCRIPT) -> dict:
  """The index -> run table the array's tasks read: their command, log and model_dir."""
  return {'runs': [{'name': job.name, 'model_dir': job.model_dir, 'log': job.log_path,
                    'argv': runner.command(job, None, script)} for job in jobs]}


def sbatch_command(task_script: str, count: int, parallel: int, job_name: str,
                   output: str, sbatch_flags: Sequence[str] = ()) -> list:
  return ['sbatch', '--parsable', f'--array={array_spec(count, parallel)}',
          f'--job-name={job_name}', f'--output={output}', '--open-mode=append',
          f'--chdir={os.getcwd()}', *sbatch_flags, task_script]


def returncode(record: Optional[dict], state: Optional[str], exit_code: Optional[str]) -> int:
  """A task's exit code as the local runner reports it (negative: killed by a signal):
  from its exit record, else from Slurm's JobState and ExitCode ('code:signal')."""
  if record is not None:
    return int(record['returncode'])
  code, _, sig = (exit_code or '0:0').partition(':')
  if int(sig or 0):
    return -int(sig)
  if int(code or 0):
    return int(code)
  return _ENDED_BY_SLURM.get(state, 1)  # FAILED, NODE_FAIL, OUT_OF_MEMORY...: 1.


class _Array:
  """Submission N's files under work_dir, and its job once submitted."""

  def __init__(self, work_dir: str):
    os.makedirs(work_dir, exist_ok=True)
    number = 1
    while os.path.exists(os.path.join(work_dir, f'array-{number}.json')):
      number += 1
    self.base = os.path.join(os.path.abspath(work_dir), f'array-{number}')
    os.makedirs(self.base)
    self.job_id = None

  def record_path(self, index: int) -> str:
    return os.path.join(self.base, f'{index}.json')

  def read_record(self, index: int) -> Optional[dict]:
    try:
      with open(self.record_path(index)) as f:
        return json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
      return None

  def submit(self, jobs, parallel: int, sbatch_flags: Sequence[str], script: str,
             job_name: str) -> str:
    _write(self.base + '.json', json.dumps(task_table(jobs, script), indent=2))
    pythonpath = os.pathsep.join(filter(None, [_REPO, os.environ.get('PYTHONPATH')]))
    _write(self.base + '.sh', '#!/bin/sh\n# scripts/sweep.py --launcher=slurm: array task '
           'i runs row i of the table.\n'
           f'PYTHONPATH={shlex.quote(pythonpath)} exec {shlex.quote(sys.executable)} '
           f'-m mnist.sweep.slurm {shlex.quote(self.base + ".json")}\n')
    argv = sbatch_command(self.base + '.sh', len(jobs), parallel, job_name,
                          os.path.join(self.base, '%a.out'), sbatch_flags)
    result = _client(argv)
    self.job_id = result.stdout.strip().split(';')[0]
    return self.job_id

  def queued(self) -> Optional[dict]:
    """{array index: state} of the tasks still in squeue; None if squeue failed (a
    busy controller), so no task is taken for ended."""
    result = _client(['squeue', '-h', '-r', '-j', self.job_id, '-o', '%K %T'], check=False)
    if result.returncode != 0:
      return None
    queued = {}
    for line in result.stdout.splitlines():
      index, _, state = line.strip().partition(' ')
      if index.isdigit():
        queued[int(index)] = state
    return queued

  def slurm_end(self, index: int) -> tuple:
    """(JobState, ExitCode) from `scontrol show job`; Nones once Slurm forgot it."""
    result = _client(['scontrol', '-o', 'show', 'job', f'{self.job_id}_{index}'], check=False)
    fields = dict(word.split('=', 1) for word in result.stdout.split() if '=' in word)
    return fields.get('JobState'), fields.get('ExitCode')

  def cancel(self):
    _client(['scancel', self.job_id], check=False)


def run_jobs(jobs: Sequence[runner.Job], parallel: int = 1,
             on_done: Callable[[runner.Outcome], None] = lambda outcome: None,
             work_dir: str = 'slurm', sbatch_flags: str = '',
             script: str = launch.TRAIN_SCRIPT,
             poll_seconds: float = _POLL_SECONDS) -> list:
  """runner.run_jobs on Slurm: the unfinished jobs as one array, `parallel` at once."""
  options = check_sbatch_flags(sbatch_flags)
  outcomes = runner.finished_earlier(jobs, on_done)
  pending = [job for job in jobs if job not in outcomes]
  if not pending:
    return [outcomes[job] for job in jobs]
  array = _Array(work_dir)
  # The sweep's folder names the job in squeue.
  job_name = 'sweep-' + os.path.basename(os.path.dirname(os.path.abspath(work_dir)))
  stop = runner.StopRequest()
  with stop:
    array.submit(pending, parallel, options, script, job_name)
    waiting, started, cancelled = set(range(len(pending))), set(), False
    while waiting:
      if stop.requested and not cancelled:
        array.cancel()  # Running tasks get SIGTERM, checkpoint and exit 75.
        cancelled = True
      queued = array.queued()
      if queued is not None:
        started.update(i for i, state in queued.items() if state != 'PENDING')
      for index in sorted(waiting):
        record = array.read_record(index)
        if record is None and (queued is None or index in queued):
          continue  # Pending or running.
        if record is None:  # Written just before the task left the queue?
          record = array.read_record(index)
        waiting.discard(index)
        if record is None and cancelled and index not in started:
          continue  # Cancelled before it started: no outcome, as in the local runner.
        state, exit_code = array.slurm_end(index) if record is None else (None, None)
        job = pending[index]
        outcomes[job] = runner.Outcome(
            job, returncode(record, state, exit_code), runner.read_results(job.model_dir),
            record['seconds'] if record else 0.0, cancelled and index in started)
        on_done(outcomes[job])
      if waiting:
        time.sleep(poll_seconds)
  if stop.requested:
    raise runner.preempted_error(stop.requested, jobs, outcomes)
  return [outcomes[job] for job in jobs]


def run_task(table_path: str, index: int) -> int:
  """One array task: runs row `index`'s command, forwards SIGTERM/SIGINT to it, and
  records its exit code and duration for the sweep."""
  with open(table_path) as f:
    row = json.load(f)['runs'][index]
  start = time.monotonic()
  process = runner.start(row['argv'], row['log'])

  forwarded = []

  def forward(signum, frame):
    del signum, frame
    if not forwarded:  # Slurm signals every process of the task; one stop is enough.
      process.send_signal(signal.SIGTERM)  # Training checkpoints and exits 75.
      forwarded.append(True)

  for sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, forward)
  code = process.wait()
  base = os.path.splitext(table_path)[0]
  _write(os.path.join(base, f'{index}.json'),
         json.dumps({'returncode': code, 'seconds': time.monotonic() - start}))
  return code if code >= 0 else 128 - code


def _write(path: str, text: str):
  """Whole or not at all: the sweep may read it at any moment."""
  tmp = f'{path}.{os.getpid()}.tmp'
  with open(tmp, 'w') as f:
    f.write(text)
  os.chmod(tmp, 0o755 if path.endswith('.sh') else 0o644)
  os.replace(tmp, path)


def _client(argv: Sequence[str], check: bool = True) -> subprocess.CompletedProcess:
  """Runs a Slurm client; a missing one or a refusal is the user's to fix."""
  try:
    result = subprocess.run(argv, capture_output=True, text=True,
                            timeout=_CLIENT_TIMEOUT_SECONDS)
  except FileNotFoundError:
    raise errors.ConfigError(f'--launcher=slurm needs Slurm\'s {argv[0]}, which is not on '
                             'PATH: run the sweep on a Slurm login node.') from None
  if check and result.returncode != 0:
    raise errors.ConfigError(f'{shlex.join(argv)} failed (exit {result.returncode}): '
                             f'{result.stderr.strip()[:2000]}')
  return result


if __name__ == '__main__':
  sys.exit(run_task(sys.argv[1], int(os.environ['SLURM_ARRAY_TASK_ID'])))
