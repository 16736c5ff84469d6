"""mnist/provenance.py: the record's fields, the code version from a real temporary git
checkout (clean, edited, untracked files, no git), the segments of a resumed run."""
import datetime
import os
import re
import stat
import subprocess
import sys
from importlib import metadata

import pytest

from mnist import config as config_lib
from mnist import hardware
from mnist import provenance

from conftest import REPO

ZEN3 = hardware.Cpu('AMD EPYC', 'x86_64', 2, ('avx2',))
SAPPHIRE_RAPIDS = hardware.Cpu('Xeon', 'x86_64', 8,
                               ('avx2', 'avx512f', 'avx512_vnni', 'avx512_bf16', 'amx_tile'))
CODE_A = provenance.Code(source='git checkout /a', commit='a' * 40, dirty=False)
CODE_B = provenance.Code(source='git checkout /b', commit='b' * 40, dirty=True,
                         diff_sha256='c' * 64)


def test_record_names_code_packages_onednn_command_host_times_data_and_slurm():
  config = config_lib.TrainConfig(train_split='train[:6400]',
                                  validation_split='train[55000:]')
  environ = {'TF_ENABLE_ONEDNN_OPTS': '1', 'SLURM_JOB_ID': '17',
             'SLURM_ARRAY_JOB_ID': '16', 'SLURM_ARRAY_TASK_ID': '1', 'SLURM_OTHER': 'x'}
  record = provenance.record(config, '3.0.1', CODE_B, environ=environ,
                             argv=['scripts/train.py', '--model_dir=runs/a b'],
                             cpu_profile=ZEN3)
  assert record['code_version'] == 'bbbbbbbb+dirty.cccccccc'
  assert record['code']['commit'] == 'b' * 40 and record['code']['dirty'] is True
  assert record['packages']['python'] == '.'.join(map(str, sys.version_info[:3]))
  for name in ('tensorflow', 'keras', 'tensorflow-datasets', 'numpy'):
    assert record['packages'][name] == metadata.version(name)
  assert record['onednn'] == {'enabled': True, 'decided_by': 'TF_ENABLE_ONEDNN_OPTS=1',
                              'isa': 'avx2 (cpu flags; ONEDNN_MAX_CPU_ISA unset)'}
  assert record['command'] == "scripts/train.py '--model_dir=runs/a b'"  # Shell-quoted.
  assert record['host'] and record['end_time'] is None
  start = datetime.datetime.fromisoformat(record['start_time'].replace('Z', '+00:00'))
  assert start.tzinfo == datetime.timezone.utc
  assert abs(datetime.datetime.now(datetime.timezone.utc) - start).total_seconds() < 60
  assert record['dataset'] == {'name': 'mnist', 'version': '3.0.1',
                               'train_split': 'train[:6400]', 'eval_split': 'test',
                               'validation_split': 'train[55000:]'}
  assert record['slurm'] == {'SLURM_JOB_ID': '17', 'SLURM_ARRAY_JOB_ID': '16',
                             'SLURM_ARRAY_TASK_ID': '1'}
  unknown = provenance.record(config, None, CODE_A, environ={}, argv=['x'], cpu_profile=ZEN3)
  assert unknown['dataset']['version'].startswith('unknown')
  assert unknown['slurm'] is None
  finished = provenance.finish(unknown)
  assert finished['end_time'] >= finished['start_time'] and 'segments' not in finished


@pytest.mark.parametrize('environ, cpu, enabled, isa', [
    ({}, ZEN3, False, 'none (oneDNN off; the CPU flags allow avx2)'),
    ({}, SAPPHIRE_RAPIDS, True, 'avx512_core_amx (cpu flags; ONEDNN_MAX_CPU_ISA unset)'),
    ({'TF_ENABLE_ONEDNN_OPTS': '1', 'ONEDNN_MAX_CPU_ISA': 'AVX2'}, SAPPHIRE_RAPIDS, True,
     'avx2 (ONEDNN_MAX_CPU_ISA cap; the CPU flags allow avx512_core_amx)'),
    ({'TF_ENABLE_ONEDNN_OPTS': '0'}, SAPPHIRE_RAPIDS, False,
     'none (oneDNN off; the CPU flags allow avx512_core_amx)'),
    ({'TF_ENABLE_ONEDNN_OPTS': '1'}, hardware.Cpu('Neoverse', 'aarch64', 4, ()), True,
     'n/a (aarch64, not x86)'),
])
def test_onednn_is_decided_as_tensorflow_does_and_the_isa_says_where_it_came_from(
    environ, cpu, enabled, isa):
  info = provenance.onednn(environ, cpu)
  assert (info['enabled'], info['isa']) == (enabled, isa)
  assert info['decided_by'] == (f'TF_ENABLE_ONEDNN_OPTS={environ["TF_ENABLE_ONEDNN_OPTS"]}'
                                if 'TF_ENABLE_ONEDNN_OPTS' in environ
                                else "TensorFlow's default for this CPU")


def _git(root, *args):
  return subprocess.run(['git', '-C', str(root), *args], check=True, capture_output=True,
                        text=True).stdout.strip()


@pytest.fixture
def checkout(tmp_path):
  """A git checkout holding a package named mnist, one commit, runs/ ignored."""
  root = tmp_path / 'checkout'
  (root / 'mnist').mkdir(parents=True)
  (root / 'mnist' / '__init__.py').write_text('')
  (root / 'mnist' / 'train.py').write_text('LEARNING_RATE = 1e-3\n')
  (root / '.gitignore').write_text('runs/\n')
  _git(root, 'init', '-q')
  _git(root, 'add', '.')
  _git(root, '-c', 'user.name=t', '-c', 'user.email=t@t', 'commit', '-q', '-m', 'first')
  return root


@pytest.mark.slow
def test_code_state_of_a_checkout_clean_edited_and_with_untracked_files(checkout):
  clean = provenance.code_state(str(checkout))
  head = _git(checkout, 'rev-parse', 'HEAD')
  assert (clean.commit, clean.dirty, clean.diff_sha256) == (head, False, None)
  assert clean.version == head[:8] and clean.source == f'git checkout {checkout}'

  (checkout / 'mnist' / 'train.py').write_text('LEARNING_RATE = 3e-3\n')
  edited = provenance.code_state(str(checkout))
  assert edited.commit == head and edited.dirty and len(edited.diff_sha256) == 64
  assert edited.version == f'{head[:8]}+dirty.{edited.diff_sha256[:8]}'
  assert provenance.code_state(str(checkout)) == edited  # Stable.

  (checkout / 'runs').mkdir()
  (checkout / 'runs' / 'results.json').write_text('{}')  # Ignored: changes nothing.
  assert provenance.code_state(str(checkout)) == edited
  (checkout / 'notes.py').write_text('x = 1\n')  # Untracked, not ignored: counts.
  untracked = provenance.code_state(str(checkout))
  assert untracked.dirty and untracked.diff_sha256 != edited.diff_sha256
  (checkout / 'notes.py').write_text('x = 2\n')  # Its content counts, not only its name.
  assert provenance.code_state(str(checkout)).diff_sha256 != untracked.diff_sha256

  (checkout / 'mnist' / 'train.py').write_text('LEARNING_RATE = 1e-3\n')
  os.remove(checkout / 'notes.py')
  assert provenance.code_state(str(checkout)) == clean  # Back to the commit.
  (checkout / 'mnist' / 'train.py').write_text('LEARNING_RATE = 1e-2\n')
  assert provenance.code_state(str(checkout)).diff_sha256 != edited.diff_sha256


@pytest.mark.slow
def test_only_tracked_changes_make_a_staged_edit_dirty_too(checkout):
  (checkout / 'mnist' / 'train.py').write_text('LEARNING_RATE = 3e-3\n')
  _git(checkout, 'add', 'mnist/train.py')  # Staged, not committed: still not the commit.
  assert provenance.code_state(str(checkout)).dirty


def _installed(reason_fragment, code):
  assert code.commit is None and code.dirty is None
  assert code.package_version == metadata.version('mnist')
  assert code.version == f'mnist=={metadata.version("mnist")}'
  assert code.source.startswith('installed package (') and reason_fragment in code.source


@pytest.mark.slow
def test_without_git_or_a_checkout_the_package_version_is_named(checkout, tmp_path):
  _installed('no /nonexistent/git binary',
             provenance.code_state(str(checkout), git='/nonexistent/git'))
  _installed('not a git repository', provenance.code_state(str(tmp_path)))
  # A checkout that does not track the package (an install inside some other repo).
  _git(checkout, 'rm', '-q', '--cached', 'mnist/__init__.py')
  _installed('is not tracked', provenance.code_state(str(checkout)))


def test_a_hung_git_is_given_up_after_the_timeout(checkout, tmp_path):
  slow_git = tmp_path / 'slow_git'
  slow_git.write_text('#!/bin/sh\nexec sleep 30\n')
  slow_git.chmod(slow_git.stat().st_mode | stat.S_IEXEC)
  _installed('took over 0.2 s',
             provenance.code_state(str(checkout), git=str(slow_git), timeout=0.2))


@pytest.mark.slow
def test_this_checkout_is_recorded_as_git_says():
  code = provenance.code_state()
  assert code.commit == _git(REPO, 'rev-parse', 'HEAD')
  assert code.dirty == bool(_git(REPO, 'status', '--porcelain'))


def _current(code, packages=None):
  record = provenance.record(None, None, code, environ={}, argv=['x'], cpu_profile=ZEN3)
  return {**record, 'packages': packages or record['packages']}


def test_segments_of_a_run_resumed_under_other_code_and_packages():
  warnings = []
  first = provenance.resume(_current(CODE_A), None, 0, warnings.append)
  assert [(s['code_version'], s['first_step'], s['last_step'])
          for s in first['segments']] == [('aaaaaaaa', 0, None)] and not warnings
  # Killed after its checkpoint at step 16: the next process restores 16.
  newer = {'python': '3.11.7', 'tensorflow': '2.22.0'}
  second = provenance.resume(_current(CODE_B, newer), first, 16, warnings.append)
  assert [(s['code_version'], s['first_step'], s['last_step'])
          for s in second['segments']] == [('aaaaaaaa', 0, 16),
                                           ('bbbbbbbb+dirty.cccccccc', 16, None)]
  assert len(warnings) == 1
  assert 'code aaaaaaaa -> bbbbbbbb+dirty.cccccccc' in warnings[0]
  assert 'tensorflow 2.22.0' in warnings[0] and 'at step 16' in warnings[0]
  done = provenance.finish(second, 32)
  assert [s['last_step'] for s in done['segments']] == [16, 32]
  # The same code resuming: a segment of its own, no warning.
  third = provenance.resume(_current(CODE_B, newer), done, 32, warnings.append)
  assert len(third['segments']) == 3 and len(warnings) == 1
  # A run rewound to checkpoint 5: what came after is not in its weights.
  rewound = provenance.resume(_current(CODE_A), done, 5)
  assert [(s['code_version'], s['first_step'], s['last_step'])
          for s in rewound['segments']] == [('aaaaaaaa', 0, 5), ('aaaaaaaa', 5, None)]
  # A rerun of a finished run trains nothing: its segment is dropped at the end.
  assert provenance.finish(third, 32)['segments'] == done['segments']


def test_steps_trained_by_code_that_recorded_nothing_are_a_segment_of_their_own():
  warnings = []
  resumed = provenance.resume(_current(CODE_A), None, 16, warnings.append)
  assert resumed['segments'][0]['code_version'].startswith('unknown')
  assert resumed['segments'][0]['last_step'] == 16
  assert 'unknown' in warnings[0] and 'aaaaaaaa' in warnings[0]


def test_markdown_table_holds_commit_packages_and_segments_and_escapes_pipes():
  record = provenance.record(config_lib.TrainConfig(), '3.0.1', CODE_B, environ={},
                             argv=['train.py', '--note=a|b'], cpu_profile=ZEN3)
  table = provenance.markdown(provenance.resume(record, None, 0))
  lines = table.splitlines()
  assert lines[:2] == ['| | |', '| --- | --- |']
  # Three unescaped pipes a row: none leaked out of a cell.
  assert all(len(re.findall(r'(?<!\\)\|', line)) == 3 for line in lines)
  assert f'| commit | `{"b" * 40}` |' in table
  assert f'diff sha256 `{"c" * 64}`' in table
  assert f'| tensorflow | {metadata.version("tensorflow")} |' in table
  assert "--note=a\\|b" in table and 'mnist 3.0.1' in table
  assert '| steps 1-… | `bbbbbbbb+dirty.cccccccc` |' in table


@pytest.mark.slow
def test_provenance_does_not_load_tensorflow():
  poison = os.path.join(REPO, 'tests', 'poison_tensorflow')  # Importing TF fails.
  result = subprocess.run(
      [sys.executable, '-c', 'from mnist import provenance; '
       'print(provenance.record()["code_version"])'],
      capture_output=True, text=True, timeout=120,
      env={**os.environ, 'PYTHONPATH': poison + os.pathsep + REPO})
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip().startswith(provenance.code_state().commit[:8])
