"""The seed CNN and the weights fingerprint."""
import keras
import numpy as np
import pytest

from mnist import model as model_lib


def test_seed_cnn_matches_the_seed_architecture():
  model = model_lib.build_model()
  assert [type(layer).__name__ for layer in model.layers] == [
      'Conv2D', 'MaxPooling2D', 'Conv2D', 'MaxPooling2D', 'Flatten', 'Dense', 'Dropout',
      'Dense']
  assert model.count_params() == 225_034  # 320 + 18,496 + 204,928 + 1,290
  logits = model(np.zeros((3, 28, 28, 1), np.float32))
  assert logits.shape == (3, 10)


@pytest.mark.parametrize('precision, compute_dtype', [
    ('mixed_float16', 'float16'), ('mixed_bfloat16', 'bfloat16')])
def test_mixed_precision_computes_low_and_keeps_float32_weights(precision, compute_dtype):
  model = model_lib.build_model(precision=precision)
  assert model(np.zeros((2, 28, 28, 1), np.float32)).dtype == compute_dtype
  assert all(w.dtype == 'float32' for w in model.weights)


def test_fingerprint_identifies_weights_not_layer_names():
  keras.utils.set_random_seed(7)
  first = model_lib.build_model()
  keras.utils.set_random_seed(7)
  second = model_lib.build_model()  # Keras names its layers conv2d_2, ... this time.
  assert model_lib.weights_sha256(first) == model_lib.weights_sha256(second)
  second.weights[0].assign(second.weights[0] + 1e-7)
  assert model_lib.weights_sha256(first) != model_lib.weights_sha256(second)


def test_unknown_model_is_rejected():
  with pytest.raises(ValueError, match='Unknown model'):
    model_lib.build_model('resnet_1000')
