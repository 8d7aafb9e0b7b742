"""The worker processes of ``vae-tf embed --runner beam`` on the local runner, started quietly.

Beam's local runner starts each worker as ``python -m apache_beam.runners.worker.sdk_worker_main``.
Two lines reached the user's terminal from every such process (and the first from the launching
process too), saying nothing about their job:

- ``WARNING:root:apitools not found, and bigquery client libraries are not available despite the
  import not raising an ImportError.``: ``import apache_beam`` tries Beam's BigQuery client,
  which needs the ``gcp`` extra (not installed: the pipeline reads local or Parquet files), and
  reports the miss through ``logging.warning``. Called before logging is set up, that also
  installs a handler writing to stderr on the root logger (``logging.basicConfig``), so...
- ``INFO:__main__:Logging handler created.``: the harness sets the root logger to INFO while it
  starts, and its start-up message then reaches stderr through that accidental handler.

A worker's logs go to the runner anyway (Beam's ``FnApiLogRecordHandler``, at the level
``pipeline_options`` sets), and a failed bundle comes back to the launcher as the job's error.
So :func:`main` gives the root logger a ``NullHandler`` before Beam is imported (no accidental
stderr handler) and drops the apitools warning (:func:`quiet_beam_import`), then runs Beam's
harness unchanged. :func:`serving.beam_embed.make_runner` starts the workers with this module.
Like a ``vae-tf`` process, a worker imports Keras without the optional libraries it never uses
(:func:`vae_tf_cli.keep_optional_libraries_out_of_keras`). Other runners (Dataflow, Flink, Spark)
start their own harness and are not affected.

The harness also prints the traceback of every failed bundle to stderr (``SdkHarness._execute``),
besides sending it to the runner. For a bad row (a NaN, a wrong size) that was ~60 lines of
Beam's frames above the launcher's own one-line ``error: ...``. A worker's stderr therefore drops
a traceback whose exception is one of vae-tf's user errors (:class:`UserErrorTracebacksDropped`;
the launcher says it in one line) and writes every other one, and everything else, through.
"""

from __future__ import annotations

import logging
import re
import shlex
import sys

from vae_tf.errors import ConfigError, DataError, ModelNotFoundError

#: The vae-tf errors a Beam job can end with that the user, not vae-tf, has to fix, by class name
#: (a worker sends its error back to the launcher as traceback text).
USER_ERRORS = {error.__name__: error for error in (ConfigError, DataError, ModelNotFoundError)}

#: The start of the warning ``import apache_beam`` logs when its BigQuery client is missing.
APITOOLS_WARNING = "apitools not found, and bigquery client libraries are not available"

#: The command Beam's local runner starts a worker with (``apache_beam.runners.portability.fn_api_runner``).
BEAM_WORKER_MODULE = "apache_beam.runners.worker.sdk_worker_main"


class _DropApitoolsWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(APITOOLS_WARNING)


def quiet_beam_import() -> None:
    """Drop the apitools warning ``import apache_beam`` logs where Beam's ``gcp`` extra is not
    installed (module docstring); every other record goes through. Call it before the import."""
    root = logging.getLogger()
    if not any(isinstance(f, _DropApitoolsWarning) for f in root.filters):
        root.addFilter(_DropApitoolsWarning())


#: The last line of a traceback whose exception is a vae-tf user error (vae_tf.errors).
_USER_ERROR_LINE = re.compile(rf"^vae_tf\.errors\.({'|'.join(USER_ERRORS)}): ")


class UserErrorTracebacksDropped:
    """A worker's ``sys.stderr``: a traceback written in one piece (as the harness prints it)
    whose last line is a vae-tf user error is dropped, with the newline ``print`` writes after it;
    everything else goes to ``stream``."""

    def __init__(self, stream):
        self._stream = stream
        self._dropped = False

    def write(self, text: str) -> int:
        if text.startswith("Traceback (most recent call last):") and _USER_ERROR_LINE.match(
                text.rstrip().rsplit("\n", 1)[-1]):
            self._dropped = True
            return len(text)
        if self._dropped and text == "\n":
            self._dropped = False
            return len(text)
        self._dropped = False
        return self._stream.write(text)

    def __getattr__(self, name):  # flush, fileno, encoding, isatty...: the stream's own
        return getattr(self._stream, name)


def worker_command() -> str:
    """The shell command the local runner starts a worker with (it runs it with ``shell=True``)."""
    return f"{shlex.quote(sys.executable)} -m serving.beam_worker"


def main() -> None:
    # Like every vae-tf process: TensorFlow imports Keras, and Keras' scikit-learn wrappers and
    # image galleries would load scikit-learn and matplotlib, which no worker uses (~1 s of CPU per
    # worker start; pandas stays, Beam imports it itself). vae_tf_cli imports nothing heavy.
    from vae_tf_cli import keep_optional_libraries_out_of_keras

    keep_optional_libraries_out_of_keras()
    logging.getLogger().addHandler(logging.NullHandler())
    sys.stderr = UserErrorTracebacksDropped(sys.stderr)
    quiet_beam_import()
    from apache_beam.runners.worker import sdk_worker_main

    sdk_worker_main.main(sys.argv)


if __name__ == "__main__":
    main()
