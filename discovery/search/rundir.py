"""One writer per run directory: a lock that a running campaign (or sweep) holds, so a second one is refused.

The lock is `kepler.lock` in the directory, locked with flock(2): the kernel releases it when its
process ends, however it ends (kill -9 included), so a stale lock never blocks a resume (forked
children close their copy). The file holds the pid of the last holder, for the message. (Where
flock does not exist, nothing is locked.)
"""
from __future__ import annotations

import os
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None

LOCK_FILE = "kepler.lock"
_HELD: set = set()  # lock files this process holds open


def _forget_in_child() -> None:
    """A forked child (a fit worker, a helper) drops its copies of the held locks: the lock stays the parent's,
    and ends with it (a child that outlives a kill -9 by half a second must not block the resume)."""
    for fh in list(_HELD):
        try:
            fh.close()
        except OSError:
            pass
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)


class RunInUse(ValueError):
    """Another process is writing this run directory."""


class RunLock:
    """`with RunLock(folder):` (or acquire/release) around everything that writes a run directory."""

    def __init__(self, folder: Path, what: str = "run"):
        self.folder = Path(folder)
        self.what = what
        self._fh = None

    @property
    def path(self) -> Path:
        return self.folder / LOCK_FILE

    def acquire(self) -> "RunLock":
        if self._fh is not None or fcntl is None:
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+", encoding="utf-8")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip()
            fh.close()
            pid = f" (pid {holder})" if holder.isdigit() else ""
            raise RunInUse(f"{self.folder} is in use by another Kepler process{pid}: one {self.what} has one writer. "
                           f"Wait for it to finish (or stop it), or choose another folder with --out") from None
        except BaseException:
            fh.close()
            raise
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        self._fh = fh
        _HELD.add(fh)
        return self

    def release(self) -> None:
        if self._fh is not None:
            _HELD.discard(self._fh)
            self._fh.close()  # closing the descriptor releases the flock
            self._fh = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def in_use(folder: Path) -> bool:
    """True while some process holds the folder's lock (a run marked running without one was interrupted)."""
    path = Path(folder) / LOCK_FILE
    if fcntl is None or not path.is_file():
        return False
    try:
        with open(path, encoding="utf-8") as fh:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
    except OSError:
        return False
    return False
