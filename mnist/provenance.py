"""What made a result: the code (git commit and uncommitted changes), the packages, oneDNN,
the command, the host, the times, the data and the Slurm job. TensorFlow-free.

`record` is written into config.json (at start), results.json (with the end time and
the list of segments: which code trained which steps of a resumed run), the benchmark's
JSON, the run's TensorBoard Text and HParams dashboards and sweep.json. `code_state` asks
git about the checkout the `mnist` package lives in, in a few ms; without one (an
installed package, no git, git too slow) it names the package version and says why.
"""
import dataclasses
import datetime
import hashlib
import os
import platform
import shlex
import socket
import subprocess
import sys
from importlib import metadata
from typing import Callable, Mapping, Optional, Sequence

from mnist import hardware

# The distributions whose versions a result depends on (importlib.metadata names).
PACKAGES = ('tensorflow', 'keras', 'tensorflow-datasets', 'numpy')
SLURM_VARIABLES = ('SLURM_JOB_ID', 'SLURM_ARRAY_JOB_ID', 'SLURM_ARRAY_TASK_ID',
                   'SLURM_RESTART_COUNT')
PACKAGE_NAME = 'mnist'
# The HParams column of a run's code version (a run's own and a sweep's experiment).
CODE_VERSION_HPARAM = 'code_version'
# The checkout holding the package: the folder above mnist/.
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIT_TIMEOUT_SECONDS = 5.0  # Each call takes a few ms; a hung one must not stop a run.
_SHORT = 8  # Hex digits of the commit and of the diff hash in the version string.
# Set by a caller's git (hooks, worktrees); they would point git at another repository.
_GIT_ENV = ('GIT_DIR', 'GIT_WORK_TREE', 'GIT_INDEX_FILE', 'GIT_OBJECT_DIRECTORY')


@dataclasses.dataclass(frozen=True)
class Code:
  """The code that ran. From git: commit, dirty (tracked changes or untracked files not
  ignored) and diff_sha256 (of `git diff HEAD` and the untracked files' names and
  contents; None when clean). Otherwise commit is None and package_version is the
  installed mnist's; `source` says which and why."""
  source: str
  commit: Optional[str] = None
  dirty: Optional[bool] = None
  diff_sha256: Optional[str] = None
  package_version: Optional[str] = None

  @property
  def version(self) -> str:
    """Short, for logs, HParams and sweeps: 1a2b3c4d, 1a2b3c4d+dirty.5e6f7a8b, or
    mnist==0.1.0 without a checkout."""
    if self.commit is None:
      return f'{PACKAGE_NAME}=={self.package_version or "unknown"}'
    if self.dirty:
      return f'{self.commit[:_SHORT]}+dirty.{self.diff_sha256[:_SHORT]}'
    return self.commit[:_SHORT]

  def as_dict(self) -> dict:
    return {'version': self.version, **dataclasses.asdict(self)}


def code_state(root: str = PACKAGE_ROOT, git: str = 'git',
               timeout: float = GIT_TIMEOUT_SECONDS) -> Code:
  """The code in `root` (default: the checkout this package lives in). Never raises:
  no git, no checkout or a slow git give the package version instead."""
  try:
    return _git_state(root, git, timeout)
  except _NotACheckout as e:
    return Code(source=f'installed package ({e})', package_version=_package_version())


class _NotACheckout(Exception):
  pass


def _git(root: str, git: str, timeout: float, *args: str) -> bytes:
  env = {k: v for k, v in os.environ.items() if k not in _GIT_ENV}
  try:
    # --no-optional-locks: reading must not take index.lock from a concurrent git.
    result = subprocess.run([git, '--no-optional-locks', '-C', root, *args],
                            capture_output=True, timeout=timeout, env=env, check=False)
  except FileNotFoundError:
    raise _NotACheckout(f'no {git} binary') from None
  except subprocess.TimeoutExpired:
    raise _NotACheckout(f'git {args[0]} took over {timeout:g} s') from None
  except OSError as e:
    raise _NotACheckout(f'git failed: {e}') from None
  if result.returncode:
    message = result.stderr.decode(errors='replace').strip().splitlines()
    raise _NotACheckout(f'git {args[0]}: {message[0] if message else result.returncode}')
  return result.stdout


def _git_state(root: str, git: str, timeout: float) -> Code:
  # The package itself must be tracked there: a package installed into a venv inside
  # some other checkout is not that checkout's code.
  if not _git(root, git, timeout, 'ls-files', '--', f'{PACKAGE_NAME}/__init__.py').strip():
    raise _NotACheckout(f'{root}/{PACKAGE_NAME} is not tracked by a git checkout')
  # One call: the commit (branch.oid) and every change, untracked files included.
  status = _git(root, git, timeout, 'status', '--porcelain=v2', '--branch', '-z',
                '--untracked-files=all').split(b'\0')
  commit = next((e.split()[2].decode() for e in status
                 if e.startswith(b'# branch.oid ')), None)
  if commit is None or commit == '(initial)':
    raise _NotACheckout(f'{root} has no commit yet')
  changes = [e for e in status if e and not e.startswith(b'#')]
  if not changes:
    return Code(source=f'git checkout {root}', commit=commit, dirty=False)
  untracked = sorted(e[2:] for e in changes if e.startswith(b'? '))
  digest = hashlib.sha256(_git(root, git, timeout, 'diff', 'HEAD', '--binary',
                               '--no-color', '--no-ext-diff'))
  for name in untracked:
    digest.update(b'\0untracked\0' + name + b'\0')
    path = os.path.join(os.fsencode(root), name)
    try:
      if os.path.islink(path):
        digest.update(os.readlink(path))
      else:
        with open(path, 'rb') as f:
          for chunk in iter(lambda: f.read(1 << 20), b''):
            digest.update(chunk)
    except OSError:  # Deleted since git listed it: its name alone counts.
      pass
  return Code(source=f'git checkout {root}', commit=commit, dirty=True,
              diff_sha256=digest.hexdigest())


def _package_version() -> Optional[str]:
  try:
    return metadata.version(PACKAGE_NAME)
  except metadata.PackageNotFoundError:
    return None


def package_versions(packages: Sequence[str] = PACKAGES) -> dict:
  """Python's and each package's version, read from its metadata without importing it."""
  versions = {'python': platform.python_version()}
  for name in packages:
    try:
      versions[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
      versions[name] = None
  return versions


# oneDNN's ISA names (as ONEDNN_MAX_CPU_ISA takes them), best first, with the CPU flag
# (Linux /proc/cpuinfo) each needs.
_ONEDNN_ISAS = (('AVX512_CORE_AMX', 'amx_tile'), ('AVX512_CORE_BF16', 'avx512_bf16'),
                ('AVX512_CORE_VNNI', 'avx512_vnni'), ('AVX512_CORE', 'avx512f'),
                ('AVX2', 'avx2'))


def onednn(environ: Mapping[str, str] = os.environ,
           cpu_profile: Optional[hardware.Cpu] = None) -> dict:
  """Whether TensorFlow runs oneDNN in a process with this environment (as
  hardware.onednn_enabled decides it), and the instruction set its kernels use: the
  $ONEDNN_MAX_CPU_ISA cap if set, else the best this CPU's flags allow. Read from the
  environment and /proc/cpuinfo, not asked of oneDNN: the text says so."""
  cpu_profile = cpu_profile or hardware.cpu(environ={})  # Uncapped: what the CPU has.
  enabled = hardware.onednn_enabled(environ, cpu_profile=cpu_profile)
  value = environ.get(hardware.ONEDNN_ENV)
  decided_by = (f'{hardware.ONEDNN_ENV}={value}' if value is not None
                else "TensorFlow's default for this CPU")
  best = next((isa for isa, flag in _ONEDNN_ISAS if flag in cpu_profile.features),
              'below AVX2').lower()
  if not enabled:
    isa = f'none (oneDNN off; the CPU flags allow {best})'
  elif not cpu_profile.x86:
    isa = f'n/a ({cpu_profile.architecture}, not x86)'
  elif environ.get(hardware.ONEDNN_ISA_ENV):
    isa = (f'{environ[hardware.ONEDNN_ISA_ENV].lower()} ({hardware.ONEDNN_ISA_ENV} cap; '
           f'the CPU flags allow {best})')
  else:
    isa = f'{best} (cpu flags; {hardware.ONEDNN_ISA_ENV} unset)'
  return {'enabled': enabled, 'decided_by': decided_by, 'isa': isa}


def utc_now() -> str:
  """ISO 8601 in UTC, to the second: 2026-12-03T22:10:00Z."""
  return datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')


def dataset(config, version: Optional[str] = None) -> dict:
  """The TFDS dataset and the split strings; `version`: the builder's that was read."""
  return {'name': config.dataset,
          'version': version or 'unknown (not loaded through TFDS here)',
          'train_split': config.train_split, 'eval_split': config.eval_split,
          'validation_split': config.validation_split or None}


def slurm(environ: Mapping[str, str] = os.environ) -> Optional[dict]:
  job = {name: environ[name] for name in SLURM_VARIABLES if name in environ}
  return job or None


def record(config=None, dataset_version: Optional[str] = None,
           code: Optional[Code] = None, start_time: Optional[str] = None,
           environ: Mapping[str, str] = os.environ,
           argv: Optional[Sequence[str]] = None,
           cpu_profile: Optional[hardware.Cpu] = None) -> dict:
  """What made a result, as JSON's types. `config`: a TrainConfig (its dataset and
  splits); `code`: default code_state() (tests pass their own)."""
  code = code or code_state()
  return {
      'code_version': code.version,
      'code': code.as_dict(),
      'packages': package_versions(),
      'onednn': onednn(environ, cpu_profile),
      'command': shlex.join(sys.argv if argv is None else argv),
      'host': socket.gethostname(),
      'start_time': start_time or utc_now(),
      'end_time': None,
      'dataset': dataset(config, dataset_version) if config is not None else None,
      'slurm': slurm(environ),
  }


def segment(current: dict, first_step: int, last_step: Optional[int] = None) -> dict:
  """One process's share of a run: the steps after first_step up to last_step
  (None: still training)."""
  return {'code_version': current['code_version'], 'packages': current['packages'],
          'start_time': current['start_time'], 'first_step': first_step,
          'last_step': last_step}


def resume(current: dict, previous: Optional[dict], restored_step: int,
           warn: Callable[..., None] = lambda message: None) -> dict:
  """`current` with the run's segments: the earlier processes' (from the previous
  config.json's record, cut at the step restored from) and this one's, from
  restored_step on. Warns, naming both, when the code or packages differ from those
  of the last segment that trained what was restored."""
  earlier = []
  if previous and previous.get('segments'):
    for seg in previous['segments']:
      last = restored_step if seg['last_step'] is None else min(seg['last_step'],
                                                                 restored_step)
      if seg['first_step'] < last:  # Its steps are in the weights restored.
        earlier.append({**seg, 'last_step': last})
  elif restored_step:  # Trained by code that recorded nothing.
    earlier.append({'code_version': 'unknown (its config.json holds no record)',
                    'packages': None, 'start_time': None, 'first_step': 0,
                    'last_step': restored_step})
  if earlier:
    before = earlier[-1]
    changed = [f'code {before["code_version"]} -> {current["code_version"]}'
               ] if before['code_version'] != current['code_version'] else []
    if before['packages'] != current['packages']:
      changed.append(f'packages {describe_packages(before["packages"])} -> '
                     f'{describe_packages(current["packages"])}')
    if changed:
      warn(f'Resuming a run at step {restored_step} that was trained so far under other '
           f'code or packages: {"; ".join(changed)}. results.json lists each segment.')
  return {**current, 'segments': [*earlier, segment(current, restored_step)]}


def describe_packages(versions: Optional[Mapping], unknown: str = '(unknown)') -> str:
  """'python 3.11.7, tensorflow 2.21.0, ...'; `unknown` for a record without them."""
  if not versions:
    return unknown
  return ', '.join(f'{name} {version}' for name, version in versions.items())


def finish(current: dict, last_step: int = 0) -> dict:
  """The record for results.json: the end time, and this process's segment (if it has
  segments: see `resume`) closed at last_step."""
  if 'segments' not in current:
    return {**current, 'end_time': utc_now()}
  segments = [dict(seg) for seg in current['segments']]
  if segments and segments[-1]['last_step'] is None:
    if segments[-1]['first_step'] < last_step:
      segments[-1]['last_step'] = last_step
    else:
      segments.pop()  # This process trained nothing (the run had finished).
  return {**current, 'end_time': utc_now(), 'segments': segments}


def markdown(current: dict) -> str:
  """A two-column Markdown table of the record, for TensorBoard's Text dashboard."""
  code = current['code']
  rows = [('code version', f'`{current["code_version"]}`'), ('code', code['source'])]
  if code.get('commit'):
    rows.append(('commit', f'`{code["commit"]}`'))
    rows.append(('uncommitted changes', f'yes, diff sha256 `{code["diff_sha256"]}`'
                 if code['dirty'] else 'none'))
  rows += [(name, version or 'not installed')
           for name, version in current['packages'].items()]
  onednn_info = current['onednn']
  rows.append(('oneDNN', f'{"on" if onednn_info["enabled"] else "off"} '
               f'({onednn_info["decided_by"]}); ISA {onednn_info["isa"]}'))
  rows += [('command', f'`{current["command"]}`'), ('host', current['host']),
           ('start (UTC)', current['start_time'])]
  if current.get('dataset'):
    d = current['dataset']
    splits = ', '.join(f'{name} `{d[name]}`' for name in
                       ('train_split', 'eval_split', 'validation_split') if d[name])
    rows.append(('dataset', f'{d["name"]} {d["version"]}; {splits}'))
  if current.get('slurm'):
    rows.append(('Slurm', ', '.join(f'{k}={v}' for k, v in current['slurm'].items())))
  for seg in current.get('segments', []):
    end = '…' if seg['last_step'] is None else seg['last_step']
    rows.append((f'steps {seg["first_step"] + 1}-{end}', f'`{seg["code_version"]}`'))
  return '\n'.join(['| | |', '| --- | --- |'] +
                   [f'| {_cell(name)} | {_cell(value)} |' for name, value in rows])


def _cell(text) -> str:
  return str(text).replace('|', '\\|').replace('\n', ' ')
