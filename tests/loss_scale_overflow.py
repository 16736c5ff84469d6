"""One mixed_float16 train step in which only replica 1's gradient overflows float16.

`one_step(strategy)` runs it through train_step.train_steps_for, replica 0 fed blank
digits and replica 1 bright ones (bright enough that its scaled gradient exceeds
float16 at the starting loss scale, while its loss stays finite). Run as a script, it
is one worker of a MultiWorkerMirroredStrategy cluster (TF_CONFIG): worker i is
replica i, and it prints the outcome as JSON.
"""
import json
import sys

import numpy as np
import tensorflow as tf

from mnist import config as config_lib
from mnist import data
from mnist import train
from mnist import train_step

PER_REPLICA_BATCH = 4
# Measured (oneDNN on and off alike): at scale 32768 the seed CNN's first kernel
# gradient overflows from pixels between 15 and 20 on, while the loss stays finite up to
# 300 at least; 100 and 1 sit well to either side.
BRIGHT, ORDINARY = 100.0, 1.0


def _batches(values, context: tf.distribute.InputContext) -> tf.data.Dataset:
  """Replica r's batch has every pixel at values[r]: one pipeline per worker (each
  feeding its one replica) or one for all (its elements go to the replicas in turn)."""
  mine = values if context.num_input_pipelines == 1 else [
      values[context.input_pipeline_id]]
  images = np.stack([np.full((PER_REPLICA_BATCH, 28, 28, 1), v, np.float32) for v in mine])
  labels = np.tile(np.arange(PER_REPLICA_BATCH, dtype=np.int32), (len(mine), 1))
  return tf.data.Dataset.from_tensor_slices((images, labels))


def one_step(strategy: tf.distribute.Strategy, values=(0.0, BRIGHT)) -> dict:
  """The loss scale before and after one step, and whether the weights changed and
  stayed finite."""
  splits = data.Splits(train=None, eval=None, num_train=64, num_eval=0, num_classes=10,
                       image_shape=(28, 28, 1))
  config = config_lib.TrainConfig(model_dir='unused', dropout_rate=0.0,
                                  mixed_precision='mixed_float16',
                                  batch_size=PER_REPLICA_BATCH * len(values))
  state = train.create_state(config, splits, strategy)
  steps = train_step.train_steps_for(config, state, strategy)
  iterator = iter(strategy.distribute_datasets_from_function(
      lambda context: _batches(values, context)))
  before = [v.numpy() for v in state.model.trainable_variables]
  scale_before = float(state.optimizer.dynamic_scale.numpy())
  consumed = train_step.read(steps(iterator, tf.constant(1)))['consumed']
  after = [v.numpy() for v in state.model.trainable_variables]
  return {'consumed': int(consumed), 'scale_before': scale_before,
          'scale_after': float(state.optimizer.dynamic_scale.numpy()),
          'finite': all(bool(np.isfinite(a).all()) for a in after),
          'changed': any(bool((a != b).any()) for a, b in zip(after, before))}


if __name__ == '__main__':
  values = [float(v) for v in sys.argv[1].split(',')] if len(sys.argv) > 1 else [0.0, BRIGHT]
  print(json.dumps(one_step(tf.distribute.MultiWorkerMirroredStrategy(), values)),
        flush=True)
