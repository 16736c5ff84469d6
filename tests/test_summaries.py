"""TensorBoard extras: images, histograms, HParams and profiles, read back from the
event files and from a real `tensorboard` server over the same run."""
import glob
import os
from urllib import parse

import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.plugins.hparams import metadata as hparams_metadata
from tensorboard.util import tensor_util

from mnist import config as config_lib
from mnist import errors
from mnist import provenance
from mnist import summaries
from mnist import train

from conftest import synthetic_splits
import tensorboard_server

# Injected, so the assertions do not depend on the state of this checkout.
CODE = provenance.Code(source='git checkout /repo', commit='1a2b3c4d' + '0' * 32,
                       dirty=True, diff_sha256='5e6f7a8b' + '0' * 56)


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """One short profiled run, shared: (logdir holding it, its model_dir, results)."""
  logdir = tmp_path_factory.mktemp('logdir')
  config = config_lib.TrainConfig(model_dir=str(logdir / 'run'), epochs=2, batch_size=32,
                                  eval_batch_size=128, log_every_steps=5,
                                  profile_steps='3,6')
  return str(logdir), config.model_dir, train.run(config, datasets_override=synthetic_splits(),
                                                  code_override=CODE)


def _tensors(run_dir):
  """{tag: (plugin name, [(step, ndarray)])} of one run directory."""
  accumulator = event_accumulator.EventAccumulator(run_dir, size_guidance={'tensors': 0})
  accumulator.Reload()
  return {tag: (accumulator.SummaryMetadata(tag).plugin_data.plugin_name,
                [(e.step, tensor_util.make_ndarray(e.tensor_proto))
                 for e in accumulator.Tensors(tag)])
          for tag in accumulator.Tags()['tensors']}


@pytest.mark.slow
def test_each_eval_writes_a_confusion_matrix_and_misclassified_digits(trained):
  _, model_dir, results = trained
  tensors = _tensors(os.path.join(model_dir, 'eval'))
  for tag in ('confusion_matrix', 'misclassified'):
    plugin, events = tensors[tag]
    assert plugin == 'images'
    assert [step for step, _ in events] == [16, 32]  # Once per epoch.
    width, height, png = events[-1][1]
    assert png.startswith(b'\x89PNG') and int(width) > 100 and int(height) > 100
  plugin, events = tensors[summaries.CONFUSION_COUNTS_TAG]
  counts = events[-1][1]
  assert plugin == summaries.CONFUSION_COUNTS_PLUGIN and counts.shape == (10, 10)
  assert counts.sum() == results['test_examples'] == 300  # Padding is not counted.
  assert np.trace(counts) / 300 == pytest.approx(results['test_accuracy'])


def test_each_epoch_writes_weight_and_gradient_histograms_and_norms(trained):
  _, model_dir, _ = trained
  tensors = _tensors(os.path.join(model_dir, 'train'))
  histograms = {tag for tag, (plugin, _) in tensors.items() if plugin == 'histograms'}
  # Tags name each layer by position and type, the same in every process.
  for layer in ('00_conv2d', '02_conv2d', '05_dense', '07_dense'):
    for kind in ('kernel', 'bias'):
      assert {f'weights/{layer}/{kind}', f'gradients/{layer}/{kind}'} <= histograms
      assert tensors[f'gradient_norm/{layer}/{kind}'][0] == 'scalars'
  plugin, norms = tensors['gradient_norm/global']
  assert plugin == 'scalars' and [step for step, _ in norms] == [16, 32]
  assert all(np.isfinite(value) and value > 0 for _, value in norms)
  # Only the epoch ends, not every step, pay for histograms.
  assert len(tensors['weights/05_dense/kernel'][1]) == 2


def test_run_writes_its_config_as_hparams_and_the_test_metrics(trained):
  _, model_dir, results = trained
  tensors = _tensors(model_dir)
  accumulator = event_accumulator.EventAccumulator(model_dir)
  accumulator.Reload()
  content = accumulator.SummaryMetadata(
      hparams_metadata.SESSION_START_INFO_TAG).plugin_data.content
  hparams = hparams_metadata.parse_session_start_info_plugin_data(content).hparams
  assert hparams['learning_rate'].number_value == pytest.approx(1e-3)
  assert hparams['strategy'].string_value == 'default'
  assert hparams['profile_steps'].string_value == '3,6'
  assert hparams['data_dir'].string_value == ''  # None is not an hparams value.
  assert set(hparams) == {*config_lib.TrainConfig.__dataclass_fields__,
                          provenance.CODE_VERSION_HPARAM}
  assert hparams['code_version'].string_value == '1a2b3c4d+dirty.5e6f7a8b'
  plugin, events = tensors[summaries.PROVENANCE_TAG]
  assert plugin == 'text' and [step for step, _ in events] == [0]
  table = events[0][1].item().decode()
  assert f'| commit | `{CODE.commit}` |' in table
  assert results['provenance']['command'] in table.replace('\\|', '|')
  for name in ('test_accuracy', 'test_loss'):
    plugin, events = tensors[name]
    assert plugin == 'scalars'
    step, value = events[-1]
    assert (step, float(value)) == (results['global_step'], pytest.approx(results[name]))


@pytest.mark.slow
def test_profile_steps_write_a_trace_and_no_flag_writes_none(trained, tmp_path, mirrored2):
  _, model_dir, _ = trained
  traces = glob.glob(os.path.join(model_dir, 'plugins', 'profile', '*', '*.xplane.pb'))
  assert len(traces) == 1 and os.path.getsize(traces[0]) > 0
  # Two replicas and a padded last eval batch: every example counted once, no trace.
  config = config_lib.TrainConfig(model_dir=str(tmp_path / 'run'), epochs=1,
                                  batch_size=32, eval_batch_size=100)
  results = train.run(config, datasets_override=synthetic_splits(256, 301),
                      strategy_override=mirrored2)
  _, events = _tensors(os.path.join(config.model_dir, 'eval'))[summaries.CONFUSION_COUNTS_TAG]
  assert events[-1][1].sum() == results['test_examples'] == 301
  assert not os.path.exists(os.path.join(config.model_dir, 'plugins'))


@pytest.mark.parametrize('value', ['5,5', '0,3', '7,2', 'a,b', '3', '1,2,3'])
def test_invalid_profile_steps_are_refused(value):
  with pytest.raises(errors.ConfigError, match='--profile_steps must be START,END'):
    config_lib.TrainConfig(profile_steps=value).validate()


def test_profile_steps_parse_and_empty_means_off():
  assert config_lib.TrainConfig(profile_steps='10,20').validate().profile_step_range() == (
      10, 20)
  for off in (None, ''):
    assert config_lib.TrainConfig(profile_steps=off).validate().profile_step_range() is None


@pytest.mark.slow
def test_real_tensorboard_serves_scalars_images_histograms_hparams_and_profile(
    trained, tmp_path):
  logdir, _, results = trained
  ready = lambda s: 'test_accuracy' in s.get('/data/plugin/scalars/tags').get('run', {})
  with tensorboard_server.serve(logdir, str(tmp_path / 'tensorboard.log'), ready) as server:
    listing = server.get('/data/plugins_listing')
    for plugin in ('scalars', 'images', 'histograms', 'hparams', 'profile'):
      assert listing[plugin]['enabled'], plugin
    assert {'run', 'run/train', 'run/eval'} <= set(server.get('/data/runs'))

    scalar_tags = server.get('/data/plugin/scalars/tags')
    assert {'loss', 'accuracy', 'gradient_norm/global'} <= set(scalar_tags['run/train'])
    points = server.get('/data/plugin/scalars/scalars?run=run&tag=test_accuracy')
    assert points[-1][1:] == [results['global_step'], pytest.approx(results['test_accuracy'])]

    assert {'confusion_matrix', 'misclassified'} <= set(
        server.get('/data/plugin/images/tags')['run/eval'])
    images = server.get('/data/plugin/images/images?run=run/eval&tag=misclassified')
    assert [image['step'] for image in images] == [16, 32]
    png = server.get('/data/plugin/images/individualImage?' + images[-1]['query'], raw=True)
    assert png.startswith(b'\x89PNG')

    assert {'weights/05_dense/kernel', 'gradients/05_dense/kernel'} <= set(
        server.get('/data/plugin/histograms/tags')['run/train'])
    histogram = server.get('/data/plugin/histograms/histograms?' + parse.urlencode(
        {'run': 'run/train', 'tag': 'weights/05_dense/kernel'}))
    assert [step for _, step, _ in histogram] == [16, 32]

    experiment = server.get('/data/plugin/hparams/experiment', {'experimentName': ''})
    types = {info['name']: info['type'] for info in experiment['hparamInfos']}
    assert types['learning_rate'] == 'DATA_TYPE_FLOAT64'
    assert types['strategy'] == 'DATA_TYPE_STRING'
    metrics = {(m['name'].get('group', ''), m['name']['tag'])
               for m in experiment['metricInfos']}
    assert {('', 'test_accuracy'), ('', 'test_loss'), ('eval', 'accuracy')} <= metrics
    groups = server.session_groups()
    assert len(groups) == 1 and groups[0]['hparams']['batch_size'] == 32
    assert groups[0]['hparams']['code_version'] == '1a2b3c4d+dirty.5e6f7a8b'
    assert types['code_version'] == 'DATA_TYPE_STRING'

    # The Text dashboard: the run's provenance table, rendered (Markdown to HTML).
    assert summaries.PROVENANCE_TAG in server.get('/data/plugin/text/tags')['run']
    texts = server.get('/data/plugin/text/text?' + parse.urlencode(
        {'run': 'run', 'tag': summaries.PROVENANCE_TAG}))
    assert [text['step'] for text in texts] == [0]
    assert CODE.commit in texts[0]['text'] and '<table>' in texts[0]['text']
    assert '1a2b3c4d+dirty.5e6f7a8b' in texts[0]['text']
    values = {m['name']['tag']: m['value'] for m in groups[0]['metricValues']
              if not m['name'].get('group')}
    assert values['test_accuracy'] == pytest.approx(results['test_accuracy'])

    profile_runs = server.get('/data/plugin/profile/runs')
    assert len(profile_runs) == 1 and profile_runs[0].startswith('run/')
    tools = server.get('/data/plugin/profile/run_tools?' + parse.urlencode(
        {'run': profile_runs[0]}))
    assert {'overview_page', 'trace_viewer@'} <= set(tools)
