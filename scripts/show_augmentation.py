"""Shows what --augment and its size flags do: a PNG of digits and their random
distortions, the strokes' sharpness against the originals and against Keras's
chained RandomTranslation/RandomRotation/RandomZoom at the same sizes, and the
time of each per --batch_size batch (measure on an otherwise idle machine).

  python scripts/show_augmentation.py --flagfile=configs/best.flags --output=/tmp/aug.png
"""
from absl import flags

from mnist import cli

cli.define_train_flags()
flags.DEFINE_string('output', 'augmentation.png', 'Where to write the PNG grid.')
flags.DEFINE_integer('num_images', 1000, 'Test digits measured; the first 12 are drawn.',
                     lower_bound=12)
flags.DEFINE_integer('draws', 4, 'Random distortions drawn per digit in the PNG.',
                     lower_bound=1)
FLAGS = flags.FLAGS


def main(argv):
  del argv
  config = cli.train_config_from_flags()
  import keras  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from mnist import augment, augment_preview, data  # pylint: disable=g-import-not-at-top
  splits = data.load_splits(config.dataset, config.train_split, config.eval_split,
                            config.data_dir, config.tfds_manual_dir)
  images, _ = next(iter(tfds.as_numpy(
      splits.eval.take(FLAGS.num_images).batch(FLAGS.num_images).map(data.normalize))))
  keras.utils.set_random_seed(config.seed)
  sizes = (config.augment_shift_pixels, config.augment_rotation_degrees, config.augment_zoom)
  ours = augment.augmentation_layers(*sizes, config.augment_elastic_alpha,
                                     config.augment_elastic_sigma)
  print(f'augmentation: shift {sizes[0]} px, rotation {sizes[1]} deg, zoom {sizes[2]}, '
        f'elastic alpha {config.augment_elastic_alpha} sigma {config.augment_elastic_sigma}; '
        f'{len(images)} images of {config.eval_split}')
  for name, layers in (('original', []), ('ours (one resample)', ours),
                       ('Keras chain (three resamples)', augment_preview.keras_chain(*sizes))):
    sharpness = augment_preview.sharpness(augment_preview.apply(layers, images))
    timing = (f'  {augment_preview.milliseconds_per_batch(layers, images[:FLAGS.batch_size]):.1f}'
              f' ms per batch of {FLAGS.batch_size} (median)' if layers else '')
    print(f'{name:32s} sharpness {sharpness:.3f}{timing}')
  shown = images[:12]
  augment_preview.write_grid(FLAGS.output, shown,
                             [augment_preview.apply(ours, shown) for _ in range(FLAGS.draws)])
  print(f'wrote {FLAGS.output}')


if __name__ == '__main__':
  cli.run(main)
