"""Keep glibc's malloc from handing training's large, short-lived buffers back to the kernel after every step.

glibc serves an allocation above its mmap threshold (at most 32 MiB) with a fresh ``mmap`` and unmaps it when it is
freed, and it trims the heap's top whenever more than 128 KiB there is free. A training step allocates and frees
activations and gradients of tens of MiB each, so every step maps fresh pages and the kernel faults them in and zeroes
them one page at a time. Keeping freed memory removes most of those page faults and shortens the training loop
(docs/benchmarks-training.md, "Memory allocator", from ``benchmarks/train_malloc.py``). jemalloc and tcmalloc, which
PyTorch's CPU tuning guide recommends, keep freed memory the same way; this needs no preloaded library.

Elsewhere than glibc (macOS, Windows, musl) it does nothing, and ``MEDCLF_MALLOC=system`` leaves glibc's defaults
in place (for a machine short of memory: freed memory then goes back to the kernel at once).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import logging
import os
import sys
import threading
from collections.abc import Iterator

from medclf.errors import ConfigError

__all__ = ["retain_freed_memory"]

log = logging.getLogger(__name__)

# mallopt parameters (malloc.h) and glibc's defaults
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_DEFAULT_TRIM_THRESHOLD, _DEFAULT_MMAP_MAX = 128 * 1024, 65536
_KEEP = 2**31 - 1  # the largest trim threshold mallopt takes (an int): 2 GiB free at the top before a trim

_lock = threading.Lock()
_depth = 0


ENV = "MEDCLF_MALLOC"
"""``system``: leave the C library's allocator as it is; ``retain`` (default): keep freed memory while training."""


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.mallopt.restype = ctypes.c_int
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        libc.gnu_get_libc_version()  # glibc only: musl has mallopt but not this
    except (OSError, AttributeError):
        return None
    return libc


def _set(libc: ctypes.CDLL, trim: int, mmap_max: int) -> bool:
    return bool(libc.mallopt(_M_TRIM_THRESHOLD, trim)) and bool(libc.mallopt(_M_MMAP_MAX, mmap_max))


@contextlib.contextmanager
def retain_freed_memory() -> Iterator[None]:
    """Inside the block, glibc serves every allocation from its heaps and keeps freed memory for reuse.

    The process's resident memory then stays near its peak until the block ends, when glibc's defaults come back
    and the freed memory is returned (``malloc_trim``). Nested blocks keep it until the outermost one ends.
    """
    global _depth
    mode = os.environ.get(ENV, "retain").strip().lower()
    if mode not in ("retain", "system"):
        raise ConfigError(f"{ENV}={mode!r}: use retain (the default) or system")
    libc = _glibc() if mode == "retain" else None
    if libc is None:
        yield
        return
    with _lock:
        _depth += 1
        if _depth == 1 and not _set(libc, _KEEP, 0):
            log.debug("mallopt refused; glibc's allocator keeps its defaults")
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                _set(libc, _DEFAULT_TRIM_THRESHOLD, _DEFAULT_MMAP_MAX)
                libc.malloc_trim(0)
