"""--input_on_device (mnist/device_input.py): the pipeline's batches, gathered on the
device, so switching changes no weight."""
import numpy as np
import pytest
import tensorflow as tf

from mnist import config as config_lib
from mnist import data
from mnist import device_input
from mnist import errors
from mnist import train

from conftest import synthetic_splits

BATCH = 32


@tf.function
def _take(iterator, num_batches):
  """Batches drawn inside a compiled function, as train_steps draws them."""
  return [next(iterator) for _ in range(num_batches)]


@pytest.mark.parametrize('epoch, skip_batches', [(0, 0), (3, 0), (1, 5)])
def test_batches_equal_the_pipeline_s_bit_for_bit(epoch, skip_batches):
  splits = synthetic_splits()  # 512 examples: 16 batches.
  cached = splits.train.cache()
  pipeline = list(data.train_pipeline(cached, splits.num_train, BATCH, seed=7, epoch=epoch,
                                      skip_batches=skip_batches))
  batches = device_input.DeviceBatches(cached, splits.num_train, BATCH, 7, '/CPU:0')
  gathered = _take(batches.start_epoch(epoch, skip_batches), len(pipeline))
  assert len(pipeline) == 16 - skip_batches
  for (images, labels), (device_images, device_labels) in zip(pipeline, gathered):
    np.testing.assert_array_equal(device_labels.numpy(), labels.numpy())
    assert device_labels.dtype == labels.dtype == tf.int32
    # Bitwise: normalised in the loop by division, Grappler's x * (1/255) was 1 ulp off.
    np.testing.assert_array_equal(device_images.numpy(), images.numpy())


def test_epoch_order_is_the_pipeline_s_and_differs_by_epoch():
  labels = np.arange(100)
  examples = tf.data.Dataset.from_tensor_slices((np.zeros((100, 2, 2, 1), np.uint8), labels))
  order = [int(label) for _, label in data.train_pipeline(examples.cache(), 100, 10, seed=3,
                                                          epoch=2).unbatch()]
  assert list(device_input.epoch_order(100, seed=3, epoch=2)) == order
  assert list(device_input.epoch_order(100, seed=3, epoch=1)) != order


def test_only_the_default_strategy_takes_it():
  with pytest.raises(errors.ConfigError, match='--input_on_device is for --strategy=default'):
    config_lib.TrainConfig(input_on_device=True, strategy='mirrored', cpu_devices=2).validate()
  config_lib.TrainConfig(input_on_device=True).validate()


@pytest.mark.slow
def test_a_deterministic_run_ends_with_the_pipeline_run_s_weights(tmp_path):
  """Through resumes too: the run is rewound to a mid-epoch checkpoint and rerun."""
  splits = synthetic_splits()
  config = config_lib.TrainConfig(epochs=2, batch_size=BATCH, eval_batch_size=100,
                                  deterministic=True, checkpoint_every_steps=5,
                                  checkpoints_to_keep=10)
  pipeline = train.run(config.replace(model_dir=str(tmp_path / 'pipeline')),
                       datasets_override=splits)
  on_device = config.replace(model_dir=str(tmp_path / 'device'), input_on_device=True)
  assert train.run(on_device, datasets_override=splits)['weights_sha256'] == \
      pipeline['weights_sha256']
  checkpoints = str(tmp_path / 'device' / 'checkpoints')
  tf.compat.v1.train.update_checkpoint_state(checkpoints, f'{checkpoints}/ckpt-20')
  assert train.run(on_device, datasets_override=splits)['weights_sha256'] == \
      pipeline['weights_sha256']
