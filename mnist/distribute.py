"""tf.distribute strategies by name, and what the training loop needs to run the same
code under each: MirroredStrategy over GPUs or logical CPUs, MultiWorkerMirroredStrategy
from TF_CONFIG on TensorFlow's collective runtime, TPUStrategy (untested here).
"""
import os
import re

from absl import logging
import tensorflow as tf
# The coordination service's timeouts have no public API in TensorFlow 2.21.
from tensorflow.python.eager import context as tf_context

from mnist import cluster
from mnist import config as config_lib
from mnist import errors
from mnist import gpu

_COMMUNICATIONS = {
    'auto': tf.distribute.experimental.CommunicationImplementation.AUTO,
    'ring': tf.distribute.experimental.CommunicationImplementation.RING,
    'nccl': tf.distribute.experimental.CommunicationImplementation.NCCL,
}
# What a collective op raises when a peer died (connection reset), stopped sending
# heartbeats, or did not answer within --collective_timeout_seconds.
PEER_FAILURES = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError,
                 tf.errors.CancelledError, tf.errors.AbortedError)


def split_cpu(num_devices: int):
  """Splits the physical CPU into `num_devices` logical devices.

  Must run before TensorFlow initialises its runtime; if it already has, the
  existing split is accepted when it has enough devices.
  """
  cpu = tf.config.list_physical_devices('CPU')[0]
  try:
    if num_devices > 1:
      tf.config.set_logical_device_configuration(
          cpu, [tf.config.LogicalDeviceConfiguration()] * num_devices)
  except RuntimeError:
    pass  # Runtime already initialised: fall through to the count check.
  available = len(tf.config.list_logical_devices('CPU'))
  if available < num_devices:
    raise errors.ConfigError(
        f'--cpu_devices={num_devices} needs {num_devices} logical CPU devices, but '
        f'TensorFlow was already initialised with {available}.')


def strategy_from_config(config: config_lib.TrainConfig) -> tf.distribute.Strategy:
  if config.strategy == 'multi_worker':
    return multi_worker_strategy(config.collective_communication,
                                 config.collective_timeout_seconds,
                                 config.worker_heartbeat_timeout_seconds,
                                 config.worker_startup_timeout_seconds)
  return make_strategy(config.strategy, config.cpu_devices)


def make_strategy(name: str, cpu_devices: int = 1) -> tf.distribute.Strategy:
  """default | one_device (first GPU, else CPU) | mirrored (all GPUs, else logical CPUs)
  | multi_worker (default settings) | tpu."""
  # Physical, not logical: listing logical devices would initialise the runtime
  # and make the CPU split below impossible.
  gpus = tf.config.list_physical_devices('GPU')
  if name == 'default':
    return tf.distribute.get_strategy()
  if name == 'one_device':
    return tf.distribute.OneDeviceStrategy('/gpu:0' if gpus else '/cpu:0')
  if name == 'mirrored':
    if gpus:
      return tf.distribute.MirroredStrategy()
    split_cpu(cpu_devices)
    return tf.distribute.MirroredStrategy([f'/cpu:{i}' for i in range(cpu_devices)])
  if name == 'multi_worker':
    return multi_worker_strategy()
  if name == 'tpu':
    return tpu_strategy()
  raise errors.ConfigError(f'Unknown --strategy={name!r}.')


def multi_worker_strategy(communication: str = 'auto', timeout_seconds: float = 0.0,
                          heartbeat_timeout_seconds: int = 30,
                          startup_timeout_seconds: int = 600) -> tf.distribute.Strategy:
  """MultiWorkerMirroredStrategy over the cluster in $TF_CONFIG.

  Blocks until every worker has connected (at most startup_timeout_seconds).
  Must run before anything initialises TensorFlow's runtime in this process.
  """
  task = cluster.parse_tf_config(os.environ.get(cluster.TF_CONFIG_ENV))
  # The worker's replicas run on its GPUs, or on its CPU when it has none.
  devices = tf.config.list_physical_devices('GPU') or tf.config.list_physical_devices('CPU')
  if communication == 'nccl' and devices[0].device_type != 'GPU':
    raise errors.ConfigError('--collective_communication=nccl needs GPUs and this machine '
                             'has none; use ring (or auto).')
  chosen = gpu.collective_communication(communication, [d.device_type for d in devices])
  if chosen != communication:
    logging.info('--collective_communication=%s: %s on %s.', communication, chosen,
                 ', '.join(d.name for d in devices))
  _configure_coordination_service(task, heartbeat_timeout_seconds, startup_timeout_seconds)
  options = tf.distribute.experimental.CommunicationOptions(
      timeout_seconds=timeout_seconds or None, implementation=_COMMUNICATIONS[chosen])
  try:
    return tf.distribute.MultiWorkerMirroredStrategy(
        cluster_resolver=tf.distribute.cluster_resolver.TFConfigClusterResolver(),
        communication_options=options)
  except PEER_FAILURES + (tf.errors.InternalError,) as e:
    raise errors.WorkerLostError(
        f'{task.task_type} {task.task_index} ({task.address}) could not form the cluster '
        f'of {task.num_workers} workers within --worker_startup_timeout_seconds='
        f'{startup_timeout_seconds} ({errors.first_line(e, 200)}). Check that '
        f'every worker was started and every address in ${cluster.TF_CONFIG_ENV} is '
        'reachable.') from None


def _configure_coordination_service(task: cluster.ClusterTask, heartbeat_timeout_seconds: int,
                                    startup_timeout_seconds: int):
  """The coordination service MultiWorkerMirroredStrategy would start, with our timeouts.

  It finds lost workers: each sends heartbeats to the leader (the chief), and a
  worker silent for heartbeat_timeout_seconds is declared failed to all others,
  whose next collective then raises. The strategy only configures the service
  when nothing has, so configuring it first keeps ours.
  """
  leader_job = 'chief' if 'chief' in task.cluster else 'worker'
  context = tf_context.context()
  context.configure_coordination_service(
      service_type='standalone', service_leader=f'/job:{leader_job}/replica:0/task:0',
      heartbeat_timeout_in_ms=heartbeat_timeout_seconds * 1000,
      cluster_register_timeout_in_ms=startup_timeout_seconds * 1000,
      coordinated_jobs=None)  # None: every job of the cluster (chief and workers).
  # Without the barrier, a worker whose peers never start waits in its first
  # collective forever (measured); with it, registration fails after the timeout.
  context.coordination_service.cluster_register_with_barrier = True


def tpu_strategy() -> tf.distribute.Strategy:
  """TPUStrategy on the TPU TPUClusterResolver finds (e.g. $TPU_NAME). Untested here."""
  try:
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
  except (ValueError, RuntimeError, tf.errors.OpError) as e:
    raise errors.ConfigError(f'--strategy=tpu found no TPU: {errors.first_line(e)}') from None
  return tf.distribute.TPUStrategy(resolver)


def num_workers(strategy: tf.distribute.Strategy) -> int:
  """Processes training together: >1 only under a multi-worker cluster."""
  if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
    return 1  # TPUStrategy's resolver lists TPU hosts, but one client drives them.
  spec = strategy.cluster_resolver.cluster_spec().as_dict()
  return max(1, sum(len(spec.get(job, ())) for job in cluster.TRAINING_JOBS))


def is_chief(strategy: tf.distribute.Strategy) -> bool:
  """Whether this process writes checkpoints, summaries and results: TensorFlow's
  answer, false only on MultiWorkerMirroredStrategy's non-chief workers."""
  return strategy.extended.should_checkpoint


def task_name(strategy: tf.distribute.Strategy) -> str:
  """'worker 1' under multi-worker, else ''."""
  resolver = strategy.cluster_resolver if num_workers(strategy) > 1 else None
  return f'{resolver.task_type} {resolver.task_id}' if resolver else ''


def distribute_dataset(strategy: tf.distribute.Strategy,
                       dataset: tf.data.Dataset) -> tf.distribute.DistributedDataset:
  """Splits each global batch across all replicas, in order, as one device sees it.

  tf.distribute rebatches each global batch into per-replica slices; with the
  DATA shard policy every worker runs the whole (cheap, in-memory) pipeline and
  keeps its own replicas' slices, so the (seed, epoch) shuffle and the resume
  skip work unchanged and N workers see exactly the batches one device would.
  The default (AUTO) would first try to give workers different input files,
  which changes the order and breaks the eval set's exact count.
  """
  options = tf.data.Options()
  options.experimental_distribute.auto_shard_policy = (
      tf.data.experimental.AutoShardPolicy.DATA)
  return strategy.experimental_distribute_dataset(dataset.with_options(options))


def make_any_worker(strategy: tf.distribute.Strategy):
  """Returns any_worker(flag: bool) -> bool, true if `flag` is true on any worker.

  One tiny all-reduce: every worker must call it at the same point of the loop.
  """
  @tf.function
  def count(flag):
    per_replica = strategy.run(tf.identity, args=(flag,))
    return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)
  return lambda flag: bool(count(tf.constant(float(flag))) > 0)


def describe_peer_failure(error: Exception) -> str:
  """The informative part of a failed collective: the lost tasks and the cause."""
  text = str(error)
  tasks = sorted(set(re.findall(r'/job:\w+/replica:\d+/task:\d+', text)))
  cause = re.search(r'Collective ops is aborted by: (.*)', text)
  cause = (cause.group(1) if cause else text.strip().splitlines()[0]).strip()
  # 'Error reported from /job:worker/task:1: The following tasks are unhealthy ...:'
  cause = re.sub(r'^Error reported from \S+: ', '', cause).rstrip(':')
  return (f'lost {", ".join(tasks)}: ' if tasks else '') + cause[:300]


def default_device() -> str:
  """Where the default strategy's ops run: the first GPU, else the first CPU."""
  return (tf.config.list_logical_devices('GPU') or tf.config.list_logical_devices('CPU'))[0].name
