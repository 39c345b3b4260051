"""One run per output folder: an exclusive OS lock on <folder>/.gradcam-audit.lock, held until
the process ends (the OS releases it on any death, SIGKILL included, so no stale lock is left).

The lock is a POSIX record lock (fcntl.lockf, F_SETLK), the kind NFS (v3 through lockd/NLM, v4
natively), Lustre (mounted with -o flock), GPFS and BeeGFS pass between nodes. It does not hold
where the file system keeps locks to one machine or has none: NFS mounted with `nolock` or
`local_lock=all`, Lustre with `localflock`; where locking fails outright (ENOLCK, EOPNOTSUPP) the
run goes on unlocked with a warning. POSIX locks belong to the process and end when it closes
any descriptor of the file, so this module opens each lock file once and never closes it while
held. The pid, host and start time of the holder are written into the file for the message a
second run prints. No fcntl (Windows): no lock. Imports no TensorFlow.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path

from pipeline.errors import ConfigError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

log = logging.getLogger(__name__)
LOCK_FILE = ".gradcam-audit.lock"
UNSUPPORTED = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}
_held: dict[Path, int] = {}  # folder -> the open descriptor holding its lock


class FolderInUse(ConfigError):
    """Another process holds the folder's lock: exit code 2, before any work."""


def lock_folder(folder: str | Path) -> bool:
    """Take `folder`'s lock for the rest of this process (creating the folder); True when it is
    held, False where locks are unavailable. A folder this process holds already is a no-op."""
    folder = Path(folder).resolve()
    if folder in _held:
        return True
    if fcntl is None:
        return False
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise ConfigError(f"output_dir {folder} is not writable: {exc.strerror or exc}") from exc
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)  # holds nothing: closing releases nobody's lock
        if exc.errno in (errno.EACCES, errno.EAGAIN):
            raise FolderInUse(in_use_message(folder)) from None
        if exc.errno in UNSUPPORTED:
            log.warning("cannot lock %s (%s): not protected against a second run", folder, exc)
            return False
        raise
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": _now()}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
    _held[folder] = fd
    return True


def release(folder: str | Path) -> None:
    """Give the folder's lock back (merge and report release theirs when done)."""
    fd = _held.pop(Path(folder).resolve(), None)
    if fd is not None:
        os.close(fd)  # closing the descriptor ends the POSIX lock


@contextmanager
def holding(folder: str | Path, create: bool = True):
    """Hold `folder`'s lock (created if need be) for a block; released after, unless this
    process held it before (the command line takes it first and keeps it to the end). A folder
    it created that holds nothing but the lock file when the block fails is removed again.
    With create=False a folder that does not exist is left to the caller's own error."""
    path = Path(folder)
    if not create and not path.is_dir():
        yield
        return
    before, created = path.resolve() in _held, not path.exists()
    lock_folder(folder)
    try:
        yield
    finally:
        if not before:
            release(folder)
            if created:
                _remove_if_empty(path)


def _remove_if_empty(folder: Path) -> None:
    """Remove `folder` if all it holds is the lock file (a run that failed before any work)."""
    try:
        if [p.name for p in folder.iterdir()] == [LOCK_FILE]:
            (folder / LOCK_FILE).unlink()
            folder.rmdir()
    except OSError:  # someone else is using it now: leave it
        pass


def locked(folder: str | Path):
    """Hold an existing `folder`'s lock for a block (the light commands: merge, report,
    overlays): holding() without creating the folder."""
    return holding(folder, create=False)


def in_use_message(folder: Path) -> str:
    """One line: who holds the folder, from what the holder wrote into the lock file."""
    try:
        holder = json.loads((folder / LOCK_FILE).read_text(encoding="utf-8"))
        who = f"pid {holder['pid']} on {holder['host']} since {holder['since']}"
    except (OSError, ValueError, KeyError, TypeError):  # the holder has not written it yet
        who = "a process that is starting"
    return (
        f"output_dir {folder} is in use by another run ({who}); wait for it to end or "
        "choose another output_dir"
    )


def _now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %z")
