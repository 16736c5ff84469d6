"""MNIST-style preprocessing on synthetic pictures: polarity, crop, aspect, centring, files."""
import io
import struct
import zlib

import numpy as np
from PIL import Image
import pytest

from mnist import errors
from mnist import preprocess


def _l_shape(height=60, width=30, canvas=(200, 150), top=40, left=70, stroke=6):
  """Light ink on black: an 'L' (lopsided, so its centre of mass is off its box centre)."""
  image = np.zeros(canvas, np.float32)
  image[top:top + height, left:left + stroke] = 255
  image[top + height - stroke:top + height, left:left + width] = 255
  return image


def test_output_is_a_28x28_uint8_light_digit_on_black_fitted_into_20_pixels():
  out = preprocess.to_mnist(_l_shape(height=60, width=30))
  assert out.shape == (28, 28) and out.dtype == np.uint8
  assert out.max() == 255
  rows, cols = np.flatnonzero(out.any(axis=1)), np.flatnonzero(out.any(axis=0))
  assert rows[-1] - rows[0] + 1 == 20  # The longer side fills the 20-pixel box...
  assert 9 <= cols[-1] - cols[0] + 1 <= 11  # ...and the aspect ratio 2:1 is kept.
  assert out[0].max() == out[-1].max() == out[:, 0].max() == out[:, -1].max() == 0


def test_dark_on_light_is_inverted_to_the_same_result_as_light_on_dark():
  light_on_dark = _l_shape()
  dark_on_light = 255 - light_on_dark
  np.testing.assert_array_equal(preprocess.to_light_on_dark(dark_on_light), light_on_dark)
  np.testing.assert_array_equal(preprocess.to_light_on_dark(light_on_dark), light_on_dark)
  np.testing.assert_array_equal(preprocess.to_mnist(dark_on_light),
                                preprocess.to_mnist(light_on_dark))


def test_position_in_the_canvas_does_not_matter():
  near_corner = preprocess.to_mnist(_l_shape(canvas=(300, 300), top=5, left=8))
  far_corner = preprocess.to_mnist(_l_shape(canvas=(300, 300), top=230, left=260))
  np.testing.assert_array_equal(near_corner, far_corner)


def test_crop_is_the_ink_bounding_box_and_ignores_lone_specks():
  image = np.zeros((100, 120), np.float32)
  image[30:50, 40:45] = 1.0  # The stroke: rows 30-49, columns 40-44.
  image[5, 5] = image[90, 110] = image[95, 7] = image[96, 8] = 1.0  # Specks and a pair.
  cropped = preprocess.crop_to_ink(image)
  assert cropped.shape == (20, 5)
  assert cropped.min() == 1.0


@pytest.mark.parametrize('shape, expected', [((10, 40), (5, 20)), ((60, 15), (20, 5)),
                                             ((7, 7), (20, 20)), ((400, 3), (20, 1))])
def test_fit_box_scales_the_longer_side_to_20_keeping_aspect(shape, expected):
  resized = preprocess.fit_box(np.ones(shape, np.float32))
  assert resized.shape == expected
  assert resized.max() == pytest.approx(1.0)


def test_centre_of_mass_lands_on_mnists_centre():
  digit = np.zeros((20, 12), np.float32)
  digit[:, :3] = 1.0  # Mass on the left edge: box centring would put it far off-centre.
  digit[-3:, :] = 1.0
  field = preprocess.center_by_mass(digit)
  assert field.sum() == pytest.approx(digit.sum())  # Nothing cut off.
  row, col = preprocess.center_of_mass(field)
  assert abs(row - preprocess.CENTER) <= 0.5 and abs(col - preprocess.CENTER) <= 0.5
  out = preprocess.to_mnist(_l_shape())
  row, col = preprocess.center_of_mass(out.astype(np.float32))
  assert abs(row - 14) <= 0.5 and abs(col - 14) <= 0.5


def test_noisy_light_background_becomes_black():
  rng = np.random.default_rng(0)
  paper = np.clip(rng.normal(220, 12, size=(200, 150)), 0, 255)
  picture = np.where(_l_shape() > 0, rng.uniform(0, 40, size=(200, 150)), paper)
  out = preprocess.to_mnist(picture).astype(int)
  clean = preprocess.to_mnist(_l_shape()).astype(int)
  assert out[clean == 0].max() <= 40  # Background: black but for faint traces...
  assert np.mean(out[clean == 0] == 0) > 0.95  # ...almost everywhere.
  assert np.abs(out - clean).mean() < 8  # The same digit.


@pytest.mark.parametrize('picture', [np.full((50, 50), 255.0), np.zeros((50, 50)),
                                     np.random.default_rng(0).normal(128, 20, (50, 50))])
def test_blank_or_noise_only_pictures_are_refused(picture):
  with pytest.raises(errors.ImageError, match='no digit found'):
    preprocess.to_mnist(picture)


def _save(tmp_path, name, array):
  path = str(tmp_path / name)
  Image.fromarray(array).save(path)
  return path


def test_formats_and_modes_all_give_the_same_digit(tmp_path):
  ink = _l_shape().astype(np.uint8)  # Light on dark.
  expected = preprocess.to_mnist(ink)
  dark_on_white = 255 - ink
  rgb = np.stack([dark_on_white, dark_on_white // 2 + 100, dark_on_white], axis=-1)
  transparent_black = np.zeros(ink.shape + (4,), np.uint8)
  transparent_black[..., 3] = ink  # Black ink, alpha = the stroke; transparent pixels are black.
  paths = [
      _save(tmp_path, 'grey.png', ink),
      _save(tmp_path, 'inverted.bmp', dark_on_white),
      _save(tmp_path, 'first_frame.gif', dark_on_white),
      _save(tmp_path, 'rgb.png', rgb),
      _save(tmp_path, 'rgba.png', transparent_black),
      _save(tmp_path, 'grey16.png', (ink.astype(np.uint16) * 257)),
  ]
  for path in paths:
    out = preprocess.preprocess_file(path)
    assert out.shape == (28, 28, 1) and out.dtype == np.uint8, path
    # The RGB file's green channel is lighter ink; everything else is identical.
    assert np.abs(out[..., 0].astype(int) - expected).max() <= 3, path


def test_gif_first_frame_is_used(tmp_path):
  first = _l_shape().astype(np.uint8)
  second = np.zeros_like(first)
  second[10:190, 10:20] = 255  # A tall bar: a different digit shape.
  path = str(tmp_path / 'animated.gif')
  Image.fromarray(first).save(path, save_all=True, append_images=[Image.fromarray(second)])
  np.testing.assert_array_equal(preprocess.preprocess_file(path)[..., 0],
                                preprocess.to_mnist(first))


def png_header(width, height):
  """A valid PNG signature and header claiming width x height, with almost no data."""
  def chunk(kind, payload):
    return (struct.pack('>I', len(payload)) + kind + payload +
            struct.pack('>I', zlib.crc32(kind + payload)))
  return (b'\x89PNG\r\n\x1a\n' +
          chunk(b'IHDR', struct.pack('>IIBBBBB', width, height, 8, 0, 0, 0, 0)) +
          chunk(b'IDAT', zlib.compress(b'\0' * 64)) + chunk(b'IEND', b''))


@pytest.mark.parametrize('content, message', [
    (b'', 'empty'),
    (b'hello, not an image', 'not an image'),
    (png_header(100_000, 100_000), 'too large to decode safely'),  # Pillow's own limit.
    (png_header(8_000, 8_000), 'decompression bomb'),  # Ours, under Pillow's.
    (png_header(40, 40), 'could not be read'),  # Truncated pixel data.
])
def test_bad_files_raise_a_clear_image_error(tmp_path, content, message):
  path = tmp_path / 'bad.png'
  path.write_bytes(content)
  with pytest.raises(errors.ImageError, match=message):
    preprocess.preprocess_file(str(path))


def test_missing_file_and_folder_are_image_errors(tmp_path):
  with pytest.raises(errors.ImageError, match='no such file'):
    preprocess.preprocess_file(str(tmp_path / 'missing.png'))
  with pytest.raises(errors.ImageError, match='a folder'):
    preprocess.preprocess_file(str(tmp_path))


@pytest.mark.slow
def test_large_picture_is_shrunk_first_and_gives_the_same_digit(tmp_path):
  small = _l_shape(canvas=(300, 200), height=120, width=60, top=50, left=70, stroke=12)
  large = np.asarray(Image.fromarray(small.astype(np.uint8)).resize(
      (2000, 3000), Image.Resampling.NEAREST))
  out = preprocess.preprocess_file(_save(tmp_path, 'large.png', large))[..., 0]
  assert np.abs(out.astype(int) - preprocess.to_mnist(small)).max() <= 4
  assert max(preprocess.load_grey(str(tmp_path / 'large.png')).shape) == \
      preprocess.MAX_SIDE


def test_exif_orientation_is_applied(tmp_path):
  bar = np.zeros((100, 300), np.uint8)  # A horizontal bar as stored...
  bar[45:55, 20:280] = 255
  image = Image.fromarray(bar)
  exif = image.getexif()
  exif[0x0112] = 6  # ...shown rotated 90 degrees, as a phone held upright records it.
  path = str(tmp_path / 'rotated.jpg')
  image.save(path, exif=exif)
  assert preprocess.load_grey(path).shape == (300, 100)
  out = preprocess.preprocess_file(path)[..., 0]
  rows, cols = np.flatnonzero(out.any(axis=1)), np.flatnonzero(out.any(axis=0))
  assert rows[-1] - rows[0] > cols[-1] - cols[0]  # Vertical, as displayed.


@pytest.mark.parametrize('image_format', ['PNG', 'JPEG', 'BMP', 'GIF', 'TIFF', 'WEBP'])
def test_corrupted_files_give_an_image_error_or_a_digit_never_a_crash(tmp_path,
                                                                      image_format):
  buffer = io.BytesIO()
  Image.fromarray((255 - _l_shape(canvas=(64, 48), top=8, left=10, height=40, width=20))
                  .astype(np.uint8)).save(buffer, image_format)
  original = buffer.getvalue()
  rng = np.random.default_rng(0)
  path = tmp_path / 'corrupt'
  failures = 0
  for trial in range(40):
    content = bytearray(original)
    if trial % 2:
      content = content[:rng.integers(1, len(content))]  # Truncated.
    else:
      for _ in range(rng.integers(1, 8)):  # Flipped bytes, headers included.
        content[rng.integers(0, len(content))] = rng.integers(0, 256)
    path.write_bytes(bytes(content))
    try:
      assert preprocess.preprocess_file(str(path)).shape == (28, 28, 1)
    except errors.ImageError:
      failures += 1
  assert failures >= 10  # The corruption did reach the decoders.
