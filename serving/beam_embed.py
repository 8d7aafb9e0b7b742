"""Embedding extraction on Apache Beam: ``vae-tf embed --runner beam``.

The single-process ``vae-tf embed`` (:mod:`serving.embed`) as a Beam pipeline, so the same job
runs on the local DirectRunner's engine with N worker processes or on a distributed runner
(Dataflow, Flink, Spark)::

    Create(work items) | Reshuffle                      spread the work over the workers
      | FlatMap(source.read)                            (columns, chunk of rows): read where it runs
      | RunInference(KeyedModelHandler(EncodeModelHandler))   the export's ``encode`` signature
      | Map(to Arrow table)                             embed's Parquet layout (:func:`arrow_table`)
      | WriteToParquetBatched(OUTPUT/part-SSSSS-of-NNNNN.parquet)

An element is a **chunk** of rows (``--chunk-size``), not one row: Beam's per-element cost in
Python (a few microseconds per transform) would otherwise dominate a small encoder. The model
handler calls the model on ``--batch-size`` rows at a time from the chunk's first row
(:func:`serving.embed.encode_chunk`), exactly as ``vae-tf embed`` does, so both see the same
batches and write identical numbers. RunInference loads the SavedModel once per worker process
(Beam's ``Shared`` handle) and adds its own metrics (``vae_tf_encode`` namespace).

Sources (each has ``work()``: small picklable work items, and ``read(item)``: the
``(columns, rows)`` pairs of one item, run on a worker):

- :class:`SplitSource`: what ``vae-tf embed --data`` reads (registered data sets, ``.npz``,
  ``.npy``, image folders), opened and checked once on the launcher by
  :func:`serving.embed.load_source`; a work item is a chunk number, and the worker reads that
  chunk with the same lazy readers (:mod:`vae_tf.data.rows`). ``index`` is the row in the split,
  as in ``vae-tf embed``. The split's row indices (8 bytes a row) travel with the pipeline, and
  every worker must see the file at the same path (local disk, a shared mount, the image).
- :class:`ParquetSource`: Parquet files matched by a pattern on any Beam file system (local,
  ``gs://``, ``s3://``, ``hdfs://``), every row in file order (files sorted by name); a work item
  is one row group, or consecutive small ones up to ``--chunk-size`` rows, so nothing is read on
  the launcher but the footers. ``index`` is the row's
  position in that order, the same on every run; ``label`` is copied from a ``y``/``labels``
  column when there is one.

Output: a directory of Parquet files (``part-SSSSS-of-NNNNN.parquet``, written by Beam under
temporary names and renamed when the job succeeds) with the columns of ``vae-tf embed``'s Parquet
output; rows come in no particular order across files: join or sort on ``index``.

Text models (their ``encode`` takes ``DT_STRING`` sentences) read sentences
(:mod:`serving.text_rows`, the readers of ``vae-tf embed``; blank rows skipped, ``index`` the
input position):

- :class:`TextFileSource`: ``.txt`` / ``.txt.gz`` files matched by a pattern, one sentence per
  line. The launcher reads each file once (counting and checking its lines, recording where every
  ``--chunk-size``-th sentence starts); a work item is one such stretch of a plain file, which the
  worker seeks to, or a whole ``.gz`` file (gzip cannot be entered in the middle). ``index`` is
  the line's number counted over the files in sorted order.
- :class:`ParquetSource` with ``text=True``: a string column (``--column``, default ``text``,
  ``sentence``, ``sentences`` or ``x``) and integer labels (``--label-column``, default ``y``,
  ``labels`` or ``label``).

The model handler passes rows to the signature as they are (``tf.constant`` of strings is
``DT_STRING``), and the output side is unchanged.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from serving.beam_worker import BEAM_WORKER_MODULE, USER_ERRORS, quiet_beam_import, worker_command

quiet_beam_import()  # before Beam's import logs its BigQuery client's absence (serving.beam_worker)

import apache_beam as beam  # noqa: E402
import numpy as np  # noqa: E402
from apache_beam.io.filesystems import FileSystems  # noqa: E402
from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler, PredictionResult, RunInference  # noqa: E402

from serving.parquet_rows import column_rows, integer_labels, pick_columns  # noqa: E402
from serving.text_rows import Checkpoint, batch_rows, read_text_file, scan_text_file  # noqa: E402
from vae_tf.errors import ConfigError, DataError, VaeTfError  # noqa: E402

#: Output file names inside the output directory: ``part-00000-of-00004.parquet``.
SHARD_PREFIX = "part"
SHARD_SUFFIX = ".parquet"
#: The local runner when none is named: the engine the DirectRunner uses for batch pipelines,
#: named directly so ``--workers N`` means N worker processes (the DirectRunner would first try
#: Prism, which downloads a binary at first use and runs workers in-process).
DEFAULT_RUNNER = "FnApiRunner"
LOCAL_RUNNERS = ("DirectRunner", "FnApiRunner", "BundleBasedDirectRunner", "SwitchingDirectRunner", "PrismRunner")


# -- sources -------------------------------------------------------------------------------------


Columns = dict[str, np.ndarray]


class SplitSource:
    """The rows ``vae-tf embed --data`` reads: a split of a registered data set or user file
    (:func:`serving.embed.load_source`), cut into chunks of ``chunk_size`` rows at the same
    boundaries as ``vae-tf embed``."""

    def __init__(self, source, chunk_size: int):
        self.source = source
        self.chunk_size = int(chunk_size)
        self.rows = len(source.x)
        self.labels = source.y is not None
        self.data_shape = tuple(source.x.data_shape) if hasattr(source.x, "data_shape") else source.x.shape[1:]
        self.description = dict(source.description)

    def work(self) -> list[int]:
        return list(range(-(-self.rows // self.chunk_size)))

    def read(self, chunk: int) -> Iterator[tuple[Columns, np.ndarray]]:
        start, stop = chunk * self.chunk_size, min(self.rows, (chunk + 1) * self.chunk_size)
        columns = {"index": self.source.index(start, stop)}
        if self.labels:
            columns["label"] = np.asarray(self.source.y[start:stop], np.int64)
        yield columns, self.source.x[start:stop]


@dataclass(frozen=True)
class ParquetPart:
    """One work item of :class:`ParquetSource`: consecutive row groups ``row_groups`` of ``path``,
    whose first row is row ``first`` of the whole input; the file's first row is row
    ``file_first``."""

    path: str
    row_groups: tuple[int, ...]
    first: int
    file_first: int = 0


def _match(pattern: str, what: str) -> list[str]:
    """The files matching ``pattern`` on any Beam file system, sorted."""
    try:
        matched = FileSystems.match([pattern])[0].metadata_list
    except Exception as err:  # an unknown scheme, a missing bucket: Beam's own words, one line
        raise DataError(f"cannot list {pattern!r} ({' '.join(str(err).split())[:160]}); check the path") from None
    paths = sorted(m.path for m in matched)
    if not paths:
        raise DataError(f"no {what} files match {pattern!r}; check the path or glob pattern")
    return paths


class ParquetSource:
    """Every row of the Parquet files matching ``pattern`` (any Beam file system), files in sorted
    order; the data is ``column``, else the first column named ``x``, ``images``, ``x_train`` or
    ``imgs`` (as in an ``.npz``), labels ``label_column``, else the first named ``y``, ``labels``
    or ``label``. With ``text=True`` (a text model) the data is a column of sentences
    (``column``, else ``text``, ``sentence``, ``sentences`` or ``x``; rows without a sentence are
    skipped)."""

    def __init__(self, pattern: str, data_shape: Sequence[int], chunk_size: int, *, text: bool = False,
                 column: str | None = None, label_column: str | None = None, keep: Sequence[str] = ()):
        import pyarrow.parquet as pq

        self.data_shape = tuple(int(d) for d in data_shape)
        self.chunk_size = int(chunk_size)
        self.text = text
        paths = _match(pattern, "Parquet")
        self.parts: list[ParquetPart] = []
        self.x_column = self.y_column = None
        self.keep = tuple(keep)
        self.keep_types: dict = {}  # each kept column's Arrow type, the same in every file
        first = 0
        for path in paths:
            try:
                with FileSystems.open(path) as handle:
                    meta = pq.ParquetFile(handle).metadata
                    arrow_schema = meta.schema.to_arrow_schema()
                    names = arrow_schema.names
            except Exception as err:
                raise DataError(f"could not read {path!r} as Parquet ({type(err).__name__}: "
                                f"{' '.join(str(err).split())[:160]}); check or re-create the file") from None
            x_col, y_col = pick_columns(path, names, text=text, column=column, label_column=label_column)
            for name in self.keep:
                if name not in names:
                    raise DataError(f"{path} has no column {name!r} to keep (--keep-columns); found "
                                    f"{', '.join(map(repr, names))}")
                kind = arrow_schema.field(name).type
                if self.keep_types.setdefault(name, kind) != kind:
                    raise DataError(f"column {name!r} is {kind} in {path} but {self.keep_types[name]} in {paths[0]}; "
                                    "give every file the same type")
            if self.x_column is None:
                self.x_column, self.y_column = x_col, y_col
            elif (x_col, y_col) != (self.x_column, self.y_column):
                raise DataError(f"{path} has columns {x_col!r}/{y_col!r} but {paths[0]} has "
                                f"{self.x_column!r}/{self.y_column!r}; give every file the same columns")
            # A work item is one row group, or consecutive small ones up to --chunk-size rows: a
            # file written one row per group (5,000 groups) was 5,000 work items, 63 rows/s.
            file_first, groups, item_first, item_rows = first, [], first, 0
            for group in range(meta.num_row_groups):
                rows = meta.row_group(group).num_rows
                if groups and item_rows + rows > self.chunk_size:
                    self.parts.append(ParquetPart(path, tuple(groups), item_first, file_first))
                    groups, item_first, item_rows = [], first, 0
                groups.append(group)
                item_rows += rows
                first += rows
            if groups:
                self.parts.append(ParquetPart(path, tuple(groups), item_first, file_first))
        self.rows = first
        self.labels = self.y_column is not None
        self.description = {"data": "parquet", "path": pattern, "files": len(paths), "rows": first}

    def work(self) -> list[ParquetPart]:
        return list(self.parts)

    def read(self, part: ParquetPart) -> Iterator[tuple[Columns, np.ndarray]]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        wanted = [self.x_column] + ([self.y_column] if self.labels else [])
        wanted += [k for k in self.keep if k not in wanted]
        start = part.first
        with FileSystems.open(part.path) as handle:
            for batch in pq.ParquetFile(handle).iter_batches(self.chunk_size, row_groups=list(part.row_groups),
                                                             columns=wanted):
                n = batch.num_rows
                kept = {name: batch.column(batch.schema.get_field_index(name)) for name in self.keep}
                if self.text:
                    rows = batch_rows(batch.column(0), batch.column(1) if self.labels else None, start,
                                      f"column {self.x_column!r} of {part.path}",
                                      f"column {self.y_column!r} of {part.path}")
                    columns, sentences = _text_chunk(rows, self.labels)
                    at = pa.array(np.array([r[0] - start for r in rows], dtype=np.int64))  # the rows with a sentence
                    columns.update({name: values.take(at) for name, values in kept.items()})
                    yield columns, sentences
                    start += n
                    continue
                rows = column_rows(batch.column(0), self.data_shape, f"column {self.x_column!r} of {part.path}", start,
                                   part.file_first)
                columns = {"index": np.arange(start, start + n, dtype=np.int64)}
                if self.labels:
                    columns["label"] = integer_labels(batch.column(1), f"column {self.y_column!r} of {part.path}")
                columns.update(kept)
                start += n
                yield columns, rows


def _text_chunk(rows: list, labels: bool) -> tuple[Columns, np.ndarray]:
    """``(columns, sentences)`` of :mod:`serving.text_rows` rows ``(position, sentence, label)``."""
    columns = {"index": np.array([r[0] for r in rows], dtype=np.int64)}
    if labels:
        columns["label"] = np.array([r[2] for r in rows], dtype=np.int64)
    sentences = np.empty(len(rows), dtype=object)
    sentences[:] = [r[1] for r in rows]
    return columns, sentences


@dataclass(frozen=True)
class TextPart:
    """One work item of :class:`TextFileSource`: ``count`` sentences of ``path`` from
    ``checkpoint`` on; ``first_line`` is the line number (over all files) of the file's first
    line."""

    path: str
    checkpoint: Checkpoint
    count: int
    first_line: int


class TextFileSource:
    """Every sentence of the ``.txt`` / ``.txt.gz`` files matching ``pattern`` (any Beam file
    system), files in sorted order, one sentence per line (module docstring)."""

    def __init__(self, pattern: str, chunk_size: int):
        self.chunk_size = int(chunk_size)
        self.data_shape = ()
        self.labels = False
        self.parts: list[TextPart] = []
        lines = sentences = 0
        paths = _match(pattern, "text")
        for path in paths:
            scan = scan_text_file(path, self.chunk_size, opener=FileSystems.open)
            if path.lower().endswith(".gz"):
                checkpoints = [(Checkpoint(0, 0, 0), scan.sentences)] if scan.sentences else []
            else:
                bounds = [c.row for c in scan.checkpoints[1:]] + [scan.sentences]
                checkpoints = [(c, end - c.row) for c, end in zip(scan.checkpoints, bounds)]
            self.parts += [TextPart(path, c, count, lines) for c, count in checkpoints]
            lines += scan.lines
            sentences += scan.sentences
        self.rows = sentences
        self.description = {"data": "text", "path": pattern, "files": len(paths), "lines": lines, "rows": sentences}

    def work(self) -> list[TextPart]:
        return list(self.parts)

    def read(self, part: TextPart) -> Iterator[tuple[Columns, np.ndarray]]:
        rows: list = []
        left = part.count
        for row in read_text_file(part.path, part.checkpoint, part.first_line, opener=FileSystems.open):
            rows.append(row)
            left -= 1
            if len(rows) == self.chunk_size or not left:
                yield _text_chunk(rows, False)
                rows = []
            if not left:
                break


# -- model ---------------------------------------------------------------------------------------


class EncodeModelHandler(ModelHandler):
    """RunInference over the ``encode`` signature of a vae-tf export (a version directory).

    An example is a chunk of rows ``[B, *data_shape]``; its inference is ``{output: float32
    [B, ...]}`` for the requested outputs, computed ``batch_size`` rows per model call from the
    chunk's first row (:func:`serving.embed.encode_chunk`, the batches of ``vae-tf embed``).
    Examples are batched one at a time: a chunk is already many rows.

    Beam's ``TFModelHandlerNumpy`` does not fit: it loads with ``tf.keras.models.load_model``
    (Keras 3 cannot load a SavedModel) and imports ``tensorflow_hub``. This handler loads the
    export with :class:`serving.embed.LocalEncoder` (``tf.saved_model.load``) and calls the
    signature, as TF Serving and TFX's RunInference do.
    """

    def __init__(self, model_path: str, outputs: Sequence[str], batch_size: int):
        super().__init__(min_batch_size=1, max_batch_size=1)
        self.model_path = str(model_path)
        self.outputs = tuple(outputs)
        self.batch_size = int(batch_size)

    def load_model(self):
        from serving.embed import LocalEncoder
        from vae_tf_cli.tensorflow_start import quiet_tensorflow_start

        # In a worker process TensorFlow is imported here: its start-up messages filtered as the
        # launching `vae-tf` process filters its own (the workers inherit TF_CPP_MIN_LOG_LEVEL).
        quiet_tensorflow_start()
        return LocalEncoder(self.model_path)

    def run_inference(self, batch, model, inference_args=None):
        from serving.embed import encode_chunk

        return [PredictionResult(rows, encode_chunk(model, rows, self.outputs, self.batch_size), self.model_path)
                for rows in batch]

    def get_num_bytes(self, batch) -> int:
        return int(sum(np.asarray(rows).nbytes for rows in batch))

    def get_metrics_namespace(self) -> str:
        return "vae_tf_encode"


def open_model(model_path: str | os.PathLike):
    """``(encoder, data_shape)`` of an export, checked on the launcher: a missing model or one
    without ``encode`` fails here, in one line, before any worker starts."""
    from serving.embed import LocalEncoder

    encoder = LocalEncoder(model_path)
    return encoder, encoder.data_shape


# -- pipeline ------------------------------------------------------------------------------------


def _to_table(element: tuple[Columns, PredictionResult], names: Sequence[str]):
    from serving.embed import arrow_table

    columns, result = element
    return arrow_table({**result.inference, **columns}, names)


def _within_support(element: tuple[Columns, np.ndarray], support, likelihood: str, where: str):
    """``element`` unchanged, or the one-process job's error for rows outside the support of the
    model's likelihood (``serving.embed.support_error``), raised on the worker."""
    from serving.embed import support_error

    columns, rows = element
    error = support_error(rows, columns["index"], support, likelihood, where)
    if error is not None:
        raise error
    return element


def _count_long(element: tuple[Columns, np.ndarray], policy):
    """``element`` unchanged; its sentences, and those longer than the model reads (``policy``:
    :class:`serving.text.TextPolicy`), counted in Beam metrics (:data:`COUNTERS`)."""
    from apache_beam.metrics import Metrics

    _, rows = element
    Metrics.counter(COUNTERS, "sentences").inc(len(rows))
    Metrics.counter(COUNTERS, "truncated_sentences").inc(policy.count_long(rows))
    return element


#: The namespace of the job's own Beam counters.
COUNTERS = "vae_tf_embed"


def _counted(result, policy) -> tuple[int, int, int] | None:
    """``(truncated, counted, max_length)`` from a finished job's counters (None: not counted)."""
    if policy is None:
        return None
    from apache_beam.metrics.metric import MetricsFilter

    try:
        found = result.metrics().query(MetricsFilter().with_namespace(COUNTERS))["counters"]
    except (AttributeError, NotImplementedError):  # a runner without metrics
        return None
    totals = {}
    for counter in found:
        value = counter.committed if counter.committed is not None else counter.attempted
        totals[counter.key.metric.name] = totals.get(counter.key.metric.name, 0) + int(value or 0)
    if "sentences" not in totals:
        return None
    return totals.get("truncated_sentences", 0), totals["sentences"], policy.max_length


def build_pipeline(pipeline, source, model_path: str, output: str, *, outputs: Sequence[str], batch_size: int,
                   schema, columns: Sequence[str], support: tuple[float, float] | None = None,
                   likelihood: str | None = None, text_policy=None):
    """Add the embedding job to ``pipeline`` (see the module docstring); returns the write's
    output (the written file names). ``support`` (with the ``likelihood``'s name): the values the
    model reads; rows outside it fail the job, as they fail ``vae-tf embed``. ``text_policy``: a
    text model's (:class:`serving.text.TextPolicy`); the sentences longer than it reads are
    counted (:func:`_count_long`)."""
    from serving.embed import data_description

    handler = KeyedModelHandler(EncodeModelHandler(model_path, outputs, batch_size))
    rows = (pipeline
            | "WorkItems" >> beam.Create(source.work())
            | "Spread" >> beam.Reshuffle()  # else a runner may keep every item in the bundle that created it
            | "Read" >> beam.FlatMap(source.read))
    if support is not None:
        rows = rows | "CheckSupport" >> beam.Map(_within_support, tuple(support), likelihood,
                                                 data_description(source.description))
    if text_policy is not None:
        rows = rows | "CountLong" >> beam.Map(_count_long, text_policy)
    return (rows
            | "Encode" >> RunInference(handler)
            | "ToArrow" >> beam.Map(_to_table, list(columns))
            | "Write" >> beam.io.WriteToParquetBatched(FileSystems.join(output, SHARD_PREFIX), schema=schema,
                                                       file_name_suffix=SHARD_SUFFIX,
                                                       # lists as the Parquet spec and pyarrow (vae-tf
                                                       # embed) write them: child `element`, not `item`
                                                       use_compliant_nested_type=True))


def pipeline_options(pipeline_args: Sequence[str] = (), workers: int | None = None):
    """Beam options from ``pipeline_args`` (``--runner=DataflowRunner --project=...``); without a
    runner, :data:`DEFAULT_RUNNER`. ``workers`` sets the local runner's worker processes."""
    from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions, WorkerOptions

    options = PipelineOptions(list(pipeline_args))
    standard = options.view_as(StandardOptions)
    standard.runner = standard.runner or DEFAULT_RUNNER
    runner = str(standard.runner).rsplit(".", 1)[-1]
    _check_beam_args(options, list(pipeline_args), runner, workers)
    harness = options.view_as(WorkerOptions)
    if runner in LOCAL_RUNNERS and harness.default_sdk_harness_log_level is None:
        # Local workers write their logs to this terminal: every bundle at INFO, a failed bundle's
        # traceback at ERROR. The failure comes back here as the job's exception (with the
        # worker's traceback), so the logs only bury the one-line error.
        harness.default_sdk_harness_log_level = "CRITICAL"
    if workers is not None:
        if runner not in LOCAL_RUNNERS:
            raise ConfigError(f"--workers sets local worker processes; for {runner} give its own option instead "
                              "(e.g. -- --num_workers=N on Dataflow)")
        direct = options.view_as(DirectOptions)
        direct.direct_num_workers = int(workers)
        direct.direct_running_mode = "multi_processing"
    return options


def _check_beam_args(options, pipeline_args: list[str], runner: str, workers: int | None) -> None:
    """Beam options as one line each: a value Beam's parser refuses (it would print its whole
    usage and exit), an option no Beam option class defines (Beam only warns and drops it, so
    ``--direct_num_worker=2`` ran on one worker; on a remote runner it may be the runner's own and
    is passed on, with a warning), and ``--workers`` against ``--direct_num_workers``."""
    import contextlib
    import difflib
    import io

    parsers: list = []
    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said):
            options.get_all_options(add_extra_args_fn=parsers.append)
            _, unknown = parsers[0].parse_known_args(pipeline_args)
    except SystemExit:
        reason = next((line.split("error: ", 1)[1] for line in reversed(said.getvalue().splitlines())
                       if "error: " in line), said.getvalue().strip()[-200:])
        raise ConfigError(f"bad Beam option after --: {reason}") from None
    known = sorted({o for action in parsers[0]._actions for o in action.option_strings if o.startswith("--")})
    for arg in (a for a in unknown if a.startswith("-")):
        name = arg.split("=", 1)[0]
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        if runner in LOCAL_RUNNERS:
            raise ConfigError(f"{name} is no Beam option{hint}; the local runner would ignore it: check its spelling")
        print(f"warning: {name} is no option of this Beam SDK{hint}; it is passed to {runner} as it is",
              file=sys.stderr)
    stray = [a for a in unknown if not a.startswith("-")]
    if stray:
        raise ConfigError(f"unexpected value(s) {', '.join(stray)} among the Beam options after --; give each as "
                          "--name=value")
    if workers is not None and any(a.split("=", 1)[0] == "--direct_num_workers" for a in pipeline_args):
        raise ConfigError("--workers and -- --direct_num_workers both set the worker processes; give one of them")


def make_runner(options):
    """The runner object for ``options``: for :data:`DEFAULT_RUNNER`, an ``FnApiRunner`` that
    hands the pipeline options to its worker processes (as the DirectRunner builds it; a bare
    ``FnApiRunner()`` starts them without options, so they would log every bundle at INFO);
    ``None`` for any other runner (Beam picks it by name)."""
    from apache_beam.options.pipeline_options import StandardOptions

    if str(options.view_as(StandardOptions).runner) != DEFAULT_RUNNER:
        return None
    from apache_beam.portability.api import beam_provision_api_pb2
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    from apache_beam.runners.portability.portable_runner import JobServiceHandle
    from apache_beam.transforms.environments import SubprocessSDKEnvironment

    class QuietWorkersRunner(fn_runner.FnApiRunner):
        """``FnApiRunner`` whose worker processes start through :mod:`serving.beam_worker`
        (Beam's harness without its two accidental log lines). The runner picks the worker
        command as it starts a job (``direct_running_mode="multi_processing"``), so the command it
        picks is swapped for ours as it is stored; with another Beam version that stores it
        elsewhere, the workers start as Beam starts them (as before: louder, same results)."""

        @property
        def _default_environment(self):
            return self.__dict__["_vae_tf_environment"]

        @_default_environment.setter
        def _default_environment(self, environment):
            if (isinstance(environment, SubprocessSDKEnvironment)
                    and environment.command_string.split()[-2:] == ["-m", BEAM_WORKER_MODULE]):
                environment = SubprocessSDKEnvironment.from_command_string(worker_command())
            self.__dict__["_vae_tf_environment"] = environment

    encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
    return QuietWorkersRunner(provision_info=fn_runner.ExtendedProvisionInfo(
        beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded)))


@dataclass
class BeamEmbedResult:
    output: str
    rows: int
    files: list[str]
    columns: list[str]
    runner: str
    workers: int | None
    identity: dict
    #: A text model's ``(truncated, counted, max_length)`` from the job's counters; None otherwise.
    truncated: tuple[int, int, int] | None = None
    #: Temporary folders of an earlier, killed run removed from the output before this one.
    stale_removed: int = 0


_USER_ERROR = re.compile(rf"\b({'|'.join(USER_ERRORS)}): (.+)")
#: What Beam appends to a worker's exception: the step, which means nothing to the user.
_WHERE_IN_THE_PIPELINE = re.compile(r"( \[while running '[^']*'\])+$")


def user_error(err: BaseException) -> VaeTfError | None:
    """The vae-tf error behind a failed job: the exception itself (in-process workers) or the
    last ``DataError: ...`` line of the traceback a worker process sent back as text."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, VaeTfError):
            return type(seen)(_WHERE_IN_THE_PIPELINE.sub("", str(seen)))
        seen = seen.__cause__ or seen.__context__
    found = _USER_ERROR.findall(str(err))
    if not found:
        return None
    kind, message = found[-1]
    return USER_ERRORS[kind](_WHERE_IN_THE_PIPELINE.sub("", message))


#: A failed step's line in a job's error: ``[SomeError: ]message [while running 'Step']``.
_FAILED_STEP = re.compile(r"^(?:([A-Za-z_.]*(?:Error|Exception|Invalid)): )?(.*?)((?: \[while running '[^']*'\])+)\s*$",
                          re.MULTILINE)


def job_failure(err: BaseException, started: bool, runner: str) -> VaeTfError | None:
    """A one-line error for a job that failed for a reason that is not a bug of this code: a
    worker could not read the input (a corrupt or undecodable file: the ``Read`` step failed), or
    the runner could not take the job (a job server that cannot start; ``started`` False and no
    step failed). None otherwise: a step of ours failed, and the traceback is worth having."""
    text = str(err)
    steps = _FAILED_STEP.findall(text)
    if steps:
        kind, message, where = steps[-1]
        if where.strip().endswith("[while running 'Read']"):
            kind = (kind or type(err).__name__).rsplit(".", 1)[-1]
            return DataError(f"a worker could not read the input: {kind}: {' '.join(message.split())[:300].rstrip('.')}; check "
                             "or re-create the input file(s)")
        return None
    if not started:
        return ConfigError(f"Beam's {runner.rsplit('.', 1)[-1]} could not start the job: {type(err).__name__}: "
                           f"{' '.join(text.split())[:300]}; check its options after -- (docs/serving.md, "
                           "\"Embeddings at scale\")")
    return None


def _shards(pattern: str) -> dict[str, float]:
    """``{path: last modified}`` of the output files matching ``pattern``."""
    return {m.path: m.last_updated_in_seconds for m in FileSystems.match([pattern])[0].metadata_list}


def _local_temporaries(output: str) -> set[str]:
    import glob

    return set() if "://" in output else set(glob.glob(os.path.join(glob.escape(output), "beam-temp-*")))


def _remove_stale_temporaries(output: str) -> int:
    """Remove the sink's temporary folders an earlier, killed run left in ``output``; how many."""
    import shutil

    if "://" not in output:
        stale = _local_temporaries(output)
        for temp in stale:
            shutil.rmtree(temp, ignore_errors=True)
        return len(stale)
    try:
        files = [m.path for m in FileSystems.match([FileSystems.join(output, "beam-temp-*", "*")])[0].metadata_list]
    except Exception:  # noqa: BLE001 - nothing to list on this file system
        return 0
    if files:
        FileSystems.delete(files)
    return len({os.path.dirname(f) for f in files})


def _remove_local_temporaries(output: str, before: set[str], created: bool) -> None:
    """After a failed job on a local path: the sink's temporary folders (Beam leaves them) and the
    output folder when this run created it, so a failure leaves nothing behind. On other file
    systems the runner's own clean-up applies."""
    import shutil

    for temp in _local_temporaries(output) - before:
        shutil.rmtree(temp, ignore_errors=True)
    if created and os.path.isdir(output) and not os.listdir(output):
        os.rmdir(output)


def run_beam_embed(source, encoder, data_shape: Sequence[int], output: str | os.PathLike, *,
                   outputs: Sequence[str] = ("embedding",), batch_size: int = 256, overwrite: bool = False,
                   pipeline_args: Sequence[str] = (), workers: int | None = None) -> BeamEmbedResult:
    """Run the embedding job for ``source`` (:class:`SplitSource`, :class:`ParquetSource`) with
    ``encoder`` (:func:`open_model`) and wait for it; Parquet files land in directory ``output``.

    Stale shards of an earlier run (``--overwrite``) are deleted only once the job has succeeded:
    shards of the same name are replaced by Beam's final rename."""
    import pyarrow as pa
    from apache_beam.options.pipeline_options import DirectOptions, StandardOptions

    from serving.embed import arrow_table, encode_chunk, output_metadata

    if batch_size < 1:
        raise ConfigError("batch size must be a positive integer")
    missing = [o for o in outputs if o not in encoder.outputs]
    if missing:
        raise ConfigError(f"encode has no output(s) {', '.join(missing)}; it has {', '.join(encoder.outputs)}")
    if tuple(source.data_shape) != tuple(data_shape):
        raise DataError(f"the data rows have shape {list(source.data_shape)} but {encoder.version_dir} takes "
                        f"{list(data_shape)}; embed data of the shape the model was trained on")
    if source.rows == 0:
        where = source.description.get('path') or source.description.get('data')
        if isinstance(source, TextFileSource):  # as the one-process job says it (serving.text_rows)
            raise DataError(f"{where} has no sentence (every line is blank); put one sentence per line")
        raise DataError(f"{where} has no rows to embed")
    output = str(output)
    if output.lower().endswith(".npz"):
        raise ConfigError("--runner beam writes Parquet files into a directory; give --output DIR, not an .npz file")
    if "://" not in output and os.path.isfile(output):
        raise ConfigError(f"{output} is a file; --runner beam writes a directory of Parquet files: give another "
                          "--output")
    given = str(source.description.get("path") or "")  # a file, a folder or a pattern (a data set has none)
    if given and "://" not in output and "://" not in given:
        prefix = re.split(r"[*?\[]", given, maxsplit=1)[0]  # a pattern's fixed start (the whole path if none)
        read = Path(prefix if prefix == given or prefix.endswith(os.sep) else os.path.dirname(prefix) or ".").resolve()
        if read == Path(output).resolve():  # the folder read: --overwrite replaced the input shards with embeddings
            raise ConfigError(f"{output} holds the input ({given}): the embeddings would replace the data; choose "
                              "another --output")
    pattern = FileSystems.join(output, f"{SHARD_PREFIX}-*{SHARD_SUFFIX}")
    previous = _shards(pattern)
    if previous and not overwrite:
        raise ConfigError(f"{output} already holds {len(previous)} Parquet part file(s); pass --overwrite to replace "
                          "them or choose another --output")
    foreign = sorted(set(_shards(FileSystems.join(output, f"*{SHARD_SUFFIX}"))) - set(previous))
    if foreign:  # pq.read_table(OUTPUT) would read them with the embeddings
        shown = ", ".join(os.path.basename(p) for p in foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise ConfigError(f"{output} holds other Parquet files ({shown}), which reading the output directory would "
                          "mix with the embeddings; choose an empty --output directory")
    keep = tuple(getattr(source, "keep", ()))
    clash = [k for k in keep if k in set(outputs) | {"index", "label"}]
    if clash:
        raise ConfigError(f"--keep-columns {', '.join(clash)}: the output has a column of that name already; "
                          "rename the input column")
    options = pipeline_options(pipeline_args, workers)
    # Temporary folders of a run that was killed (Beam removes them only when a job ends): their
    # files are no output (Beam renames finished ones into place), but a reader of the directory
    # would take their rows twice, or fail on a half-written file. Removed once every check passed.
    removed = _remove_stale_temporaries(output)

    columns = list(outputs) + ["index"] + (["label"] if source.labels else []) + list(keep)
    # The writer needs the Parquet schema up front: the output widths come from encoding one row.
    example = np.array(["probe"], dtype=object) if encoder.text else np.zeros((1,) + tuple(data_shape), np.float32)
    probe = encode_chunk(encoder, example, outputs, 1)
    empty = {**{name: probe[name][:0] for name in outputs}, "index": np.zeros(0, np.int64),
             "label": np.zeros(0, np.int64), **{k: pa.array([], type=source.keep_types[k]) for k in keep}}
    schema = arrow_table(empty, columns).schema.with_metadata(
        output_metadata(encoder.identity, outputs, source.description, text=encoder.text))

    try:
        pipeline = beam.Pipeline(runner=make_runner(options), options=options)
    except ValueError as err:  # an unknown --runner (Beam lists the names), a runner's missing options
        said = " ".join(str(err).split())[:400].rstrip(".")
        hint = "give one of them as --runner=NAME after --" if "Unexpected pipeline runner" in said else \
            "give them after -- (docs/serving.md, \"Embeddings at scale\")"
        raise ConfigError(f"{said}; {hint}") from None
    build_pipeline(pipeline, source, str(encoder.version_dir), output, outputs=outputs, batch_size=batch_size,
                   schema=schema, columns=columns, support=encoder.support, likelihood=encoder.likelihood,
                   text_policy=getattr(encoder, "text_policy", None))
    local_temps = _local_temporaries(output)
    created = "://" not in output and not os.path.exists(output)
    started = False
    try:
        job = pipeline.run()
        started = True
        state = job.wait_until_finish()
    except KeyboardInterrupt:  # Ctrl-C (exit 130): its temporary folders go too, as a failed run's do
        _remove_local_temporaries(output, local_temps, created)
        raise
    except Exception as err:
        _remove_local_temporaries(output, local_temps, created)
        found = user_error(err)
        if found is None:
            found = job_failure(err, started, str(options.view_as(StandardOptions).runner))
        if found is None:
            raise
        raise found from None
    if state not in (None, "DONE"):
        raise RuntimeError(f"the Beam job ended in state {state}; see the runner's logs")
    # Files of this run replaced same-named old ones (a new modification time); the old ones left
    # untouched belong to an earlier run with another shard count.
    after = _shards(pattern)
    stale = sorted(p for p, modified in previous.items() if after.get(p) == modified)
    if stale:
        FileSystems.delete(stale)
    files = sorted(set(after) - set(stale))
    counted = _counted(job, getattr(encoder, "text_policy", None))
    # A text table's rows without a sentence are skipped by the workers: the sentences embedded,
    # as the job counted them, not the table's rows the launcher read from the footers.
    rows = counted[1] if counted is not None else source.rows
    direct = options.view_as(DirectOptions)  # --workers, or -- --direct_num_workers with its running mode
    local_workers = direct.direct_num_workers if direct.direct_running_mode == "multi_processing" else None
    return BeamEmbedResult(output, rows, files, columns, str(options.view_as(StandardOptions).runner),
                           local_workers,
                           {"model": str(encoder.version_dir.resolve())}, counted, removed)


# -- command line --------------------------------------------------------------------------------

def parquet_pattern(data: str, path: str | None) -> str | None:
    """The Parquet file or glob of ``--data x.parquet`` / ``--data parquet --path PATTERN``."""
    if data.lower() == "parquet":
        if not path:
            raise ConfigError("--data parquet needs --path FILE_OR_GLOB (e.g. 'rows/*.parquet')")
        return path
    return data if data.lower().endswith(".parquet") else None


def cmd_embed_beam(args, outputs: Sequence[str]) -> int:
    """``vae-tf embed --runner beam``: the arguments of ``vae-tf embed`` plus ``--workers`` and
    Beam pipeline options after ``--``."""
    from serving.embed import (load_split_source, refuse_modality_mismatch, refuse_split_options, resolve_embed_data,
                               split_summary, truncation_summary)
    from serving.text_rows import input_kind

    if args.server:
        raise ConfigError("--runner beam loads the SavedModel on every worker; give --model models/NAME[/VERSION] "
                          "instead of --server")
    encoder, data_shape = open_model(args.model)
    options = resolve_embed_data(args, encoder.version_dir)
    pattern = parquet_pattern(args.data, args.path)
    if args.data.lower() == "text":  # any pattern: --data text --path 'corpus/*.txt*'
        if not args.path:
            raise ConfigError("--data text needs --path FILE_OR_GLOB (e.g. 'corpus/*.txt.gz')")
        kind, text_pattern = "text", args.path
    else:
        kind, text_pattern = input_kind(args.data), args.data
    keep = [c.strip() for c in (getattr(args, "keep_columns", None) or "").split(",") if c.strip()]
    if keep and pattern is None:
        raise ConfigError("--keep-columns copies columns of Parquet input; this input has no columns (its index is "
                          "the row to join on)")
    if len(set(keep)) != len(keep):
        raise ConfigError(f"--keep-columns names a column twice: {', '.join(keep)}")
    if pattern is not None:
        refuse_split_options(args, "Parquet input")
        source = ParquetSource(pattern, data_shape, args.chunk_size, text=encoder.text, column=args.column,
                               label_column=False if args.no_labels else args.label_column, keep=keep)
    elif kind == "table":
        raise ConfigError("--runner beam reads Parquet, not CSV; drop --runner beam (vae-tf embed reads CSV in one "
                          "process) or convert the file to Parquet")
    elif kind == "text":
        refuse_modality_mismatch("text", encoder.text, text_pattern)
        refuse_split_options(args, "Text input")
        if args.column or args.label_column:
            raise ConfigError("--column and --label-column are for Parquet/CSV input; a text file has one sentence "
                              "per line")
        source = TextFileSource(text_pattern, args.chunk_size)
    else:
        source = SplitSource(load_split_source(args, encoder.text, options), args.chunk_size)
    # Runner and worker logs (a failed bundle's traceback among them) would bury the one-line
    # error: a failure comes back as the exception, and user_error finds the message in it.
    logging.getLogger("apache_beam.runners").setLevel(logging.CRITICAL)
    # Its "Discarding unparseable args" warning: such options are refused in one line instead.
    logging.getLogger("apache_beam.options.pipeline_options").setLevel(logging.ERROR)
    beam_args = list(args.beam_args or [])
    if beam_args[:1] == ["--"]:
        beam_args = beam_args[1:]
    result = run_beam_embed(source, encoder, data_shape, args.output, outputs=outputs, batch_size=args.batch_size,
                            overwrite=args.overwrite, pipeline_args=beam_args, workers=args.workers)
    workers = f", {result.workers} worker processes" if result.workers else ""
    shown = result.output if "://" in str(result.output) else Path(result.output).resolve()  # as the one-process job
    print(f"embeddings:    {shown} ({result.rows} rows in {len(result.files)} Parquet file(s); "
          f"columns {', '.join(result.columns)}; rows in no particular order, join on index)")
    print(f"model:         {result.identity['model']}")
    print(f"runner:        {result.runner}{workers}")
    if result.stale_removed:
        print(f"removed:       {result.stale_removed} temporary folder(s) (beam-temp-*) of an earlier run that was "
              "killed; they held no output")
    if isinstance(source, SplitSource):
        read = split_summary(source.source, result.rows, as_trained=bool(getattr(args, "as_trained", False)))
    else:  # every row (sentence) of the files, in file order
        what = "row" if isinstance(source, ParquetSource) and not source.text else "sentence"
        read = (f"every {what} of {source.description.get('files')} file(s) matching {source.description['path']}, "
                "files in name order")
    if read:
        print(f"data:          {read}")
    cut = truncation_summary(result.truncated, result.rows)
    if cut:
        print(f"truncated:     {cut}")
    return 0


__all__ = ["BeamEmbedResult", "EncodeModelHandler", "ParquetPart", "ParquetSource", "SplitSource", "TextFileSource",
           "TextPart", "build_pipeline",
           "cmd_embed_beam", "column_rows", "open_model", "parquet_pattern", "pipeline_options", "run_beam_embed",
           "user_error"]
