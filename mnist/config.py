"""The typed training config: one frozen dataclass, validated before TensorFlow loads.

This module must not import TensorFlow, so a bad flag fails in milliseconds.
"""
import dataclasses
import json
from typing import Optional

from mnist import errors
from mnist import metrics
from mnist import models

STRATEGIES = ('default', 'one_device', 'mirrored', 'multi_worker', 'tpu')
# tf.distribute.experimental.CommunicationImplementation, for --strategy=multi_worker.
COLLECTIVE_COMMUNICATIONS = ('auto', 'ring', 'nccl')
PRECISIONS = ('float32', 'mixed_float16', 'mixed_bfloat16')
# 'auto' is resolved from the hardware (mnist/hardware.py) once TensorFlow has loaded,
# before anything is built or recorded: config.json and results.json hold the policy.
PRECISION_CHOICES = ('auto',) + PRECISIONS
NAN_POLICIES = ('stop', 'skip_step')
# A run's final metrics in results.json: written as scalars into the run's folder (the
# HParams dashboard's metric columns) and what scripts/sweep.py can compare.
RESULT_METRICS = metrics.result_names()  # From the declarations in mnist/metrics/.
MODELS = models.names()  # The registry's (mnist/models/), read without TensorFlow.
SCHEDULES = ('constant', 'one_cycle', 'warmup_cosine')


def _flag(default, help: str, check=None, data: bool = False, doc=''):
  """A TrainConfig field declared once: its default, its flag's --help, and its check,
  (predicate, what a valid value is); `data`: one of the flags every script reading a
  run defines (cli.define_data_flags); `doc`: what BUILD.md's flag table says after
  the help (measurements, references), or a function returning it. The absl flags
  (mnist/cli.py), --help, the check before TensorFlow loads and BUILD.md's table
  (mnist/flag_docs.py, `make docs`) all derive from it."""
  return dataclasses.field(default=default, metadata={'help': help, 'check': check,
                                                      'data': data, 'doc': doc})


_NOT_EMPTY = (bool, 'must not be empty')


def _at_least(low, note=''):
  return (lambda v: v >= low, f'must be >= {low}{note}')


def _above(low):
  return (lambda v: v > low, f'must be > {low}')


def _within(low, high, note=''):
  return (lambda v: low <= v < high, f'must be in [{low}, {high}){note}')


def _one_of(choices):
  """choices: a function returning them, read when checked (the model registry can
  grow after this module loads)."""
  return (lambda v: v in choices(), choices)


def choices(field: dataclasses.Field):
  """The field's allowed values, or None when any value of its type may do."""
  check = field.metadata.get('check')
  return check[1]() if check and callable(check[1]) else None


def field_problems(config) -> list:
  """Every field whose value fails its declared check, as a message naming the flag."""
  problems = []
  for field in dataclasses.fields(config):
    check, value = field.metadata.get('check'), getattr(config, field.name)
    if check and not check[0](value):
      what = check[1]
      problems.append(f'--{field.name} must be one of {", ".join(what())}; got {value!r}.'
                      if callable(what) else f'--{field.name} {what}, got {value!r}.')
  return problems


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Everything a training run depends on, each field declared once with its flag's
  help and its check. Defaults reproduce the seed recipe."""
  model_dir: str = _flag('runs/mnist',
      'Checkpoints, TensorBoard events, config.json and results.json go here. Rerunning '
      'with the same --model_dir resumes.',
      check=_NOT_EMPTY,
      data=True,
      doc=('results.json also holds `hardware`: the CPU model, cores, ISA features and GPUs, '
           'logged first too.'))
  dataset: str = _flag('mnist',
      'TFDS image-classification dataset with 28x28x1 images.',
      check=_NOT_EMPTY,
      data=True)
  data_dir: Optional[str] = _flag(None,
      "TFDS data_dir (default: TFDS's own).",
      data=True)
  tfds_manual_dir: Optional[str] = _flag(None,
      "Folder holding the dataset's original files, from which TFDS builds it without "
      'network access. Falls back to $TFDS_MANUAL_DIR.',
      data=True)
  train_split: str = _flag('train',
      "TFDS split string for training, e.g. 'train[:6400]' for a short run.",
      data=True)
  eval_split: str = _flag('test',
      'TFDS split string for evaluation.',
      data=True)
  # Carved from the training data (e.g. 'train[55000:]') for choosing anything;
  # when set, each epoch evaluates on it and the test split is only reported at the end.
  validation_split: str = _flag('',
      "Split for per-epoch evaluation and any choice, e.g. 'train[55000:]' with "
      "--train_split='train[:55000]'; the test split is then only reported at the end.",
      data=True)
  epochs: int = _flag(5,
      'Total epochs; a larger value continues a run.',
      check=_at_least(0))
  batch_size: int = _flag(64,
      'Global training batch, split evenly across replicas.',
      check=_above(0))
  eval_batch_size: int = _flag(1000,
      'Global evaluation batch; the last batch is padded, never dropped.',
      check=_above(0),
      data=True)
  model: str = _flag('seed_cnn',
      'The model (mnist/models/).',
      check=_one_of(lambda: MODELS),
      doc=models.describe)
  batch_norm: bool = _flag(False,
      'Batch normalisation after each conv.',
      doc="TensorFlow's fused kernel (`mnist/batch_norm.py`).")
  width: float = _flag(1.0,
      'Multiplies the channels of every conv and hidden dense layer of --model (1: the '
      'model as described).',
      check=(lambda v: 0 < v <= 16, 'must be in (0, 16]'),
      doc=("Rounded; the logits stay 10. oneDNN's bfloat16 kernels are sensitive to channel "
           'counts: `strided_cnn` at 1.5 (48/96/192) trained 1,657 images/s in a bare step '
           'and at 1.25 (40/80/160) only 805.'))
  augment: bool = _flag(False,
      'Random shifts, rotations, scales and optionally an elastic distortion while '
      'training, in one resample (sizes below); never at evaluation.',
      doc='`mnist/augment.py`; inactive at evaluation, export and prediction.')
  # Their largest sizes, each drawn uniformly in [-max, max] per image.
  augment_shift_pixels: float = _flag(2.0,
      'With --augment: largest shift, in pixels, each way and axis.',
      check=_within(0, 14))
  augment_rotation_degrees: float = _flag(10.0,
      'With --augment: largest rotation, in degrees, either way.',
      check=_within(0, 180))
  augment_zoom: float = _flag(0.1,
      'With --augment: largest zoom in or out, as a fraction of the size.',
      check=_within(0, 1))
  augment_elastic_alpha: float = _flag(0.0,
      'With --augment: elastic distortion (Simard et al. 2003) of this size, in pixels, '
      'after the shifts, rotations and scales; 0: off. Simard used 34 with '
      '--augment_elastic_sigma=4.',
      check=_within(0, 100))
  augment_elastic_sigma: float = _flag(4.0,
      'Smoothness of the elastic distortion: the Gaussian sigma in pixels.',
      check=_above(0))
  augment_cutout_pixels: int = _flag(0,
      'With --augment: after the distortion, zero a square of this side (pixels) at a '
      'random centre in each image (cutout, DeVries & Taylor 2017); 0: off.',
      check=_within(0, 28))
  learning_rate: float = _flag(0.001,
      'Adam learning rate.',
      check=_above(0))
  lr_schedule: str = _flag('constant',
      'Learning-rate schedule over all --epochs; --learning_rate is the peak.',
      check=_one_of(lambda: SCHEDULES),
      doc=('`one_cycle`: linear warm-up from peak/25, linear decay to peak/2500; '
           "`warmup_cosine`: Keras' `CosineDecay` with warm-up, its warm-up chosen without a "
           '`cond` (`mnist/optim.py`).'))
  warmup_fraction: float = _flag(0.2,
      'Fraction of all steps spent warming up (one_cycle, warmup_cosine).',
      check=_within(0, 1))
  adam_beta1: float = _flag(0.9,
      'Adam beta_1.',
      check=_within(0, 1))
  adam_beta2: float = _flag(0.999,
      'Adam beta_2.',
      check=_within(0, 1))
  weight_decay: float = _flag(0.0,
      'Decoupled weight decay (AdamW-style) of conv and dense kernels: each step scales '
      'them by 1 - weight_decay * learning rate. 0: off.',
      check=_within(0, 1, ' (0: off)'),
      doc='Biases and batch-norm parameters are excluded.')
  label_smoothing: float = _flag(0.0,
      'Label smoothing of the train loss.',
      check=_within(0, 1),
      doc='The eval loss is plain cross-entropy.')
  ema_momentum: float = _flag(0.0,
      'If > 0, keep an exponential moving average of the weights with this momentum and '
      'evaluate (and export) it.',
      check=_within(0, 1, ' (0: off)'),
      doc=("Keras' weight averaging, kept in the optimizer, so checkpointed; every eval, "
           '`results.json`, `evaluate.py`, `predict.py` and `export.py` use the averages. '
           "The first epochs' evals sit near chance (below the table)."))
  sam_rho: float = _flag(0.0,
      'If > 0, sharpness-aware minimisation (SAM): each step takes the gradient at the '
      'weights moved this far (L2) up the gradient, so it costs two forward and backward '
      'passes. Per replica. 0: off.',
      check=_at_least(0, ' (0: off)'),
      doc=('Foret et al. 2021: the weights move along the normalised gradient, and the '
           'gradient there is applied to the weights themselves. The second pass sees the '
           'same augmentation, dropout and training-batch transform as the first (its random '
           'state is passed to `stateless_call`, so no variable is written) and its batch-'
           'norm statistics are dropped. Under several replicas each replica moves along its '
           'own gradient, so N replicas no longer train exactly like one device.'))
  mixup_alpha: float = _flag(0.0,
      'If > 0, mixup (Zhang et al. 2018): each training example is blended with a partner '
      'of its batch, images and targets, by its own weight drawn from Beta(alpha, alpha); '
      'before --augment. 0: off.',
      check=_at_least(0, ' (0: off)'),
      doc=('`mnist/batch_transforms/mixup.py`: examples 2k and 2k+1 of each batch are '
           'partners, and each keeps the larger share of its blend. Per-example randomness: '
           "1 device, N replicas and N workers blend alike whenever each replica's batch is "
           "even. `--label_smoothing` smooths the soft targets; SAM's second pass reuses the "
           "blended batch. Training loss and accuracy are against the blends' targets and "
           'the original labels.'))
  dropout_rate: float = _flag(0.5,
      'Dropout before the logits layer (strided_cnn: also after each block).',
      check=_within(0, 1))
  seed: int = _flag(0,
      'Seed for weights, dropout and the shuffle order.')
  strategy: str = _flag('default',
      'tf.distribute strategy. mirrored '
      'uses all local GPUs, or --cpu_devices logical CPUs; multi_worker: '
      'MultiWorkerMirroredStrategy over the cluster in $TF_CONFIG, else the srun step this '
      "process is a task of (Slurm's variables); tpu: TPUStrategy (untested here).",
      check=_one_of(lambda: STRATEGIES),
      doc='`one_device`: the first GPU, else the CPU. See Scale-out.')
  cpu_devices: int = _flag(1,
      'Split the CPU into this many logical devices (for --strategy=mirrored on a machine '
      'without GPUs).',
      check=_at_least(1))
  # --strategy=multi_worker only (the cluster itself comes from $TF_CONFIG).
  collective_communication: str = _flag('auto',
      'multi_worker all-reduce implementation (nccl needs GPUs; auto: '
      'nccl when every device of the worker is a GPU, else ring).',
      check=_one_of(lambda: COLLECTIVE_COMMUNICATIONS),
      doc='`CommunicationOptions(implementation=...)`; `nccl` is refused without GPUs.')
  collective_timeout_seconds: float = _flag(0.0,
      'multi_worker: a collective op that takes longer fails the run (catches a worker that '
      'is alive but stuck). 0: no limit. Costs a thread per collective.',
      check=_at_least(0, ' (0: none)'),
      doc='`CommunicationOptions(timeout_seconds=...)`.')
  worker_heartbeat_timeout_seconds: int = _flag(30,
      'multi_worker: a worker that sends no heartbeat for this long is declared lost and '
      'the others stop (exit 75).',
      check=_above(0))
  worker_startup_timeout_seconds: int = _flag(600,
      'multi_worker: every worker in $TF_CONFIG must connect within this long of the first, '
      'or all fail.',
      check=_above(0))
  jit_compile: bool = _flag(False,
      'Compile the train step with XLA.',
      doc=('With one replica in sync the gradient and the update are one XLA program, with '
           'more the gradient alone (How training works). Not with `--deterministic`. On '
           'these CPUs XLA measured 2-3x slower (Measured).'))
  mixed_precision: str = _flag('float32',
      'Keras dtype policy. auto: '
      'mixed_bfloat16 where the hardware computes bfloat16 natively (CPUs with AVX-512 BF16 '
      'or AMX, GPUs from compute capability 8.0), mixed_float16 on GPUs 7.x, else float32.',
      check=_one_of(lambda: PRECISION_CHOICES),
      doc=("`mixed_float16` uses Keras 3's `LossScaleOptimizer`; `auto` is decided in "
           '`mnist/hardware.py`. A policy asked for by name where the hardware would emulate '
           'it (bfloat16 on a CPU without AVX-512 BF16 or AMX, float16 on any CPU) runs, '
           'with a warning in the log and the benchmark header '
           '(`hardware.emulated_precision`; bfloat16 on an AVX2-only EPYC: 8.7x slower than '
           'float32). Resolved before anything is built: `config.json`, `results.json` and '
           'HParams hold the policy, never `auto`. A run resumed under another precision '
           'logs which (float32 and bfloat16 checkpoints are interchangeable); a float16 '
           'checkpoint (loss-scale variables) under another is refused naming both.'))
  log_every_steps: int = _flag(100,
      'Write train summaries and a progress line every N steps.',
      check=_above(0))
  steps_per_loop: int = _flag(10,
      'Train steps run inside one tf.function call.',
      check=_above(0),
      doc=('Calls still end at every log, checkpoint and epoch boundary, and a stop signal '
           'is seen between calls. 10 measured +8-15% images/s over 1 on the 2-core CPU '
           '(fewer host round trips; Measured).'))
  # The default strategy only: the training split as device tensors, each batch
  # gathered on the device inside the loop (mnist/device_input.py); the same batches.
  input_on_device: bool = _flag(False,
      'With --strategy=default: keep the training split on the device and gather each batch '
      'there inside the compiled loop, instead of a tf.data batch copied from the host '
      'every step. The same batches in the same order, so the same weights.',
      doc=('Refused with the other strategies: their distributed iterators already prefetch '
           "each replica's share to its device. Each step gathers its batch in the tf.data "
           "pipeline's order (tf.data's own shuffle of the indices with the epoch's seed), "
           "normalised through a 256-entry table made by the pipeline's op (Grappler turns "
           '`x / 255` in the loop into `x * (1/255)`, 1 ulp off), so a `--deterministic` run '
           'ends with the same `weights_sha256` (`tests/test_device_input.py`). Off by '
           "default: see Measured for CPU; on a GPU it saves each step's host-to-device copy "
           '(not measured here).'))
  checkpoints_to_keep: int = _flag(3,
      'How many recent checkpoints CheckpointManager keeps.',
      check=_above(0),
      doc="CheckpointManager's `max_to_keep`.")
  checkpoint_every_steps: int = _flag(0,
      'Also checkpoint every N steps (0: only at each epoch end). A killed run loses at '
      'most N steps.',
      check=_at_least(0))
  deterministic: bool = _flag(False,
      'Deterministic ops and input: reruns and resumed runs end with bit-identical weights '
      '(same weights_sha256). Slower.',
      doc='Not with `--jit_compile` (XLA has no deterministic MaxPool gradient).')
  nan_policy: str = _flag('stop',
      'On a non-finite loss or gradient norm: stop (exit 3, last checkpoint kept) or '
      'skip_step (drop that update, count it).',
      check=_one_of(lambda: NAN_POLICIES),
      doc='Skipped steps are counted in TensorBoard as `nonfinite_steps_skipped`.')
  profile_steps: Optional[str] = _flag(None,
      'START,END: trace train steps START..END (1-based, rounded to --steps_per_loop calls) '
      "into MODEL_DIR/plugins/profile for TensorBoard's Profile tab. Empty: no trace.",
      check=(lambda v: not v or _step_range(v),
             'must be START,END with 1 <= START < END (e.g. 10,20)'),
      doc='See TensorBoard.')
  epoch_summaries: bool = _flag(True,
      'Per-epoch TensorBoard images (confusion matrix, misclassified digits) and '
      'histograms. Off for speed runs.')

  def replace(self, **changes) -> 'TrainConfig':
    return dataclasses.replace(self, **changes)

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), indent=2)

  @classmethod
  def from_json(cls, text: str) -> 'TrainConfig':
    """Reads a config.json; keys from other versions of the code are ignored."""
    values = json.loads(text)
    return cls(**{k: v for k, v in values.items() if k in cls.__dataclass_fields__})

  def profile_step_range(self) -> Optional[tuple]:
    """(START, END) of --profile_steps, or None when profiling is off (or invalid)."""
    return _step_range(self.profile_steps) if self.profile_steps else None

  def validate(self) -> 'TrainConfig':
    """Raises ConfigError naming every invalid value (each field's declared check, then
    the rules across fields); returns self when valid."""
    problems = field_problems(self)
    def check(ok, message):
      if not ok:
        problems.append(message)

    if self.model in MODELS:
      defaults = TrainConfig()
      for option in models.refused_options(self.model, dataclasses.asdict(self),
                                           dataclasses.asdict(defaults)):
        takes = models.get(self.model).takes
        check(False, f'--model={self.model} does not take --{option} (it takes '
              f'{", ".join("--" + o for o in takes) or "no model options"}); leave it at '
              f'its default, {getattr(defaults, option)}.')
    check(self.cpu_devices == 1 or self.strategy == 'mirrored',
          f'--cpu_devices={self.cpu_devices} only makes sense with --strategy=mirrored.')
    if self.strategy != 'multi_worker':
      changed = [f'--{name}' for name in _MULTI_WORKER_FIELDS
                 if getattr(self, name) != getattr(TrainConfig, name)]
      check(not changed, f'{", ".join(changed)}: only for --strategy=multi_worker, '
            f'not --strategy={self.strategy}.')
    check(not self.input_on_device or self.strategy == 'default',
          f'--input_on_device is for --strategy=default (one device), not '
          f'--strategy={self.strategy}: the distributed iterator of the others already '
          'prefetches each replica\'s share to its device.')
    check(not (self.deterministic and self.jit_compile),
          '--deterministic cannot be combined with --jit_compile: XLA has no '
          'deterministic MaxPool gradient.')
    # Without GPUs, mirrored runs one replica per logical CPU device, so the
    # replica count is known now; with GPUs it is checked once devices are listed.
    if (self.strategy == 'mirrored' and self.batch_size > 0 and self.eval_batch_size > 0
        and self.cpu_devices >= 1):
      check_divisible(self, self.cpu_devices, problems)
    if problems:
      raise errors.ConfigError(' '.join(problems))
    return self


_MULTI_WORKER_FIELDS = ('collective_communication', 'collective_timeout_seconds',
                        'worker_heartbeat_timeout_seconds', 'worker_startup_timeout_seconds')


def check_divisible(config: TrainConfig, num_replicas: int, problems=None):
  """Global batches must split evenly: each replica gets batch/num_replicas."""
  found = []
  for name in ('batch_size', 'eval_batch_size'):
    value = getattr(config, name)
    if value % num_replicas:
      found.append(f'--{name}={value} is not divisible by the {num_replicas} replicas; '
                   f'use a multiple of {num_replicas}.')
  if problems is not None:
    problems.extend(found)
  elif found:
    raise errors.ConfigError(' '.join(found))


def _step_range(text: str) -> Optional[tuple]:
  """'START,END' -> (START, END) when 1 <= START < END, else None."""
  parts = text.split(',')
  if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
    return None
  start, end = (int(p) for p in parts)
  return (start, end) if 1 <= start < end else None
