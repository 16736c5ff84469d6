"""The script edge: absl flags defined once, turned into a typed TrainConfig.

Library code never reads FLAGS; scripts call `define_train_flags()` at import,
then `train_config_from_flags()` in `main`. This module does not import
TensorFlow, so invalid flags are reported before TensorFlow loads.
"""
import dataclasses
import os
import sys
from typing import Sequence

from absl import app
from absl import flags
from absl import logging

from mnist import cluster
from mnist import config as config_lib
from mnist import errors
from mnist import gpu
from mnist import runtime
from mnist.benchmark import config as benchmark_config

FLAGS = flags.FLAGS
MANUAL_DIR_ENV = 'TFDS_MANUAL_DIR'
_DEFAULTS = config_lib.TrainConfig()


def _define(field: dataclasses.Field, flag_values: flags.FlagValues):
  """The absl flag of a TrainConfig field: its name, type, default and help (with its
  choices), all from the field's declaration in mnist/config.py."""
  help_text = field.metadata['help']
  choices = config_lib.choices(field)
  if choices:
    help_text += ' One of: ' + ', '.join(choices) + '.'
  define = {bool: flags.DEFINE_bool, int: flags.DEFINE_integer,
            float: flags.DEFINE_float}.get(field.type, flags.DEFINE_string)
  define(field.name, field.default, help_text, flag_values=flag_values)


def define_data_flags(flag_values: flags.FlagValues = FLAGS):
  """--model_dir and the data flags: what every script that reads a run needs."""
  for field in dataclasses.fields(config_lib.TrainConfig):
    if field.metadata['data']:
      _define(field, flag_values)


def define_train_flags(flag_values: flags.FlagValues = FLAGS):
  """Defines every TrainConfig flag from its field. Call once, at a script's import
  time (or on a private FlagValues, as `parse_train_flags` does)."""
  define_data_flags(flag_values)
  for field in dataclasses.fields(config_lib.TrainConfig):
    if not field.metadata['data']:
      _define(field, flag_values)
  # Where the workers listen, not what the run trains: a flag, not a TrainConfig field.
  flags.DEFINE_integer('worker_port', None,
                       'multi_worker under srun: task j on a node listens on this port + j. '
                       'Default: a block of 16 ports in 10000-32767 chosen from '
                       '$SLURM_JOB_ID and the step id, so jobs sharing a node differ.',
                       flag_values=flag_values)


def define_report_flags():
  """Flags of scripts/report.py: which run to summarise and where the PNG goes."""
  flags.DEFINE_string('model_dir', _DEFAULTS.model_dir,
                      'The run to report on: its train/ and eval/ TensorBoard events.')
  flags.DEFINE_string('output', None, 'The PNG to write (default: MODEL_DIR/report.png).')


def _define_output_format_flag():
  flags.DEFINE_enum('output', 'text', ['text', 'json'],
                    'text: lines for people; json: machine-readable JSON on stdout.')


def define_predict_flags():
  """Flags of scripts/predict.py; the image files are its positional arguments."""
  define_runtime_flags()
  flags.DEFINE_string('model_dir', _DEFAULTS.model_dir,
                      'The training run to predict with: its config.json and latest '
                      'checkpoint.')
  flags.DEFINE_string('export_dir', None,
                      'Predict with this SavedModel (from scripts/export.py) instead of '
                      '--model_dir.')
  _define_output_format_flag()
  flags.DEFINE_string('save_preprocessed', None,
                      'Also write the 28x28 PNG the model saw for each file into this '
                      'folder (named after the file).')


def define_evaluate_flags():
  """Flags of scripts/evaluate.py: the data flags override the run's config.json."""
  define_data_flags()
  define_runtime_flags()
  _define_output_format_flag()


def define_export_flags():
  """Flags of scripts/export.py."""
  define_runtime_flags()
  flags.DEFINE_string('model_dir', _DEFAULTS.model_dir,
                      'The training run to export: its config.json and latest checkpoint.')
  flags.DEFINE_string('export_dir', None,
                      'Required. The SavedModel folder to create; it must not exist or be '
                      'empty. For TensorFlow Serving, end it in a version number: '
                      'exports/mnist/1.')
  flags.DEFINE_bool('tflite', False, 'Also write EXPORT_DIR/model.tflite (TFLite).')


def define_train_script_flags(flag_values: flags.FlagValues = FLAGS):
  """scripts/train.py's flags, the training and the runtime ones: what BUILD.md's flag
  table lists (mnist/flag_docs.py)."""
  define_train_flags(flag_values)
  define_runtime_flags(flag_values)


def define_runtime_flags(flag_values: flags.FlagValues = FLAGS):
  """oneDNN, thread-pool and GPU flags, applied before and right after TensorFlow loads."""
  d, fv = runtime.RuntimeConfig(), {'flag_values': flag_values}
  flags.DEFINE_string('onednn', d.onednn,
                      'oneDNN CPU kernels: auto (on for x86 CPUs with AVX2, where '
                      'TensorFlow itself turns it on only with AVX-512 VNNI/BF16 or AMX; '
                      f'a ${runtime.ONEDNN_ENV} you set wins), on, off, or tensorflow '
                      "(TensorFlow's own choice).", **fv)
  flags.DEFINE_integer('inter_op_threads', d.inter_op_threads,
                       'Inter-op thread pool size (0: TensorFlow decides).', **fv)
  flags.DEFINE_integer('intra_op_threads', d.intra_op_threads,
                       'Intra-op thread pool size (0: TensorFlow decides).', **fv)
  flags.DEFINE_bool('gpu_memory_growth', d.gpu_memory_growth,
                    'Let each GPU\'s memory grow as needed instead of TensorFlow mapping '
                    'nearly all of it at the start, so processes can share a GPU. A '
                    f'${gpu.FORCE_GROWTH_ENV} you set wins.', **fv)
  flags.DEFINE_bool('allow_cpu_on_gpu_node', d.allow_cpu_on_gpu_node,
                    'Run on the CPU on purpose where the NVIDIA driver is loaded but '
                    'TensorFlow lists no GPU; without it such a run is refused (exit 2) '
                    'with the cause and the fix (usually: make venv-gpu).', **fv)


def define_benchmark_flags():
  """The training flags (same model, data, strategy, precision, XLA), runtime flags
  and the benchmark's own. Call once, at a script's import time."""
  define_train_script_flags()
  d = benchmark_config.BenchmarkConfig()
  flags.DEFINE_integer('warmup_steps', d.warmup_steps,
                       'Untimed steps first (tracing, the first shuffle-buffer fill).')
  flags.DEFINE_integer('num_windows', d.num_windows, 'Timed windows of --window_steps.')
  flags.DEFINE_integer('window_steps', d.window_steps, 'Train steps per timed window.')
  flags.DEFINE_bool('synthetic_data', d.synthetic_data,
                    'Feed one random batch, kept on the device, every step: compute alone.')
  flags.DEFINE_bool('input_only', d.input_only,
                    'Iterate the tf.data pipeline alone, without the model.')
  flags.DEFINE_bool('epochs_mode', d.epochs_mode,
                    'Time --epochs whole epochs (wall time each, boundaries included) '
                    'instead of step windows.')
  flags.DEFINE_string('baseline', d.baseline,
                      'Also measure Keras model.fit of the same model and data, in child '
                      'processes alternating with ours: keras_fit (stock runtime settings) '
                      'or keras_fit_tuned (our runtime settings).')
  flags.DEFINE_integer('baseline_repeats', d.baseline_repeats,
                       'Measurements of each side with --baseline (A B A B ...).')
  flags.DEFINE_string('_role', d.role, 'Internal: set by the --baseline driver on its '
                      'child processes (ours or keras_fit).')


def train_config_from_flags(flag_values: flags.FlagValues = FLAGS) -> config_lib.TrainConfig:
  """Reads the parsed flags into a validated TrainConfig (raises ConfigError)."""
  values = {field: flag_values[field].value
            for field in config_lib.TrainConfig.__dataclass_fields__ if field in flag_values}
  if not values.get('tfds_manual_dir'):
    values['tfds_manual_dir'] = os.environ.get(MANUAL_DIR_ENV) or None
  config = config_lib.TrainConfig(**values).validate()
  worker_port = flag_values['worker_port'].value if 'worker_port' in flag_values else None
  if config.strategy == 'multi_worker':  # A missing or malformed cluster fails now too.
    cluster.resolve(os.environ, worker_port)
  elif worker_port is not None:
    raise errors.ConfigError(f'--worker_port: only for --strategy=multi_worker, not '
                             f'--strategy={config.strategy}.')
  return config


def set_up_cluster(config: config_lib.TrainConfig, flag_values: flags.FlagValues = FLAGS):
  """--strategy=multi_worker: logs where the cluster comes from and, when from Slurm's
  variables, writes it into $TF_CONFIG, where TensorFlow reads it. Call before
  TensorFlow loads. Never touches $CUDA_VISIBLE_DEVICES: Slurm set each task's GPUs."""
  if config.strategy != 'multi_worker':
    return
  resolution = cluster.resolve(os.environ, flag_values.worker_port)
  if resolution.tf_config:
    os.environ[cluster.TF_CONFIG_ENV] = resolution.tf_config
  logging.info(resolution.description)


def run_config_from_flags(config: config_lib.TrainConfig) -> config_lib.TrainConfig:
  """A run's config.json with the data flags given on the command line on top.

  Only flags set explicitly override: the defaults must not undo the run's
  own --eval_split or --tfds_manual_dir.
  """
  changes = {field: FLAGS[field].value
             for field in config_lib.TrainConfig.__dataclass_fields__
             if field != 'model_dir' and field in FLAGS and FLAGS[field].present}
  config = config.replace(**changes)
  if not config.tfds_manual_dir:
    config = config.replace(tfds_manual_dir=os.environ.get(MANUAL_DIR_ENV) or None)
  return config.validate()


def runtime_config_from_flags(flag_values: flags.FlagValues = FLAGS) -> runtime.RuntimeConfig:
  """Reads --onednn, the thread-pool and the GPU flags into a validated RuntimeConfig."""
  return _runtime_config(flag_values).validate()


def _runtime_config(flag_values: flags.FlagValues) -> runtime.RuntimeConfig:
  return runtime.RuntimeConfig(**{field: flag_values[field].value
                                  for field in runtime.RuntimeConfig.__dataclass_fields__})


def parse_train_flags(args: Sequence[str]) -> tuple:
  """(TrainConfig, RuntimeConfig) from scripts/train.py's flags, e.g. a child process's
  command line, parsed in a private FlagValues and validated as the script does.

  Raises ConfigError naming an unknown flag, a malformed value or an invalid config.
  """
  flag_values = flags.FlagValues()
  define_train_flags(flag_values)
  define_runtime_flags(flag_values)
  try:
    rest = flag_values(['train.py', *args])
  except flags.Error as e:
    raise errors.ConfigError(f'{e}') from None
  if rest[1:]:
    raise errors.ConfigError(f'Unexpected arguments (not flags): {" ".join(rest[1:])}.')
  return train_config_from_flags(flag_values), runtime_config_from_flags(flag_values)


def benchmark_config_from_flags() -> benchmark_config.BenchmarkConfig:
  """Reads the parsed flags into a validated BenchmarkConfig (raises ConfigError)."""
  values = {field: FLAGS[field].value
            for field in benchmark_config.BenchmarkConfig.__dataclass_fields__
            if field in FLAGS and field not in ('train', 'runtime')}
  # The runtime flags unvalidated here: BenchmarkConfig.validate names their problems
  # together with the benchmark's own.
  runtime_config = _runtime_config(FLAGS)
  return benchmark_config.BenchmarkConfig(
      train=train_config_from_flags(), runtime=runtime_config,
      role=FLAGS['_role'].value, **values).validate()


def config_to_flags(config: config_lib.TrainConfig, skip=('model_dir', 'seed')) -> list:
  """The flags that reproduce `config` (those that differ from the defaults)."""
  flags_out = []
  for field in config_lib.TrainConfig.__dataclass_fields__:
    value = getattr(config, field)
    if field in skip or value == getattr(_DEFAULTS, field):
      continue
    text = str(value).lower() if isinstance(value, bool) else str(value)
    flags_out.append(f'--{field}={text}')
  return flags_out


def run(main):
  """absl's app.run, with our errors printed as one paragraph and a non-zero exit."""
  def main_with_errors(argv):
    try:
      return main(argv)
    except errors.Error as e:
      print(f'error: {e}', file=sys.stderr)
      sys.exit(e.exit_code)
  # The flags are defined here, not in the script, so absl's --help (which lists
  # the main module's key flags) would show none of them: make them the script's.
  for flag in FLAGS.get_key_flags_for_module(__name__):
    FLAGS.register_key_flag_for_module(sys.argv[0], flag)
  app.run(main_with_errors)
