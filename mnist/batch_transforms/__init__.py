"""Training-batch transforms: (images, labels) -> (images, targets), the stage between
the input pipeline and the forward pass, the place for what needs the labels.

Each transform is a module of this package registering its name and when a config
turns it on (each registers itself on import; TensorFlow loads only when one runs).
The stage runs once per step, before the model: --augment's layers are the model's
first, so augmentation distorts the transformed image, and SAM's second pass reuses
the transformed batch. Transforms draw from their own stream of the per-example
randomness (mnist/randomness.py), so 1 device == N replicas == N workers. With none
on, the labels pass through untouched (integer labels, today's loss); with any on,
targets are float [batch, classes], soft where a transform blends.
"""
import dataclasses
import importlib
import pkgutil
from typing import Callable, Dict, Tuple


@dataclasses.dataclass(frozen=True)
class Transform:
  name: str
  enabled: Callable  # (TrainConfig) -> bool.
  # (images [B, H, W, C] float32, one-hot targets [B, classes] float32, config)
  # -> (images, targets), drawing with mnist/randomness.py.
  apply: Callable


_REGISTRY: Dict[str, Transform] = {}


def register(name: str, enabled: Callable):
  def decorate(apply: Callable) -> Callable:
    if name in _REGISTRY:
      raise ValueError(f'Two batch transforms are named {name!r}.')
    _REGISTRY[name] = Transform(name, enabled, apply)
    return apply
  return decorate


def names() -> Tuple[str, ...]:
  return tuple(_REGISTRY)


def active(config) -> Tuple[Transform, ...]:
  """The transforms the config turns on, in registration order."""
  return tuple(t for t in _REGISTRY.values() if t.enabled(config))


def make_stage(config, num_classes: int) -> Callable:
  """stage(images, labels) -> (images, targets or None): the config's transforms in
  order; None (the labels are the targets) when none is on."""
  transforms = active(config)

  def stage(images, labels):
    if not transforms:
      return images, None
    import tensorflow as tf
    targets = tf.one_hot(labels, num_classes, dtype=tf.float32)
    for transform in transforms:
      images, targets = transform.apply(images, targets, config)
    return images, targets
  return stage


for _module in pkgutil.iter_modules(__path__):
  importlib.import_module(f'{__name__}.{_module.name}')
