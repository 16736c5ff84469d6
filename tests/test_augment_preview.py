"""The augmentation preview: sharpness, the comparison it prints, and the PNG."""
import os
import subprocess
import sys

import keras
import numpy as np
import PIL.Image
import pytest

from mnist import augment
from mnist import augment_preview

from conftest import REPO


def test_sharpness_is_one_for_binary_ink_and_lower_when_smeared():
  images = np.zeros((2, 28, 28, 1), np.float32)
  images[:, 10:18, 12:16] = 1.0
  assert augment_preview.sharpness(images) == pytest.approx(1.0)
  smeared = images.copy()
  smeared[:, 10:18, 11] = smeared[:, 10:18, 16] = 0.5
  assert augment_preview.sharpness(smeared) < 1.0


def test_one_resample_keeps_strokes_sharper_than_keras_chained_layers():
  keras.utils.set_random_seed(0)
  images = np.zeros((64, 28, 28, 1), np.float32)
  images[:, 6:22, 13:15] = 1.0  # A thin stroke, like a '1'.
  ours = augment_preview.apply(augment.augmentation_layers(2, 10, 0.1), images)
  chained = augment_preview.apply(augment_preview.keras_chain(2, 10, 0.1), images)
  assert augment_preview.sharpness(ours) > augment_preview.sharpness(chained) + 0.03


@pytest.mark.slow
@pytest.mark.real_data
def test_show_augmentation_script_prints_sharpness_and_writes_the_grid(tmp_path, manual_dir):
  output = tmp_path / 'aug.png'
  result = subprocess.run(
      [sys.executable, os.path.join(REPO, 'scripts', 'show_augmentation.py'),
       '--augment_elastic_alpha=34', '--num_images=50', '--draws=2', f'--output={output}',
       f'--tfds_manual_dir={manual_dir}'],
      capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'ours (one resample)' in result.stdout and 'Keras chain' in result.stdout
  assert result.stdout.count('ms per batch of 64') == 2
  assert PIL.Image.open(output).size == (12 * 28 * 3, 3 * 28 * 3)  # Originals + 2 draws.
