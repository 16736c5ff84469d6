"""The baseline: the seed's way of training, Keras model.compile / model.fit, timed.

Same model, Adam and learning rate (train.create_state), same strategy, batch and
tf.data pipeline as ours; compile and fit keep their stock settings
(steps_per_execution=1), except verbose=0 (no progress bar), shuffle=False (fit
ignores shuffle for a tf.data dataset, but warns) and jit_compile: ours's --jit_compile,
not Keras' 'auto', which turns XLA on for a GPU model outside tf.distribute and would
compare a compiled step with an uncompiled one.
"""
import math
import time

import keras

from mnist import config as config_lib
from mnist import data
from mnist import train


def compiled_model(config: config_lib.TrainConfig, splits: data.Splits, strategy):
  state = train.create_state(config, splits, strategy)
  with strategy.scope():
    state.model.compile(optimizer=state.optimizer,
                        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                        metrics=['accuracy'], jit_compile=config.jit_compile)
  return state.model


def _sync(model):
  """Waits for the steps already dispatched: reading a variable they update."""
  model.optimizer.iterations.numpy()


class _WindowTimer(keras.callbacks.Callback):
  """Times windows at batch starts. It leaves on_train_batch_end alone so Keras
  keeps dispatching the end-of-batch callbacks asynchronously, as in stock fit."""

  def __init__(self, marks):
    super().__init__()
    self._marks, self._step, self.times = marks, 0, []

  def on_train_batch_begin(self, batch, logs=None):
    if len(self.times) < len(self._marks) and self._step == self._marks[len(self.times)]:
      _sync(self.model)
      self.times.append(time.perf_counter())
      if len(self.times) == len(self._marks):
        self.model.stop_training = True  # Checked after this (untimed) step.
    self._step += 1


def time_windows(model, dataset, warmup_steps, window_steps, num_windows):
  """Seconds per window of one fit() that runs warm-up and windows back to back."""
  marks = [warmup_steps + i * window_steps for i in range(num_windows + 1)]
  steps_per_epoch = int(dataset.cardinality())
  timer = _WindowTimer(marks)
  model.fit(dataset, epochs=math.ceil((marks[-1] + 1) / steps_per_epoch), verbose=0,
            shuffle=False, callbacks=[timer])
  return [end - start for start, end in zip(timer.times, timer.times[1:])]


class _EpochTimer(keras.callbacks.Callback):
  def __init__(self):
    super().__init__()
    self.seconds, self._start = [], None

  def on_epoch_begin(self, epoch, logs=None):
    self._start = time.perf_counter()

  def on_epoch_end(self, epoch, logs=None):
    # Keras has already waited for the epoch's steps to compute the epoch's logs.
    self.seconds.append(time.perf_counter() - self._start)


def time_epochs(model, dataset, warmup_steps, epochs):
  """Wall seconds per epoch of fit(epochs=...), after a separate warm-up fit()."""
  model.fit(dataset.repeat(), epochs=1, steps_per_epoch=warmup_steps, verbose=0,
            shuffle=False)
  timer = _EpochTimer()
  model.fit(dataset, epochs=epochs, verbose=0, shuffle=False, callbacks=[timer])
  return timer.seconds
