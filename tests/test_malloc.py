"""glibc keeps training's large freed buffers for reuse inside retain_freed_memory, and gives them back after."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from medclf.runtime import malloc as _malloc

pytestmark = pytest.mark.skipif(_malloc._glibc() is None, reason="glibc only")

# In a fresh process: the allocator's state is process-wide, and other tests (training runs) change it.
SCENARIO = r"""
import json, resource, torch
from medclf.runtime import malloc as _malloc

SIZE = 48 << 20  # above glibc's largest mmap threshold (32 MiB)

def faults(n=8):
    # minor page faults of allocating (through malloc, as torch does), touching and freeing SIZE bytes n times
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(n):
        a = torch.ones(SIZE, dtype=torch.uint8)
        del a
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

def rss():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize()

out = {"pages": SIZE // resource.getpagesize(), "size": SIZE, "before": faults()}
with _malloc.retain_freed_memory():
    faults()  # the heap grows until freed chunks fit torch's aligned requests
    with _malloc.retain_freed_memory():  # nested: still kept
        pass
    out["inside"] = faults()
    out["rss_inside"] = rss()
out["depth_after"] = _malloc._depth
out["rss_after"] = rss()
print(json.dumps(out))
"""


@pytest.mark.slow
def test_freed_buffers_are_reused_inside_and_given_back_after() -> None:
    done = subprocess.run([sys.executable, "-c", SCENARIO], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    r = json.loads(done.stdout.strip().splitlines()[-1])
    assert r["before"] > 4 * r["pages"]  # glibc's default: a fresh mapping, faulted in, every time
    assert r["inside"] < 2 * r["pages"]  # kept: the same memory serves (almost) every allocation
    assert r["depth_after"] == 0
    assert r["rss_after"] < r["rss_inside"] - r["size"]  # the freed memory went back to the kernel at the end


def test_system_allocator_on_request_and_a_bad_value_is_named(monkeypatch) -> None:
    from medclf.errors import ConfigError

    def untouched() -> None:
        raise AssertionError("MEDCLF_MALLOC=system must leave the C library's allocator alone")

    monkeypatch.setattr(_malloc, "_glibc", untouched)
    monkeypatch.setenv("MEDCLF_MALLOC", "system")
    with _malloc.retain_freed_memory():
        pass
    assert _malloc._depth == 0
    monkeypatch.setenv("MEDCLF_MALLOC", "jemalloc")
    with (
        pytest.raises(ConfigError, match=r"MEDCLF_MALLOC='jemalloc'.*retain.*system"),
        _malloc.retain_freed_memory(),
    ):
        pass
