"""One TensorBoard HParams experiment over the sweep folder: the varied flags and the
seed as hyperparameters, the runs' final metrics as metrics. Each run's own folder
already holds its hyperparameters (every training flag) and final scalars, so
`tensorboard --logdir=SWEEP_DIR` lists every run in the HParams dashboard.

TensorFlow-free: tensorboard's protos and event writer only.
"""
import glob
import os
import socket
import time

from tensorboard.compat.proto import event_pb2
from tensorboard.plugins.hparams import summary_v2 as hp
from tensorboard.summary.writer import record_writer

from mnist import provenance
from mnist.sweep import spec as spec_lib


def write_experiment(sweep: spec_lib.Sweep, sweep_dir: str) -> bool:
  """Writes the experiment once (False if sweep_dir already has one)."""
  if glob.glob(os.path.join(sweep_dir, 'events.out.tfevents.*')):
    return False
  # code_version: each run's own (mnist/summaries.py), so mixed code shows in the table.
  hparams = [hp.HParam(name) for name in (*sweep.varied_fields(), 'seed',
                                           provenance.CODE_VERSION_HPARAM)]
  # The scalars scripts/train.py writes into each run's own folder when it finishes.
  names = [name for name in spec_lib.METRICS
           if sweep.with_validation or not name.startswith('validation_')]
  metrics = [hp.Metric(name, display_name=name) for name in names]
  summary = hp.hparams_config_pb(hparams=hparams, metrics=metrics)
  # tensorboard's EventFileWriter would load TensorFlow (for gfile) into the sweep.
  now = time.time()
  path = os.path.join(sweep_dir, f'events.out.tfevents.{now:.0f}.{socket.gethostname()}')
  with open(path, 'wb') as f:
    writer = record_writer.RecordWriter(f)
    writer.write(event_pb2.Event(wall_time=now, file_version='brain.Event:2')
                 .SerializeToString())
    writer.write(event_pb2.Event(wall_time=now, step=0, summary=summary)
                 .SerializeToString())
  return True
