"""TF_CONFIG parsing and the multi-worker flags: clear errors, before TensorFlow loads."""
import json
import os
import subprocess
import sys

import pytest

from mnist import cluster
from mnist import config as config_lib
from mnist import errors

from conftest import REPO

TWO_WORKERS = {'cluster': {'worker': ['10.0.0.1:2222', '10.0.0.2:2222']},
               'task': {'type': 'worker', 'index': 1}}


def test_a_valid_tf_config_names_the_task_and_its_chief():
  task = cluster.parse_tf_config(json.dumps(TWO_WORKERS))
  assert (task.task_type, task.task_index, task.address) == ('worker', 1, '10.0.0.2:2222')
  assert task.num_workers == 2 and not task.is_chief
  assert cluster.parse_tf_config(cluster.tf_config(['h:1', 'h:2'], 0)).is_chief
  with_chief = {'cluster': {'chief': ['c:1'], 'worker': ['w:1']},
                'task': {'type': 'worker', 'index': 0}}
  task = cluster.parse_tf_config(json.dumps(with_chief))
  assert task.num_workers == 2 and not task.is_chief  # The chief job's task is chief.


@pytest.mark.parametrize('text, messages', [
    (None, ['needs the TF_CONFIG environment variable', 'launch_local.py']),
    ('  ', ['needs the TF_CONFIG environment variable']),
    ('{"cluster": ', ['TF_CONFIG is not valid JSON']),
    ('[1, 2]', ['"cluster" must map job names', '"task" must be']),
    (json.dumps({'cluster': {'worker': ['a:1', 'b'], 'ps': ['p:1']},
                 'task': {'type': 'worker', 'index': 2}}),
     ["worker address 'b' is not \"host:port\"", "job 'ps' is not supported",
      'task index 2 is not in 0..1']),
    (json.dumps({'cluster': {'worker': ['a:1', 'a:1']}, 'task': {'type': 'chief', 'index': 0}}),
     ['addresses appear twice: a:1', "task type 'chief' is not a job of the cluster"]),
    (json.dumps({'cluster': {'worker': []}, 'task': {'type': 'worker', 'index': True}}),
     ["cluster job 'worker' must be a non-empty list"]),
])
def test_missing_or_malformed_tf_config_is_a_clear_error(text, messages):
  with pytest.raises(errors.ConfigError) as e:
    cluster.parse_tf_config(text)
  for message in messages:
    assert message in str(e.value)


@pytest.mark.parametrize('changes, message', [
    ({'collective_communication': 'mpi'}, '--collective_communication must be one of'),
    ({'collective_communication': 'ring'}, 'only for --strategy=multi_worker'),
    ({'worker_heartbeat_timeout_seconds': 5}, '--worker_heartbeat_timeout_seconds: only for'),
    ({'strategy': 'multi_worker', 'worker_startup_timeout_seconds': 0},
     '--worker_startup_timeout_seconds must be > 0'),
    ({'strategy': 'multi_worker', 'collective_timeout_seconds': -1},
     '--collective_timeout_seconds must be >= 0'),
])
def test_multi_worker_flags_are_validated(changes, message):
  with pytest.raises(errors.ConfigError, match=message):
    config_lib.TrainConfig(**changes).validate()
  config_lib.TrainConfig(strategy='multi_worker', collective_communication='ring',
                         collective_timeout_seconds=300).validate()


@pytest.mark.parametrize('tf_config, message', [
    (None, 'error: --strategy=multi_worker needs the TF_CONFIG environment variable'),
    (None, "or start every worker with Slurm's srun"),
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 1}}',
     'error: TF_CONFIG is malformed: task index 1 is not in 0..0'),
])
@pytest.mark.slow
def test_train_script_rejects_a_bad_tf_config_before_loading_tensorflow(tf_config, message):
  poison = os.path.join(REPO, 'tests', 'poison_tensorflow')
  env = {k: v for k, v in os.environ.items()  # Not Slurm's either, even inside a job.
         if k != cluster.TF_CONFIG_ENV and not k.startswith('SLURM_')}
  env['PYTHONPATH'] = poison + os.pathsep + REPO
  if tf_config:
    env[cluster.TF_CONFIG_ENV] = tf_config
  result = subprocess.run([sys.executable, os.path.join(REPO, 'scripts', 'train.py'),
                           '--strategy=multi_worker'], capture_output=True, text=True,
                          timeout=120, env=env)
  assert result.returncode == 2, result.stderr
  assert message in result.stderr and 'Traceback' not in result.stderr
