"""The script edge: absl flags defined once, turned into a typed TrainConfig.

Library code never reads FLAGS; scripts call `define_train_flags()` at import,
then `train_config_from_flags()` in `main`. This module does not import
TensorFlow, so invalid flags are reported before TensorFlow loads.
"""
import os
import sys

from absl import app
from absl import flags

from mnist import config as config_lib
from mnist import errors

FLAGS = flags.FLAGS
MANUAL_DIR_ENV = 'TFDS_MANUAL_DIR'
_DEFAULTS = config_lib.TrainConfig()


def define_data_flags():
  """--model_dir and the data flags: what every script that reads a run needs."""
  d = _DEFAULTS
  flags.DEFINE_string('model_dir', d.model_dir,
                      'Checkpoints, TensorBoard events, config.json and results.json go '
                      'here. Rerunning with the same --model_dir resumes.')
  flags.DEFINE_string('dataset', d.dataset,
                      'TFDS image-classification dataset with 28x28x1 images.')
  flags.DEFINE_string('data_dir', d.data_dir, "TFDS data_dir (default: TFDS's own).")
  flags.DEFINE_string('tfds_manual_dir', d.tfds_manual_dir,
                      'Folder holding the dataset\'s original files, from which TFDS '
                      f'builds it without network access. Falls back to ${MANUAL_DIR_ENV}.')
  flags.DEFINE_string('train_split', d.train_split,
                      "TFDS split string for training, e.g. 'train[:6400]' for a short run.")
  flags.DEFINE_string('eval_split', d.eval_split, 'TFDS split string for evaluation.')
  flags.DEFINE_integer('eval_batch_size', d.eval_batch_size,
                       'Global evaluation batch; the last batch is padded, never dropped.')


def define_train_flags():
  """Defines every TrainConfig flag. Call once, at a script's import time."""
  define_data_flags()
  d = _DEFAULTS
  flags.DEFINE_integer('epochs', d.epochs, 'Total epochs; a larger value continues a run.')
  flags.DEFINE_integer('batch_size', d.batch_size,
                       'Global training batch, split evenly across replicas.')
  flags.DEFINE_float('learning_rate', d.learning_rate, 'Adam learning rate.')
  flags.DEFINE_float('dropout_rate', d.dropout_rate, 'Dropout before the logits layer.')
  flags.DEFINE_integer('seed', d.seed, 'Seed for weights, dropout and the shuffle order.')
  flags.DEFINE_string('strategy', d.strategy,
                      'tf.distribute strategy: ' + ', '.join(config_lib.STRATEGIES) +
                      '. mirrored uses all local GPUs, or --cpu_devices logical CPUs.')
  flags.DEFINE_integer('cpu_devices', d.cpu_devices,
                       'Split the CPU into this many logical devices (for '
                       '--strategy=mirrored on a machine without GPUs).')
  flags.DEFINE_bool('jit_compile', d.jit_compile, 'Compile the train step with XLA.')
  flags.DEFINE_string('mixed_precision', d.mixed_precision,
                      'Keras dtype policy: ' + ', '.join(config_lib.PRECISIONS) + '.')
  flags.DEFINE_integer('log_every_steps', d.log_every_steps,
                       'Write train summaries and a progress line every N steps.')
  flags.DEFINE_integer('steps_per_loop', d.steps_per_loop,
                       'Train steps run inside one tf.function call.')
  flags.DEFINE_integer('checkpoints_to_keep', d.checkpoints_to_keep,
                       'How many recent checkpoints CheckpointManager keeps.')


def train_config_from_flags() -> config_lib.TrainConfig:
  """Reads the parsed flags into a validated TrainConfig (raises ConfigError)."""
  values = {field: FLAGS[field].value
            for field in config_lib.TrainConfig.__dataclass_fields__ if field in FLAGS}
  if not values.get('tfds_manual_dir'):
    values['tfds_manual_dir'] = os.environ.get(MANUAL_DIR_ENV) or None
  return config_lib.TrainConfig(**values).validate()


def run(main):
  """absl's app.run, with our errors printed as one paragraph and a non-zero exit."""
  def main_with_errors(argv):
    try:
      return main(argv)
    except errors.Error as e:
      print(f'error: {e}', file=sys.stderr)
      sys.exit(e.exit_code)
  app.run(main_with_errors)
