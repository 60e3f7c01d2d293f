"""`minirl.memory.keep_freed_memory`: glibc takes the settings; elsewhere it is a no-op."""

import platform
import sys

import numpy as np

from minirl.memory import keep_freed_memory


def test_glibc_takes_both_thresholds_and_numpy_still_allocates():
    glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert keep_freed_memory() is glibc
    assert keep_freed_memory(mmap_threshold=1 << 20, trim_threshold=1 << 22) is glibc  # may be called again
    for _ in range(3):  # arrays above and below the threshold, freed and allocated again
        a = np.ones((4096, 1024), dtype=np.float32)
        b = np.ones(10, dtype=np.float32)
        assert float(a.sum()) == 4096 * 1024 and float(b.sum()) == 10
        del a, b
    keep_freed_memory()  # back to the defaults the CLI uses
