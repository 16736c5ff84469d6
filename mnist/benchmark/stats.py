"""Throughput statistics over timed windows, computed as tf_cnn_benchmarks did.

TF-free, so the A/B driver of scripts/benchmark.py can use it without loading TensorFlow.
"""
import math
import statistics

# For normally distributed data, 1.4826 x the median absolute deviation estimates
# the standard deviation, while one slow outlier barely moves it.
MAD_TO_SIGMA = 1.4826


def summarize(seconds, images_per_window) -> dict:
  """Images/s statistics of equal-sized windows that took `seconds` each.

  As tf_cnn_benchmarks' get_perf_timing: the mean is total images over total
  time (not the mean of the per-window rates), the standard error is the
  population standard deviation of the rates over sqrt(n), and the jitter is
  1.4826 x the median absolute deviation of the rates from their median.
  """
  seconds = [float(s) for s in seconds]
  if not seconds or min(seconds) <= 0:
    raise ValueError(f'Need at least one positive duration, got {seconds}.')
  rates = [images_per_window / s for s in seconds]
  median = statistics.median(rates)
  return {
      'n': len(rates),
      'median': median,
      'mean': images_per_window * len(seconds) / math.fsum(seconds),
      'stderr': statistics.pstdev(rates) / math.sqrt(len(rates)),
      'jitter': MAD_TO_SIGMA * statistics.median(abs(r - median) for r in rates),
  }
