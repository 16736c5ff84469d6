"""Test hosts for multi-host tests: one Linux network namespace per host on a private
bridge, so workers talk over a real network path (own address, own ports, own link
that can fail) on this one machine.

Layout: a bridge in the root namespace holds the subnet's .254 (where a controller in
the root namespace listens, e.g. slurmctld), and each host is a namespace with lo up,
one end of a veth pair as its eth0 with 198.18.S.N/24 (N = 1, 2, ...) and a default
route via the bridge; the other end is a port of the bridge. The subnet S is one of
198.18.0.0/15 (RFC 2544's benchmarking range: never routed anywhere) that no interface
here uses yet. Every name carries this process's pid, so two test sessions on one
machine never collide; `remove_stale` clears what a killed session (a dead pid) left.

Processes run in a host through `nsenter --net=/var/run/netns/NAME`, which only
switches the network namespace. `ip netns exec` would also remount /sys in a private
mount namespace, where slurmd then finds no cgroup hierarchy.

Everything is undone by `Network.close` (the `network` context manager and fixtures
call it in a finally): processes killed by PID, namespaces, links and the bridge
deleted, and exactly the /etc/hosts lines added here removed (each is tagged with this
session's marker). It needs root and `ip` (iproute2); without them the tests that need
it are skipped, unless $MNIST_REQUIRE_NETNS is set (CI sets it): then they fail.
"""
import contextlib
import dataclasses
import fcntl
import ipaddress
import os
import re
import shutil
import signal
import subprocess
import time
from typing import Iterator, List, Optional, Sequence

import pytest

REQUIRE_ENV = 'MNIST_REQUIRE_NETNS'
NETNS_DIR = '/var/run/netns'
HOSTS_FILE = '/etc/hosts'
_PREFIX = 'mnist'  # Namespace names: mnist-PID-N. Interface names: mnb/mnv + PID.
_TAG = re.compile(r'# mnist-netns-(\d+)$')  # Marks the /etc/hosts lines a session added.
_BRIDGE_HOST = 254
_SUPERNET = ipaddress.ip_network('198.18.0.0/15')
_STOP_SECONDS = 10
_IP_TIMEOUT = 30  # No `ip` call takes more than milliseconds; a hang fails loudly.
_open_networks = []  # This process's (at most one: its names are made from the pid).


def _tool(name: str) -> Optional[str]:
  """The tool's path; root's sbin folders count even when PATH lacks them."""
  return shutil.which(name) or next(
      (path for path in (f'/usr/sbin/{name}', f'/sbin/{name}') if os.access(path, os.X_OK)),
      None)


def missing_requirements() -> List[str]:
  problems = []
  if os.geteuid() != 0:
    problems.append('not root (network namespaces, links and /etc/hosts need root)')
  for tool in ('ip', 'nsenter'):
    if _tool(tool) is None:
      problems.append(f'`{tool}` is missing (Debian: apt-get install '
                      f'{"iproute2" if tool == "ip" else "util-linux"})')
  return problems


def require_netns():
  """Skips the calling test without root or `ip` (fails it with $MNIST_REQUIRE_NETNS)."""
  problems = missing_requirements()
  if problems:
    reason = 'test hosts in network namespaces need root and iproute2: ' + '; '.join(problems)
    if os.environ.get(REQUIRE_ENV):
      pytest.fail(f'{REQUIRE_ENV} is set but {reason}')
    pytest.skip(reason)


def _ip(*argv, check=True) -> subprocess.CompletedProcess:
  result = subprocess.run([_tool('ip') or 'ip', *argv], capture_output=True, text=True,
                          timeout=_IP_TIMEOUT)
  if check and result.returncode != 0:
    raise RuntimeError(f'ip {" ".join(argv)} failed ({result.returncode}): '
                       f'{result.stderr.strip()}')
  return result


@dataclasses.dataclass
class Host:
  """One test host: a network namespace with its own address and link."""
  name: str  # Resolves to `address` through /etc/hosts (Slurm node names must).
  namespace: str
  address: str
  bridge_end: str  # Its veth end in the root namespace, a port of the bridge.
  _next_port: int = 20000

  def command(self, argv: Sequence[str]) -> list:
    """`argv` run inside this host's network namespace (and nothing else's)."""
    return [_tool('nsenter') or 'nsenter', f'--net={NETNS_DIR}/{self.namespace}', *argv]

  def port(self) -> int:
    """A port free on this host: only this session's processes run in its namespace,
    and each port is handed out once, so no earlier run's socket (even in TIME_WAIT)
    can hold it."""
    self._next_port += 1
    return self._next_port


class Network:
  """A bridge and its hosts; add hosts with `add_host`, undo everything with `close`."""

  def __init__(self):
    if _open_networks:
      raise RuntimeError('One test network per process at a time: its names carry the pid.')
    self.session = os.getpid()
    self.bridge = f'mnb{self.session}'
    self.hosts: List[Host] = []
    self.processes: List[subprocess.Popen] = []
    self._hosts_lines_added = False
    self.subnet = _free_subnet()
    self.bridge_address = str(self.subnet[_BRIDGE_HOST])

  def start(self) -> None:
    """Creates the bridge (`close` removes it, also after a failure here)."""
    _open_networks.append(self)
    _ip('link', 'add', self.bridge, 'type', 'bridge')
    _ip('addr', 'add', f'{self.bridge_address}/{self.subnet.prefixlen}', 'dev', self.bridge)
    _ip('link', 'set', self.bridge, 'up')

  def add_host(self, name: Optional[str] = None) -> Host:
    """A new namespace on the bridge, reachable from the others and the root namespace.
    `name` (default mnist-PID-hN) is added to /etc/hosts with its address."""
    number = len(self.hosts) + 1
    host = Host(name=name or f'{_PREFIX}-{self.session}-h{number}',
                namespace=f'{_PREFIX}-{self.session}-{number}',
                address=str(self.subnet[number]),
                bridge_end=f'mnv{self.session}h{number}')
    self.hosts.append(host)  # Before creating anything, so close() removes it all.
    _ip('netns', 'add', host.namespace)
    _ip('link', 'add', host.bridge_end, 'type', 'veth', 'peer', 'name', 'eth0',
        'netns', host.namespace)
    _ip('link', 'set', host.bridge_end, 'master', self.bridge)
    _ip('link', 'set', host.bridge_end, 'up')
    for argv in (('link', 'set', 'lo', 'up'),
                 ('addr', 'add', f'{host.address}/{self.subnet.prefixlen}', 'dev', 'eth0'),
                 ('link', 'set', 'eth0', 'up'),
                 ('route', 'add', 'default', 'via', self.bridge_address)):
      _ip('-n', host.namespace, *argv)
    self._hosts_lines_added = True
    _edit_hosts_file(lambda lines: lines + [
        f'{host.address} {host.name} # mnist-netns-{self.session}\n'])
    return host

  def popen(self, host: Host, argv: Sequence[str], **kwargs) -> subprocess.Popen:
    """Starts `argv` in `host` in its own process group; `close` kills it if still alive."""
    kwargs.setdefault('start_new_session', True)
    process = subprocess.Popen(host.command(argv), **kwargs)
    self.processes.append(process)
    return process

  def disconnect(self, host: Host) -> None:
    """Pulls the host's cable: its bridge port goes down, so every packet to or from
    the host is dropped without a reset (as a failed switch port or a partition)."""
    _ip('link', 'set', host.bridge_end, 'down')

  def reconnect(self, host: Host) -> None:
    _ip('link', 'set', host.bridge_end, 'up')

  def close(self) -> None:
    """Kills this session's processes by PID, then removes the namespaces, links,
    bridge and /etc/hosts lines. Every step runs even if an earlier one fails."""
    errors = []
    for process in self.processes:
      try:
        stop_process(process)
      except Exception as e:  # pylint: disable=broad-except
        errors.append(f'pid {process.pid}: {e}')
    # Processes started in a host by others than `popen` (a Slurm job step: slurmstepd
    # detaches from slurmd) would keep its namespace alive after its name is gone.
    _kill_inside([host.namespace for host in self.hosts])
    for host in self.hosts:
      # Deleting one veth end deletes its peer; a namespace whose last process has gone
      # is freed with the name.
      for argv in (('link', 'del', host.bridge_end), ('netns', 'del', host.namespace)):
        result = _ip(*argv, check=False)
        if result.returncode and 'Cannot find' not in result.stderr and (
            'No such file' not in result.stderr):
          errors.append(f'ip {" ".join(argv)}: {result.stderr.strip()}')
    result = _ip('link', 'del', self.bridge, check=False)
    if result.returncode and 'Cannot find' not in result.stderr:
      errors.append(f'ip link del {self.bridge}: {result.stderr.strip()}')
    if self._hosts_lines_added:
      _edit_hosts_file(lambda lines: [line for line in lines
                                      if not _tagged(line, {self.session})])
    if self in _open_networks:
      _open_networks.remove(self)
    if errors:
      raise RuntimeError('Could not remove every test host: ' + '; '.join(errors))


def stop_process(process: subprocess.Popen, stop_seconds: float = _STOP_SECONDS) -> None:
  """SIGTERM to the process's group (it leads one: start_new_session), SIGKILL if it
  is still there after `stop_seconds`."""
  if process.poll() is not None:
    return
  with contextlib.suppress(ProcessLookupError):
    os.killpg(process.pid, signal.SIGTERM)
  try:
    process.wait(timeout=stop_seconds)
  except subprocess.TimeoutExpired:
    with contextlib.suppress(ProcessLookupError):
      os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=stop_seconds)


def pids_inside(namespaces: Sequence[str]) -> List[int]:
  """Every process running in one of these network namespaces (matched by inode)."""
  inodes = set()
  for name in namespaces:
    with contextlib.suppress(FileNotFoundError):
      inodes.add(os.stat(os.path.join(NETNS_DIR, name)).st_ino)
  pids = []
  for entry in os.listdir('/proc'):
    if entry.isdigit():
      try:
        if os.stat(f'/proc/{entry}/ns/net').st_ino in inodes:
          pids.append(int(entry))
      except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass  # Exited meanwhile.
  return pids


def _kill_inside(namespaces: Sequence[str]) -> None:
  """SIGKILL, by PID, to what still runs in these namespaces. Processes `popen` did not
  start (a Slurm job step: slurmstepd detaches from slurmd; the workers of a session
  that was killed) would otherwise keep a namespace alive after its name is gone."""
  for pid in pids_inside(namespaces):
    with contextlib.suppress(ProcessLookupError):
      os.kill(pid, signal.SIGKILL)


def _free_subnet() -> ipaddress.IPv4Network:
  """A /24 of 198.18.0.0/15 no address or route here is in, starting at one picked by
  this pid, so concurrent sessions start far apart."""
  used = set()
  for argv in (('-4', '-o', 'addr', 'show'), ('-4', 'route', 'show', 'table', 'all')):
    for text in re.findall(r'198\.1[89]\.\d+\.\d+', _ip(*argv).stdout):
      used.add(ipaddress.ip_network(f'{text}/24', strict=False))
  subnets = list(_SUPERNET.subnets(new_prefix=24))
  start = os.getpid() % len(subnets)
  for subnet in subnets[start:] + subnets[:start]:
    if subnet not in used:
      return subnet
  raise RuntimeError(f'Every /24 of {_SUPERNET} is in use here.')


def _tagged(line: str, sessions) -> bool:
  match = _TAG.search(line.rstrip('\r\n'))
  return bool(match) and int(match.group(1)) in sessions


def _edit_hosts_file(edit) -> None:
  """Rewrites /etc/hosts in place (it may be a bind mount, which cannot be replaced),
  holding a lock on it so two sessions' edits do not interleave."""
  with open(HOSTS_FILE, 'r+') as f:
    fcntl.lockf(f, fcntl.LOCK_EX)  # Released when the file closes.
    lines = f.read().splitlines(keepends=True)  # The others are written back as they were.
    if lines and not lines[-1].endswith('\n'):
      lines[-1] += '\n'
    f.seek(0)
    f.write(''.join(edit(lines)))
    f.truncate()


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def remove_stale() -> None:
  """Removes what earlier sessions that were killed (their pid is gone) left behind:
  their namespaces, bridges, veth ends and /etc/hosts lines. A live session's are kept."""
  stale = [name for name in _ip('netns', 'list').stdout.split()
           if re.fullmatch(rf'{_PREFIX}-(\d+)-\d+', name)
           and not _alive(int(name.split('-')[1]))]
  _kill_inside(stale)
  for name in stale:
    _ip('netns', 'del', name, check=False)
  for name in re.findall(r'^\d+: (mn[bv]\d+(?:h\d+)?)[@:]', _ip('-o', 'link').stdout,
                         re.MULTILINE):
    if not _alive(int(re.match(r'mn[bv](\d+)', name).group(1))):
      _ip('link', 'del', name, check=False)
  with open(HOSTS_FILE) as f:
    dead = {int(m.group(1)) for m in map(_TAG.search, f.read().splitlines())
            if m and not _alive(int(m.group(1)))}
  if dead:
    _edit_hosts_file(lambda lines: [line for line in lines if not _tagged(line, dead)])


@contextlib.contextmanager
def network(num_hosts: int = 0) -> Iterator[Network]:
  """A Network with `num_hosts` hosts, removed on exit however the body ends."""
  remove_stale()
  net = Network()
  try:
    net.start()
    for _ in range(num_hosts):
      net.add_host()
    yield net
  finally:
    net.close()


def wait_until(what: str, ready, timeout: float, poll: float = 0.2) -> float:
  """Polls `ready()` until true; returns the seconds it took, or fails after `timeout`."""
  start = time.monotonic()
  while not ready():
    if time.monotonic() - start > timeout:
      raise TimeoutError(f'no {what} after {timeout} s')
    time.sleep(poll)
  return time.monotonic() - start
