"""The model registry: each model is a builder in a module of this package, registered
under its name with the config options it takes. The config reads names and options
from here before TensorFlow loads (builders import Keras when called), and every
module of the package registers itself on import: a new model is one new module."""
import dataclasses
import importlib
import pkgutil
from typing import Callable, Dict, Tuple

# The config options a builder can take; each is a TrainConfig field of the same name.
OPTIONS = ('dropout_rate', 'batch_norm', 'width')


@dataclasses.dataclass(frozen=True)
class Model:
  name: str
  build: Callable  # (num_classes, dtype, **the options it takes) -> list of layers.
  takes: Tuple[str, ...]


_REGISTRY: Dict[str, Model] = {}


def register(takes: Tuple[str, ...]):
  """Registers the decorated builder under its function name, taking `takes`."""
  unknown = set(takes) - set(OPTIONS)
  if unknown:
    raise ValueError(f'Unknown model options {sorted(unknown)}; known: {OPTIONS}.')

  def decorate(build: Callable) -> Callable:
    if build.__name__ in _REGISTRY:
      raise ValueError(f'Two models are named {build.__name__!r}.')
    _REGISTRY[build.__name__] = Model(build.__name__, build, tuple(takes))
    return build
  return decorate


def names() -> Tuple[str, ...]:
  return tuple(_REGISTRY)


def get(name: str) -> Model:
  if name not in _REGISTRY:
    raise ValueError(f'Unknown model {name!r}; known: {", ".join(_REGISTRY)}.')
  return _REGISTRY[name]


def describe() -> str:
  """Every model with the options it takes and its builder's docstring (BUILD.md's
  --model row, mnist/flag_docs.py)."""
  return ' '.join(
      f'`{m.name}` (takes {", ".join("--" + o for o in m.takes) or "no options"}): '
      f'{" ".join(m.build.__doc__.split())}' for m in _REGISTRY.values())


def refused_options(name: str, values: dict, defaults: dict) -> list:
  """The options set away from their default for a model that does not take them."""
  takes = get(name).takes
  return [option for option in OPTIONS
          if option not in takes and values[option] != defaults[option]]


for _module in pkgutil.iter_modules(__path__):
  importlib.import_module(f'{__name__}.{_module.name}')
