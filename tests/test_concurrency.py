"""The threads around the step: one batch ahead, in order; writers at a lower priority."""

from __future__ import annotations

import os
import sys
import threading

import pytest

from pipeline.concurrency import WRITER_NICE, one_ahead, writer_pool


def test_one_ahead_keeps_order_overlaps_and_raises_in_place():
    started = {i: threading.Event() for i in range(4)}

    def compute(i: int) -> int:
        started[i].set()
        if i == 2:
            raise ValueError("bad item 2")
        return i * 10

    results = []
    with pytest.raises(ValueError, match="bad item 2"):
        for value in one_ahead(compute, range(4)):
            # while the caller holds item i, item i+1 is already being computed
            assert started[value // 10 + 1].wait(timeout=10)
            results.append(value)
    assert results == [0, 10]  # the failure surfaces in order, after the items before it


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is Linux's")
def test_writer_threads_yield_to_the_compute_threads():
    def nice() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    mine = nice()
    with writer_pool(2) as pool:
        theirs = pool.submit(nice).result()
    assert theirs == min(19, mine + WRITER_NICE)
    assert nice() == mine  # the calling thread keeps its priority
