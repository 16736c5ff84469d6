"""scripts/sweep.py as a user runs it: bad variants refused before anything starts; a
real sweep interrupted with SIGINT, rerun to the end without repeating finished runs,
reported, and listed run by run in a real TensorBoard's HParams dashboard."""
import glob
import json
import os
import signal
import subprocess
import sys

import pytest

from conftest import REPO
import tensorboard_server

SWEEP = os.path.join(REPO, 'scripts', 'sweep.py')
GUARD_SECONDS = 900  # A hung sweep fails the test instead of the CI run.


@pytest.mark.slow
def test_bad_variants_are_refused_before_any_run(tmp_path):
  sweep_dir = tmp_path / 'sweep'
  poison = os.path.join(REPO, 'tests', 'poison_tensorflow')  # Importing TF fails.
  result = subprocess.run(
      [sys.executable, SWEEP, f'--sweep_dir={sweep_dir}', '--vary=learning_rate=1e-3,-1',
       '--vary=batch_norm=true,maybe', '--', '--epochs=1'],
      capture_output=True, text=True, timeout=120,
      env={**os.environ, 'PYTHONPATH': poison + os.pathsep + REPO})
  assert result.returncode == 2
  error = result.stderr.strip().splitlines()[-1]
  assert error.startswith('error: Invalid variants, nothing was run.')
  assert '--learning_rate must be > 0, got -1.0.' in error and 'batch_norm=maybe' in error
  assert not sweep_dir.exists() and 'Traceback' not in result.stderr


def _sweep_command(sweep_dir, manual_dir):
  return [sys.executable, SWEEP, f'--sweep_dir={sweep_dir}', '--seeds=2', '--parallel=2',
          '--vary=learning_rate=1e-3,3e-3', '--',
          '--train_split=train[:1280]', '--validation_split=train[59000:]',
          '--eval_split=test[:1000]', '--epochs=1', f'--tfds_manual_dir={manual_dir}']


def _interrupt_after_first_finished_run(command):
  """Starts the sweep, SIGINTs it once a run has finished and another has started."""
  process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
  finished = []
  try:
    for line in process.stdout:
      if ': validation_accuracy ' in line:
        finished.append(line.split(':')[0])
        process.send_signal(signal.SIGINT)  # Its slot already holds the next run.
        break
    stdout, stderr = process.communicate(timeout=GUARD_SECONDS)
  finally:
    if process.poll() is None:
      process.kill()
  return process.returncode, finished, stderr


@pytest.mark.slow
@pytest.mark.real_data
def test_interrupted_sweep_resumes_reports_and_shows_in_tensorboard(tmp_path, manual_dir):
  sweep_dir = tmp_path / 'sweep'
  command = _sweep_command(sweep_dir, manual_dir)
  returncode, finished, stderr = _interrupt_after_first_finished_run(command)
  assert returncode == 75, stderr[-3000:]
  assert 'Received SIGINT' in stderr and 'Rerun the same command' in stderr
  assert finished

  # The checkout may be edited while this runs (a developer at work), which the rerun
  # would refuse; that refusal is tested in test_sweep_spec.py.
  separator = command.index('--')
  rerun = subprocess.run([*command[:separator], '--allow_code_change', *command[separator:]],
                         capture_output=True, text=True, timeout=GUARD_SECONDS)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  for name in finished:
    assert f'{name}: finished earlier, skipped' in rerun.stdout
    with open(sweep_dir / f'{name}.log') as f:
      starts = [line for line in f if line.startswith('$ ')]
    assert len(starts) == 1  # Started once, never repeated.
  results = {os.path.relpath(os.path.dirname(path), sweep_dir): json.load(open(path))
             for path in glob.glob(str(sweep_dir / '*' / 'seed*' / 'results.json'))}
  assert sorted(results) == ['learning_rate=1e-3/seed0', 'learning_rate=1e-3/seed1',
                             'learning_rate=3e-3/seed0', 'learning_rate=3e-3/seed1']

  report = json.load(open(sweep_dir / 'report.json'))
  assert [(row['variant'], row['seeds']) for row in report['rows']] == [
      ('learning_rate=1e-3', 2), ('learning_rate=3e-3', 2)]
  assert report['metric'] == 'validation_accuracy'
  assert report['rows'][0]['per_seed']['1'] == results['learning_rate=1e-3/seed1'][
      'validation_accuracy']
  assert '| learning_rate=3e-3 | 2 |' in rerun.stdout  # The printed table.
  assert (sweep_dir / 'report.png').read_bytes().startswith(b'\x89PNG')

  ready = lambda server: len(server.session_groups()) == 4
  with tensorboard_server.serve(sweep_dir, str(tmp_path / 'tensorboard.log'),
                                ready) as server:
    experiment = server.get('/data/plugin/hparams/experiment', {'experimentName': ''})
    assert sorted(info['name'] for info in experiment['hparamInfos']) == [
        'code_version', 'learning_rate', 'seed']
    assert 'validation_accuracy' in [m['name']['tag'] for m in experiment['metricInfos']]
    for group in server.session_groups():
      session = group['sessions'][0]['name']  # The run's folder under sweep_dir.
      values = {m['name']['tag']: m['value'] for m in group['metricValues']}
      assert values['validation_accuracy'] == pytest.approx(
          results[session]['validation_accuracy'])
      assert group['hparams']['seed'] == results[session]['config']['seed']
      assert group['hparams']['code_version'] == results[session]['provenance'][
          'code_version']
