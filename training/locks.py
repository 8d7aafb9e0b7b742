"""Exclusive locks that the operating system drops with the process holding them (``flock``):
no stale lock after ``kill -9``. Used for a suite of ``vae-tf compare`` (training/compare.py)
and a run directory (training/tracking.py)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import IO


def hold_exclusive(path: Path, busy: Callable[[str], str]) -> IO | None:
    """An open file holding an exclusive lock on ``path`` (made 0600 if needed, opened without
    following a link, closed on exec), with ``process PID`` written in it for whoever finds it
    held; or ConfigError ``busy(holder)`` naming the process that holds it. None where there is
    no lock to take: no ``flock`` (Windows), a file that cannot be opened, or a file system that
    refuses ``flock`` (NFSv3 without lockd, some FUSE mounts)."""
    from vae_tf.errors import ConfigError

    try:
        import fcntl
    except ImportError:
        return None
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0), 0o600)
    except OSError:
        return None
    handle = open(fd, "r+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise ConfigError(busy(holder)) from None
    except OSError:
        handle.close()
        return None
    handle.seek(0)
    handle.truncate()
    handle.write(f"process {os.getpid()}")
    handle.flush()
    return handle


def held_by_another(path: Path) -> str | None:
    """Who holds the lock on ``path`` (``"process N"``) when another open file holds it; None
    when it is free (or there is no lock to ask about)."""
    try:
        import fcntl
    except ImportError:
        return None
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    with open(fd) as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return handle.read().strip() or "another process"
        except OSError:
            return None
        fcntl.flock(handle, fcntl.LOCK_UN)
    return None


__all__ = ["held_by_another", "hold_exclusive"]
