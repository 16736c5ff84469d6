"""The training loop on injected data and strategies: results, resume, replicas, precision."""
import dataclasses
import json
import logging
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator

from mnist import batch_norm
from mnist import config as config_lib
from mnist import data
from mnist import errors
from mnist import evaluate
from mnist import hardware
from mnist import inference
from mnist import launch
from mnist import losses as losses_lib
from mnist import model as model_lib
from mnist import optim
from mnist import provenance
from mnist import scoring
from mnist import train
from mnist import train_step

from conftest import REPO
from conftest import synthetic_splits
import loss_scale_overflow
from loss_scale_overflow import BRIGHT


def _config(tmp_path, **changes):
  return config_lib.TrainConfig(model_dir=str(tmp_path / 'run'), epochs=2, batch_size=32,
                                eval_batch_size=128, log_every_steps=5).replace(**changes)


def _scalar_tags(run_dir):
  """TF2 writes scalars as tensor summaries; TensorBoard reads them back the same way."""
  accumulator = event_accumulator.EventAccumulator(run_dir, size_guidance={'tensors': 0})
  accumulator.Reload()
  tags = {tag: [tf.make_ndarray(e.tensor_proto) for e in accumulator.Tensors(tag)]
          for tag in accumulator.Tags()['tensors']}
  return {tag: [float(v) for v in values] for tag, values in tags.items()
          if values and values[0].ndim == 0}  # Scalars, not histograms or images.


@pytest.mark.slow
def test_run_trains_evaluates_and_writes_everything_a_user_inspects(tmp_path, splits):
  config = _config(tmp_path, epochs=3, steps_per_loop=3)
  results = train.run(config, datasets_override=splits)

  assert results['test_examples'] == 300  # 128 + 128 + a partial 44.
  assert results['test_accuracy'] > 0.9  # The toy task is easy; untrained is ~0.1.
  assert results['global_step'] == 3 * (512 // 32)
  assert results['epochs_completed'] == 3
  assert results['train_seconds'] > 0 and len(results['weights_sha256']) == 64
  with open(os.path.join(config.model_dir, 'results.json')) as f:
    assert json.load(f) == results
  train_scalars = _scalar_tags(os.path.join(config.model_dir, 'train'))
  assert {'loss', 'accuracy', 'learning_rate', 'images_per_sec'} <= set(train_scalars)
  assert len(train_scalars['loss']) >= 48 // 5
  eval_scalars = _scalar_tags(os.path.join(config.model_dir, 'eval'))
  assert len(eval_scalars['accuracy']) == 3
  assert eval_scalars['accuracy'][-1] == pytest.approx(results['test_accuracy'])
  assert tf.train.latest_checkpoint(os.path.join(config.model_dir, 'checkpoints'))


@pytest.mark.slow
def test_rerun_resumes_without_redoing_epochs_and_more_epochs_continue(tmp_path, splits):
  config = _config(tmp_path, epochs=1)
  first = train.run(config, datasets_override=splits)
  again = train.run(config, datasets_override=splits)
  assert again['global_step'] == first['global_step'] == 16
  assert again['weights_sha256'] == first['weights_sha256']
  assert again['test_accuracy'] == first['test_accuracy']
  longer = train.run(config.replace(epochs=2), datasets_override=splits)
  assert (longer['global_step'], longer['epochs_completed']) == (32, 2)
  assert longer['weights_sha256'] != first['weights_sha256']


# Adam's first steps move every weight by about +-learning_rate whatever its gradient's
# size, so a gradient that is zero up to rounding takes a full step of random sign on
# each side: with batch norm, oneDNN's AVX2 kernels (ONEDNN_MAX_CPU_ISA=AVX2) ended 6
# steps 3.4e-3 apart, AVX-512's 1.5e-5. An epsilon of 1e-2 makes steps proportional to
# gradients below it, so rounding stays rounding (4.4e-5 and 2.9e-6), while batch norm
# left unsynchronized still ends 5.9e-2 apart.
_ROUNDING_PROOF_EPSILON = 1e-2


def _train_k_steps(strategy, config, splits, k):
  state = train.create_state(config, splits, strategy)
  state.optimizer.epsilon = _ROUNDING_PROOF_EPSILON  # Read when the step is traced.
  steps = train_step.train_steps_for(config, state, strategy)
  dataset = data.train_pipeline(splits.train.cache(), splits.num_train, config.batch_size,
                                config.seed, epoch=0)
  iterator = iter(strategy.experimental_distribute_dataset(dataset))
  counts = train_step.read(steps(iterator, tf.constant(k)))
  totals = [counts[name] for name in ('loss_sum', 'correct', 'count')]
  eval_step = scoring.make_eval_step(state.model, strategy, splits.num_classes)
  metrics = scoring.evaluate(eval_step, strategy.experimental_distribute_dataset(
      data.eval_pipeline(splits.eval, splits.num_eval, config.eval_batch_size)), strategy)
  return [w.numpy() for w in state.model.weights], totals, metrics


@pytest.mark.parametrize('changes, tolerance', [
    ({'dropout_rate': 0.5, 'augment': True}, 1e-5),
    # Synchronized batch norm: two-pass statistics over the global batch, not the fused
    # kernel's, so more rounding (4.4e-5 apart with AVX2 kernels).
    ({'dropout_rate': 0.5, 'batch_norm': True}, 1e-4),
])
@pytest.mark.slow
def test_two_replicas_train_exactly_like_one_device(tmp_path, splits, mirrored2, changes,
                                                    tolerance):
  # Every example draws the same dropout mask and augmentation on either, and batch
  # norm normalises over the global batch on both. (Elastic distortion and cutout are
  # left out: they put exact zeros on ReLU's kink at the zero-initialised conv bias,
  # where rounding alone flips a gradient; their draws are compared in
  # test_randomness.py.)
  config = _config(tmp_path, batch_size=64, **changes)
  one_weights, one_totals, one_eval = _train_k_steps(tf.distribute.get_strategy(), config,
                                                     splits, k=6)
  two_weights, two_totals, two_eval = _train_k_steps(mirrored2, config, splits, k=6)
  max_diff = max(float(np.max(np.abs(a - b))) for a, b in zip(one_weights, two_weights))
  assert max_diff <= tolerance
  np.testing.assert_allclose(one_totals, two_totals, rtol=1e-5)
  assert two_eval['examples'] == one_eval['examples'] == 300
  assert two_eval['accuracy'] == pytest.approx(one_eval['accuracy'], abs=1e-6)
  assert two_eval['loss'] == pytest.approx(one_eval['loss'], rel=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize('first_on_two_replicas', [True, False])
def test_a_run_resumed_on_another_replica_count_continues_the_same_trajectory(
    tmp_path, splits, mirrored2, first_on_two_replicas):
  """Elastic resume: epoch 1 on 2 replicas then epoch 2 on one device (or the other
  way round) ends where 2 epochs on one device end: the checkpoint holds one copy of
  every variable and the draws of epoch 2 depend only on (seed, step)."""
  one_device = tf.distribute.get_strategy()
  first, second = (mirrored2, one_device) if first_on_two_replicas else (one_device,
                                                                           mirrored2)
  config = _config(tmp_path, epochs=1, batch_size=64, dropout_rate=0.5, augment=True,
                   augment_cutout_pixels=6, batch_norm=True)
  first_run = train.run(config, datasets_override=splits, strategy_override=first)
  resumed = train.run(config.replace(epochs=2), datasets_override=splits,
                      strategy_override=second)
  straight = train.run(config.replace(epochs=2, model_dir=str(tmp_path / 'straight')),
                       datasets_override=splits, strategy_override=one_device)
  assert resumed['global_step'] == straight['global_step'] == 16
  # Epoch 1 was not redone: its evaluation comes from the checkpoint's record.
  assert [entry['epoch'] for entry in resumed['eval_history']] == [1, 2]
  assert resumed['eval_history'][0]['seconds'] == first_run['eval_history'][0]['seconds']
  assert resumed['test_loss'] == pytest.approx(straight['test_loss'], rel=1e-3)
  assert resumed['test_accuracy'] == pytest.approx(straight['test_accuracy'], abs=1e-6)


def _one_sgd_step(config, splits, sam_rho):
  """(model, weights before, their change, the batch) for one train step with SGD
  at learning rate 1, which moves the weights by exactly minus the gradient."""
  strategy = tf.distribute.get_strategy()
  state = train.create_state(config, splits, strategy)
  state = dataclasses.replace(state, optimizer=keras.optimizers.SGD(learning_rate=1.0))
  state.optimizer.build(state.model.trainable_variables)
  before = [v.numpy() for v in state.model.trainable_variables]
  batch = next(iter(data.train_pipeline(splits.train.cache(), splits.num_train,
                                        config.batch_size, config.seed, epoch=0)))
  steps = train_step.make_train_steps(state, strategy, config.batch_size, sam_rho=sam_rho)
  steps(iter(tf.data.Dataset.from_tensors(batch)), tf.constant(1))
  change = [v.numpy() - b for v, b in zip(state.model.trainable_variables, before)]
  return state.model, before, change, batch


@pytest.mark.slow
def test_sam_takes_the_gradient_at_the_weights_moved_rho_up_the_gradient(tmp_path, splits):
  config = _config(tmp_path, model='seed_cnn', batch_norm=True, dropout_rate=0.0)
  model, before, change, (images, labels) = _one_sgd_step(config, splits, sam_rho=0.5)

  def gradient_at(weights):
    for variable, value in zip(model.trainable_variables, weights):
      variable.assign(value)
    with tf.GradientTape() as tape:
      losses, _ = losses_lib.per_example_stats(model(images, training=True), labels)
      loss = tf.reduce_sum(losses) / config.batch_size
    return [g.numpy() for g in tape.gradient(loss, model.trainable_variables)]
  gradient = gradient_at(before)
  norm = np.sqrt(sum(np.sum(g ** 2) for g in gradient))
  expected = gradient_at([w + 0.5 * g / norm for w, g in zip(before, gradient)])
  for got, want in zip(change, expected):
    np.testing.assert_allclose(-got, want, rtol=1e-3, atol=1e-5)
  assert max(np.max(np.abs(e - g)) for e, g in zip(expected, gradient)) > 1e-3  # Not SGD.


@pytest.mark.slow
def test_sam_second_pass_reuses_the_first_pass_augmentation_and_dropout(tmp_path, splits):
  # With a tiny radius the gradient does not move, but only if both passes see the
  # same augmented images and dropout masks. (Batch norm: a conv bias starts at 0,
  # and on the zeros augmentation brings in it would sit on ReLU's kink.)
  config = _config(tmp_path, model='seed_cnn', batch_norm=True, augment=True,
                   dropout_rate=0.5)
  _, _, plain, _ = _one_sgd_step(config, splits, sam_rho=0.0)
  _, _, sam, _ = _one_sgd_step(config, splits, sam_rho=1e-7)
  for s, p in zip(sam, plain):
    np.testing.assert_allclose(s, p, rtol=0, atol=1e-4 * np.max(np.abs(p)))


@pytest.mark.slow
def test_sam_trains_under_two_replicas(tmp_path, splits, mirrored2):
  results = train.run(_config(tmp_path, epochs=2, batch_norm=True, sam_rho=0.05),
                      datasets_override=splits, strategy_override=mirrored2)
  assert results['num_replicas'] == 2 and results['test_accuracy'] > 0.5


@pytest.mark.slow
def test_mirrored_run_scores_every_eval_example_with_an_uneven_last_batch(tmp_path,
                                                                           mirrored2):
  splits = synthetic_splits(num_train=256, num_eval=301)
  results = train.run(_config(tmp_path, epochs=1, eval_batch_size=100),
                      datasets_override=splits, strategy_override=mirrored2)
  assert results['test_examples'] == 301 and results['num_replicas'] == 2


@pytest.mark.parametrize('changes', [
    {'mixed_precision': 'mixed_float16'},
    {'mixed_precision': 'mixed_bfloat16'},
    {'jit_compile': True},
    {'sam_rho': 0.05, 'mixed_precision': 'mixed_float16'},  # Through the loss scale.
    {'sam_rho': 0.05, 'jit_compile': True},
])
@pytest.mark.slow
def test_precision_and_xla_paths_train_on_cpu(tmp_path, splits, changes):
  results = train.run(_config(tmp_path, epochs=2, **changes), datasets_override=splits)
  assert np.isfinite(results['test_loss'])
  assert results['test_accuracy'] > 0.5


def test_loss_scale_optimizer_is_used_for_float16_only(tmp_path, splits):
  strategy = tf.distribute.get_strategy()
  for precision, scaled in [('mixed_float16', True), ('mixed_bfloat16', False)]:
    state = train.create_state(_config(tmp_path, mixed_precision=precision), splits, strategy)
    assert isinstance(state.optimizer, tf.keras.optimizers.LossScaleOptimizer) == scaled


@pytest.mark.slow
def test_checkpoint_from_other_flags_is_refused_not_partially_loaded(tmp_path, splits):
  config = _config(tmp_path, epochs=1)
  train.run(config, datasets_override=splits)
  with pytest.raises(errors.CheckpointError, match='does not match this model and flags'):
    train.run(config.replace(mixed_precision='mixed_float16'), datasets_override=splits)


def test_unusable_model_dir_is_a_clear_error(tmp_path, splits):
  blocker = tmp_path / 'a_file'
  blocker.write_text('not a directory')
  with pytest.raises(errors.CheckpointError, match='cannot be created'):
    train.run(_config(tmp_path, model_dir=str(blocker / 'run')), datasets_override=splits)


def test_batch_not_divisible_by_replicas_is_refused(tmp_path, splits, mirrored2):
  with pytest.raises(errors.ConfigError, match='not divisible by the 2 replicas'):
    train.run(_config(tmp_path, batch_size=33), datasets_override=splits,
              strategy_override=mirrored2)


def test_split_smaller_than_a_batch_is_refused(tmp_path):
  with pytest.raises(errors.ConfigError, match='fewer than one --batch_size'):
    train.run(_config(tmp_path, batch_size=64),
              datasets_override=synthetic_splits(num_train=50))


@pytest.mark.slow
def test_batch_norm_statistics_train_under_two_replicas(tmp_path, splits, mirrored2):
  config = _config(tmp_path, epochs=1, batch_norm=True)
  results = train.run(config, datasets_override=splits, strategy_override=mirrored2)
  model = inference.load_model(config.model_dir)
  norms = [layer for layer in model.layers
           if isinstance(layer, batch_norm.FusedBatchNormalization)]
  assert len(norms) == 2 and all(np.any(n.moving_mean.numpy() != 0) for n in norms)
  # The checkpointed statistics are the ones the run's final eval used.
  reloaded = evaluate.evaluate_model(model, splits.eval, splits.num_eval,
                                     config.eval_batch_size, splits.num_classes)
  assert reloaded['loss'] == pytest.approx(results['test_loss'], rel=1e-4)


@pytest.mark.slow
def test_fingerprint_in_results_is_the_final_model(tmp_path, splits):
  config = _config(tmp_path, epochs=1)
  results = train.run(config, datasets_override=splits)
  state = train.create_state(config, splits, tf.distribute.get_strategy())
  tf.train.Checkpoint(model=state.model).restore(
      tf.train.latest_checkpoint(os.path.join(config.model_dir, 'checkpoints'))
  ).expect_partial()
  assert model_lib.weights_sha256(state.model) == results['weights_sha256']


def _with_validation(splits):
  """The toy splits plus a validation split carved from other toy training data."""
  extra = synthetic_splits(num_train=200, seed=5)
  return dataclasses.replace(splits, validation=extra.train, num_validation=200)


@pytest.mark.slow
def test_validation_split_is_evaluated_each_epoch_and_test_only_at_the_end(tmp_path, splits):
  config = _config(tmp_path, epochs=2, validation_split='train[55000:]')
  results = train.run(config, datasets_override=_with_validation(splits))
  assert [e['split'] for e in results['eval_history']] == ['train[55000:]'] * 2
  assert [e['examples'] for e in results['eval_history']] == [200, 200]
  assert results['validation_examples'] == 200 and results['test_examples'] == 300
  assert results['validation_accuracy'] == results['eval_history'][-1]['accuracy']
  validation_scalars = _scalar_tags(os.path.join(config.model_dir, 'validation'))
  assert len(validation_scalars['accuracy']) == 2
  assert not os.path.exists(os.path.join(config.model_dir, 'eval'))


@pytest.mark.slow
def test_eval_uses_the_weight_averages_when_ema_is_on(tmp_path, splits):
  config = _config(tmp_path, epochs=1, ema_momentum=0.9)
  results = train.run(config, datasets_override=splits)
  # Rebuild from the checkpoint: raw weights vs their averages.
  state = train.create_state(config, splits, tf.distribute.get_strategy())
  state.checkpoint().restore(
      tf.train.latest_checkpoint(os.path.join(config.model_dir, 'checkpoints'))
  ).assert_consumed()
  strategy = tf.distribute.get_strategy()
  eval_step = scoring.make_eval_step(state.model, strategy, splits.num_classes)
  dataset = data.eval_pipeline(splits.eval, splits.num_eval, config.eval_batch_size)
  raw = scoring.evaluate(eval_step, dataset, strategy)
  with optim.ema_weights(state.model, state.optimizer):
    averaged = scoring.evaluate(eval_step, dataset, strategy)
  assert results['test_loss'] == pytest.approx(averaged['loss'], rel=1e-6)
  assert raw['loss'] != pytest.approx(averaged['loss'], rel=1e-6)
  # And what scripts/evaluate, predict and export load is the averaged model too.
  loaded = inference.load_model(config.model_dir)
  for a, b in zip(loaded.trainable_variables, state.model.trainable_variables):
    assert not np.array_equal(a.numpy(), b.numpy()) or a.shape == ()
  with optim.ema_weights(state.model, state.optimizer):
    for a, b in zip(loaded.trainable_variables, state.model.trainable_variables):
      np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_xla_over_logical_cpu_replicas_is_refused_clearly(tmp_path, splits, mirrored2):
  with pytest.raises(errors.ConfigError, match='XLA cannot reach variables'):
    train.run(_config(tmp_path, jit_compile=True), datasets_override=splits,
              strategy_override=mirrored2)


@pytest.mark.slow
def test_auto_precision_is_resolved_recorded_and_the_hardware_with_it(tmp_path, splits):
  config = _config(tmp_path, epochs=1, mixed_precision='auto')
  results = train.run(config, datasets_override=splits)
  expected = hardware.resolve_precision(hardware.cpu(), hardware.gpus())
  assert results['config']['mixed_precision'] == expected
  with open(os.path.join(config.model_dir, 'config.json')) as f:
    assert json.load(f)['mixed_precision'] == expected
  assert results['hardware'] == hardware.as_dict(hardware.cpu(), hardware.gpus())


@pytest.mark.slow
def test_a_run_resumed_in_another_precision_says_so_or_names_both(tmp_path, splits, caplog):
  # bfloat16 and float32 checkpoints hold the same float32 variables: it continues.
  config = _config(tmp_path, epochs=1, mixed_precision='mixed_bfloat16')
  train.run(config, datasets_override=splits)
  with caplog.at_level(logging.INFO, logger='absl'):  # Earlier tests may raise its level.
    resumed = train.run(config.replace(epochs=2, mixed_precision='float32'),
                        datasets_override=splits)
  assert resumed['epochs_completed'] == 2
  assert any('(written under mixed_bfloat16; continuing in float32)' in m
             for m in caplog.messages)
  # float16's loss scaling adds optimizer variables: refused, naming both.
  scaled = _config(tmp_path / 'f16', epochs=1, mixed_precision='mixed_float16')
  caplog.clear()
  with caplog.at_level(logging.INFO, logger='absl'):
    train.run(scaled, datasets_override=splits)
  # No GPU here: float16 is emulated on any CPU, and the run says so.
  assert any(m.startswith('--mixed_precision=mixed_float16 on a CPU runs in emulated')
             for m in caplog.messages)
  with pytest.raises(errors.CheckpointError,
                     match='written under --mixed_precision=mixed_float16 and this run '
                           'uses float32'):
    train.run(scaled.replace(epochs=2, mixed_precision='float32'), datasets_override=splits)


@pytest.mark.slow  # Trains (tiny, but several seconds of tracing).
def test_a_run_resumed_under_other_code_lists_both_segments_and_warns(tmp_path, caplog):
  """Each process that trained the run is a segment of results.json; config.json keeps
  the record apart from the config, which the other scripts still rebuild from it."""
  old = provenance.Code(source='git checkout /old', commit='a' * 40, dirty=False)
  new = provenance.Code(source='git checkout /new', commit='b' * 40, dirty=True,
                        diff_sha256='c' * 64)
  config = _config(tmp_path, epochs=1, epoch_summaries=False)
  tiny = synthetic_splits(num_train=64, num_eval=32)  # 2 steps an epoch.
  first = train.run(config, datasets_override=tiny, code_override=old)
  assert [(s['code_version'], s['first_step'], s['last_step'])
          for s in first['provenance']['segments']] == [('aaaaaaaa', 0, 2)]
  with caplog.at_level(logging.INFO, logger='absl'):
    resumed = train.run(config.replace(epochs=2), datasets_override=tiny,
                        code_override=new)
  record = resumed['provenance']
  assert [(s['code_version'], s['first_step'], s['last_step'])
          for s in record['segments']] == [('aaaaaaaa', 0, 2),
                                           ('bbbbbbbb+dirty.cccccccc', 2, 4)]
  assert record['code_version'] == 'bbbbbbbb+dirty.cccccccc'
  assert record['end_time'] >= record['start_time']
  assert record['dataset']['train_split'] == 'train'
  warnings = [m for m in caplog.messages if m.startswith('Resuming a run at step 2')]
  assert len(warnings) == 1 and 'code aaaaaaaa -> bbbbbbbb+dirty.cccccccc' in warnings[0]
  with open(os.path.join(config.model_dir, 'results.json')) as f:
    assert json.load(f)['provenance'] == record
  with open(os.path.join(config.model_dir, 'config.json')) as f:
    written = json.load(f)
  assert written['provenance']['segments'][-1]['last_step'] is None  # Still training then.
  # What scripts/evaluate, predict and export rebuild from config.json.
  assert inference.read_config(config.model_dir) == config.replace(epochs=2)


@pytest.mark.parametrize('values, skipped', [
    ((loss_scale_overflow.ORDINARY, loss_scale_overflow.ORDINARY), False),
    ((0.0, loss_scale_overflow.BRIGHT), True),  # Replica 1 alone overflows.
    ((loss_scale_overflow.BRIGHT, 0.0), True),
])
def test_an_overflow_on_any_replica_skips_the_step_on_all_and_halves_the_scale(
    mirrored2, values, skipped):
  outcome = loss_scale_overflow.one_step(mirrored2, values)
  assert outcome['consumed'] == 1 and outcome['finite']
  assert outcome['changed'] != skipped
  assert outcome['scale_after'] == outcome['scale_before'] / (2 if skipped else 1)


@pytest.mark.slow
def test_an_overflow_on_one_worker_skips_the_step_on_both_workers(tmp_path):
  """The same with 2 local worker processes (MultiWorkerMirroredStrategy): the workers
  agree, the scale halves on both, and neither hangs in a collective."""
  script = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'loss_scale_overflow.py')
  ports = launch.free_ports(2)
  workers = []
  for index in range(2):
    tf_config = {'cluster': {'worker': [f'127.0.0.1:{port}' for port in ports]},
                 'task': {'type': 'worker', 'index': index}}
    env = {**os.environ, 'TF_CONFIG': json.dumps(tf_config), 'PYTHONPATH': REPO}
    workers.append(subprocess.Popen([sys.executable, script, f'0,{BRIGHT}'], env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True))
  try:
    outputs = [worker.communicate(timeout=120) for worker in workers]  # Hung: fail.
  finally:
    for worker in workers:
      if worker.poll() is None:
        worker.kill()
  for worker, (stdout, stderr) in zip(workers, outputs):
    assert worker.returncode == 0, stderr[-3000:]
    outcome = json.loads(stdout.strip().splitlines()[-1])
    assert outcome['finite'] and not outcome['changed']
    assert outcome['scale_after'] == outcome['scale_before'] / 2
