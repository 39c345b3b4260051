"""Fault injection for the crash and disk-full tests: off unless GRADCAM_AUDIT_FAULT is set.

GRADCAM_AUDIT_FAULT="STAGE:N[:MODE]" makes the N-th pass through checkpoint(STAGE) kill the
process with SIGKILL (MODE kill, the default), raise OSError(ENOSPC) (MODE enospc), send the
process a SIGTERM (MODE term: a graceful stop) or two, the second once the first is handled
(MODE term2: a stop at once). Stages: decode (one image decoded), compute (one batch computed),
write (a file written, before its rename), chunk (a chunk's map array, half its bytes
written), commit (a chunk's summary part, before it is written).
"""

from __future__ import annotations

import errno
import os
import signal
import threading
import time
from collections import Counter

ENV = "GRADCAM_AUDIT_FAULT"
_counts: Counter[str] = Counter()
_lock = threading.Lock()


def reset() -> None:
    """Start counting afresh (tests that fail several runs in one process)."""
    with _lock:
        _counts.clear()


def checkpoint(stage: str) -> None:
    """Count a pass through `stage`; fail here if the environment asks for it."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    parts = spec.split(":")
    if parts[0] != stage:
        return
    with _lock:
        _counts[stage] += 1
        hit = _counts[stage] == int(parts[1])
    if not hit:
        return
    mode = parts[2] if len(parts) > 2 else "kill"
    if mode == "enospc":
        raise OSError(errno.ENOSPC, "No space left on device (injected)")
    if mode in ("term", "term2"):
        _terminate(twice=mode == "term2")
        return
    os.kill(os.getpid(), signal.SIGKILL)


def _terminate(twice: bool) -> None:
    """SIGTERM to this process; with `twice`, again once the first one has been handled."""
    os.kill(os.getpid(), signal.SIGTERM)
    if not twice:
        return
    from pipeline import stop  # here: only this test mode needs it

    for _ in range(500):  # the main thread runs the handler between bytecodes
        if stop.requested():
            break
        time.sleep(0.01)
    os.kill(os.getpid(), signal.SIGTERM)
