"""Digits in image files: preprocess each file, one batched forward pass, one line each.

A file that cannot be read gets its own error result; the others are still
predicted. `predict_fn` maps uint8 images [N, 28, 28, 1] to probabilities
[N, 10]: a checkpoint's model or an exported SavedModel (see mnist.inference).
"""
import dataclasses
import json
import os
from typing import Callable, List, Optional, Sequence

import numpy as np
from PIL import Image

from mnist import errors
from mnist import preprocess

TOP_K = 3


@dataclasses.dataclass
class Prediction:
  """One file's result: a digit with its top-3 (digit, probability), or an error."""
  file: str
  digit: Optional[int] = None
  probability: Optional[float] = None
  top3: Optional[List[list]] = None
  error: Optional[str] = None

  def to_dict(self) -> dict:
    if self.error is not None:
      return {'file': self.file, 'error': self.error}
    return {'file': self.file, 'digit': self.digit, 'probability': self.probability,
            'top3': self.top3}

  def to_text(self) -> str:
    if self.error is not None:
      return f'{self.file}: error: {self.error}'
    top = ', '.join(f'{digit} {p:.3f}' for digit, p in self.top3)
    return f'{self.file}: {self.digit} (probability {self.probability:.3f}; top 3: {top})'

  def to_json(self) -> str:
    return json.dumps(self.to_dict())


def predict_files(paths: Sequence[str], predict_fn: Callable[[np.ndarray], np.ndarray],
                  save_preprocessed: Optional[str] = None) -> List[Prediction]:
  """Predicts each file's digit, in the order given."""
  results, images = [], []
  saver = _Saver(save_preprocessed) if save_preprocessed else None
  for path in paths:
    result = Prediction(file=path)
    try:
      image = preprocess.preprocess_file(path)
    except errors.ImageError as e:
      result.error = str(e)
    else:
      images.append(image)
      if saver:
        saver.save(path, image)
    results.append(result)
  readable = [r for r in results if r.error is None]
  if readable:
    for result, probabilities in zip(readable, predict_fn(np.stack(images))):
      top = np.argsort(-probabilities, kind='stable')[:TOP_K]
      result.top3 = [[int(d), round(float(probabilities[d]), 6)] for d in top]
      result.digit, result.probability = result.top3[0]
  return results


class _Saver:
  """Writes DIR/NAME.png per input file; a repeated NAME gets -2, -3, ..."""

  def __init__(self, directory: str):
    try:
      os.makedirs(directory, exist_ok=True)
    except OSError as e:
      raise errors.ConfigError(f'--save_preprocessed={directory} cannot be created: '
                               f'{e}') from None
    self.directory = directory
    self.used = set()

  def save(self, path: str, image: np.ndarray):
    stem = os.path.splitext(os.path.basename(path))[0] or 'image'
    name, n = stem, 1
    while name in self.used:
      n += 1
      name = f'{stem}-{n}'
    self.used.add(name)
    target = os.path.join(self.directory, name + '.png')
    try:
      Image.fromarray(image[..., 0]).save(target)
    except OSError as e:
      raise errors.ConfigError(f'--save_preprocessed: cannot write {target}: {e}') from None
