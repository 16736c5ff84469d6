"""The benchmark's FLOP count (from the built model) and its matmul ceiling; no timing asserted."""
import keras
import pytest

from mnist import model as model_lib
from mnist import models
from mnist.benchmark import ceiling
from mnist.benchmark import flops

# seed_cnn by hand, 2 FLOPs per multiply-add, 28x28x1 input, 'valid' convs:
#   conv 3x3 1->32:  26x26 outputs x 32 x 3x3x1   =   194,688 multiply-adds
#   max-pool 2:      13x13x32 (not counted)
#   conv 3x3 32->64: 11x11 outputs x 64 x 3x3x32  = 2,230,272
#   max-pool 2:      5x5x64 = 1,600 features
#   dense 1600->128:                                  204,800
#   dense 128->10:                                      1,280
SEED_CNN_FORWARD = 2 * (26 * 26 * 32 * 9 + 11 * 11 * 64 * 9 * 32 + 1600 * 128 + 128 * 10)
# --width=2: 64 and 128 channels, 256 units.
SEED_CNN_WIDTH_2_FORWARD = 2 * (26 * 26 * 64 * 9 + 11 * 11 * 128 * 9 * 64 + 3200 * 256
                                + 256 * 10)
# fast_cnn: conv 5x5 1->24 (24x24 out), pool 12x12, conv 3x3 24->32 (10x10 out),
# pool 5x5x32 = 800, dense 800->256, dense 256->10.
FAST_CNN_FORWARD = 2 * (24 * 24 * 24 * 25 + 10 * 10 * 32 * 9 * 24 + 800 * 256 + 256 * 10)
# fast_strided_cnn: the same with conv 5x5/2 1->24 (12x12 out) and no first pool.
FAST_STRIDED_CNN_FORWARD = 2 * (12 * 12 * 24 * 25 + 10 * 10 * 32 * 9 * 24 + 800 * 256
                                + 256 * 10)


def _layer_by_layer(model) -> int:
  """An independent count from each Keras layer's kernel and output shape."""
  total = 0
  for layer in model.layers:
    if isinstance(layer, keras.layers.Conv2D):
      _, height, width, _ = layer.output.shape
      total += 2 * height * width * layer.kernel.numpy().size
    elif isinstance(layer, keras.layers.Dense):
      total += 2 * layer.kernel.numpy().size
  return total


def test_seed_cnn_matches_the_hand_count():
  assert SEED_CNN_FORWARD == 5_262_080
  model = model_lib.build_model('seed_cnn')
  assert flops.forward_flops_per_image(model) == SEED_CNN_FORWARD
  # Training: forward + backward, 3 x forward (15.8 MFLOP).
  assert flops.training_flops_per_image(model) == 3 * SEED_CNN_FORWARD
  assert flops.training_flops_per_image(model, passes=2) == 6 * SEED_CNN_FORWARD


def test_fast_cnns_match_the_hand_count():
  assert flops.forward_flops_per_image(model_lib.build_model('fast_cnn')) == FAST_CNN_FORWARD
  assert (flops.forward_flops_per_image(model_lib.build_model('fast_strided_cnn'))
          == FAST_STRIDED_CNN_FORWARD)


@pytest.mark.parametrize('name', list(models.names()))
def test_every_model_is_counted_as_its_layers_add_up(name):
  model = model_lib.build_model(name)
  assert flops.forward_flops_per_image(model) == _layer_by_layer(model) > 0


def test_width_scales_and_batch_norm_and_precision_leave_the_count():
  seed = flops.forward_flops_per_image(model_lib.build_model('seed_cnn'))
  wide = flops.forward_flops_per_image(model_lib.build_model('seed_cnn', width=2.0))
  assert wide == SEED_CNN_WIDTH_2_FORWARD
  # Batch norm and the conv biases it replaces are elementwise: not counted.
  assert flops.forward_flops_per_image(model_lib.build_model('seed_cnn',
                                                             batch_norm=True)) == seed
  assert flops.forward_flops_per_image(
      model_lib.build_model('seed_cnn', precision='mixed_bfloat16')) == seed
  # strided_cnn's default is batch norm; without it the count is the same.
  assert (flops.forward_flops_per_image(model_lib.build_model('strided_cnn')) ==
          flops.forward_flops_per_image(model_lib.build_model('strided_cnn',
                                                              batch_norm=False)))


@pytest.mark.parametrize('precision, dtype', [('float32', 'float32'),
                                              ('mixed_bfloat16', 'bfloat16'),
                                              ('mixed_float16', 'float16')])
def test_ceiling_times_a_matmul_in_the_compute_dtype(precision, dtype):
  assert ceiling.compute_dtype(precision) == dtype
  result = ceiling.matmul_flops_per_sec(dtype, size=64, repeats=2)
  assert result['dtype'] == dtype and result['matmul_size'] == 64
  assert result['device'] == 'CPU' and result['flops_per_sec'] > 0
