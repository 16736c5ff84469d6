"""MNIST research codebase: TFDS input, a GradientTape loop under tf.distribute."""
