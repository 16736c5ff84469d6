"""Put first on PYTHONPATH by a test: importing TensorFlow fails loudly."""
raise ImportError('TensorFlow was imported; flag validation must happen before it loads.')
