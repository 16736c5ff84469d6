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


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Everything a training run depends on. Defaults reproduce the seed recipe."""
  model_dir: str = 'runs/mnist'
  dataset: str = 'mnist'
  data_dir: Optional[str] = None  # TFDS data_dir; None means TFDS's default.
  tfds_manual_dir: Optional[str] = None  # Folder with the dataset's original files.
  train_split: str = 'train'
  eval_split: str = 'test'
  # Carved from the training data (e.g. 'train[55000:]') for choosing anything;
  # when set, each epoch evaluates on it and the test split is only reported at the end.
  validation_split: str = ''
  epochs: int = 5
  batch_size: int = 64  # Global: split evenly across replicas.
  eval_batch_size: int = 1000
  model: str = 'seed_cnn'
  batch_norm: bool = False
  width: float = 1.0  # Multiplies the model's channels.
  augment: bool = False  # Random shifts, rotations, scales (elastic) while training.
  # Their largest sizes, each drawn uniformly in [-max, max] per image.
  augment_shift_pixels: float = 2.0
  augment_rotation_degrees: float = 10.0
  augment_zoom: float = 0.1  # Fraction of the image size.
  augment_elastic_alpha: float = 0.0  # Elastic distortion, in pixels; 0: off.
  augment_elastic_sigma: float = 4.0  # Its smoothness, in pixels.
  augment_cutout_pixels: int = 0  # Side of a square zeroed per image (cutout); 0: off.
  learning_rate: float = 1e-3  # Adam; the peak of a schedule.
  lr_schedule: str = 'constant'
  warmup_fraction: float = 0.2  # Of all steps, for one_cycle and warmup_cosine.
  adam_beta1: float = 0.9
  adam_beta2: float = 0.999
  weight_decay: float = 0.0  # Decoupled (AdamW-style), kernels only; 0: off.
  label_smoothing: float = 0.0
  ema_momentum: float = 0.0  # > 0: evaluate an exponential moving average of the weights.
  sam_rho: float = 0.0  # > 0: sharpness-aware minimisation radius; 0: off.
  dropout_rate: float = 0.5
  seed: int = 0
  strategy: str = 'default'
  cpu_devices: int = 1
  # --strategy=multi_worker only (the cluster itself comes from $TF_CONFIG).
  collective_communication: str = 'auto'
  collective_timeout_seconds: float = 0.0  # 0: a collective may wait forever.
  worker_heartbeat_timeout_seconds: int = 30  # A silent worker is lost after this.
  worker_startup_timeout_seconds: int = 600  # All workers must connect within this.
  jit_compile: bool = False
  mixed_precision: str = 'float32'
  log_every_steps: int = 100
  # Train steps per tf.function call. 10 measured +8-15% images/s over 1 on the
  # 2-core CPU (fewer host round trips; BUILD.md, Measured) and costs nothing else:
  # calls still end at every log, checkpoint and epoch boundary.
  steps_per_loop: int = 10
  # The default strategy only: the training split as device tensors, each batch
  # gathered on the device inside the loop (mnist/device_input.py); the same batches.
  input_on_device: bool = False
  checkpoints_to_keep: int = 3
  checkpoint_every_steps: int = 0  # 0: only at each epoch end.
  deterministic: bool = False  # Bit-identical reruns and resumes (slower ops).
  nan_policy: str = 'stop'
  # 'START,END': trace steps START..END for TensorBoard's Profile tab; None: off.
  profile_steps: Optional[str] = None
  epoch_summaries: bool = True  # Per-epoch images and histograms in TensorBoard.

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
    """Raises ConfigError naming every invalid value; returns self when valid."""
    problems = []
    def check(ok, message):
      if not ok:
        problems.append(message)

    check(bool(self.model_dir), '--model_dir must not be empty.')
    check(bool(self.dataset), '--dataset must not be empty.')
    check(self.epochs >= 0, f'--epochs must be >= 0, got {self.epochs}.')
    check(self.batch_size > 0, f'--batch_size must be > 0, got {self.batch_size}.')
    check(self.eval_batch_size > 0,
          f'--eval_batch_size must be > 0, got {self.eval_batch_size}.')
    check(self.learning_rate > 0,
          f'--learning_rate must be > 0, got {self.learning_rate}.')
    check(self.model in MODELS,
          f'--model must be one of {", ".join(MODELS)}; got {self.model!r}.')
    if self.model in MODELS:
      defaults = TrainConfig()
      for option in models.refused_options(self.model, dataclasses.asdict(self),
                                           dataclasses.asdict(defaults)):
        takes = models.get(self.model).takes
        check(False, f'--model={self.model} does not take --{option} (it takes '
              f'{", ".join("--" + o for o in takes) or "no model options"}); leave it at '
              f'its default, {getattr(defaults, option)}.')
    check(self.lr_schedule in SCHEDULES,
          f'--lr_schedule must be one of {", ".join(SCHEDULES)}; got {self.lr_schedule!r}.')
    check(0 <= self.warmup_fraction < 1,
          f'--warmup_fraction must be in [0, 1), got {self.warmup_fraction}.')
    for name in ('adam_beta1', 'adam_beta2'):
      check(0 <= getattr(self, name) < 1,
            f'--{name} must be in [0, 1), got {getattr(self, name)}.')
    check(0 <= self.weight_decay < 1,
          f'--weight_decay must be in [0, 1) (0: off), got {self.weight_decay}.')
    check(0 <= self.label_smoothing < 1,
          f'--label_smoothing must be in [0, 1), got {self.label_smoothing}.')
    check(self.sam_rho >= 0, f'--sam_rho must be >= 0 (0: off), got {self.sam_rho}.')
    check(0 <= self.ema_momentum < 1,
          f'--ema_momentum must be in [0, 1) (0: off), got {self.ema_momentum}.')
    for name, limit in (('augment_shift_pixels', 14), ('augment_rotation_degrees', 180),
                        ('augment_zoom', 1), ('augment_elastic_alpha', 100),
                        ('augment_cutout_pixels', 28)):
      check(0 <= getattr(self, name) < limit,
            f'--{name} must be in [0, {limit}), got {getattr(self, name)}.')
    check(self.augment_elastic_sigma > 0,
          f'--augment_elastic_sigma must be > 0, got {self.augment_elastic_sigma}.')
    check(0 < self.width <= 16, f'--width must be in (0, 16], got {self.width}.')
    check(0 <= self.dropout_rate < 1,
          f'--dropout_rate must be in [0, 1), got {self.dropout_rate}.')
    check(self.strategy in STRATEGIES,
          f'--strategy must be one of {", ".join(STRATEGIES)}; got {self.strategy!r}.')
    check(self.mixed_precision in PRECISION_CHOICES,
          f'--mixed_precision must be one of {", ".join(PRECISION_CHOICES)}; '
          f'got {self.mixed_precision!r}.')
    check(self.cpu_devices >= 1, f'--cpu_devices must be >= 1, got {self.cpu_devices}.')
    check(self.cpu_devices == 1 or self.strategy == 'mirrored',
          f'--cpu_devices={self.cpu_devices} only makes sense with --strategy=mirrored.')
    check(self.collective_communication in COLLECTIVE_COMMUNICATIONS,
          '--collective_communication must be one of '
          f'{", ".join(COLLECTIVE_COMMUNICATIONS)}; got {self.collective_communication!r}.')
    check(self.collective_timeout_seconds >= 0,
          f'--collective_timeout_seconds must be >= 0 (0: none), '
          f'got {self.collective_timeout_seconds}.')
    for name in ('worker_heartbeat_timeout_seconds', 'worker_startup_timeout_seconds'):
      check(getattr(self, name) > 0, f'--{name} must be > 0, got {getattr(self, name)}.')
    if self.strategy != 'multi_worker':
      changed = [f'--{name}' for name in _MULTI_WORKER_FIELDS
                 if getattr(self, name) != getattr(TrainConfig, name)]
      check(not changed, f'{", ".join(changed)}: only for --strategy=multi_worker, '
            f'not --strategy={self.strategy}.')
    check(self.log_every_steps > 0,
          f'--log_every_steps must be > 0, got {self.log_every_steps}.')
    check(self.steps_per_loop > 0,
          f'--steps_per_loop must be > 0, got {self.steps_per_loop}.')
    check(not self.input_on_device or self.strategy == 'default',
          f'--input_on_device is for --strategy=default (one device), not '
          f'--strategy={self.strategy}: the distributed iterator of the others already '
          'prefetches each replica\'s share to its device.')
    check(self.checkpoint_every_steps >= 0,
          f'--checkpoint_every_steps must be >= 0, got {self.checkpoint_every_steps}.')
    check(self.nan_policy in NAN_POLICIES,
          f'--nan_policy must be one of {", ".join(NAN_POLICIES)}; got {self.nan_policy!r}.')
    check(not (self.deterministic and self.jit_compile),
          '--deterministic cannot be combined with --jit_compile: XLA has no '
          'deterministic MaxPool gradient.')
    check(self.checkpoints_to_keep > 0,
          f'--checkpoints_to_keep must be > 0, got {self.checkpoints_to_keep}.')
    check(not self.profile_steps or _step_range(self.profile_steps),
          '--profile_steps must be START,END with 1 <= START < END (e.g. 10,20), '
          f'got {self.profile_steps!r}.')
    # Without GPUs, mirrored runs one replica per logical CPU device, so the
    # replica count is known now; with GPUs it is checked once devices are listed.
    if self.strategy == 'mirrored' and self.batch_size > 0 and self.eval_batch_size > 0:
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
