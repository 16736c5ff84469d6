"""This machine's matmul ceiling: the FLOP/s of one large square matmul in the run's
compute dtype, timed in the benchmark's own process (same threads, same oneDNN).

Keras and TensorFlow have no peak-FLOP/s query, and a datasheet peak would not
say what this process gets from its cores; a large matmul is the fastest work a
model's convolutions and dense layers can become.
"""
import time

import keras
import tensorflow as tf

# Large enough to run at full speed (4096 measured the same FLOP/s as 2048 on the
# 2-core AMD EPYC, in 8x the time); a GPU needs more work per call to fill it.
MATMUL_SIZE = {'CPU': 2048, 'GPU': 8192}
TIMED_REPEATS = 5


def compute_dtype(precision: str) -> str:
  """float32, bfloat16 for mixed_bfloat16, float16 for mixed_float16."""
  return keras.DTypePolicy(precision).compute_dtype


def matmul_flops_per_sec(dtype: str, size: int = 0, repeats: int = TIMED_REPEATS) -> dict:
  """{'flops_per_sec', 'dtype', 'matmul_size', 'device'}: the fastest of `repeats`
  timed matmuls after one untimed (tracing, oneDNN's kernel choice). The fastest,
  not the median: anything else running only ever slows a matmul down."""
  device = 'GPU' if tf.config.list_logical_devices('GPU') else 'CPU'
  size = size or MATMUL_SIZE[device]
  a = tf.cast(tf.random.stateless_normal((size, size), seed=(1, 2)), dtype)
  b = tf.cast(tf.random.stateless_normal((size, size), seed=(3, 4)), dtype)

  @tf.function  # Graph mode, as the train step runs (and gets oneDNN's graph rewrites).
  def corner(x, y):
    return tf.linalg.matmul(x, y)[0, 0]  # One element back: no copy of the product.

  corner(a, b).numpy()
  fastest = float('inf')
  for _ in range(repeats):
    start = time.perf_counter()
    corner(a, b).numpy()
    fastest = min(fastest, time.perf_counter() - start)
  return {'flops_per_sec': 2 * size ** 3 / fastest, 'dtype': dtype,
          'matmul_size': size, 'device': device}
