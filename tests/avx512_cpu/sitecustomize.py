"""Put on PYTHONPATH (with the repository) by a test: the process sees
test_hardware.CPUINFO's AVX-512 BF16 CPU whatever this machine is, so the limits of
the AVX2-only imitation can be tested on any CPU."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/
import test_hardware  # pylint: disable=g-import-not-at-top
from mnist import hardware  # pylint: disable=g-import-not-at-top

hardware._read_cpuinfo = lambda: test_hardware.CPUINFO  # pylint: disable=protected-access
del sys.path[0]
