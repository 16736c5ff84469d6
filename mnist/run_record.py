"""The run's record: what results.json reports over the whole run, not one process.

A resumed run (preempted, requeued, killed, continued with more epochs) is trained by
several processes. Its record (every epoch's evaluation, the images and seconds
trained) is a JSON string variable saved inside each checkpoint, so a checkpoint and
its record are one write and never disagree: a process killed between an epoch's
evaluation and its checkpoint leaves the previous consistent pair, and the rerun
evaluates that epoch again. Timings are summed over the processes up to each one's
last checkpoint; the work after it is redone and counted again.

TensorFlow is needed only for the variable; the record itself is plain data.
"""
import dataclasses
import json
from typing import List, Optional

import tensorflow as tf

# The checkpoint's child name; checkpoints written before the record have none.
CHECKPOINT_KEY = 'record'


@dataclasses.dataclass
class RunRecord:
  """Totals up to a checkpoint. `eval_history`: one dict per completed epoch (epoch,
  step, seconds since the run's start, split, loss, accuracy, examples, eval and
  epoch-end seconds). `restored_without_record`: resumed from a checkpoint that holds
  no record (older code); the record then starts at that checkpoint."""
  eval_history: List[dict] = dataclasses.field(default_factory=list)
  images_trained: int = 0
  seconds_in_steps: float = 0.0  # Wall time inside train steps: images/s.
  seconds: float = 0.0  # Wall time of the training loops and final evaluations.
  restored_without_record: bool = False

  def to_json(self) -> str:
    fields = dataclasses.asdict(self)
    del fields['restored_without_record']
    return json.dumps(fields)

  @classmethod
  def from_json(cls, text: str, restored_step: int = 0) -> 'RunRecord':
    """The record a checkpoint held; '' (no record) gives an empty one."""
    if not text:
      return cls(restored_without_record=restored_step > 0)
    return cls(**json.loads(text))

  def plus(self, images: int, seconds_in_steps: float, seconds: float) -> 'RunRecord':
    """This record with a process's work since it was last saved added."""
    return dataclasses.replace(self, images_trained=self.images_trained + images,
                               seconds_in_steps=self.seconds_in_steps + seconds_in_steps,
                               seconds=self.seconds + seconds)

  def evaluated(self, epoch: int) -> Optional[dict]:
    """The history's entry for `epoch`, or None."""
    return next((entry for entry in self.eval_history if entry['epoch'] == epoch), None)

  @property
  def images_per_sec(self) -> Optional[float]:
    return self.images_trained / self.seconds_in_steps if self.seconds_in_steps else None


def new_variable() -> tf.Variable:
  """The checkpointed string; '' until the first save. A plain variable (not mirrored):
  every worker holds the same record, and only the chief's is written."""
  return tf.Variable('', dtype=tf.string, trainable=False, name=CHECKPOINT_KEY)


def read(variable: tf.Variable, restored_step: int) -> RunRecord:
  return RunRecord.from_json(variable.numpy().decode(), restored_step)


def write(variable: tf.Variable, record: RunRecord) -> None:
  """Sets what the next checkpoint saves."""
  variable.assign(record.to_json())
