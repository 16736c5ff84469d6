"""BUILD.md's table of training flags, written from their declarations: every flag
scripts/train.py defines (mnist/cli.py), with a TrainConfig field's help, choices and
`doc` (mnist/config.py). `make docs` rewrites the table between the markers;
tests/test_flag_docs.py fails while BUILD.md differs from what this writes."""
import re

from absl import flags

from mnist import cli
from mnist import config as config_lib

BEGIN = ('<!-- The training flags: written by `make docs` from mnist/config.py and '
         'mnist/cli.py; edit them there. -->')
END = '<!-- End of the written training flags. -->'


def _default(value) -> str:
  if value is None or value == '':
    return 'none'
  if isinstance(value, bool):
    return str(value).lower()
  return f'`{value}`' if isinstance(value, str) else f'{value:g}'


def _meaning(name: str, flag: flags.Flag) -> str:
  """A field's help (with its choices, as --help shows them) and its BUILD.md `doc`;
  a flag that is no field (runtime, --worker_port): its --help."""
  field = config_lib.TrainConfig.__dataclass_fields__.get(name)
  doc = field.metadata.get('doc') if field else None
  text = ' '.join([flag.help, (doc() if callable(doc) else doc) or ''])
  # One table row: no line breaks, and a '|' would end the cell.
  return re.sub(r'\s+', ' ', text).strip().replace('|', '\\|')


def table() -> str:
  """The Markdown table of scripts/train.py's flags, in the order they are defined."""
  flag_values = flags.FlagValues()
  cli.define_train_script_flags(flag_values)
  rows = ['| flag | default | meaning |', '| --- | --- | --- |']
  for name in flag_values:  # In definition order.
    flag = flag_values[name]
    rows.append(f'| `--{name}` | {_default(flag.default)} | {_meaning(name, flag)} |')
  return '\n'.join(rows)


def rewrite(text: str) -> str:
  """`text` (BUILD.md) with the table between BEGIN and END written anew."""
  start, end = text.find(BEGIN), text.find(END)
  if start < 0 or end < start:
    raise ValueError(f'BUILD.md lacks the markers of the flag table:\n{BEGIN}\n{END}')
  return f'{text[:start + len(BEGIN)]}\n{table()}\n{text[end:]}'

