"""glibc keeps training's large freed buffers for reuse inside retain_freed_memory, and gives them back after."""

from __future__ import annotations

import resource

import pytest
import torch

from medclf import _malloc

pytestmark = pytest.mark.skipif(_malloc._glibc() is None, reason="glibc only")

SIZE = 48 << 20  # above glibc's largest mmap threshold (32 MiB)


def _faults_of_reallocating(n: int = 8) -> int:
    """Minor page faults of allocating (through malloc, as torch does), touching and freeing SIZE bytes n times."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(n):
        a = torch.ones(SIZE, dtype=torch.uint8)
        del a
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize()


def test_freed_buffers_are_reused_inside_and_given_back_after() -> None:
    pages = SIZE // resource.getpagesize()
    assert _faults_of_reallocating() > 4 * pages  # glibc's default: a fresh mapping, faulted in, every time
    with _malloc.retain_freed_memory():
        _faults_of_reallocating()  # the heap grows until freed chunks fit torch's aligned requests
        with _malloc.retain_freed_memory():  # nested: still kept
            pass
        assert _faults_of_reallocating() < 2 * pages  # then the same memory serves (almost) every allocation
        kept = _rss()
    assert _malloc._depth == 0
    assert _rss() < kept - SIZE  # the freed memory went back to the kernel when the block ended


def test_system_allocator_on_request_and_a_bad_value_is_named(monkeypatch) -> None:
    from medclf.errors import ConfigError

    monkeypatch.setenv("MEDCLF_MALLOC", "system")
    with _malloc.retain_freed_memory():
        assert _faults_of_reallocating() > 4 * SIZE // resource.getpagesize()  # glibc's defaults stayed
    monkeypatch.setenv("MEDCLF_MALLOC", "jemalloc")
    with (
        pytest.raises(ConfigError, match=r"MEDCLF_MALLOC='jemalloc'.*retain.*system"),
        _malloc.retain_freed_memory(),
    ):
        pass
