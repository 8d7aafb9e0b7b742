"""TensorFlow's start-up messages, filtered as ``TF_CPP_MIN_LOG_LEVEL`` says, in a ``vae-tf`` process.

TensorFlow 2.21 writes its start-up messages through Abseil's logging before anything has set
Abseil up, and Abseil then writes every message to stderr whatever ``TF_CPP_MIN_LOG_LEVEL`` says
(abseil/abseil-cpp#1718). So every ``vae-tf`` command, which sets the level to 2 (warnings off),
still began with seven lines on a machine without a GPU::

    WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
    I0000 00:00:1796515026.092289   17914 port.cc:153] oneDNN custom operations are on. ...
    I0000 00:00:1796515026.093457   17914 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used.
    ... (the first three again, from a second library)
    E0000 00:00:1796515029.195446   17914 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: ...

the last one an "error" that only says the machine has no NVIDIA driver. :func:`quiet_tensorflow_start`
makes the first ``import tensorflow`` of the process (and TensorFlow's listing of its devices,
where the CUDA error comes from) write to a temporary file instead of stderr, then writes back
what :func:`tensorflow_start_lines` keeps: every record at or above the level, as TensorFlow
documents the variable, except that CUDA error on a machine where TensorFlow found no driver, and
anything that is not one of Abseil's records (Python warnings, other libraries) as it was.
``TF_CPP_MIN_LOG_LEVEL=0`` shows everything. What is lost: a message written just before the
process is killed during the import (a crash in TensorFlow's libraries), which stays in the file.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import re
import sys
import tempfile
from contextlib import contextmanager

#: The prefix of an Abseil log record: severity, date, time, thread, file:line.
_RECORD = re.compile(r"^([IWEF])\d{4} \S+ +\d+ (\S+?):\d+\] ")
#: The first line of what Python itself writes to stderr: a warning (``file.py:3: UserWarning: ...``)
#: or a traceback. It starts a block of its own (kept), not a continuation of the record before it.
_PYTHON = re.compile(r"^(\S.*:\d+: \w*(Warning|Error)\b|Traceback \(most recent call last\):)")
#: Abseil's note before its first record when nothing has set it up.
_UNINITIALISED = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
#: Severity letters as TF_CPP_MIN_LOG_LEVEL counts them (0 shows all, 3 only fatal ones).
_LEVELS = {"I": 0, "W": 1, "E": 2, "F": 3}


def min_log_level(environ=os.environ) -> int:
    """``TF_CPP_MIN_LOG_LEVEL`` as TensorFlow reads it: 0 (all) when unset or not a number."""
    try:
        return max(0, int(environ.get("TF_CPP_MIN_LOG_LEVEL", "0")))
    except ValueError:
        return 0


def tensorflow_start_lines(text: str, level: int) -> str:
    """What of TensorFlow's start-up output ``text`` to show at ``TF_CPP_MIN_LOG_LEVEL`` ``level``.

    A record is an Abseil line (``I0000 ... file.cc:12] message``) with the lines that follow it
    (a message can span lines) up to the next record or the next thing Python writes (a warning or
    a traceback, kept as they are). Records below ``level`` are dropped, as
    TensorFlow would drop them if Abseil were set up; Abseil's own note about not being set up
    goes with them from level 1. ``cuda_platform``'s failed ``cuInit`` is dropped from level 1 when
    ``cudart_stub`` reported in the same output that the machine has no CUDA driver (a machine
    without an NVIDIA GPU); with a driver it is kept, as it tells why a GPU is not used. Lines
    before the first record are kept too."""
    records: list[list[str]] = []
    for line in text.splitlines(keepends=True):
        if _RECORD.match(line) or _PYTHON.match(line) or line.rstrip("\n") == _UNINITIALISED or not records:
            records.append([line])
        else:
            records[-1].append(line)
    no_driver = any(_file(r) == "cudart_stub.cc" and "Could not find cuda drivers" in r[0] for r in records)
    kept = []
    for record in records:
        head = record[0]
        match = _RECORD.match(head)
        if head.rstrip("\n") == _UNINITIALISED:
            keep = level < 1
        elif match is None:
            keep = True
        elif level >= 1 and no_driver and match.group(2) == "cuda_platform.cc" and "cuInit" in head:
            keep = False
        else:
            keep = _LEVELS[match.group(1)] >= level
        if keep:
            kept.extend(record)
    return "".join(kept)


def _file(record: list[str]) -> str | None:
    match = _RECORD.match(record[0])
    return match.group(2) if match else None


@contextmanager
def stderr_filtered(level: int):
    """Within the block, what is written to file descriptor 2 (by C++ or Python) goes to a
    temporary file; after it, :func:`tensorflow_start_lines` of it is written to stderr. Nothing
    is captured where there is no descriptor 2 to redirect."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    with tempfile.TemporaryFile() as captured:
        _flush_stderr()
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            _flush_stderr()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            shown = tensorflow_start_lines(captured.read().decode("utf-8", "replace"), level)
            if shown:
                os.write(2, shown.encode("utf-8"))


def _flush_stderr() -> None:
    try:
        sys.stderr.flush()
    except (AttributeError, OSError, ValueError):
        pass


class _QuietTensorFlowLoader(importlib.abc.Loader):
    """TensorFlow's own loader, run with stderr filtered; TensorFlow's devices are listed in the
    same window (the CUDA probe prints there, not at import)."""

    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        with stderr_filtered(min_log_level()):
            self.loader.exec_module(module)
            module.config.list_physical_devices()

    def __getattr__(self, name):  # the rest of the loader's interface (resources, source) is TensorFlow's
        return getattr(self.loader, name)


class _QuietTensorFlowStart(importlib.abc.MetaPathFinder):
    """An import hook (:data:`sys.meta_path`) for the first ``import tensorflow``: it finds
    TensorFlow as Python would and wraps its loader; then it takes itself out."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path[:] = [finder for finder in sys.meta_path if finder is not self]
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _QuietTensorFlowLoader(spec.loader)
        return spec


def quiet_tensorflow_start() -> None:
    """Filter TensorFlow's start-up messages in this process (module docstring). Does nothing
    once TensorFlow is imported, or where the hook is in place already."""
    if "tensorflow" in sys.modules or any(isinstance(f, _QuietTensorFlowStart) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _QuietTensorFlowStart())
