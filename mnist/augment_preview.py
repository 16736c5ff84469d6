"""What the training augmentation does to digits: a PNG grid and how sharp the strokes stay.

Sharpness is the ink-weighted mean intensity, sum(x^2) / sum(x): 1.0 when every
inked pixel is fully on; each bilinear resample lowers it by smearing strokes.
"""
import statistics
import time

import keras
import numpy as np
import PIL.Image
import tensorflow as tf


def sharpness(images) -> float:
  images = np.asarray(images, np.float64)
  return float((images**2).sum() / images.sum())


def keras_chain(shift_pixels, rotation_degrees, zoom, image_size=28, seed=None) -> list:
  """Keras's own layers for the same shift, rotation and scale: three resamples."""
  shift = shift_pixels / image_size
  return [keras.layers.RandomTranslation(shift, shift, fill_mode='constant', seed=seed),
          keras.layers.RandomRotation(rotation_degrees / 360, fill_mode='constant', seed=seed),
          keras.layers.RandomZoom(zoom, fill_mode='constant', seed=seed)]


def apply(layers, images) -> np.ndarray:
  for layer in layers:
    images = layer(images, training=True)
  return keras.ops.convert_to_numpy(images)


def milliseconds_per_batch(layers, images, repeats: int = 30) -> float:
  """Median time of one training-mode call on `images`, in a tf.function as in the
  train step; tracing and one warm-up call excluded."""
  @tf.function
  def augment_batch(batch):
    for layer in layers:
      batch = layer(batch, training=True)
    return batch
  batch = tf.constant(images)
  augment_batch(batch).numpy()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    augment_batch(batch).numpy()
    times.append(time.perf_counter() - start)
  return 1000 * statistics.median(times)


def write_grid(path: str, originals: np.ndarray, augmented_rows: list, scale: int = 3):
  """Originals on the top row, one row per augmented draw below; pixels scaled up."""
  rows = [originals] + augmented_rows
  grid = np.concatenate([np.concatenate(list(row[..., 0]), axis=1) for row in rows], axis=0)
  image = PIL.Image.fromarray((np.clip(grid, 0, 1) * 255).astype(np.uint8))
  image.resize((image.width * scale, image.height * scale), PIL.Image.NEAREST).save(path)
