"""A multilayer perceptron: the baseline without convolutions."""
from mnist import models


@models.register(takes=('dropout_rate', 'width'))
def mlp(num_classes, dtype=None, dropout_rate=0.5, width=1.0) -> list:
  """Two hidden layers of 512 (times `width`), ReLU, dropout after each; about 1.3
  MFLOP per image forward. No batch norm: --batch_norm is refused for it."""
  import keras
  from mnist import randomness
  units = max(1, round(512 * width))
  hidden = lambda: [keras.layers.Dense(units, activation='relu', dtype=dtype),
                    randomness.ExampleDropout(dropout_rate, dtype=dtype)]
  return ([keras.layers.Flatten(dtype=dtype)] + hidden() + hidden() +
          [keras.layers.Dense(num_classes, dtype=dtype)])
