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
where the CUDA error comes from) write its stderr into a pipe read by a small filter process,
which writes on to the real stderr what :func:`tensorflow_start_lines` keeps: every record at or
above the level, as TensorFlow documents the variable, except that CUDA error on a machine where
TensorFlow found no driver; anything that is not one of Abseil's records (Python warnings, other
libraries' lines) is kept. The filter is a process of its own so that a crash during the import
(a fatal record, then ``abort()``) still shows the fatal record. ``TF_CPP_MIN_LOG_LEVEL=0`` (or
unset, outside ``vae-tf``) shows everything and redirects nothing.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import re
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

#: The prefix of an Abseil log record: severity, date, time, thread, file:line.
_RECORD = re.compile(r"^([IWEF])\d{4} \S+ +\d+ (\S+?):\d+\] ")
#: Abseil's note before its first record when nothing has set it up.
_UNINITIALISED = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
#: Severity letters as TF_CPP_MIN_LOG_LEVEL counts them (0 shows all, 3 only fatal ones).
_LEVELS = {"I": 0, "W": 1, "E": 2, "F": 3}
#: The records whose message goes on over the next line(s) (TensorFlow's own text has the line
#: break): ``cpu_feature_guard``'s "To enable the following instructions: ..." after its first
#: line. Any other line that is not a record stands on its own and is kept.
_MULTI_LINE = {"cpu_feature_guard.cc": 1}


def _clamp(level: int) -> int:
    """A level within TensorFlow's 0 (all) to 3 (fatal only): a fatal record is always shown."""
    return min(3, max(0, level))


def min_log_level(environ=os.environ) -> int:
    """``TF_CPP_MIN_LOG_LEVEL`` as TensorFlow reads it, 0 (all) to 3 (fatal only): 0 when unset or
    not a number, 3 above (a fatal record is always shown)."""
    try:
        return _clamp(int(environ.get("TF_CPP_MIN_LOG_LEVEL", "0")))
    except ValueError:
        return 0


def tensorflow_start_lines(text: str, level: int) -> str:
    """What of TensorFlow's start-up output ``text`` to show at ``TF_CPP_MIN_LOG_LEVEL`` ``level``.

    A record is an Abseil line (``I0000 ... file.cc:12] message``), with its next line for the
    records whose message TensorFlow breaks over two (:data:`_MULTI_LINE`). Records below ``level``
    are dropped, as TensorFlow would drop them if Abseil were set up; Abseil's own note about not
    being set up goes with them from level 1. ``cuda_platform``'s failed ``cuInit`` is dropped from
    level 1 when ``cudart_stub`` reported in the same output that the machine has no CUDA driver (a
    machine without an NVIDIA GPU); with a driver it is kept, as it tells why a GPU is not used.
    Every other line is kept, where it was."""
    level = _clamp(level)
    blocks: list[tuple[str | None, str | None, list[str]]] = []  # (severity, file, lines)
    owed = 0  # continuation lines the last record still has
    for line in text.splitlines(keepends=True):
        match = _RECORD.match(line)
        if match:
            blocks.append((match.group(1), match.group(2), [line]))
            owed = _MULTI_LINE.get(match.group(2), 0)
        elif owed:
            blocks[-1][2].append(line)
            owed -= 1
        else:
            blocks.append(("note" if line.rstrip("\n") == _UNINITIALISED else None, None, [line]))
    no_driver = any(f == "cudart_stub.cc" and "Could not find cuda drivers" in lines[0] for _, f, lines in blocks)
    kept = []
    for severity, file, lines in blocks:
        if severity is None:
            keep = True
        elif severity == "note":
            keep = level < 1
        elif level >= 1 and no_driver and file == "cuda_platform.cc" and "cuInit" in lines[0]:
            keep = False
        else:
            keep = _LEVELS[severity] >= level
        if keep:
            kept.extend(lines)
    return "".join(kept)


def filter_stdin(level: int) -> None:
    """The filter process: all of stdin (until the writer closes it, or dies), filtered, to stdout.
    Ctrl-C reaches it too (one process group): ignored, as its input ends when the interrupted
    writer restores its stderr or exits (it printed a KeyboardInterrupt traceback)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    text = sys.stdin.buffer.read().decode("utf-8", "replace")
    sys.stdout.buffer.write(tensorflow_start_lines(text, level).encode("utf-8"))
    sys.stdout.flush()


_FILTER = "import sys; from vae_tf_cli.tensorflow_start import filter_stdin; filter_stdin(int(sys.argv[1]))"


@contextmanager
def stderr_filtered(level: int):
    """Within the block, what is written to file descriptor 2 (by C++ or Python) goes through
    :func:`tensorflow_start_lines`: into a pipe whose reader, a filter process, writes what it
    keeps to the real stderr once the block ends (or the process dies). Nothing is redirected at
    level 0, where nothing would be dropped, or where there is no descriptor 2 or no process to
    start."""
    if _clamp(level) == 0:
        yield
        return
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    read_end, write_end = os.pipe()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]),
                                                                      os.environ.get("PYTHONPATH")]))}
    try:
        reader = subprocess.Popen([sys.executable, "-c", _FILTER, str(level)], stdin=read_end, stdout=saved,
                                  stderr=saved, env=env)
    except OSError:
        for fd in (read_end, write_end, saved):
            os.close(fd)
        yield
        return
    os.close(read_end)
    _flush_stderr()
    os.dup2(write_end, 2)
    os.close(write_end)  # descriptor 2 is now the pipe's only write end: restoring it ends the reader's input
    try:
        yield
    finally:
        _flush_stderr()
        os.dup2(saved, 2)
        os.close(saved)
        try:
            reader.wait(timeout=60)
        except subprocess.TimeoutExpired:
            reader.kill()


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
        _remove_hook()
        with stderr_filtered(min_log_level()):
            self.loader.exec_module(module)
            try:
                module.config.list_physical_devices()
            except Exception:  # noqa: BLE001 - TensorFlow reports its own device errors again where it needs the devices
                pass

    def __getattr__(self, name):  # the rest of the loader's interface (resources, source) is TensorFlow's
        return getattr(self.loader, name)


class _QuietTensorFlowStart(importlib.abc.MetaPathFinder):
    """An import hook (:data:`sys.meta_path`) for ``tensorflow``: it finds TensorFlow as Python's
    path finder would and wraps its loader. A lookup alone (``importlib.util.find_spec``, as
    libraries check whether TensorFlow is installed) leaves it in place; the import takes it out."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        if name in sys.modules:
            _remove_hook()
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec  # not on the path (another finder may have it): imported as it comes
        spec.loader = _QuietTensorFlowLoader(spec.loader)
        return spec


def _remove_hook() -> None:
    sys.meta_path[:] = [finder for finder in sys.meta_path if not isinstance(finder, _QuietTensorFlowStart)]


def quiet_tensorflow_start() -> None:
    """Filter TensorFlow's start-up messages in this process (module docstring). Does nothing
    once TensorFlow is imported, or where the hook is in place already."""
    if "tensorflow" in sys.modules or any(isinstance(f, _QuietTensorFlowStart) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _QuietTensorFlowStart())
