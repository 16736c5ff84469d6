"""Nothing in the project loads pickles or evaluates code taken from data or checkpoints."""
import pathlib
import re

from conftest import REPO

UNSAFE = re.compile(r'\bimport pickle\b|\bpickle\.|\bcPickle\b|\bdill\b|allow_pickle\s*=\s*True'
                    r'|(?<![\w.])(eval|exec)\(|\byaml\.load\(|\bmarshal\.loads?\('
                    r'|enable_unsafe_deserialization|safe_mode\s*=\s*False')


def test_no_pickle_or_eval_in_the_package_or_scripts():
  offenders = []
  for folder in ('mnist', 'scripts'):
    for path in sorted(pathlib.Path(REPO, folder).rglob('*.py')):
      for number, line in enumerate(path.read_text().splitlines(), 1):
        if UNSAFE.search(line):
          offenders.append(f'{path.relative_to(REPO)}:{number}: {line.strip()}')
  assert not offenders, '\n'.join(offenders)


def test_the_scan_would_catch_them():
  for line in ('import pickle', 'np.load(p, allow_pickle=True)', 'eval(text)',
               'exec(code)', 'yaml.load(f)', 'keras.config.enable_unsafe_deserialization()'):
    assert UNSAFE.search(line), line
  for line in ('metrics = evaluate(step, ds)', 'model.evaluate(x)', 'def exec_time():'):
    assert not UNSAFE.search(line), line
