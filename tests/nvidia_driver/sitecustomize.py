"""Put on PYTHONPATH (with the repository) by a test: the process sees an NVIDIA driver
(`hardware.gpu_support().nvidia_driver` true) whatever this machine is, while
TensorFlow still lists the GPUs it really finds (none on a CPU machine): a GPU node
with a CPU-only TensorFlow, as scripts meet it."""
from mnist import hardware  # pylint: disable=g-import-not-at-top

hardware._nvidia_driver = lambda: True  # pylint: disable=protected-access
