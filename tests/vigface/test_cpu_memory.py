"""vigface.cpu_memory: glibc's malloc thresholds raised so batches reuse freed memory."""

import resource

import pytest
import torch

from vigface.cpu_memory import GLIBC_DEFAULT, keep_freed_memory, set_malloc_thresholds


def _faults_of_big_batches(n: int = 20) -> int:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(n):  # 16 MiB allocated, touched and freed, as a decoder's activations are
        torch.ones(4 * 1024 * 1024).sum()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def test_kept_memory_stops_the_page_faults_of_repeated_large_buffers():
    if not set_malloc_thresholds(GLIBC_DEFAULT, GLIBC_DEFAULT):
        pytest.skip("not glibc: mallopt is not there to set")
    try:
        default = _faults_of_big_batches()
        assert keep_freed_memory()
        _faults_of_big_batches(1)  # the first buffer comes from the kernel either way
        kept = _faults_of_big_batches()
    finally:
        keep_freed_memory()
    assert default > 20 * 1000  # each 16 MiB buffer faulted in again: 4,096 pages a time
    assert kept < default / 10
