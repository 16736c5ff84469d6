"""BUILD.md's flag table is written from the flag declarations (mnist/flag_docs.py)."""
import dataclasses
import os

import pytest

from conftest import REPO
from mnist import config as config_lib
from mnist import flag_docs
from mnist import models


def _build_md() -> str:
  with open(os.path.join(REPO, 'BUILD.md')) as f:
    return f.read()


def test_build_md_holds_the_table_the_declarations_write():
  text = _build_md()
  assert flag_docs.rewrite(text) == text, (
      "BUILD.md's training-flag table differs from the flag declarations: run make docs.")


def test_the_table_has_a_row_with_help_and_doc_for_every_field_and_runtime_flag():
  rows = {line.split(' | ')[0][len('| `--'):-1]: line
          for line in flag_docs.table().splitlines()[2:]}
  for field in dataclasses.fields(config_lib.TrainConfig):
    row = rows[field.name]
    assert ' '.join(field.metadata['help'].split()) in row, field.name
    doc = field.metadata['doc']
    if isinstance(doc, str) and doc:
      assert ' '.join(doc.split()) in row, field.name
  for name in ('worker_port', 'onednn', 'inter_op_threads', 'intra_op_threads',
               'gpu_memory_growth', 'allow_cpu_on_gpu_node'):
    assert name in rows, name
  assert rows['epoch_summaries'].startswith('| `--epoch_summaries` | true | ')
  assert rows['validation_split'].startswith('| `--validation_split` | none | ')
  assert rows['lr_schedule'].startswith('| `--lr_schedule` | `constant` | ')


def test_the_model_row_lists_every_registered_model_and_what_it_takes():
  row = next(line for line in flag_docs.table().splitlines() if line.startswith('| `--model`'))
  for name in models.names():
    takes = ', '.join('--' + option for option in models.get(name).takes) or 'no options'
    assert f'`{name}` (takes {takes}): ' in row, name


def test_a_stale_table_is_rewritten_and_the_text_around_it_kept():
  text = f'# Flags\nbefore\n{flag_docs.BEGIN}\n| `--old` | 1 | gone |\n{flag_docs.END}\nafter\n'
  written = flag_docs.rewrite(text)
  assert written.startswith(f'# Flags\nbefore\n{flag_docs.BEGIN}\n| flag | default |')
  assert written.endswith(f'|\n{flag_docs.END}\nafter\n')
  assert '--old' not in written and '| `--epochs` | 5 | ' in written
  assert flag_docs.rewrite(written) == written


def test_a_build_md_without_the_markers_is_refused():
  with pytest.raises(ValueError, match='markers'):
    flag_docs.rewrite('# Flags\n| `--epochs` | 5 | hand-kept |\n')
