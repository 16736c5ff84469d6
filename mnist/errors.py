"""Errors a user can act on. Scripts print their message as one paragraph and exit.

Each class carries its own exit status so a caller (a shell loop, a launcher, CI)
can tell a bad input from a diverged run without parsing text.
"""
import re


class Error(Exception):
  """Base: a problem with what the user asked for, not a bug in the code."""
  exit_code = 2


class ConfigError(Error):
  """Invalid flag values or combinations."""


class DataError(Error):
  """Missing, truncated or corrupt data, or an unknown dataset or split."""


class CheckpointError(Error):
  """A checkpoint that cannot be restored into this model, or a model_dir problem."""


class ModelDirInUseError(CheckpointError):
  """Another training run holds the model_dir's lock (mnist/model_dir_lock.py)."""


class ImageError(Error):
  """An input image that cannot be read, is too large to decode, or shows no digit."""


class TrainingDivergedError(Error):
  """The loss or a gradient became NaN or Inf."""
  exit_code = 3


class PreemptedError(Error):
  """SIGTERM or SIGINT: a checkpoint was saved; rerun the same command to resume."""
  exit_code = 75  # EX_TEMPFAIL: try again.


class WorkerLostError(Error):
  """Another worker of a multi-worker run died or stopped answering; rerunning every
  worker resumes from the last checkpoint."""
  exit_code = 75  # EX_TEMPFAIL, as for preemption: the same command resumes.


def first_line(error: BaseException, limit: int = 300) -> str:
  """The readable first line of an exception: TensorFlow's '{{function_node ...}}'
  prefixes and '[Op:...]' suffixes dropped, or the type's name if nothing is left."""
  text = re.sub(r'\{\{.*?\}\}\s*|\s*\[Op:\w+\]', '', str(error)).strip()
  return text.splitlines()[0][:limit] if text else type(error).__name__
