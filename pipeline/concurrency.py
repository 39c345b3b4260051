"""Threads around the compiled step: writer threads at a lower priority, and the next batch
computed while this one is written."""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")
WRITER_NICE = 10  # writer threads' priority below the compute threads' (Linux)


def _yield_to_compute() -> None:
    """Lower the calling thread's priority by WRITER_NICE (Linux: nice is per thread)."""
    if not sys.platform.startswith("linux"):  # elsewhere a thread id is not a PRIO_PROCESS id
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + WRITER_NICE)
    except OSError as exc:  # e.g. a sandbox that forbids it: run at normal priority
        log.debug("writer threads keep their priority: %s", exc)


def writer_pool(threads: int) -> ThreadPoolExecutor:
    """Threads for the files. On Linux they run at a lower priority, so when the cores are
    busy the compiled step keeps them and the writers fill the gaps; on a 2-core machine
    that lifted throughput by about a tenth (scripts/benchmark.py)."""
    return ThreadPoolExecutor(
        max_workers=max(1, threads), thread_name_prefix="writer", initializer=_yield_to_compute
    )


def one_ahead(compute: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
    """compute(item) for each item, in order, computing the next item in a thread while the
    caller handles this one: on CPU the compiled step overlaps the writing of the batch
    before it. An exception in compute is raised here, in order."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="step") as ahead:
        future: Future | None = None
        for item in items:
            following = ahead.submit(compute, item)
            if future is not None:
                yield future.result()
            future = following
        if future is not None:
            yield future.result()
