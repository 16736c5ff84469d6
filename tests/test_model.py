"""The seed CNN and the weights fingerprint."""
import keras
import numpy as np
import pytest

from mnist import batch_norm
from mnist import errors
from mnist import hardware
from mnist import model as model_lib
from mnist import models
from mnist import randomness

import test_hardware


def test_seed_cnn_matches_the_seed_architecture():
  model = model_lib.build_model()
  assert [type(layer).__name__ for layer in model.layers] == [
      'Conv2D', 'MaxPooling2D', 'Conv2D', 'MaxPooling2D', 'Flatten', 'Dense', 'ExampleDropout',
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


def test_bfloat16_the_capped_onednn_cannot_run_is_refused_not_aborted(monkeypatch):
  """The AVX2-only imitation on an AVX-512 CPU with oneDNN on: TensorFlow would abort
  in the first bfloat16 op; building the model says why instead."""
  monkeypatch.setattr(hardware, '_read_cpuinfo', lambda: test_hardware.CPUINFO)
  monkeypatch.setenv('ONEDNN_MAX_CPU_ISA', 'AVX2')
  monkeypatch.setenv('TF_ENABLE_ONEDNN_OPTS', '1')
  with pytest.raises(errors.ConfigError, match='ONEDNN_MAX_CPU_ISA=AVX2'):
    model_lib.build_model('fast_cnn', precision='mixed_bfloat16')
  model_lib.build_model('fast_cnn', precision='float32')


@pytest.mark.parametrize('name', ['fast_cnn', 'fast_strided_cnn', 'wide_cnn', 'strided_cnn',
                                  'deep_cnn'])
def test_model_variants_map_images_to_logits(name):
  model = model_lib.build_model(name, batch_norm=True)
  assert model(np.zeros((2, 28, 28, 1), np.float32)).shape == (2, 10)
  assert any(isinstance(layer, batch_norm.FusedBatchNormalization) for layer in model.layers)


def test_batch_norm_is_off_by_default_for_the_seed_cnn():
  assert not any(isinstance(layer, keras.layers.BatchNormalization)
                 for layer in model_lib.build_model().layers)


def test_deep_cnn_never_pools_and_shrinks_by_two_pixels_per_conv():
  model = model_lib.build_model('deep_cnn', batch_norm=True)
  convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
  assert [layer.filters for layer in convs] == list(range(32, 177, 16))
  assert all(layer.kernel_size == (3, 3) and layer.strides == (1, 1) for layer in convs)
  assert not any(isinstance(layer, keras.layers.MaxPooling2D) for layer in model.layers)
  assert convs[-1].output.shape == (None, 8, 8, 176)  # 28 - 10 * 2.


def test_strided_cnn_drops_after_each_block_with_per_example_dropout():
  model = model_lib.build_model('strided_cnn', batch_norm=True, dropout_rate=0.3)
  dropouts = [layer for layer in model.layers
              if isinstance(layer, (keras.layers.Dropout, randomness.ExampleDropout))]
  assert [type(layer) for layer in dropouts] == [randomness.ExampleDropout] * 3
  assert [layer.rate for layer in dropouts] == [0.3, 0.3, 0.3]
  # Masks derive from (seed, step): the model holds no generator state, only weights.
  assert len(model.variables) == len(model.weights)


@pytest.mark.slow
@pytest.mark.parametrize('name', list(models.names()))
def test_width_scales_every_hidden_layer_and_keeps_the_logits(name):
  def channels(model):
    return [layer.filters if isinstance(layer, keras.layers.Conv2D) else layer.units
            for layer in model.layers
            if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense))]
  base = channels(model_lib.build_model(name))
  wide = model_lib.build_model(name, width=1.5)
  assert channels(wide) == [round(c * 1.5) for c in base[:-1]] + [10]
  assert wide(np.zeros((2, 28, 28, 1), np.float32)).shape == (2, 10)
