"""The typed benchmark config: a frozen dataclass validated before TensorFlow loads. TF-free."""
import dataclasses

from mnist import config as config_lib
from mnist import errors
from mnist import runtime as runtime_lib

BASELINES = ('', 'keras_fit', 'keras_fit_tuned')
# The role of one measuring process: '' measures ours in this process (or, with
# --baseline, drives child processes); the children get 'ours' or 'keras_fit'.
ROLES = ('', 'ours', 'keras_fit')


@dataclasses.dataclass(frozen=True)
class BenchmarkConfig:
  """What scripts/benchmark.py measures. Model, data and distribution come from `train`."""
  train: config_lib.TrainConfig = dataclasses.field(default_factory=config_lib.TrainConfig)
  runtime: runtime_lib.RuntimeConfig = dataclasses.field(
      default_factory=runtime_lib.RuntimeConfig)
  warmup_steps: int = 50  # Untimed; they include tracing and the first shuffle-buffer fill.
  num_windows: int = 8
  window_steps: int = 100
  synthetic_data: bool = False
  input_only: bool = False
  epochs_mode: bool = False  # Time train.epochs whole epochs instead of step windows.
  baseline: str = ''
  baseline_repeats: int = 2
  role: str = ''

  def replace(self, **changes) -> 'BenchmarkConfig':
    return dataclasses.replace(self, **changes)

  def validate(self) -> 'BenchmarkConfig':
    """Raises ConfigError naming every invalid value; returns self when valid."""
    problems = self.runtime.problems()
    def check(ok, message):
      if not ok:
        problems.append(message)

    check(self.warmup_steps >= 1,
          f'--warmup_steps must be >= 1 (tracing must not be timed), got {self.warmup_steps}.')
    check(self.num_windows >= 1, f'--num_windows must be >= 1, got {self.num_windows}.')
    check(self.window_steps >= 1, f'--window_steps must be >= 1, got {self.window_steps}.')
    check(not (self.synthetic_data and self.input_only),
          '--synthetic_data and --input_only exclude each other: one times the model '
          'without input, the other the input without a model.')
    check(not self.epochs_mode or self.train.epochs >= 1,
          f'--epochs_mode needs --epochs >= 1, got {self.train.epochs}.')
    check(self.baseline in BASELINES,
          f"--baseline must be '' (none), keras_fit or keras_fit_tuned; "
          f'got {self.baseline!r}.')
    check(not (self.baseline and (self.synthetic_data or self.input_only)),
          '--baseline compares full training on the real input pipeline; it cannot be '
          'combined with --synthetic_data or --input_only.')
    check(self.baseline_repeats >= 2,
          f'--baseline_repeats must be >= 2 (A B A B), got {self.baseline_repeats}.')
    check(self.role in ROLES, f'--_role must be one of {ROLES}; got {self.role!r}.')
    check(not (self.role == 'keras_fit' and (self.synthetic_data or self.input_only)),
          'The keras_fit role trains on the real input pipeline only.')
    try:
      self.train.validate()
    except errors.ConfigError as e:
      problems.append(str(e))
    if problems:
      raise errors.ConfigError(' '.join(problems))
    return self
