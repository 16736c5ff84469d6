"""Training throughput, measured as `scripts/benchmark.py` reports it.

One module per concern; this package imports nothing, so the TF-free ones load
before TensorFlow does:
  config     the typed BenchmarkConfig, validated before TensorFlow loads (TF-free)
  measure    `run(config)`: our train step (or Keras fit) timed in windows or epochs
  keras_fit  the baseline: Keras model.compile / model.fit of the same model, timed
  ab         --baseline: ours and Keras fit alternately, each in a child process (TF-free)
  flops      the model's FLOPs per training image, counted from the built model
  ceiling    this machine's matmul FLOP/s in the run's compute dtype
  report     the settings header, per-window lines, statistics and JSON dict
  stats      images/s statistics over windows, as tf_cnn_benchmarks computed them (TF-free)
"""
