"""Rewrites BUILD.md's table of training flags from their declarations (`make docs`).

  python scripts/docs.py [--build_md=BUILD.md]
"""
import os

from absl import app
from absl import flags

from mnist import flag_docs

_BUILD_MD = flags.DEFINE_string(
    'build_md', os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                             'BUILD.md'),
    'The BUILD.md to rewrite in place.')


def main(argv):
  del argv
  with open(_BUILD_MD.value) as f:
    text = f.read()
  written = flag_docs.rewrite(text)
  if written != text:
    with open(_BUILD_MD.value, 'w') as f:
      f.write(written)
  print(f'{_BUILD_MD.value}: flag table {"rewritten" if written != text else "up to date"}')


if __name__ == '__main__':
  app.run(main)
