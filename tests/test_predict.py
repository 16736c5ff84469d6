"""scripts/predict.py on pictures made from real MNIST test digits, and on bad files."""
import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from mnist import data
from mnist import predict

from conftest import REPO
from test_preprocess import png_header

NUM_PICTURES = 300


def _run_predict(*args):
  return subprocess.run([sys.executable, os.path.join(REPO, 'scripts', 'predict.py'), *args],
                        capture_output=True, text=True, timeout=600)


def _test_digits(manual_dir, count):
  splits = data.load_splits('mnist', 'train[:1]', f'test[:{count}]', manual_dir=manual_dir)
  images, labels = zip(*splits.eval.as_numpy_iterator())
  return np.stack(images)[..., 0], np.array(labels)


def _picture(digit, rng):
  """A digit as a user might photograph it: dark ink on noisy, tinted paper, somewhere
  in a larger RGB canvas, 2-6x MNIST's size, JPEG-compressed."""
  size = int(28 * rng.uniform(2, 6))
  ink = np.asarray(Image.fromarray(255 - digit).resize((size, size),
                                                        Image.Resampling.BILINEAR), np.float32)
  height, width = size + rng.integers(20, 150), size + rng.integers(20, 150)
  canvas = np.clip(rng.normal(225, 12, size=(height, width)), 0, 255)
  top, left = rng.integers(0, height - size + 1), rng.integers(0, width - size + 1)
  canvas[top:top + size, left:left + size] *= ink / 255
  rgb = np.clip(canvas[..., np.newaxis] * rng.uniform(0.85, 1.0, size=3), 0, 255)
  return Image.fromarray(rgb.astype(np.uint8), 'RGB')


@pytest.fixture(scope='module')
def pictures(tmp_path_factory, manual_dir):
  """(paths, labels) of NUM_PICTURES JPEG pictures of real test digits."""
  digits, labels = _test_digits(manual_dir, NUM_PICTURES)
  folder = tmp_path_factory.mktemp('pictures')
  rng = np.random.default_rng(0)
  paths = []
  for i, digit in enumerate(digits):
    paths.append(str(folder / f'digit{i:03d}.jpg'))
    _picture(digit, rng).save(paths[-1], quality=85)
  return paths, labels


@pytest.mark.slow
@pytest.mark.real_data
def test_predict_recognises_photographed_digits(trained_run, pictures, tmp_path):
  paths, labels = pictures
  saved = tmp_path / 'seen'
  result = _run_predict(f'--model_dir={trained_run}', '--output=json',
                        f'--save_preprocessed={saved}', *paths)
  assert result.returncode == 0, result.stderr[-3000:]
  lines = [json.loads(line) for line in result.stdout.strip().splitlines()]
  assert [line['file'] for line in lines] == paths
  predicted = np.array([line['digit'] for line in lines])
  recognised = float(np.mean(predicted == labels))
  assert recognised >= 0.97, f'recognised {recognised:.3f} of {len(paths)}'
  for line in lines:
    top3 = line['top3']
    assert [line['digit'], line['probability']] == top3[0]
    assert len(top3) == 3 and len({d for d, _ in top3}) == 3
    assert top3[0][1] >= top3[1][1] >= top3[2][1] and 0 < sum(p for _, p in top3) <= 1.0001
  seen = sorted(os.listdir(saved))
  assert seen == [f'digit{i:03d}.png' for i in range(NUM_PICTURES)]
  with Image.open(saved / seen[0]) as image:
    assert image.size == (28, 28) and image.mode == 'L'


@pytest.mark.slow
@pytest.mark.real_data
def test_bad_files_get_their_own_errors_and_the_others_are_predicted(trained_run, pictures,
                                                                     tmp_path):
  paths, labels = pictures
  not_image = tmp_path / 'notes.png'
  not_image.write_text('this is not a picture')
  empty = tmp_path / 'empty.jpg'
  empty.write_bytes(b'')
  bomb = tmp_path / 'bomb.png'  # A header claiming 100000x100000 pixels (10 gigapixels).
  bomb.write_bytes(png_header(100_000, 100_000))
  files = [paths[0], str(not_image), str(empty), str(bomb), paths[1]]
  result = _run_predict(f'--model_dir={trained_run}', '--output=json', *files)
  assert result.returncode != 0
  lines = [json.loads(line) for line in result.stdout.strip().splitlines()]
  assert [line['file'] for line in lines] == files
  assert lines[0]['digit'] == labels[0] and lines[4]['digit'] == labels[1]
  assert 'not an image' in lines[1]['error']
  assert 'empty' in lines[2]['error']
  assert 'too large to decode safely' in lines[3]['error']
  assert set(lines[1]) == {'file', 'error'}
  assert 'error: 3 of 5 files could not be predicted' in result.stderr
  assert 'Traceback' not in result.stderr


def test_text_lines_show_digit_probability_and_top3():
  ok = predict.Prediction(file='a.png', digit=7, probability=0.91,
                          top3=[[7, 0.91], [1, 0.05], [9, 0.02]])
  assert ok.to_text() == 'a.png: 7 (probability 0.910; top 3: 7 0.910, 1 0.050, 9 0.020)'
  assert json.loads(ok.to_json()) == {'file': 'a.png', 'digit': 7, 'probability': 0.91,
                                      'top3': [[7, 0.91], [1, 0.05], [9, 0.02]]}
  bad = predict.Prediction(file='b.png', error='the file is empty (0 bytes).')
  assert bad.to_text() == 'b.png: error: the file is empty (0 bytes).'
  assert json.loads(bad.to_json()) == {'file': 'b.png', 'error': 'the file is empty (0 bytes).'}


def test_predict_files_orders_top3_and_keeps_going_past_bad_files(tmp_path):
  good = tmp_path / 'good.png'
  image = np.zeros((40, 40), np.uint8)
  image[5:35, 18:22] = 255
  Image.fromarray(image).save(good)
  (tmp_path / 'bad.png').write_text('nope')
  fake_probabilities = np.array([[0.05, 0.6, 0.0, 0.0, 0.3, 0.0, 0.0, 0.05, 0.0, 0.0]])
  seen = []
  def fake_model(images):
    seen.append(images.shape)
    return fake_probabilities[:len(images)]
  results = predict.predict_files([str(tmp_path / 'bad.png'), str(good)], fake_model,
                                  save_preprocessed=str(tmp_path / 'out'))
  assert seen == [(1, 28, 28, 1)]  # Only the readable file reaches the model.
  assert results[0].error and results[0].digit is None
  assert results[1].digit == 1 and results[1].top3 == [[1, 0.6], [4, 0.3], [0, 0.05]]
  assert os.listdir(tmp_path / 'out') == ['good.png']


@pytest.mark.slow
def test_usage_errors_are_reported_before_tensorflow_loads(tmp_path):
  poison = os.path.join(REPO, 'tests', 'poison_tensorflow')
  env = {**os.environ, 'PYTHONPATH': poison + os.pathsep + REPO}
  script = os.path.join(REPO, 'scripts', 'predict.py')
  no_files = subprocess.run([sys.executable, script, f'--model_dir={tmp_path}'],
                            capture_output=True, text=True, env=env, timeout=60)
  assert no_files.returncode == 2 and 'Name one or more image files' in no_files.stderr
  both = subprocess.run([sys.executable, script, f'--model_dir={tmp_path}',
                         f'--export_dir={tmp_path}', 'x.png'],
                        capture_output=True, text=True, env=env, timeout=60)
  assert both.returncode == 2 and 'not both' in both.stderr
  assert 'Traceback' not in no_files.stderr + both.stderr
