"""Graceful stop: the first SIGTERM or SIGINT (Ctrl-C) asks the batch loop to finish and commit
the chunk in flight (for at most stop_grace_s) and stop; a second one ends the process at once,
by the signal's own default action (exit status 128+N in a shell: 143, 130).

Under submitit on SLURM, the early-warning signal of a time limit or preemption (SIGUSR2 unless
SUBMITIT_PREEMPT_SIGNAL says otherwise) stops the run the same way; submitit's own handler for it
(which requeues the job) is called once the chunk is committed: see forward(). Signal handlers
are Python's, run on the main thread between bytecodes: they only set a flag the loop reads
between batches. Imports no TensorFlow.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from contextlib import contextmanager
from typing import Any

log = logging.getLogger(__name__)


class _State:
    signum: int | None = None  # the first stop signal received
    at = 0.0  # when (time.monotonic())
    previous: dict[int, Any] = {}  # handlers before install(), by signal


def requested() -> str | None:
    """The name of the signal that asked the run to stop, or None."""
    return None if _State.signum is None else signal.Signals(_State.signum).name


def expired(grace_s: float) -> bool:
    """A stop was asked more than `grace_s` seconds ago."""
    return _State.signum is not None and time.monotonic() - _State.at > grace_s


def reset() -> None:
    """Forget a stop request (a new run in the same process)."""
    _State.signum = None


def _signals() -> list[int]:
    """SIGTERM, SIGINT and, when submitit has a handler on it, its early-warning signal."""
    found = [signal.SIGTERM, signal.SIGINT]
    name = "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")
    extra = getattr(signal, name, None)
    if extra is not None and callable(signal.getsignal(extra)):
        found.append(extra)
    return found


@contextmanager
def install():
    """Stop handlers for the block (the main thread only; elsewhere nothing changes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    reset()
    _State.previous = {s: signal.getsignal(s) for s in _signals()}
    for s in _State.previous:
        signal.signal(s, _handle)
    try:
        yield
    finally:
        for s, handler in _State.previous.items():
            signal.signal(s, handler)


def _handle(signum: int, frame: Any) -> None:
    name = signal.Signals(signum).name
    if _State.signum is None:
        _State.signum, _State.at = signum, time.monotonic()
        log.warning(
            "%s: finishing the chunk in flight, then stopping (send it again to stop at once)",
            name,
        )
    elif signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)  # the second one: at once, by the default action


def forward() -> None:
    """After a stop: hand the signal to the handler that was there before (submitit's
    requeue), unless that was Python's default or none."""
    handler = _State.previous.get(_State.signum) if _State.signum is not None else None
    if callable(handler) and handler is not signal.default_int_handler:
        handler(_State.signum, None)
