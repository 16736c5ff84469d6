"""Choosing the checkpoint to resume from: the newest intact one.

A damaged checkpoint (truncated, a flipped byte, a missing file) is not a
mismatched one: it is skipped with a warning and an older intact checkpoint is
resumed from, while a checkpoint that reads back whole but does not fit the model
is refused. Every tensor is read back first, so TensorFlow checks each one against
the crc32c its .index holds; only then is the checkpoint restored, and a failure
at that point can only be a mismatch.

The choice depends only on the files (the directory's `checkpoint` state file and
the checkpoints it lists), so every worker of a multi-worker run, reading the
chief's directory, resumes from the same checkpoint.

Checkpoints from before per-example randomness (mnist/randomness.py) also hold the
dropout and augmentation seed generators' states, under `rng/`: they restore, with
those states read and dropped.
"""
import os
import re
from typing import Dict, List, Optional, Sequence, Tuple

from absl import logging
import tensorflow as tf

from mnist import errors


def newest_first(directory: str) -> List[str]:
  """The checkpoints the state file lists, newest (the latest) first, then in
  reverse order of saving: the order CheckpointManager recorded them in."""
  state = tf.train.get_checkpoint_state(directory)
  if state is None:
    return []
  latest = state.model_checkpoint_path
  return [latest] + [path for path in reversed(state.all_model_checkpoint_paths)
                     if path != latest]


def damage(path: str) -> Optional[str]:
  """Why the checkpoint at `path` cannot be read back whole, or None if it can."""
  try:
    reader = tf.train.load_checkpoint(path)
    for name in sorted(reader.get_variable_to_dtype_map()):
      reader.get_tensor(name)  # Verifies the tensor's crc32c.
  except tf.errors.OpError as e:  # A checksum mismatch, a bad .index, a missing file.
    return errors.first_line(e, 200)
  except IndexError as e:  # 'Read less bytes than requested': the .data file is short.
    return f'truncated: {errors.first_line(e)}'
  return None


def newest_intact(directory: str) -> Tuple[Optional[str], Dict[str, str]]:
  """The newest checkpoint that reads back whole (None if there is none), and the
  damaged ones newer than it, each with what is wrong with it."""
  damaged = {}
  for path in newest_first(directory):
    reason = damage(path)
    if reason is None:
      return path, damaged
    damaged[path] = reason
  return None, damaged


def restore(checkpoint: tf.train.Checkpoint, directory: str,
            optional: Sequence[str] = ()) -> Optional[str]:
  """Restores the newest intact checkpoint of `directory` into `checkpoint`, refusing
  a partial match; returns its path, or None if the directory holds no checkpoint.

  `optional`: children of `checkpoint` (variables) that older checkpoints lack; those
  are left as they are when the checkpoint has none, and everything else is still
  checked whole. Damaged checkpoints are named in a warning and left in place.
  CheckpointError if every checkpoint is damaged, or if the one chosen does not match
  the model.
  """
  path, damaged = newest_intact(directory)
  if damaged and path is None:
    raise errors.CheckpointError(
        f'No intact checkpoint to resume from in {directory}: '
        f'{_describe(damaged)}. Use a new --model_dir, or delete the damaged '
        f'checkpoints (the whole folder {directory}: nothing in it can be resumed) '
        'to train this run from the start.')
  for bad, reason in damaged.items():
    logging.warning('Checkpoint %s is damaged (%s); resuming from %s, the newest intact '
                    'checkpoint. The damaged files are left in place.', bad, reason, path)
  if path is None:
    return None
  legacy_rng = _legacy_rng_states(path)
  if legacy_rng:
    logging.warning('Checkpoint %s is from before per-example randomness: its %d '
                    'random-generator states are no longer used and are dropped. Training '
                    'continues with draws derived from (seed, step), so not with the masks '
                    'and transforms the older code would have drawn.', path, len(legacy_rng))
    checkpoint.rng = legacy_rng  # Consumes them, so the rest is still checked whole.
  absent = _absent_children(path, optional)
  detached = {name: getattr(checkpoint, name) for name in absent}
  for name in absent:
    delattr(checkpoint, name)
  try:
    checkpoint.restore(path).assert_consumed()
  except (AssertionError, ValueError, tf.errors.OpError) as e:
    raise errors.CheckpointError(
        f'The checkpoint {path} does not match this model and flags (a different model, '
        f'precision or optimizer?). Use a new --model_dir or the original flags. '
        f'Details: {errors.first_line(e)}') from None
  finally:
    if legacy_rng:
      del checkpoint.rng  # Not saved again.
    for name, child in detached.items():
      setattr(checkpoint, name, child)  # Saved from now on.
  return path


def _absent_children(path: str, names: Sequence[str]) -> List[str]:
  """Those of the variables `names` that the checkpoint at `path` does not hold."""
  held = tf.train.load_checkpoint(path).get_variable_to_shape_map()
  return [name for name in names if f'{name}/.ATTRIBUTES/VARIABLE_VALUE' not in held]


def _legacy_rng_states(path: str) -> List[tf.Variable]:
  """Throwaway variables for the `rng/<i>` states an older checkpoint holds, in order."""
  reader = tf.train.load_checkpoint(path)
  indexes = sorted(int(m.group(1)) for name in reader.get_variable_to_shape_map()
                   for m in [re.fullmatch(r'rng/(\d+)/\.ATTRIBUTES/VARIABLE_VALUE', name)] if m)
  return [tf.Variable(reader.get_tensor(f'rng/{i}/.ATTRIBUTES/VARIABLE_VALUE'))
          for i in indexes]


def _describe(damaged: Dict[str, str]) -> str:
  return '; '.join(f'{os.path.basename(path)} is damaged ({reason})'
                   for path, reason in damaged.items())
