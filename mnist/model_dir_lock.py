"""One writer per model_dir: training holds MODEL_DIR/train.lock for the whole run.

Two runs training into one model_dir (a second launch by mistake, a sweep rerun
while the first still runs, a requeued Slurm job whose old allocation lives on)
would overwrite each other's checkpoints and results.json. The second is refused
before it writes anything, with a paragraph naming the holder.

The lock is a POSIX record lock (fcntl F_SETLK, through `fcntl.lockf`), not
flock() or a lock file's mere existence, because
- the shared filesystems of clusters honour it across hosts: NFS (v3 through the
  NLM lock manager, v4 natively), Lustre mounted with `flock`, GPFS (IBM Storage
  Scale), BeeGFS with `tuneUseGlobalFileLocks`, CephFS;
- it dies with its process: the kernel drops it on any exit, kill -9 included,
  and an NFS server when the dead client's lease expires; a lock file whose
  existence is the lock would outlive a crash and block every rerun.
Two POSIX-lock rules shape the code: closing ANY descriptor of the file drops the
process's lock, so the holder never opens the file a second time; and a process
never conflicts with itself, so this process's own holds are tracked here (a
second concurrent hold in one process is refused too, before it opens the file).
Linux's open-file-description locks (F_OFD_SETLK) avoid both rules but are
Linux-only; the classic lock is what every client and server above implements.

TensorFlow-free.
"""
import contextlib
import datetime
import errno
import fcntl
import json
import os
import socket
import threading
import time
from typing import Iterator, Optional

from absl import logging

from mnist import errors

LOCK_FILE = 'train.lock'
# A holder writes its identity right after locking; a refused run that reads the
# file in that instant finds it empty and looks again, for at most this long.
_IDENTITY_WAIT_SECONDS = 1.0
# A probe (`refuse_if_held`) holds a shared lock for the instant between its open and
# close, and the workers of one multi-worker run all probe as they start: a conflict
# is retried this long before it counts as a holder (a real one holds it for the run).
# Without it, one worker's probe refused another's (make test on the AMX Xeon, once).
_CONFLICT_RETRY_SECONDS = 0.2
# Errors that mean "this filesystem cannot lock" rather than "someone holds it":
# no lock manager (NFS mounted without lockd), Lustre mounted with noflock, FUSE.
_UNSUPPORTED = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)

_held = {}  # (st_dev, st_ino) of each lock file this process holds -> its identity.
_held_guard = threading.Lock()


def lock_path(model_dir: str) -> str:
  return os.path.join(model_dir, LOCK_FILE)


def _identity() -> dict:
  identity = {'host': socket.gethostname(), 'pid': os.getpid(),
              'started_utc': datetime.datetime.now(datetime.timezone.utc).strftime(
                  '%Y-%m-%d %H:%M:%S')}
  if os.environ.get('SLURM_JOB_ID'):
    identity['slurm_job_id'] = os.environ['SLURM_JOB_ID']
  return identity


def describe_holder(model_dir: str, holder: Optional[dict]) -> str:
  """The refusal's paragraph: who holds model_dir's lock and what to do."""
  if holder:
    slurm = (f', Slurm job {holder["slurm_job_id"]}' if holder.get('slurm_job_id')
             else '')
    who = (f'process {holder.get("pid")} on host {holder.get("host")}{slurm}, which has '
           f'held it since {holder.get("started_utc")} UTC')
  else:
    who = 'a process that has not written its name into the lock file'
  return (f'--model_dir={model_dir} is in use by another training run: {lock_path(model_dir)} '
          f'is locked by {who}. Two runs in one model_dir would overwrite each other\'s '
          'checkpoints and results.json, so this run stopped before writing anything. '
          'Wait for that run to end, or stop it and rerun this command to resume from its '
          'last checkpoint, or choose another --model_dir.')


def _read_identity(fd: int) -> Optional[dict]:
  """The holder's identity from the lock file, read through `fd`; None if unreadable."""
  deadline = time.monotonic() + _IDENTITY_WAIT_SECONDS
  while True:
    text = os.pread(fd, 4096, 0).decode('utf-8', 'replace')
    try:
      # raw_decode: a longer old identity may still trail the new one for an instant.
      identity, _ = json.JSONDecoder().raw_decode(text)
      if isinstance(identity, dict):
        return identity
    except json.JSONDecodeError:
      pass
    if time.monotonic() > deadline:
      return None
    time.sleep(0.05)


def _write_identity(fd: int, identity: dict):
  """Overwrites the file in place: written first, then cut to length, so a reader
  never sees it empty once a holder has written."""
  content = (json.dumps(identity) + '\n').encode()
  os.pwrite(fd, content, 0)
  os.ftruncate(fd, len(content))
  os.fsync(fd)  # Other NFS clients see the new holder on their next open.


def _held_by_this_process(path: str) -> Optional[dict]:
  try:
    stat = os.stat(path)  # stat, not open: closing a descriptor would drop our lock.
  except FileNotFoundError:
    return None
  return _held.get((stat.st_dev, stat.st_ino))


def refuse_if_held(model_dir: str):
  """Raises ModelDirInUseError if another process holds model_dir's lock; creates and
  writes nothing. A script's early check, before TensorFlow loads (27 s of a refusal
  on the 2-core EPYC otherwise); `hold` still decides. Every worker of a multi-worker
  run may call it: its own chief locks only once all workers have joined the cluster."""
  if _held_by_this_process(lock_path(model_dir)):
    return  # Ours: probing would close a descriptor of the file and drop the lock.
  try:
    fd = os.open(lock_path(model_dir), os.O_RDWR | os.O_CLOEXEC)
  except OSError:
    return  # No lock file (a new run) or none readable: `hold` reports what it finds.
  try:
    _lock_or_refuse(fd, model_dir, shared=True)  # Probes never conflict with each other.
  finally:
    os.close(fd)  # Releases the probe's lock, if it got one.


@contextlib.contextmanager
def hold(model_dir: str) -> Iterator[None]:
  """Holds model_dir's lock for the with-block; model_dir must exist.

  Raises errors.ModelDirInUseError naming the holder if another process (or this
  one, in another thread) holds it: nothing in model_dir changes then, as the
  holder created the file. On a filesystem that cannot lock, logs a warning and
  runs unlocked.
  """
  path = lock_path(model_dir)
  with _held_guard:
    holder = _held_by_this_process(path)
    if holder:
      raise errors.ModelDirInUseError(describe_holder(model_dir, holder))
    try:
      # No O_TRUNC: the holder's identity must survive a refused run's open.
      fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as e:
      raise errors.CheckpointError(
          f'Cannot open the lock file {path} of --model_dir={model_dir}: {e.strerror}.'
      ) from None
    try:
      key = _lock(fd, path, model_dir)
    except BaseException:
      os.close(fd)
      raise
  try:
    yield
  finally:
    with _held_guard:
      _held.pop(key, None)
      os.close(fd)  # Releases the lock. The file stays: deleting it would race a waiter.


def _lock_or_refuse(fd: int, model_dir: str, shared: bool = False) -> Optional[OSError]:
  """Locks `fd` (exclusively, or shared for a probe) without waiting on a holder: None
  once locked; ModelDirInUseError naming the holder if another process still holds it
  after _CONFLICT_RETRY_SECONDS; any other failure returned."""
  deadline = time.monotonic() + _CONFLICT_RETRY_SECONDS
  while True:
    try:
      fcntl.lockf(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
      return None
    except OSError as e:
      if e.errno not in (errno.EACCES, errno.EAGAIN):
        return e
    if time.monotonic() > deadline:
      raise errors.ModelDirInUseError(
          describe_holder(model_dir, _read_identity(fd))) from None
    time.sleep(0.01)


def _lock(fd: int, path: str, model_dir: str) -> Optional[tuple]:
  """Takes the lock on `fd` and writes this process's identity; the registry key."""
  failure = _lock_or_refuse(fd, model_dir)
  if failure is not None:
    if failure.errno in _UNSUPPORTED:
      logging.warning('The filesystem of %s cannot lock files (%s): nothing stops a second '
                      'run from training into this model_dir at the same time.',
                      path, failure.strerror)
      return None
    raise failure
  identity = _identity()
  _write_identity(fd, identity)
  stat = os.fstat(fd)
  key = (stat.st_dev, stat.st_ino)
  _held[key] = identity
  return key
