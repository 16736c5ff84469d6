"""The model's FLOPs per training image, counted by TensorFlow's graph profiler from
the built Keras model (not a hand-entered constant).

What is counted: the multiply-adds (2 FLOPs each) of convolutions and dense layers,
the work a matmul ceiling measures, as the profiler derives them from each op's
actual shapes in the model's forward graph. Not counted: biases, activations,
pooling, batch norm, dropout, augmentation and the optimizer's update; they are
elementwise, run at memory speed rather than matmul speed, and are a few percent of
the total. So --batch_norm leaves the count as it is, and the precision does too.
"""
import keras
import tensorflow as tf

# Op types holding a model's multiply-adds (tf.compat.v1.profiler's registered names).
MULTIPLY_ADD_OPS = ('Conv2D', 'Conv3D', 'DepthwiseConv2dNative', 'MatMul',
                    'BatchMatMul', 'BatchMatMulV2', 'BatchMatMulV3')
# Training = forward + backward = 3 x forward: a layer's backward pass is two products
# the size of its forward one (the gradients with respect to its input and its
# weights). The first layer's input gradient, which training never needs, is counted
# too, as the usual 6-FLOPs-per-parameter-per-example rule does: it keeps the count a
# property of the model, comparable across code that does or does not prune it.
TRAINING_TO_FORWARD = 3


def forward_flops_per_image(model: keras.Model) -> int:
  """Multiply-add FLOPs of one inference-mode forward pass of one image.

  The profiler counts a traced graph, which needs static shapes: the model is
  traced for a batch of one image.
  """
  @tf.function
  def forward(images):
    return model(images, training=False)

  spec = tf.TensorSpec((1, *model.input_shape[1:]), tf.float32)
  graph = forward.get_concrete_function(spec).graph
  options = (tf.compat.v1.profiler.ProfileOptionBuilder(
      tf.compat.v1.profiler.ProfileOptionBuilder.float_operation())
             .account_displayed_op_only(False).with_empty_output().build())
  options['account_type_regexes'] = [f'^{op}$' for op in MULTIPLY_ADD_OPS]
  return int(tf.compat.v1.profiler.profile(graph, options=options).total_float_ops)


def training_flops_per_image(model: keras.Model, passes: int = 1) -> int:
  """FLOPs of training on one image: `passes` forward and backward passes per step
  (2 with sharpness-aware minimisation, which takes a second gradient)."""
  return TRAINING_TO_FORWARD * passes * forward_flops_per_image(model)
