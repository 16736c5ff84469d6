"""The script edge: absl flags defined once, turned into a typed TrainConfig.

Library code never reads FLAGS; scripts call `define_train_flags()` at import,
then `train_config_from_flags()` in `main`. This module does not import
TensorFlow, so invalid flags are reported before TensorFlow loads.
"""
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


def define_data_flags(flag_values: flags.FlagValues = FLAGS):
  """--model_dir and the data flags: what every script that reads a run needs."""
  d, fv = _DEFAULTS, {'flag_values': flag_values}
  flags.DEFINE_string('model_dir', d.model_dir,
                      'Checkpoints, TensorBoard events, config.json and results.json go '
                      'here. Rerunning with the same --model_dir resumes.', **fv)
  flags.DEFINE_string('dataset', d.dataset,
                      'TFDS image-classification dataset with 28x28x1 images.', **fv)
  flags.DEFINE_string('data_dir', d.data_dir, "TFDS data_dir (default: TFDS's own).", **fv)
  flags.DEFINE_string('tfds_manual_dir', d.tfds_manual_dir,
                      'Folder holding the dataset\'s original files, from which TFDS '
                      f'builds it without network access. Falls back to ${MANUAL_DIR_ENV}.', **fv)
  flags.DEFINE_string('train_split', d.train_split,
                      "TFDS split string for training, e.g. 'train[:6400]' for a short run.", **fv)
  flags.DEFINE_string('eval_split', d.eval_split, 'TFDS split string for evaluation.', **fv)
  flags.DEFINE_string('validation_split', d.validation_split,
                      "Split for per-epoch evaluation and any choice, e.g. 'train[55000:]' "
                      "with --train_split='train[:55000]'; the test split is then only "
                      'reported at the end.', **fv)
  flags.DEFINE_integer('eval_batch_size', d.eval_batch_size,
                       'Global evaluation batch; the last batch is padded, never dropped.', **fv)


def define_train_flags(flag_values: flags.FlagValues = FLAGS):
  """Defines every TrainConfig flag. Call once, at a script's import time (or on a
  private FlagValues, as `parse_train_flags` does)."""
  define_data_flags(flag_values)
  d, fv = _DEFAULTS, {'flag_values': flag_values}
  flags.DEFINE_integer('epochs', d.epochs, 'Total epochs; a larger value continues a run.', **fv)
  flags.DEFINE_integer('batch_size', d.batch_size,
                       'Global training batch, split evenly across replicas.', **fv)
  flags.DEFINE_float('learning_rate', d.learning_rate, 'Adam learning rate.', **fv)
  flags.DEFINE_string('model', d.model, 'Model: ' + ', '.join(config_lib.MODELS) + '.', **fv)
  flags.DEFINE_bool('batch_norm', d.batch_norm, 'Batch normalisation after each conv.', **fv)
  flags.DEFINE_float('width', d.width,
                     "Multiplies the channels of every conv and hidden dense layer of "
                     "--model (1: the model as described).", **fv)
  flags.DEFINE_bool('augment', d.augment,
                    'Random shifts, rotations, scales and optionally an elastic distortion '
                    'while training, in one resample (sizes below); never at evaluation.', **fv)
  flags.DEFINE_float('augment_shift_pixels', d.augment_shift_pixels,
                     'With --augment: largest shift, in pixels, each way and axis.', **fv)
  flags.DEFINE_float('augment_rotation_degrees', d.augment_rotation_degrees,
                     'With --augment: largest rotation, in degrees, either way.', **fv)
  flags.DEFINE_float('augment_zoom', d.augment_zoom,
                     'With --augment: largest zoom in or out, as a fraction of the size.', **fv)
  flags.DEFINE_float('augment_elastic_alpha', d.augment_elastic_alpha,
                     'With --augment: elastic distortion (Simard et al. 2003) of this size, '
                     'in pixels, after the shifts, rotations and scales; 0: off. Simard '
                     'used 34 with --augment_elastic_sigma=4.', **fv)
  flags.DEFINE_float('augment_elastic_sigma', d.augment_elastic_sigma,
                     'Smoothness of the elastic distortion: the Gaussian sigma in pixels.', **fv)
  flags.DEFINE_integer('augment_cutout_pixels', d.augment_cutout_pixels,
                       'With --augment: after the distortion, zero a square of this side '
                       '(pixels) at a random centre in each image (cutout, DeVries & Taylor '
                       '2017); 0: off.', **fv)
  flags.DEFINE_string('lr_schedule', d.lr_schedule,
                      'Learning-rate schedule over all --epochs: ' +
                      ', '.join(config_lib.SCHEDULES) + '. --learning_rate is the peak.', **fv)
  flags.DEFINE_float('warmup_fraction', d.warmup_fraction,
                     'Fraction of all steps spent warming up (one_cycle, warmup_cosine).', **fv)
  flags.DEFINE_float('adam_beta1', d.adam_beta1, 'Adam beta_1.', **fv)
  flags.DEFINE_float('adam_beta2', d.adam_beta2, 'Adam beta_2.', **fv)
  flags.DEFINE_float('weight_decay', d.weight_decay,
                     'Decoupled weight decay (AdamW-style) of conv and dense kernels: each '
                     'step scales them by 1 - weight_decay * learning rate. 0: off.', **fv)
  flags.DEFINE_float('label_smoothing', d.label_smoothing, 'Label smoothing of the train loss.',
                     **fv)
  flags.DEFINE_float('ema_momentum', d.ema_momentum,
                     'If > 0, keep an exponential moving average of the weights with this '
                     'momentum and evaluate (and export) it.', **fv)
  flags.DEFINE_float('sam_rho', d.sam_rho,
                     'If > 0, sharpness-aware minimisation (SAM): each step takes the '
                     'gradient at the weights moved this far (L2) up the gradient, so it '
                     'costs two forward and backward passes. Per replica. 0: off.', **fv)
  flags.DEFINE_float('dropout_rate', d.dropout_rate,
                     'Dropout before the logits layer (strided_cnn: also after each block).', **fv)
  flags.DEFINE_integer('seed', d.seed, 'Seed for weights, dropout and the shuffle order.', **fv)
  flags.DEFINE_string('strategy', d.strategy,
                      'tf.distribute strategy: ' + ', '.join(config_lib.STRATEGIES) +
                      '. mirrored uses all local GPUs, or --cpu_devices logical CPUs; '
                      'multi_worker: MultiWorkerMirroredStrategy over the cluster in '
                      f'${cluster.TF_CONFIG_ENV}, else the srun step this process is a '
                      "task of (Slurm's variables); tpu: TPUStrategy (untested here).", **fv)
  flags.DEFINE_integer('cpu_devices', d.cpu_devices,
                       'Split the CPU into this many logical devices (for '
                       '--strategy=mirrored on a machine without GPUs).', **fv)
  flags.DEFINE_string('collective_communication', d.collective_communication,
                      'multi_worker all-reduce implementation: ' +
                      ', '.join(config_lib.COLLECTIVE_COMMUNICATIONS) +
                      ' (nccl needs GPUs; auto: nccl when every device of the worker is '
                      'a GPU, else ring).', **fv)
  flags.DEFINE_float('collective_timeout_seconds', d.collective_timeout_seconds,
                     'multi_worker: a collective op that takes longer fails the run '
                     '(catches a worker that is alive but stuck). 0: no limit. Costs a '
                     'thread per collective.', **fv)
  flags.DEFINE_integer('worker_heartbeat_timeout_seconds',
                       d.worker_heartbeat_timeout_seconds,
                       'multi_worker: a worker that sends no heartbeat for this long is '
                       'declared lost and the others stop (exit 75).', **fv)
  flags.DEFINE_integer('worker_startup_timeout_seconds', d.worker_startup_timeout_seconds,
                       'multi_worker: every worker in $TF_CONFIG must connect within this '
                       'long of the first, or all fail.', **fv)
  # Where the workers listen, not what the run trains: a flag, not a TrainConfig field.
  flags.DEFINE_integer('worker_port', None,
                       'multi_worker under srun: task j on a node listens on this port + j. '
                       'Default: a block of 16 ports in 10000-32767 chosen from '
                       '$SLURM_JOB_ID and the step id, so jobs sharing a node differ.', **fv)
  flags.DEFINE_bool('jit_compile', d.jit_compile, 'Compile the train step with XLA.', **fv)
  flags.DEFINE_string('mixed_precision', d.mixed_precision,
                      'Keras dtype policy: ' + ', '.join(config_lib.PRECISION_CHOICES) +
                      '. auto: mixed_bfloat16 where the hardware computes bfloat16 '
                      'natively (CPUs with AVX-512 BF16 or AMX, GPUs from compute '
                      'capability 8.0), mixed_float16 on GPUs 7.x, else float32.', **fv)
  flags.DEFINE_integer('log_every_steps', d.log_every_steps,
                       'Write train summaries and a progress line every N steps.', **fv)
  flags.DEFINE_integer('steps_per_loop', d.steps_per_loop,
                       'Train steps run inside one tf.function call.', **fv)
  flags.DEFINE_bool('input_on_device', d.input_on_device,
                    'With --strategy=default: keep the training split on the device and '
                    'gather each batch there inside the compiled loop, instead of a '
                    'tf.data batch copied from the host every step. The same batches in '
                    'the same order, so the same weights.', **fv)
  flags.DEFINE_integer('checkpoints_to_keep', d.checkpoints_to_keep,
                       'How many recent checkpoints CheckpointManager keeps.', **fv)
  flags.DEFINE_integer('checkpoint_every_steps', d.checkpoint_every_steps,
                       'Also checkpoint every N steps (0: only at each epoch end). A killed '
                       'run loses at most N steps.', **fv)
  flags.DEFINE_bool('deterministic', d.deterministic,
                    'Deterministic ops and input: reruns and resumed runs end with '
                    'bit-identical weights (same weights_sha256). Slower.', **fv)
  flags.DEFINE_string('nan_policy', d.nan_policy,
                      'On a non-finite loss or gradient norm: stop (exit 3, last '
                      'checkpoint kept) or skip_step (drop that update, count it).', **fv)
  flags.DEFINE_bool('epoch_summaries', d.epoch_summaries,
                    'Per-epoch TensorBoard images (confusion matrix, misclassified digits) '
                    'and histograms. Off for speed runs.', **fv)
  flags.DEFINE_string('profile_steps', d.profile_steps,
                      'START,END: trace train steps START..END (1-based, rounded to '
                      '--steps_per_loop calls) into MODEL_DIR/plugins/profile for '
                      "TensorBoard's Profile tab. Empty: no trace.", **fv)


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
  define_train_flags()
  define_runtime_flags()
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
