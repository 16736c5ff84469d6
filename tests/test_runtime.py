"""mnist/runtime.py and the runtime flags every TensorFlow script shares."""
import os
import subprocess
import sys

import pytest

from mnist import runtime

from conftest import REPO


def test_to_flags_passes_on_only_what_differs_from_the_defaults():
  assert runtime.to_flags(runtime.RuntimeConfig()) == []
  assert runtime.to_flags(runtime.RuntimeConfig(onednn='on', intra_op_threads=1)) == [
      '--onednn=on', '--intra_op_threads=1']


@pytest.mark.parametrize('script, args', [
    ('train.py', []), ('evaluate.py', []), ('export.py', ['--export_dir=/tmp/x']),
    ('predict.py', ['digit.png']), ('benchmark.py', []), ('speedrun.py', [])])
def test_every_tensorflow_script_refuses_a_bad_onednn_before_tensorflow_loads(script, args):
  poison = os.path.join(REPO, 'tests', 'poison_tensorflow')  # Importing TF fails.
  result = subprocess.run(
      [sys.executable, os.path.join(REPO, 'scripts', script), '--onednn=maybe', *args],
      capture_output=True, text=True, timeout=120,
      env={**os.environ, 'PYTHONPATH': poison + os.pathsep + REPO})
  assert result.returncode == 2, result.stderr[-2000:]
  assert result.stderr.strip().splitlines()[-1] == (
      "error: --onednn must be one of auto, on, off; got 'maybe'.")
