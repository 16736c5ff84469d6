"""Runs N processes of scripts/train.py on this machine as one multi-worker cluster.

Each worker gets a free port on the host, its own TF_CONFIG, its own GPUs where the
node has at least one per worker (`gpu.gpu_slots`: CUDA_VISIBLE_DEVICES) and the same
training flags; their output is streamed with a `[worker i]` prefix. If a worker fails, the
others get `stop_grace_seconds` to stop on their own (they notice the lost peer
in a collective, or when its heartbeats stop), then SIGTERM, then SIGKILL
`_KILL_AFTER_SECONDS` later: the launcher returns within stop_grace_seconds + 5 s
of the failure.

TensorFlow-free: it only starts, watches and signals processes.
"""
import ctypes
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Optional, Sequence, TextIO

from mnist import cluster
from mnist import errors
from mnist import gpu

TRAIN_SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            'scripts', 'train.py')
_POLL_SECONDS = 0.1
# SIGTERM -> SIGKILL. A worker blocked in a collective on a lost peer cannot act on
# SIGTERM (Python runs handlers between bytecodes), so this stays short.
_KILL_AFTER_SECONDS = 5.0
_PR_SET_PDEATHSIG = 1


@dataclasses.dataclass
class Worker:
  index: int
  address: str
  process: subprocess.Popen

  @property
  def name(self) -> str:
    return f'worker {self.index} (pid {self.process.pid}, {self.address})'


def free_ports(count: int, host: str = '127.0.0.1') -> list:
  """Ports the OS calls free, all held open together so they differ.

  They are released before the workers bind them; another program could take one
  in between, and that worker would then fail to start (and be reported).
  """
  sockets = []
  try:
    for _ in range(count):
      sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
      sock.bind((host, 0))
      sockets.append(sock)
    return [sock.getsockname()[1] for sock in sockets]
  finally:
    for sock in sockets:
      sock.close()


# NCCL refuses two ranks on one GPU ("Duplicate GPU detected"), which auto would pick
# for workers that share GPUs; ring all-reduce works there.
SHARED_GPU_FLAGS = ('--collective_communication=ring',)


def worker_flags(train_flags: Sequence[str], gpus_shared: bool = False) -> list:
  """The training flags with --strategy=multi_worker (added if absent) and, when workers
  share GPUs, SHARED_GPU_FLAGS first, so a choice of the user's (later) wins."""
  flags = [*(SHARED_GPU_FLAGS if gpus_shared else ()), *train_flags]
  for i, flag in enumerate(flags):
    if flag == '--strategy' and i + 1 < len(flags):
      value = flags[i + 1]
    elif flag.startswith('--strategy='):
      value = flag.split('=', 1)[1]
    else:
      continue
    if value != 'multi_worker':
      raise errors.ConfigError(f'The launcher runs --strategy=multi_worker; drop '
                               f'--strategy={value} from the training flags.')
    return flags
  return flags + ['--strategy=multi_worker']


def describe_exit(returncode: int) -> str:
  if returncode < 0:
    return f'was killed by {signal.Signals(-returncode).name}'
  return f'exited with code {returncode}'


def launch(num_workers: int, train_flags: Sequence[str], host: str = '127.0.0.1',
           stop_grace_seconds: float = 10.0, script: str = TRAIN_SCRIPT,
           out: TextIO = sys.stdout, err: TextIO = sys.stderr,
           node_gpus: Optional[int] = None) -> int:
  """Runs the workers to the end. Returns 0 if all succeed, else the first failed
  worker's exit code (128 + N if signal N killed it). `node_gpus`: this node's GPU
  count (default: `gpu.node_gpu_count()`)."""
  if num_workers < 1:
    raise errors.ConfigError(f'--num_workers must be >= 1, got {num_workers}.')
  gpu_slots = gpu.gpu_slots(num_workers,
                            gpu.node_gpu_count() if node_gpus is None else node_gpus)
  flags = worker_flags(train_flags, gpu_slots.shared)
  addresses = [f'{host}:{port}' for port in free_ports(num_workers, host)]
  lock = threading.Lock()

  def log(line):
    with lock:
      print(f'[launch] {line}', file=err, flush=True)

  if gpu_slots.notice:
    log(gpu_slots.notice)
  workers = []
  for index, address in enumerate(addresses):
    env = {**os.environ, cluster.TF_CONFIG_ENV: cluster.tf_config(addresses, index),
           'PYTHONUNBUFFERED': '1', **gpu_slots.env_changes(index)}
    process = subprocess.Popen([sys.executable, script, *flags], env=env, text=True,
                               errors='replace', stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, preexec_fn=die_with_parent)
    workers.append(Worker(index, address, process))
    gpus = gpu_slots.visible_devices[index]
    log(f'started {workers[-1].name}' + (f' on GPU(s) {gpus}' if gpus else ''))
  readers = [threading.Thread(target=_stream, args=(pipe, target, f'[worker {w.index}] ', lock),
                              daemon=True)
             for w in workers
             for pipe, target in ((w.process.stdout, out), (w.process.stderr, err))]
  for reader in readers:
    reader.start()

  # A stop request goes to every worker: they agree on a step, checkpoint and exit 75.
  requested = []

  def forward(signum, frame):
    del frame
    requested.append(signal.Signals(signum).name)
    _signal_all(workers, signal.SIGTERM)

  previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
  try:
    failed = _wait_for_first_failure(workers)
    if failed and not requested:
      log(f'{failed.name} {describe_exit(failed.process.returncode)}; stopping the other '
          'workers.')
    if failed:
      _stop(workers, stop_grace_seconds, log)
  finally:
    for sig, handler in previous.items():
      signal.signal(sig, handler)
    for worker in workers:
      if worker.process.poll() is None:
        worker.process.kill()
      worker.process.wait()
    for reader in readers:
      reader.join(timeout=5)
  if not failed:
    log(f'all {num_workers} workers finished.')
    return 0
  code = failed.process.returncode
  resume = code < 0 or code == errors.WorkerLostError.exit_code
  if requested:
    log(f'stopped on {requested[0]}: {failed.name} {describe_exit(code)}.')
  else:
    log(f'FAILED: {failed.name} {describe_exit(code)}.'
        + (' Rerun the same command to resume from the last checkpoint.' if resume else ''))
  return code if code > 0 else 128 - code


def _wait_for_first_failure(workers) -> Optional[Worker]:
  """Waits until all workers exit 0 (returns None) or one fails (returns it).

  Several may have failed by the time the first poll sees them; a worker that
  died is named before those that then reported the loss (exit 75).
  """
  while True:
    codes = [worker.process.poll() for worker in workers]
    failed = [w for w, code in zip(workers, codes) if code not in (None, 0)]
    if failed:
      return min(failed, key=lambda w: (
          w.process.returncode == errors.WorkerLostError.exit_code, w.index))
    if all(code == 0 for code in codes):
      return None
    time.sleep(_POLL_SECONDS)


def _stop(workers, grace_seconds: float, log):
  """Lets the others stop on their own, then SIGTERM, then SIGKILL."""
  for sig, wait in ((None, grace_seconds), (signal.SIGTERM, _KILL_AFTER_SECONDS),
                    (signal.SIGKILL, _KILL_AFTER_SECONDS)):
    running = [w for w in workers if w.process.poll() is None]
    if not running:
      return
    if sig is not None:
      log(f'sending {sig.name} to {", ".join(f"worker {w.index}" for w in running)}')
      _signal_all(running, sig)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline and any(w.process.poll() is None for w in running):
      time.sleep(_POLL_SECONDS)


def _signal_all(workers, sig):
  for worker in workers:
    if worker.process.poll() is None:
      worker.process.send_signal(sig)


def _stream(pipe, target: TextIO, prefix: str, lock: threading.Lock):
  for line in pipe:
    with lock:
      target.write(prefix + line if line.endswith('\n') else prefix + line + '\n')
      target.flush()
  pipe.close()


def die_with_parent():
  """Linux: a worker gets SIGKILL if the launcher dies, instead of training on alone."""
  try:
    ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
  except (OSError, AttributeError):
    pass
