"""mnist/sweep/spec.py: grids, hand-made variants, run names, and the refusals that
must come before any training process starts."""
from importlib import metadata
import json
import os

import pytest

from mnist import errors
from mnist import provenance
from mnist.sweep import driver
from mnist.sweep import spec

BASE = ['--train_split=train[:6400]', '--validation_split=train[55000:]', '--epochs=1']
# Injected code versions: the checkout's own may change while a test runs.
CODE_A = provenance.Code(source='git checkout /repo', commit='a' * 40, dirty=False)
CODE_B = provenance.Code(source='git checkout /repo', commit='a' * 40, dirty=True,
                         diff_sha256='b' * 64)


def test_grid_is_the_product_named_flag_by_flag_in_order():
  variants = spec.grid(['learning_rate=1e-3,3e-3', 'batch_norm=true,false'])
  assert [v.name for v in variants] == [
      'learning_rate=1e-3,batch_norm=true', 'learning_rate=1e-3,batch_norm=false',
      'learning_rate=3e-3,batch_norm=true', 'learning_rate=3e-3,batch_norm=false']
  assert variants[1].flags == ('--learning_rate=1e-3', '--batch_norm=false')


def test_runs_are_seed_major_and_named_variant_slash_seed():
  sweep = spec.build(BASE, ['learning_rate=1e-3,3e-3'], [], range(2, 4))
  assert [r.name for r in sweep.runs()] == [
      'learning_rate=1e-3/seed2', 'learning_rate=3e-3/seed2',
      'learning_rate=1e-3/seed3', 'learning_rate=3e-3/seed3']
  run = sweep.runs()[1]
  assert sweep.train_flags(run) == [*BASE, '--learning_rate=3e-3', '--seed=2']


def test_configs_are_resolved_and_the_varied_fields_found():
  sweep = spec.build(BASE, ['learning_rate=1e-3,3e-3', 'batch_norm=true,false'], [],
                     range(3))
  assert sweep.configs['learning_rate=3e-3,batch_norm=true'].learning_rate == 0.003
  assert sweep.configs['learning_rate=3e-3,batch_norm=true'].batch_norm
  assert sweep.varied_fields() == ['batch_norm', 'learning_rate']
  assert sweep.baseline == 'learning_rate=1e-3,batch_norm=true'  # The first.
  assert sweep.metric == 'validation_accuracy' and sweep.higher_is_better


def test_hand_made_variants_split_flags_as_a_shell_does():
  sweep = spec.build(BASE, [], ["base:", "bn:--batch_norm --learning_rate='3e-3'"], [0],
                     baseline='base', metric='validation_loss')
  assert [(v.name, v.flags) for v in sweep.variants] == [
      ('base', ()), ('bn', ('--batch_norm', '--learning_rate=3e-3'))]
  assert not sweep.higher_is_better


def test_without_variants_the_base_flags_are_the_one_variant():
  sweep = spec.build(['--epochs=1'], [], [], [0, 1])
  assert [v.name for v in sweep.variants] == ['base']
  assert sweep.metric == 'test_accuracy'  # No validation split.


@pytest.mark.parametrize('vary, variants, base, message', [
    (['learnin_rate=1e-3'], [], BASE, "Unknown command line flag 'learnin_rate'"),
    (['batch_norm=true,maybe'], [], BASE, 'batch_norm=maybe'),
    (['learning_rate=1e-3,-1'], [], BASE, '--learning_rate must be > 0, got -1.0.'),
    (['model=seed_cnn,resnet'], [], BASE, '--model must be one of'),
    (['learning_rate'], [], BASE, 'must be FLAG=V1,V2'),
    (['learning_rate=1e-3,1e-3'], [], BASE, 'repeats a value'),
    (['seed=1,2'], [], BASE, '--seed=1 is set by the sweep'),
    ([], [], [*BASE, '--model_dir=x'], '--model_dir=x is set by the sweep'),
    ([], ['a b:--epochs=2'], BASE, 'must be NAME:FLAGS'),
    ([], ['a:epochs=2'], BASE, 'epochs=2 is not a --flag'),
    ([], ['a:', 'a:--epochs=2'], BASE, 'names must differ'),
    (['epochs=1,2'], ['a:'], BASE, 'not both'),
])
def test_bad_variants_are_refused(vary, variants, base, message):
  with pytest.raises(errors.ConfigError) as raised:
    spec.build(base, vary, variants, [0])
  assert message in str(raised.value)


def test_a_bad_baseline_or_metric_is_refused():
  with pytest.raises(errors.ConfigError, match='--baseline=nope is not a variant'):
    spec.build(BASE, ['epochs=1,2'], [], [0], baseline='nope')
  with pytest.raises(errors.ConfigError, match='--metric must be one of'):
    spec.build(BASE, ['epochs=1,2'], [], [0], metric='accuracy')
  with pytest.raises(errors.ConfigError, match='needs --validation_split'):
    spec.build(['--epochs=1'], ['epochs=1,2'], [], [0], metric='validation_accuracy')


def test_sweep_dir_is_recorded_and_a_different_sweep_refused(tmp_path):
  sweep_dir = str(tmp_path / 'sweep')
  first = spec.build(BASE, ['learning_rate=1e-3,3e-3'], [], range(2))
  spec.check_sweep_dir(first, sweep_dir, CODE_A)
  assert os.path.exists(os.path.join(sweep_dir, spec.SPEC_FILE))
  # The same variants with more seeds, another baseline or metric: the same sweep.
  spec.check_sweep_dir(spec.build(BASE, ['learning_rate=1e-3,3e-3'], [], range(5),
                                   baseline='learning_rate=3e-3',
                                   metric='test_accuracy'), sweep_dir, CODE_A)
  for other in (spec.build(BASE, ['learning_rate=1e-3,1e-2'], [], range(2)),
                spec.build([*BASE, '--batch_size=32'], ['learning_rate=1e-3,3e-3'], [],
                           range(2))):
    with pytest.raises(errors.ConfigError, match='holds a different sweep'):
      spec.check_sweep_dir(other, sweep_dir, CODE_A)


def test_a_non_empty_folder_without_a_sweep_is_refused(tmp_path):
  (tmp_path / 'notes.txt').write_text('mine')
  with pytest.raises(errors.ConfigError, match='is not empty and holds no sweep.json'):
    spec.check_sweep_dir(spec.build(BASE, [], [], [0]), str(tmp_path))


def test_sweep_json_records_the_code_and_a_rerun_under_other_code_is_refused(tmp_path):
  sweep_dir = str(tmp_path / 'sweep')
  sweep = spec.build(BASE, ['learning_rate=1e-3,3e-3'], [], range(2))
  spec.check_sweep_dir(sweep, sweep_dir, CODE_A)
  with open(os.path.join(sweep_dir, spec.SPEC_FILE)) as f:
    recorded = json.load(f)['provenance']
  assert recorded['code_version'] == 'aaaaaaaa' and recorded['code']['dirty'] is False
  assert recorded['packages']['tensorflow'] == metadata.version('tensorflow')
  spec.check_sweep_dir(sweep, sweep_dir, CODE_A)  # The same code resumes.
  with pytest.raises(errors.ConfigError) as e:  # Uncommitted changes on the same commit.
    spec.check_sweep_dir(sweep, sweep_dir, CODE_B)
  message = str(e.value)
  assert 'started under code aaaaaaaa' in message
  assert 'this checkout is aaaaaaaa+dirty.bbbbbbbb' in message
  assert 'Nothing was run' in message and '--allow_code_change' in message
  assert '\n' not in message and errors.ConfigError.exit_code == 2
  allowed = spec.check_sweep_dir(sweep, sweep_dir, CODE_B, allow_code_change=True)
  assert [c['code_version'] for c in allowed['code_changes']] == ['aaaaaaaa+dirty.bbbbbbbb']
  assert allowed['provenance']['code_version'] == 'aaaaaaaa'  # What it started with.
  spec.check_sweep_dir(sweep, sweep_dir, CODE_B)  # Allowed once: part of the sweep now.
  with pytest.raises(errors.ConfigError, match=r'\(later allowed: aaaaaaaa\+dirty'):
    spec.check_sweep_dir(sweep, sweep_dir, provenance.Code('git checkout /repo', 'c' * 40,
                                                           False))


def _no_log(*unused_args, **unused_kwargs):
  pass


def test_the_driver_refuses_other_code_before_any_run_starts(tmp_path):
  sweep_dir = str(tmp_path / 'sweep')
  sweep = spec.build(BASE, ['learning_rate=1e-3,3e-3'], [], range(2))
  spec.check_sweep_dir(sweep, sweep_dir, CODE_A)
  with pytest.raises(errors.ConfigError, match='started under code aaaaaaaa'):
    driver.run(sweep, sweep_dir, code=CODE_B, log=_no_log)
  assert os.listdir(sweep_dir) == [spec.SPEC_FILE]  # No run, log or event file.
