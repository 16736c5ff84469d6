"""A real `tensorboard` server over a logdir, for tests that read what a person would
see: `with serve(logdir, log_path, ready) as server: server.get('/data/runs')`."""
import contextlib
import gzip
import json
import os
import socket
import subprocess
import sys
import time
from urllib import request

import pytest

SERVER_START_SECONDS = 90  # Bounded: TensorBoard imports TensorFlow and every plugin.
ALL_STATUSES = ['STATUS_UNKNOWN', 'STATUS_SUCCESS', 'STATUS_FAILURE', 'STATUS_RUNNING']


def free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


class Server:
  """HTTP to the local TensorBoard only; proxies from the environment are bypassed."""

  def __init__(self, port):
    self.base = f'http://127.0.0.1:{port}'
    self._opener = request.build_opener(request.ProxyHandler({}))

  def get(self, path, body=None, raw=False):
    data = None if body is None else json.dumps(body).encode()
    req = request.Request(self.base + path, data=data,
                          headers={'Content-Type': 'application/json'})
    with self._opener.open(req, timeout=30) as response:
      payload = response.read()
      if response.headers.get('Content-Encoding') == 'gzip':
        payload = gzip.decompress(payload)
    return payload if raw else json.loads(payload)

  def session_groups(self):
    """The HParams dashboard's rows."""
    return self.get('/data/plugin/hparams/session_groups', {
        'experimentName': '', 'startIndex': 0, 'sliceSize': 1000,
        'allowedStatuses': ALL_STATUSES})['sessionGroups']


def _wait_for(server, process, log_path, ready):
  """Polls until `ready(server)` is true; the server loads event files in the background."""
  deadline = time.monotonic() + SERVER_START_SECONDS
  while time.monotonic() < deadline:
    if process.poll() is not None:
      with open(log_path) as f:
        pytest.fail(f'tensorboard exited with {process.returncode}:\n{f.read()[-3000:]}')
    try:
      if ready(server):
        return
    except OSError:  # Not listening yet (URLError and HTTPError are OSErrors).
      pass
    time.sleep(0.5)
  with open(log_path) as f:
    pytest.fail(f'tensorboard not ready in {SERVER_START_SECONDS}s:\n{f.read()[-3000:]}')


@contextlib.contextmanager
def serve(logdir, log_path, ready):
  """Starts `tensorboard --logdir=logdir`, waits until `ready(server)`, stops it after."""
  port = free_port()
  tensorboard = os.path.join(os.path.dirname(sys.executable), 'tensorboard')
  with open(log_path, 'w') as log:
    process = subprocess.Popen(
        [tensorboard, '--logdir', str(logdir), '--host', '127.0.0.1', '--port', str(port)],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
  server = Server(port)
  try:
    _wait_for(server, process, log_path, ready)
    yield server
  finally:
    process.terminate()
    try:
      process.wait(timeout=30)
    except subprocess.TimeoutExpired:
      process.kill()
      process.wait(timeout=30)
