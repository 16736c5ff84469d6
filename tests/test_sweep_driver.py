"""scripts/sweep.py as a user runs it: bad variants refused before anything starts; a
real sweep interrupted with SIGINT, rerun to the end without repeating finished runs,
reported, and listed run by run in a real TensorBoard's HParams dashboard. And the
driver over the TensorFlow-free stand-in for train.py: runs whose results.json lacks
the metric are reported as such and completed by a rerun."""
import functools
import glob
import json
import os
import signal
import subprocess
import sys

import pytest

from conftest import REPO
from mnist import provenance
from mnist.sweep import driver
from mnist.sweep import runner
from mnist.sweep import spec
import tensorboard_server
from test_sweep_runner import FAKE_TRAIN

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


@pytest.mark.slow
def test_runs_without_the_metric_are_named_and_a_rerun_completes_them(tmp_path,
                                                                       monkeypatch):
  sweep_dir = str(tmp_path / 'sweep')
  fake_train = tmp_path / 'fake_train.py'
  fake_train.write_text(FAKE_TRAIN)
  sweep = spec.build(['--epochs=1'], ['learning_rate=1e-3,3e-3'], [], range(2))
  assert sweep.metric == 'test_accuracy'  # No --validation_split.
  code = provenance.Code(source='git checkout /repo', commit='a' * 40, dirty=False)
  lines = []
  run_sweep = functools.partial(
      driver.run, sweep, sweep_dir, code=code, log=lambda line, **unused: lines.append(line),
      run_jobs=functools.partial(runner.run_jobs, script=str(fake_train)))

  # Issue #29: each run exits 0 with a results.json that lacks the metric (train.py
  # resumed after its last checkpoint with nothing to train, under the old code).
  monkeypatch.setenv('FAKE_TRAIN_BEHAVIOUR', 'no_metric')
  with pytest.raises(driver.RunsFailedError) as raised:
    run_sweep()
  lacking = 'exited 0 but its results.json has no test_accuracy'
  first = os.path.join(sweep_dir, 'learning_rate=1e-3/seed0.log')
  assert str(raised.value).startswith(
      f'4 of 4 runs failed: learning_rate=1e-3/seed0 ({lacking}, log {first}); ')
  assert 'exit 0' not in str(raised.value)
  assert f'learning_rate=3e-3/seed1: INCOMPLETE: {lacking}; a rerun of the sweep ' \
         'resumes it to complete the record; log: ' in '\n'.join(lines)

  # The rerun (train.py now completes the record) starts each of them again.
  monkeypatch.delenv('FAKE_TRAIN_BEHAVIOUR')
  lines.clear()
  report = run_sweep()
  assert report['failed'] == []
  assert [(row['variant'], row['seeds']) for row in report['rows']] == [
      ('learning_rate=1e-3', 2), ('learning_rate=3e-3', 2)]
  assert report['rows'][0]['per_seed'] == {'0': 0.0, '1': 0.1}
  for job in driver.jobs(sweep, sweep_dir):
    with open(job.log_path) as f:
      assert len([line for line in f if line.startswith('$ ')]) == 2
  assert not any('skipped' in line for line in lines)

  lines.clear()  # Complete now: a third run of the sweep starts nothing.
  run_sweep()
  assert sum(line.endswith(': finished earlier, skipped') for line in lines) == 4
