"""vigface.cpu_memory: glibc's malloc thresholds raised so batches reuse freed memory."""

import json
import subprocess
import sys

import pytest

from vigface.cpu_memory import set_malloc_thresholds

# Each mode in a fresh process: in this one, earlier tests have already grown the heap, and a
# heap with room to spare serves the buffers without a fault whatever the thresholds say.
PROBE = """
import json, resource, sys, torch
torch.set_num_threads(1)
from vigface.cpu_memory import GLIBC_DEFAULT, keep_freed_memory, set_malloc_thresholds
ok = keep_freed_memory() if sys.argv[1] == "kept" else set_malloc_thresholds(
    GLIBC_DEFAULT, GLIBC_DEFAULT)
for _ in range(5):  # the first buffers come from the kernel either way (the heap grows)
    torch.ones(4 * 1024 * 1024).sum()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):  # 16 MiB allocated, touched and freed, as a decoder's activations are
    torch.ones(4 * 1024 * 1024).sum()
print(json.dumps({"ok": ok, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["ok"]
    return got["faults"]


def test_kept_memory_stops_the_page_faults_of_repeated_large_buffers():
    if not set_malloc_thresholds(128 * 1024, 128 * 1024):
        pytest.skip("not glibc: mallopt is not there to set")
    default = _faults("default")
    # The fewest of three runs: a CI run once saw 3 of 20 kept buffers faulted in again (the
    # kernel, not malloc, took the pages back), where a quiet machine sees none.
    kept = min(_faults("kept") for _ in range(3))
    assert default > 20 * 1000  # each 16 MiB buffer faulted in again: 4,096 pages a time
    assert kept < default / 10
