"""Peak memory of a block of code, the way the benchmarks and the comparison report it.

On CUDA: the peak of `torch.cuda.max_memory_allocated` above what was allocated on entry (tensors only).
On CPU: the peak anonymous resident memory (RssAnon: heap pages, not shared-library code) of the process above its
level on entry (after returning freed heap pages to the OS), sampled every millisecond by a background thread
(tensors, allocator caches and Python objects alike; it counts pages the allocator holds, and short spikes between
samples can be missed). Both are "extra memory this code needed", comparable between methods measured the same way.
"""

from __future__ import annotations

import ctypes
import gc
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch


@dataclass
class PeakMemory:
    """Filled in when the `peak_memory()` block exits."""

    bytes: int = 0
    device: str = "cpu"

    @property
    def mib(self) -> float:
        return self.bytes / 2**20


def _release_free_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS, so the RSS on entry is a fair baseline."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the baseline may include freed pages
        pass


def _rss() -> int:
    """Anonymous resident memory (RssAnon): the heap, without shared-library code pages loaded on first use."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no RssAnon in /proc/self/status: CPU peak memory is measured on Linux only")


@contextmanager
def peak_memory(device: torch.device | str = "cpu", interval: float = 0.001) -> Iterator[PeakMemory]:
    """Measure the extra memory the body needs at its peak (see the module docstring for what is counted)."""
    result = PeakMemory(device=str(device))
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
        start = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        yield result
        torch.cuda.synchronize(device)
        result.bytes = torch.cuda.max_memory_allocated(device) - start
        return
    _release_free_memory()
    start = _rss()
    peak = [start]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(interval)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield result
    finally:
        stop.set()
        thread.join()
        result.bytes = max(peak[0], _rss()) - start
