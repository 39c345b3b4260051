"""Fault injection for the crash and disk-full tests: off unless GRADCAM_AUDIT_FAULT is set.

GRADCAM_AUDIT_FAULT="STAGE:N[:MODE]" makes the N-th pass through checkpoint(STAGE) kill the
process with SIGKILL (MODE kill, the default) or raise OSError(ENOSPC) (MODE enospc). Stages:
decode (one image decoded), compute (one batch computed), write (a file written, before its
rename), commit (a chunk's summary part, before it is written).
"""

from __future__ import annotations

import errno
import os
import signal
import threading
from collections import Counter

ENV = "GRADCAM_AUDIT_FAULT"
_counts: Counter[str] = Counter()
_lock = threading.Lock()


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
    if len(parts) > 2 and parts[2] == "enospc":
        raise OSError(errno.ENOSPC, "No space left on device (injected)")
    os.kill(os.getpid(), signal.SIGKILL)
