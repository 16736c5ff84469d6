"""The step's compiled form: no data-dependent branch, one host read per call, and
--jit_compile's one XLA program of gradient and update."""
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.framework import ops

from mnist import config as config_lib
from mnist import data
from mnist import train
from mnist import train_step

_BRANCHES = {'If', 'StatelessIf'}


def _traced(config, splits, strategy=None):
  """(state, the concrete train_steps graph's GraphDef with its function library)."""
  strategy = strategy or tf.distribute.get_strategy()
  state = train.create_state(config, splits, strategy)
  steps = train_step.train_steps_for(config, state, strategy)
  dataset = data.train_pipeline(splits.train.cache(), splits.num_train, config.batch_size,
                                config.seed, epoch=0)
  iterator = iter(strategy.experimental_distribute_dataset(dataset))
  concrete = steps.get_concrete_function(iterator, tf.constant(2))
  return state, steps, iterator, concrete.graph.as_graph_def()


def _op_types(graph_def):
  """Every op type in the graph and in every function it calls."""
  types = [node.op for node in graph_def.node]
  for function in graph_def.library.function:
    types += [node.op for node in function.node_def]
  return types


@pytest.mark.parametrize('changes', [
    {},
    {'nan_policy': 'skip_step'},
    {'mixed_precision': 'mixed_float16'},  # LossScaleOptimizer's scale rule.
    {'lr_schedule': 'cosine', 'warmup_fraction': 0.1},  # Keras' own has a cond.
    {'lr_schedule': 'one_cycle', 'weight_decay': 1e-4, 'ema_momentum': 0.9},
    {'sam_rho': 0.05, 'batch_norm': True},
])
def test_the_compiled_loop_has_no_branch_on_a_device_value(tmp_path, splits, changes):
  config = config_lib.TrainConfig(model_dir=str(tmp_path), batch_size=32, **changes)
  *_, graph_def = _traced(config, splits)
  types = _op_types(graph_def)
  assert 'While' in types or 'StatelessWhile' in types  # The loop over the call's steps.
  assert not _BRANCHES & set(types), sorted(_BRANCHES & set(types))


def test_the_compiled_loop_has_no_branch_over_two_replicas(tmp_path, splits, mirrored2):
  config = config_lib.TrainConfig(model_dir=str(tmp_path), batch_size=32,
                                  mixed_precision='mixed_float16')
  *_, graph_def = _traced(config, splits, mirrored2)
  assert not _BRANCHES & set(_op_types(graph_def))


def _host_reads(monkeypatch) -> list:
  """Counts every read of a device value by the host: numpy(), int(), float(), bool()
  and printing all go through _numpy."""
  reads = []
  original = ops._EagerTensorBase._numpy  # pylint: disable=protected-access

  def counted(self):
    reads.append(1)
    return original(self)
  monkeypatch.setattr(ops._EagerTensorBase, '_numpy', counted)  # pylint: disable=protected-access
  return reads


def test_the_host_reads_the_device_once_per_call(tmp_path, splits, monkeypatch):
  reads = _host_reads(monkeypatch)
  counts = {}
  for steps_per_loop in (2, 4):  # 8 and 4 calls in the epoch's 16 steps; all else alike.
    config = config_lib.TrainConfig(model_dir=str(tmp_path / str(steps_per_loop)),
                                    epochs=1, batch_size=32, log_every_steps=16,
                                    steps_per_loop=steps_per_loop)
    train.run(config, datasets_override=splits)  # Traced and run once before counting.
    reads.clear()
    train.run(config.replace(epochs=2), datasets_override=splits)
    counts[steps_per_loop] = len(reads)
  assert counts[2] - counts[4] == 8 - 4, counts


def test_a_skipped_step_writes_nothing_and_stop_consumes_up_to_it(tmp_path, splits):
  config = config_lib.TrainConfig(model_dir=str(tmp_path), batch_size=32, ema_momentum=0.9,
                                  weight_decay=1e-4)
  state, steps, iterator, _ = _traced(config, splits)
  written = [*state.model.trainable_variables, *state.optimizer.variables]
  steps(iterator, tf.constant(1))
  before = [v.numpy() for v in written]
  first = state.model.trainable_variables[0]
  # A weight of inf makes the loss non-finite: the step is computed, then undone.
  poisoned = first.numpy()
  poisoned.flat[0] = np.inf
  first.assign(poisoned)
  before[0] = poisoned
  counts = train_step.read(steps(iterator, tf.constant(3)))
  assert (counts['consumed'], counts['skipped'], counts['count']) == (0, 1, 0)
  for variable, value in zip(written, before):
    np.testing.assert_array_equal(variable.numpy(), value, err_msg=variable.path)


@pytest.mark.parametrize('replicas, expected', [(1, True), (2, False)])
def test_jit_compile_compiles_the_whole_step_with_one_replica(replicas, expected):
  strategy = type('S', (), {'num_replicas_in_sync': replicas})()
  assert train_step.whole_step_compiled(strategy, jit_compile=True) is expected
  assert not train_step.whole_step_compiled(strategy, jit_compile=False)


def test_the_xla_program_holds_the_gradient_and_the_update(tmp_path, splits):
  config = config_lib.TrainConfig(model_dir=str(tmp_path), batch_size=32, jit_compile=True)
  *_, graph_def = _traced(config, splits)
  compiled = [f for f in graph_def.library.function
              if f.attr['_XlaMustCompile'].b]
  assert compiled
  types = {node.op for f in compiled for node in f.node_def}
  assert 'Conv2DBackpropFilter' in types  # The gradient...
  assert types & {'AssignAddVariableOp', 'AssignSubVariableOp'}  # ...and Adam's update.


@pytest.mark.slow
def test_whole_step_xla_trains_to_the_same_test_loss(tmp_path, splits):
  results = {}
  for jit in (False, True):
    config = config_lib.TrainConfig(model_dir=str(tmp_path / str(jit)), epochs=2,
                                    batch_size=32, dropout_rate=0.0, jit_compile=jit)
    results[jit] = train.run(config, datasets_override=splits)
  assert results[True]['test_loss'] == pytest.approx(results[False]['test_loss'], abs=1e-4)
