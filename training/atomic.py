"""Files that are either wholly written or not there: write a temporary file in the same
directory, flush and fsync it, then rename it over the target (atomic on one file system)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def write_text_atomic(path: str | Path, text: str) -> None:
    replace_atomic(path, lambda handle: handle.write(text.encode("utf-8")))


def write_json_atomic(path: str | Path, document, **dump_options) -> None:
    options = {"indent": 2, "sort_keys": True, **dump_options}
    write_text_atomic(path, json.dumps(document, **options) + "\n")


def replace_atomic(path: str | Path, write) -> None:
    """``write(binary file)`` into a temporary file next to ``path``, fsync, then rename it over
    ``path`` (binary formats such as ``np.savez``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
