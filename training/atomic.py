"""Files that are either wholly written or not there: write a temporary file in the same
directory, flush and fsync it, then rename it over the target (atomic on one file system).

The file gets the permissions any new file of the process gets (0666 less the umask: usually
readable by everyone, as reports and results are meant to be), or keeps those of the file it
replaces (``tempfile.mkstemp``'s 0600 made every report and result readable by its writer only);
``private=True`` files (run records and MLflow journals, which hold the tracking URI with any
password in it) are 0600."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import stat
from pathlib import Path


def write_text_atomic(path: str | Path, text: str, *, private: bool = False) -> None:
    replace_atomic(path, lambda handle: handle.write(text.encode("utf-8")), private=private)


def write_json_atomic(path: str | Path, document, *, private: bool = False, **dump_options) -> None:
    options = {"indent": 2, "sort_keys": True, **dump_options}
    write_text_atomic(path, json.dumps(document, **options) + "\n", private=private)


def replace_atomic(path: str | Path, write, *, private: bool = False) -> None:
    """``write(binary file)`` into a temporary file next to ``path``, fsync, then rename it over
    ``path`` (binary formats such as ``np.savez``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = 0o600 if private else None
    if mode is None:
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
        except OSError:
            pass
    fd, tmp = _new_temporary(path, 0o600 if private else 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            if mode is not None and hasattr(os, "fchmod"):
                with contextlib.suppress(OSError):  # a file system without modes keeps its own
                    os.fchmod(handle.fileno(), mode)
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _new_temporary(path: Path, mode: int) -> tuple[int, str]:
    """A new, exclusively created file next to ``path`` (``.NAME.<random>.tmp``), opened for
    writing with ``mode`` less the umask."""
    for _ in range(100):
        tmp = str(path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), mode), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name next to {path}")
