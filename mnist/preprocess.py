"""MNIST-style preprocessing: any picture of one digit -> the 28x28 image the CNN expects.

The MNIST creators fitted each digit's bounding box into 20x20 pixels keeping
its aspect ratio (anti-aliased), then placed it in a 28x28 field so that its
centre of mass sits at the centre: a light digit on black. A drawing or photo
must go through the same steps, or the CNN sees something it never trained on.

Numpy and Pillow only (no TensorFlow), so the unit tests run in milliseconds.
"""
import os
import warnings

import numpy as np
from PIL import Image
from PIL import ImageOps
from PIL import UnidentifiedImageError

from mnist import errors

SIZE = 28  # MNIST's field.
BOX = 20  # The box MNIST's digits were scaled into.
# Over MNIST's test set the mean centre of mass is at (13.99, 14.01), 0-based.
CENTER = 14.0
# 50 megapixels covers camera photos; a header claiming more is treated as a
# decompression bomb, before any pixel is decoded.
MAX_PIXELS = 50_000_000
# Larger pictures are shrunk to this longer side before anything else: plenty,
# unless the digit spans a tiny part of a huge photo (then crop the photo first).
MAX_SIDE = 2048
# Pillow can open formats (EPS via Ghostscript, ...) that no digit comes in.
FORMATS = ('PNG', 'JPEG', 'BMP', 'GIF', 'TIFF', 'WEBP')
# Below this range between background and ink (in grey levels) there is no digit.
MIN_CONTRAST = 32.0
# Ink fainter than this fraction of the strongest ink does not widen the bounding box.
BOX_THRESHOLD = 0.25


def load_grey(path: str) -> np.ndarray:
  """Decodes an image file (first frame) to float32 grey [H, W] in [0, 255].

  Transparent pixels are composited on white, as a viewer shows them. Raises
  ImageError for an empty, unreadable or absurdly large file.
  """
  try:
    if os.path.getsize(path) == 0:
      raise errors.ImageError('the file is empty (0 bytes).')
    with warnings.catch_warnings():
      # Pillow warns about large images (our MAX_PIXELS check decides) and about
      # corrupt metadata (the image then decodes or raises).
      warnings.simplefilter('ignore')
      image = Image.open(path, formats=FORMATS)  # Lazy: reads the header only.
      return _decode(image)
  except errors.ImageError:
    raise
  except Image.DecompressionBombError as e:
    raise errors.ImageError(f'the image is too large to decode safely: {e}') from None
  except FileNotFoundError:
    raise errors.ImageError('no such file.') from None
  except IsADirectoryError:
    raise errors.ImageError('a folder, not an image file.') from None
  except UnidentifiedImageError:
    raise errors.ImageError('not an image in a supported format '
                            f'({", ".join(FORMATS)}).') from None
  except Exception as e:  # pylint: disable=broad-except
    # Truncated or corrupt: Pillow's decoders raise OSError, SyntaxError, EOFError,
    # struct.error, ... One bad file must not stop the others.
    raise errors.ImageError(f'the image could not be read: {str(e) or type(e).__name__}') from None


def _decode(image: Image.Image) -> np.ndarray:
  """Checks the header's size, then decodes the first frame, at most MAX_SIDE pixels."""
  with image:
    width, height = image.size
    if width * height > MAX_PIXELS:
      raise errors.ImageError(
          f'the image claims {width}x{height} pixels, more than the {MAX_PIXELS:,} '
          'this tool decodes (a decompression bomb?); scale it down first.')
    image.seek(0)  # An animated GIF's first frame.
    if image.mode in ('1', 'P', 'PA'):  # Pillow would shrink these by nearest neighbour.
      image = image.convert('RGBA')
    # The digit ends up 20 pixels tall; shrinking first (a JPEG decodes at a
    # reduced scale) bounds the time and memory a camera photo takes.
    image.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.BOX)
    image = ImageOps.exif_transpose(image)  # Phone photos: upright as displayed.
    return _to_grey(image)


def _to_grey(image: Image.Image) -> np.ndarray:
  if image.mode.startswith('I;16') or image.mode == 'I':  # 16-bit greyscale PNG.
    return np.asarray(image, dtype=np.float32) / 257.0
  rgba = np.asarray(image.convert('RGBA'), dtype=np.float32)
  # ITU-R 601 luma, the weights Pillow's convert('L') uses.
  grey = rgba[..., :3] @ np.array([0.299, 0.587, 0.114], np.float32)
  alpha = rgba[..., 3] / 255.0
  return grey * alpha + 255.0 * (1.0 - alpha)


def _border(image: np.ndarray) -> np.ndarray:
  return np.concatenate([image[0], image[-1], image[1:-1, 0], image[1:-1, -1]])


def to_light_on_dark(grey: np.ndarray) -> np.ndarray:
  """Inverts a dark digit on a light background (ink on paper) to MNIST's light on dark.

  The border is taken as background: a digit rarely covers half of it.
  """
  return 255.0 - grey if np.median(_border(grey)) > 127.5 else grey


def remove_background(ink: np.ndarray) -> np.ndarray:
  """Light-on-dark grey -> [0, 1]: background and its noise to 0, the strong ink to 1.

  The background level and noise come from the border (median and MAD, robust
  to a stroke that touches it); grey pencil and saturated pen both end at 1,
  as MNIST's strokes do.
  """
  border = _border(ink)
  level = np.median(border)
  noise = 1.4826 * np.median(np.abs(border - level))  # A robust standard deviation.
  low = level + 3.0 * noise
  foreground = ink[ink > low]
  # A high percentile, not the max: a few hot pixels should not set the scale.
  high = np.percentile(foreground, 99) if foreground.size else low
  if high - low < MIN_CONTRAST:
    raise errors.ImageError('no digit found: the image is blank or its ink is too faint '
                            'against the background.')
  return np.clip((ink - low) / (high - low), 0.0, 1.0)


def crop_to_ink(ink: np.ndarray, threshold: float = BOX_THRESHOLD) -> np.ndarray:
  """Crops to the bounding box of the ink: pixels above `threshold` in a stroke.

  A pixel counts only with at least two such neighbours, as every pixel of a
  stroke (even a 1-pixel line) has: lone noise specks would widen the box.
  """
  mask = ink > threshold
  padded = np.pad(mask, 1).astype(np.int8)
  height, width = mask.shape
  neighbours = sum(padded[dy:dy + height, dx:dx + width]
                   for dy in range(3) for dx in range(3)) - mask
  mask &= neighbours >= 2
  rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
  if not rows.size:
    raise errors.ImageError('no digit found: the image has no ink.')
  return ink[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]


def fit_box(ink: np.ndarray, box: int = BOX) -> np.ndarray:
  """Scales so the longer side is `box` pixels, keeping the aspect ratio (anti-aliased)."""
  height, width = ink.shape
  scale = box / max(height, width)
  size = (max(1, round(width * scale)), max(1, round(height * scale)))
  # Lanczos widens its kernel when shrinking, so thin strokes average instead of alias.
  resized = np.asarray(Image.fromarray(ink.astype(np.float32)).resize(
      size, Image.Resampling.LANCZOS))
  resized = np.clip(resized, 0.0, 1.0)  # Lanczos rings slightly outside [0, 1].
  # Thin strokes shrunk from a large image come out faint; MNIST's reach full white.
  return resized / max(float(resized.max()), 1e-6)


def center_of_mass(image: np.ndarray) -> tuple:
  """(row, column) of the intensity-weighted mean pixel position."""
  rows, cols = np.indices(image.shape)
  total = image.sum()
  return float((rows * image).sum() / total), float((cols * image).sum() / total)


def center_by_mass(digit: np.ndarray, size: int = SIZE) -> np.ndarray:
  """Places `digit` in a size x size field with its centre of mass at MNIST's centre.

  The shift is whole pixels, as resampling would blur; ink shifted past the
  edge (only for very lopsided shapes) is cut off.
  """
  row, col = center_of_mass(digit)
  top, left = round(CENTER - row), round(CENTER - col)
  field = np.zeros((size, size), np.float32)
  height, width = digit.shape
  src_top, src_left = max(0, -top), max(0, -left)
  dst_top, dst_left = max(0, top), max(0, left)
  rows = min(height - src_top, size - dst_top)
  cols = min(width - src_left, size - dst_left)
  field[dst_top:dst_top + rows, dst_left:dst_left + cols] = (
      digit[src_top:src_top + rows, src_left:src_left + cols])
  return field


def to_mnist(grey: np.ndarray) -> np.ndarray:
  """Grey [H, W] in [0, 255], either polarity -> uint8 [28, 28] light digit on black."""
  ink = remove_background(to_light_on_dark(np.asarray(grey, np.float32)))
  field = center_by_mass(fit_box(crop_to_ink(ink)))
  return np.round(field * 255.0).astype(np.uint8)


def preprocess_file(path: str) -> np.ndarray:
  """An image file -> uint8 [28, 28, 1], as the model and the exported signature take it.

  ImageError messages do not repeat the path: callers report it beside them.
  """
  return to_mnist(load_grey(path))[..., np.newaxis]
