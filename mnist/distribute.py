"""tf.distribute strategies by name, including MirroredStrategy over logical CPUs."""
import tensorflow as tf

from mnist import errors


def split_cpu(num_devices: int):
  """Splits the physical CPU into `num_devices` logical devices.

  Must run before TensorFlow initialises its runtime; if it already has, the
  existing split is accepted when it has enough devices.
  """
  cpu = tf.config.list_physical_devices('CPU')[0]
  try:
    if num_devices > 1:
      tf.config.set_logical_device_configuration(
          cpu, [tf.config.LogicalDeviceConfiguration()] * num_devices)
  except RuntimeError:
    pass  # Runtime already initialised: fall through to the count check.
  available = len(tf.config.list_logical_devices('CPU'))
  if available < num_devices:
    raise errors.ConfigError(
        f'--cpu_devices={num_devices} needs {num_devices} logical CPU devices, but '
        f'TensorFlow was already initialised with {available}.')


def make_strategy(name: str, cpu_devices: int = 1) -> tf.distribute.Strategy:
  """default | one_device (first GPU, else CPU) | mirrored (all GPUs, else logical CPUs)."""
  # Physical, not logical: listing logical devices would initialise the runtime
  # and make the CPU split below impossible.
  gpus = tf.config.list_physical_devices('GPU')
  if name == 'default':
    return tf.distribute.get_strategy()
  if name == 'one_device':
    return tf.distribute.OneDeviceStrategy('/gpu:0' if gpus else '/cpu:0')
  if name == 'mirrored':
    if gpus:
      return tf.distribute.MirroredStrategy()
    split_cpu(cpu_devices)
    return tf.distribute.MirroredStrategy([f'/cpu:{i}' for i in range(cpu_devices)])
  raise errors.ConfigError(f'Unknown --strategy={name!r}.')
