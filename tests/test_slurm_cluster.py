"""The multi-worker cluster from Slurm's srun variables: host lists, task layout, ports,
GPU binding left alone, TF_CONFIG winning, and every refusal, before TensorFlow loads."""
import json
import os
import subprocess
import sys

from absl import flags
import pytest

from mnist import cli
from mnist import cluster
from mnist import config as config_lib
from mnist import errors
from mnist import slurm_cluster

from conftest import REPO
import private_slurm

# What srun sets in task 1 of `srun -N2 --ntasks-per-node=1` (job 123, step 0).
TWO_NODES = {'SLURM_JOB_ID': '123', 'SLURM_STEP_ID': '0', 'SLURM_PROCID': '1',
             'SLURM_STEP_NUM_TASKS': '2', 'SLURM_STEP_NUM_NODES': '2',
             'SLURM_STEP_NODELIST': 'n[1-2]', 'SLURM_STEP_TASKS_PER_NODE': '1(x2)',
             'SLURM_NODEID': '1', 'SLURM_LOCALID': '0'}


def step_env(rank, nodelist, tasks_per_node, job_id=123, step_id=0, **extra):
  """srun's variables for task `rank`, with SLURM_NODEID/LOCALID as block layout has them."""
  counts = slurm_cluster.expand_tasks_per_node(tasks_per_node)
  node = next(i for i in range(len(counts)) if rank < sum(counts[:i + 1]))
  return {'SLURM_JOB_ID': str(job_id), 'SLURM_STEP_ID': str(step_id),
          'SLURM_PROCID': str(rank), 'SLURM_STEP_NUM_TASKS': str(sum(counts)),
          'SLURM_STEP_NODELIST': nodelist, 'SLURM_STEP_TASKS_PER_NODE': tasks_per_node,
          'SLURM_NODEID': str(node), 'SLURM_LOCALID': str(rank - sum(counts[:node])),
          **extra}


@pytest.mark.parametrize('text, hosts', [  # Each as `scontrol show hostnames` expands it.
    ('n1', ['n1']),
    ('n[1-3,7]', ['n1', 'n2', 'n3', 'n7']),
    ('gpu-[01-04]', ['gpu-01', 'gpu-02', 'gpu-03', 'gpu-04']),
    ('n[098-101]', ['n098', 'n099', 'n100', 'n101']),
    ('n[8-11]', ['n8', 'n9', 'n10', 'n11']),
    ('a1,b[2-3]', ['a1', 'b2', 'b3']),
    ('n[1-2],m', ['n1', 'n2', 'm']),
    ('rack[1-2]-n[01-02]', ['rack1-n01', 'rack1-n02', 'rack2-n01', 'rack2-n02']),
    ('node-1.cluster.example', ['node-1.cluster.example']),
])
def test_host_lists_expand_as_slurm_writes_them(text, hosts):
  assert slurm_cluster.expand_hostlist(text) == hosts


@pytest.mark.parametrize('text', ['', 'n[1-2', 'n[]', 'n[a-b]', 'n[3-1]', 'n[1-2]]',
                                  'n[[1]]', 'a,,b'])
def test_malformed_host_lists_are_refused(text):
  with pytest.raises(ValueError):
    slurm_cluster.expand_hostlist(text)


@pytest.mark.parametrize('text, counts', [
    ('1', [1]), ('4', [4]), ('2(x3),1', [2, 2, 2, 1]), ('1(x2)', [1, 1]),
    ('3,2(x2),1(x1)', [3, 2, 2, 1]),
])
def test_tasks_per_node_expand(text, counts):
  assert slurm_cluster.expand_tasks_per_node(text) == counts


@pytest.mark.parametrize('text', ['', '0', '2(x)', '2x3', '-1', 'a', '2(x3)1'])
def test_malformed_tasks_per_node_are_refused(text):
  with pytest.raises(ValueError):
    slurm_cluster.expand_tasks_per_node(text)


@pytest.mark.parametrize('nodelist, tasks_per_node, hosts_by_rank', [
    ('n1', '1', ['n1']),
    ('n[1-2]', '1(x2)', ['n1', 'n2']),
    ('n[1-2]', '2(x2)', ['n1', 'n1', 'n2', 'n2']),
    ('a1,b[2-3]', '2,1(x2)', ['a1', 'a1', 'b2', 'b3']),
    ('n[1-3]', '1,3,2', ['n1', 'n2', 'n2', 'n2', 'n3', 'n3']),
])
def test_ranks_are_laid_out_block_wise_and_every_task_agrees(nodelist, tasks_per_node,
                                                              hosts_by_rank):
  resolutions = [cluster.resolve(step_env(rank, nodelist, tasks_per_node))
                 for rank in range(len(hosts_by_rank))]
  workers = resolutions[0].task.cluster['worker']
  assert [address.split(':')[0] for address in workers] == hosts_by_rank
  for rank, resolution in enumerate(resolutions):
    assert resolution.task.cluster == {'worker': workers}  # The same cluster everywhere.
    assert (resolution.task.task_index, resolution.task.is_chief) == (rank, rank == 0)
    assert json.loads(resolution.tf_config)['task'] == {'type': 'worker', 'index': rank}
  assert len(set(workers)) == len(workers)


def ports_on_first_node(job_id, step_id=0, tasks_per_node='4'):
  env = step_env(0, 'n1', tasks_per_node, job_id=job_id, step_id=step_id)
  return [int(a.split(':')[1]) for a in cluster.resolve(env).task.cluster['worker']]


def test_ports_differ_across_tasks_of_a_node_and_across_jobs_and_steps():
  ports = ports_on_first_node(123)
  assert ports == list(range(ports[0], ports[0] + 4))
  # 355 consecutive jobs (any one job's steps 0..3) sharing a node: never the same port.
  every = [p for job in range(1000, 1355) for step in range(4)
           for p in ports_on_first_node(job, step)]
  assert len(every) == len(set(every))
  assert min(every) >= slurm_cluster.FIRST_PORT and max(every) <= slurm_cluster.LAST_PORT
  # The documented repeat: job ids 355 apart, same step.
  assert ports_on_first_node(1000) == ports_on_first_node(1355)


@pytest.mark.parametrize('worker_port, tasks_per_node, expected', [
    (23456, '2(x2)', ['n1:23456', 'n1:23457', 'n2:23456', 'n2:23457']),
    (65535, '1(x2)', ['n1:65535', 'n2:65535']),
    (1, '3,1', ['n1:1', 'n1:2', 'n1:3', 'n2:1']),
])
def test_worker_port_sets_each_nodes_first_port(worker_port, tasks_per_node, expected):
  resolution = cluster.resolve(step_env(0, 'n[1-2]', tasks_per_node), worker_port)
  assert resolution.task.cluster['worker'] == expected
  assert f'--worker_port={worker_port}' in resolution.description


@pytest.mark.parametrize('worker_port, tasks_per_node, message', [
    (65535, '2', '--worker_port=65535 must be in 1..65534'),
    (0, '1', '--worker_port=0 must be in 1..65535'),
    (None, '17', 'Slurm started 17 tasks on one node'),
])
def test_ports_out_of_range_are_refused(worker_port, tasks_per_node, message):
  with pytest.raises(errors.ConfigError, match=message):
    cluster.resolve(step_env(0, 'n1', tasks_per_node), worker_port)


@pytest.mark.parametrize('gpu_env, shown', [
    # --gres=gpu:2 (and --gpus-per-node=2): each task sees the node's allocated GPUs.
    ({'SLURM_STEP_GPUS': '0,1', 'SLURM_GPUS_ON_NODE': '2', 'CUDA_VISIBLE_DEVICES': '0,1'},
     'GPUs: $CUDA_VISIBLE_DEVICES=0,1'),
    # --gpus-per-task=1: Slurm binds each task to its own GPU.
    ({'SLURM_STEP_GPUS': '2,3', 'SLURM_GPUS_PER_TASK': '1', 'CUDA_VISIBLE_DEVICES': '3'},
     'GPUs: $CUDA_VISIBLE_DEVICES=3'),
    # No GPUs requested on a GPU node: Slurm hides them all.
    ({'CUDA_VISIBLE_DEVICES': ''}, 'GPUs: none ($CUDA_VISIBLE_DEVICES empty)'),
    # A CPU node without GRES: the variable is unset.
    ({}, "GPUs: all of the node's ($CUDA_VISIBLE_DEVICES unset)"),
])
def test_cuda_visible_devices_is_described_and_left_as_slurm_set_it(gpu_env, shown,
                                                                    monkeypatch):
  env = {**TWO_NODES, **gpu_env}
  assert shown in cluster.resolve(dict(env)).description
  # The script edge, on the real environment: TF_CONFIG set, the GPU variables untouched.
  # Set, then unset, through monkeypatch: it then restores TF_CONFIG's absence at
  # teardown, so the one set_up_cluster writes does not reach later tests (delenv alone
  # records nothing for an absent variable).
  monkeypatch.setenv(cluster.TF_CONFIG_ENV, '')
  monkeypatch.delenv(cluster.TF_CONFIG_ENV)
  for name in list(os.environ):
    if name.startswith(('SLURM_', 'CUDA_')):
      monkeypatch.delenv(name)
  for name, value in env.items():
    monkeypatch.setenv(name, value)
  flag_values = flags.FlagValues()
  cli.define_train_flags(flag_values)
  flag_values(['train.py', '--strategy=multi_worker'])
  cli.set_up_cluster(cli.train_config_from_flags(flag_values), flag_values)
  assert {k: v for k, v in os.environ.items() if k.startswith(('SLURM_', 'CUDA_'))} == env
  assert cluster.parse_tf_config(os.environ[cluster.TF_CONFIG_ENV]).address == 'n2:17872'


def test_a_users_tf_config_wins_over_slurm():
  tf_config = cluster.tf_config(['h1:2222', 'h2:2222'], 1)
  resolution = cluster.resolve({**TWO_NODES, cluster.TF_CONFIG_ENV: tf_config})
  assert resolution.tf_config is None  # Nothing to set: the user's own stays.
  assert resolution.task.cluster == {'worker': ['h1:2222', 'h2:2222']}
  assert resolution.description.startswith('Cluster from $TF_CONFIG: worker 1 of 2')
  with pytest.raises(errors.ConfigError, match='--worker_port=3000 applies to a cluster '
                     'from Slurm'):
    cluster.resolve({**TWO_NODES, cluster.TF_CONFIG_ENV: tf_config}, worker_port=3000)


def test_the_description_says_where_the_cluster_came_from():
  assert cluster.resolve(TWO_NODES).description == (
      'Cluster from Slurm job 123 step 0: worker 1 of 2 (listening on n2:17872); nodes '
      'n1,n2, tasks per node 1,1, ports from job 123 step 0; GPUs: all of the node\'s '
      '($CUDA_VISIBLE_DEVICES unset).')


def test_neither_tf_config_nor_srun_names_both():
  with pytest.raises(errors.ConfigError) as e:
    cluster.resolve({'SLURM_JOB_ID': '5', 'PATH': '/bin'})  # salloc's shell: no task.
  assert 'needs the TF_CONFIG environment variable' in str(e.value)
  assert 'srun' in str(e.value)


@pytest.mark.parametrize('changes, messages', [
    ({'SLURM_PROCID': '2'}, ['SLURM_PROCID is not in 0..1', "SLURM_PROCID='2'"]),
    ({'SLURM_STEP_NODELIST': 'n[1-'},
     ['SLURM_STEP_NODELIST cannot be parsed', "SLURM_STEP_NODELIST='n[1-'"]),
    ({'SLURM_STEP_TASKS_PER_NODE': '2(x2)'},
     ['SLURM_STEP_TASKS_PER_NODE adds up to 4 tasks, not SLURM_STEP_NUM_TASKS=2']),
    ({'SLURM_STEP_NODELIST': 'n[1-3]'},
     ['SLURM_STEP_NODELIST names 3 nodes but SLURM_STEP_TASKS_PER_NODE gives counts for 2',
      'SLURM_STEP_NUM_NODES is not the 3 nodes']),
    ({'SLURM_STEP_NUM_NODES': '1'}, ['SLURM_STEP_NUM_NODES is not the 2 nodes']),
    ({'SLURM_STEP_NODELIST': 'n1,n1'}, ['SLURM_STEP_NODELIST names a node twice']),
    ({'SLURM_JOB_ID': '12a', 'SLURM_STEP_NUM_TASKS': 'two'},
     ['SLURM_JOB_ID is not a non-negative integer', "SLURM_JOB_ID='12a'",
      'SLURM_STEP_NUM_TASKS is not a non-negative integer']),
    ({'SLURM_STEP_NUM_TASKS': None, 'SLURM_STEP_NODELIST': None},
     ['SLURM_STEP_NUM_TASKS, SLURM_STEP_NODELIST not set', 'start the workers with srun']),
    ({'SLURM_NODEID': '0'}, ['SLURM_NODEID is not 1, where block distribution puts rank 1']),
    ({'SLURM_STEP_TASKS_PER_NODE': '2', 'SLURM_STEP_NODELIST': 'n1',
      'SLURM_STEP_NUM_NODES': '1', 'SLURM_NODEID': '0', 'SLURM_LOCALID': '0'},
     ['SLURM_LOCALID is not 1']),
    # srun -N2 -n4 --distribution=cyclic: rank 1 runs on the second node.
    ({'SLURM_STEP_TASKS_PER_NODE': '2(x2)', 'SLURM_STEP_NUM_TASKS': '4'},
     ['SLURM_NODEID is not 0, where block distribution puts rank 1',
      'srun --distribution=block is needed']),
])
def test_contradicting_slurm_variables_are_one_paragraph(changes, messages):
  env = {k: v for k, v in {**TWO_NODES, **changes}.items() if v is not None}
  with pytest.raises(errors.ConfigError) as e:
    cluster.resolve(env)
  text = str(e.value)
  assert text.startswith("Slurm's variables do not describe one srun step: ")
  assert '\n' not in text and 'Seen: SLURM_JOB_ID=' in text
  for message in messages:
    assert message in text


def test_worker_port_is_only_for_multi_worker():
  flag_values = flags.FlagValues()
  cli.define_train_flags(flag_values)
  flag_values(['train.py', '--worker_port=3000'])
  with pytest.raises(errors.ConfigError, match='--worker_port: only for '
                     '--strategy=multi_worker, not --strategy=default'):
    cli.train_config_from_flags(flag_values)
  assert 'worker_port' not in config_lib.TrainConfig.__dataclass_fields__


@pytest.mark.slow
def test_train_script_refuses_contradicting_slurm_variables_before_loading_tensorflow():
  env = {k: v for k, v in os.environ.items()
         if not k.startswith('SLURM_') and k != cluster.TF_CONFIG_ENV}
  env.update(TWO_NODES, SLURM_STEP_TASKS_PER_NODE='2,1',
             PYTHONPATH=os.path.join(REPO, 'tests', 'poison_tensorflow') + os.pathsep + REPO)
  result = subprocess.run([sys.executable, os.path.join(REPO, 'scripts', 'train.py'),
                           '--strategy=multi_worker'], capture_output=True, text=True,
                          timeout=120, env=env)
  assert result.returncode == 2, result.stderr
  assert ("error: Slurm's variables do not describe one srun step: SLURM_STEP_TASKS_PER_NODE "
          'adds up to 3 tasks, not SLURM_STEP_NUM_TASKS=2') in result.stderr
  assert "SLURM_STEP_TASKS_PER_NODE='2,1'" in result.stderr
  assert 'Traceback' not in result.stderr


# Run by srun in every task of a real step, with TensorFlow poisoned: srun's own variables
# and the cluster each task resolves from them.
_RESOLVE = ('import json, os\n'
            'from mnist import cluster\n'
            'task = cluster.resolve(os.environ).task\n'
            'print(json.dumps({"rank": int(os.environ["SLURM_PROCID"]),\n'
            '                  "nodelist": os.environ["SLURM_STEP_NODELIST"],\n'
            '                  "tasks_per_node": os.environ["SLURM_STEP_TASKS_PER_NODE"],\n'
            '                  "node": os.environ["SLURMD_NODENAME"],\n'
            '                  "workers": task.cluster["worker"], "index": task.task_index,\n'
            '                  "address": task.address, "chief": task.is_chief}))\n')


@pytest.fixture(scope='module')
def two_node_slurm(tmp_path_factory):
  """A private Slurm with two slurmd on this host (nodes n1, n2): real multi-node formats."""
  private_slurm.require_slurm()
  slurm = private_slurm.start(str(tmp_path_factory.mktemp('slurm2')), nodes=('n1', 'n2'))
  try:
    yield slurm
  finally:
    private_slurm.stop(slurm)


@pytest.mark.slow
@pytest.mark.parametrize('srun_flags, nodelist, tasks_per_node, hosts', [
    (['-N2', '--ntasks-per-node=1'], 'n[1-2]', '1(x2)', ['n1', 'n2']),
    (['-N2', '-n3'], 'n[1-2]', '2,1', ['n1', 'n1', 'n2']),
])
def test_real_srun_steps_over_two_nodes_resolve_one_cluster(two_node_slurm, srun_flags,
                                                            nodelist, tasks_per_node, hosts):
  env = {**two_node_slurm.env,
         'PYTHONPATH': os.path.join(REPO, 'tests', 'poison_tensorflow') + os.pathsep + REPO}
  result = two_node_slurm.run('srun', *srun_flags, sys.executable, '-c', _RESOLVE, env=env,
                              timeout=120)
  tasks = sorted((json.loads(line) for line in result.stdout.splitlines()),
                 key=lambda task: task['rank'])
  assert [task['rank'] for task in tasks] == list(range(len(hosts)))
  workers = tasks[0]['workers']
  assert [address.rsplit(':', 1)[0] for address in workers] == hosts
  assert len(set(workers)) == len(hosts)
  for task in tasks:
    assert (task['nodelist'], task['tasks_per_node']) == (nodelist, tasks_per_node)
    assert task['workers'] == workers  # Every task resolved the same cluster...
    assert task['address'] == workers[task['rank']]  # ...and its own place in it,
    assert task['address'].startswith(task['node'] + ':')  # on the node it ran on.
    assert task['chief'] == (task['rank'] == 0)
