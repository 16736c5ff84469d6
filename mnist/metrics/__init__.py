"""Eval metrics, each declared once: its name, whether higher is better, and how it is
computed as sums over a batch's examples (from logits, labels and weights), so that
one all-reduce per batch adds them across batches, replicas and workers and every
example counts once. Every output follows from the declarations: the epoch and test
evaluations, scripts/evaluate.py, results.json (`test_<name>`, `validation_<name>`),
TensorBoard, the HParams columns, scripts/sweep.py --metric and its direction, and
the reports. A new metric is one new module of this package (each registers itself
on import); TensorFlow is imported only when sums are computed, so the config and
sweeps read the names and directions before it loads."""
import dataclasses
import importlib
import pkgutil
from typing import Callable, Dict, Sequence, Tuple

# What results.json reports besides the declared metrics, with their directions.
RUN_RESULTS = {'train_seconds': False, 'train_images_per_sec': True}
SPLITS = ('validation', 'test')


@dataclasses.dataclass(frozen=True)
class Metric:
  name: str
  higher_is_better: bool
  num_sums: int
  # (logits [B, C] float32, labels [B] int32, weights [B] float32: 1 real, 0 padding)
  # -> float32 [num_sums], each a sum over the batch's examples.
  sums: Callable
  # (the sums over the whole split, float64 [num_sums], its example count) -> float.
  # The count is summed once for all metrics (mnist/scoring.py), not by each.
  value: Callable


_REGISTRY: Dict[str, Metric] = {}


def register(name: str, higher_is_better: bool, num_sums: int, value: Callable):
  """Registers the decorated sums function as metric `name`."""
  def decorate(sums: Callable) -> Callable:
    if name in _REGISTRY:
      raise ValueError(f'Two metrics are named {name!r}.')
    _REGISTRY[name] = Metric(name, higher_is_better, num_sums, sums, value)
    return sums
  return decorate


def declared() -> Tuple[Metric, ...]:
  return tuple(_REGISTRY.values())


def names() -> Tuple[str, ...]:
  return tuple(_REGISTRY)


def result_names() -> Tuple[str, ...]:
  """results.json's metrics: what HParams shows and sweeps compare."""
  return tuple(f'{split}_{name}' for split in SPLITS for name in _REGISTRY) + tuple(
      RUN_RESULTS)


def higher_is_better(result_name: str) -> bool:
  """The direction of a result_names() entry, from its metric's declaration."""
  if result_name in RUN_RESULTS:
    return RUN_RESULTS[result_name]
  for split in SPLITS:
    if result_name.startswith(split + '_') and result_name[len(split) + 1:] in _REGISTRY:
      return _REGISTRY[result_name[len(split) + 1:]].higher_is_better
  raise ValueError(f'{result_name!r} is not a declared result; declared: '
                   f'{", ".join(result_names())}.')


def batch_sums(logits, labels, weights):
  """Every declared metric's sums for one batch, concatenated in declaration order."""
  import tensorflow as tf
  logits = tf.cast(logits, tf.float32)
  return tf.concat([tf.reshape(metric.sums(logits, labels, weights), [metric.num_sums])
                    for metric in _REGISTRY.values()], axis=0)


def values(sums: Sequence[float], count: float) -> Dict[str, float]:
  """{name: value} from batch_sums added over a whole split of `count` examples."""
  found, start = {}, 0
  for metric in _REGISTRY.values():
    found[metric.name] = float(metric.value(sums[start:start + metric.num_sums], count))
    start += metric.num_sums
  return found


def num_sums() -> int:
  return sum(metric.num_sums for metric in _REGISTRY.values())


# Loss and accuracy first (the order of logs and reports), then the others by module.
for _module in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name != 'classification'):
  importlib.import_module(f'{__name__}.{_module.name}')
