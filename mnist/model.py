"""Models, selected by name. The seed's CNN is the default."""
import hashlib

import keras


def seed_cnn(num_classes: int, dtype=None, dropout_rate: float = 0.5) -> list:
  """The seed document's CNN: two conv/pool blocks, a 128-unit layer, dropout, logits."""
  return [
      keras.layers.Conv2D(32, 3, activation='relu', dtype=dtype),
      keras.layers.MaxPooling2D(2, dtype=dtype),
      keras.layers.Conv2D(64, 3, activation='relu', dtype=dtype),
      keras.layers.MaxPooling2D(2, dtype=dtype),
      keras.layers.Flatten(dtype=dtype),
      keras.layers.Dense(128, activation='relu', dtype=dtype),
      keras.layers.Dropout(dropout_rate, dtype=dtype),
      keras.layers.Dense(num_classes, dtype=dtype),
  ]


MODELS = {'seed_cnn': seed_cnn}


def build_model(name: str = 'seed_cnn', input_shape=(28, 28, 1), num_classes: int = 10,
                precision: str = 'float32', dropout_rate: float = 0.5) -> keras.Model:
  """A built Keras model that maps float32 images in [0, 1] to logits.

  The dtype policy is passed to each layer rather than set globally, so two
  models of different precision can live in one process (as tests do). Logits
  come out in the compute dtype; the loss casts them to float32.
  """
  if name not in MODELS:
    raise ValueError(f'Unknown model {name!r}; known: {", ".join(MODELS)}.')
  policy = keras.DTypePolicy(precision)
  model = keras.Sequential([keras.Input(shape=input_shape)] +
                           MODELS[name](num_classes, dtype=policy, dropout_rate=dropout_rate),
                           name=name)
  return model


def weights_sha256(model: keras.Model) -> str:
  """A fingerprint of the weights (order, shapes, dtypes and bytes) for comparing runs.

  Positions, not names: Keras numbers layer names per process ('conv2d_3'), so
  names would differ between two runs of the same model.
  """
  digest = hashlib.sha256()
  for index, variable in enumerate(model.weights):
    value = keras.ops.convert_to_numpy(variable.value)
    digest.update(f'{index}:{value.shape}:{value.dtype};'.encode())
    digest.update(value.tobytes())
  return digest.hexdigest()


def rng_state_variables(model: keras.Model) -> list:
  """Variables that are not weights: the dropout layers' seed-generator states.

  Checkpoints must hold them too, or a resumed run draws different dropout masks.
  """
  weights = {id(w) for w in model.weights}
  return [v for v in model.variables if id(v) not in weights]
