"""Batch embedding extraction (``vae-tf embed``) and the linear probe on its output (``vae-tf probe``).

:func:`extract_embeddings` runs the ``encode`` signature over a data set in chunks, through a
local SavedModel (:class:`LocalEncoder`) or a TF-Serving-compatible server (:class:`RemoteEncoder`,
REST or gRPC), and writes ``.npz`` or Parquet:

- **columns**: ``embedding`` (float32 ``[N, D]``; other ``encode`` outputs on request, e.g.
  ``z_mean``), ``index`` (row in the source split) and ``label`` when the data set has labels;
  Parquet stores each tensor column as ``fixed_size_list<float>``.
- **streaming**: each chunk (``chunk_size`` rows) is read from the source, encoded and written to
  its own file in ``<output>.parts/`` (temporary name, then rename), so memory holds one chunk,
  neither the input (for files) nor the output.
  The final file is assembled chunk by chunk (``.npz``: one ``.npy`` member per column written
  incrementally into the zip; Parquet: one row group per chunk), again under a temporary name
  renamed at the end, and the parts are removed.
- **resumable**: a second run with the same settings skips the chunks already in
  ``<output>.parts/``; ``manifest.json`` there records the settings (data, split, model and
  served version, outputs, chunk size), and a run with different settings refuses to mix them.
- **finite input**: a chunk holding NaN or ±Inf is refused before it is encoded, with one line
  naming the row, its position and the value (files are checked when opened, the same way).
- **one version**: through a server, the run first asks which version is served and pins it
  (``/versions/N``), so a hot swap in the middle of a run cannot mix two models.

Input rows come from :func:`vae_tf.data.open_dataset` (registered data sets, ``.npz``, ``.npy``,
image folders): the rows and values of :func:`vae_tf.data.load_dataset`, but a file's rows are
read and converted to float32 one chunk at a time (sorted within the chunk for sequential reads,
then put back in split order), so memory does not grow with the number of rows; built-in data
sets (digits, dSprites, MNIST) are held in memory. The model sees them in batches of
``batch_size`` rows, the same batches locally and remotely, so both paths give identical numbers.

A **text model** (its ``encode`` takes ``DT_STRING`` sentences) also reads sentences from files,
streamed the same way (:func:`load_text_source`, :mod:`serving.text_rows`): a ``.txt`` /
``.txt.gz`` file with one sentence per line, or a column of a Parquet or CSV file (``--column``,
labels from ``--label-column``). Every sentence is embedded, in file order; rows without one
(blank lines, nulls, empty strings) are skipped, and ``index`` is the line or row each embedding
came from. A sentence longer than the model's ``max_length`` words is truncated by the model to
its first ``max_length`` words (docs/text.md); registered text data sets (``text_synthetic``,
``wordnet``, ...) are split as in training.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from serving.model_store import first_non_finite, non_finite_text
from vae_tf.errors import ConfigError, DataError, ModelNotFoundError

log = logging.getLogger("serving.embed")

DEFAULT_CHUNK_SIZE = 4096
DEFAULT_BATCH_SIZE = 256
MANIFEST = "manifest.json"
FORMATS = (".npz", ".parquet")
SPLITS = ("train", "val", "test", "all")


# -- encoders ---------------------------------------------------------------------------------


class LocalEncoder:
    """The ``encode`` signature of an export directory (``models/NAME`` or ``models/NAME/N``)."""

    def __init__(self, model_path: str | os.PathLike):
        import tensorflow as tf

        from vae_tf.export import resolve_version_dir

        self.version_dir = resolve_version_dir(model_path)
        loaded = tf.saved_model.load(str(self.version_dir))
        if "encode" not in loaded.signatures:
            raise ModelNotFoundError(f"{self.version_dir} has no 'encode' signature; export it with vae-tf train")
        self._loaded = loaded
        self._encode = loaded.signatures["encode"]
        self.outputs = sorted(self._encode.structured_outputs)
        self.identity = {"model": str(self.version_dir.resolve())}
        from vae_tf.export import load_model_info

        info = load_model_info(self.version_dir)
        recorded = info.get("data_shape")
        #: The shape of one row the model was trained on (None: not recorded).
        self.data_shape = None if recorded is None else tuple(int(d) for d in recorded)
        likelihood = info.get("likelihood") if isinstance(info.get("likelihood"), dict) else {}
        #: The name and the support ([low, high], None: any value) of the model's likelihood.
        self.likelihood = likelihood.get("name")
        self.support = None if likelihood.get("support") is None else tuple(float(v) for v in likelihood["support"])
        # A text model's encode takes sentences (DT_STRING).
        self.text = any(spec.dtype == tf.string for spec in self._encode.structured_input_signature[1].values())
        from serving.text import TextPolicy

        #: A text model's tokenizer facts (to count the sentences it truncates); None otherwise.
        self.text_policy = TextPolicy.from_model_info(info) if self.text else None

    def __call__(self, x: np.ndarray) -> dict[str, np.ndarray]:
        import tensorflow as tf

        return {k: v.numpy() for k, v in self._encode(x=tf.constant(x)).items()}


class RemoteEncoder:
    """``encode`` through a server (``http://...`` or ``grpc://...``), pinned to the version it
    serves when the run starts (or to ``version``)."""

    def __init__(self, server: str, model_name: str, *, version: int | None = None, timeout: float = 60.0):
        from serving.client import ServingRequestError, connect

        probe = connect(server, model_name, version=version, timeout=timeout)
        try:
            meta = probe.metadata()
        except ServingRequestError as err:
            if err.code in (404, "NOT_FOUND") and version is None:
                raise ServingRequestError(f"{err} (the server serves no model named {model_name!r}: give the name it "
                                          "serves with --model-name; `vae-tf serve --model models/NAME` serves "
                                          "NAME)", err.code) from None
            raise
        served = int(meta["model_spec"]["version"])
        sigs = meta["metadata"]["signature_def"]["signature_def"]
        if "encode" not in sigs:
            raise ModelNotFoundError(f"model {model_name!r} at {server} has no 'encode' signature")
        self.client = probe if version is not None else connect(server, model_name, version=served, timeout=timeout)
        self.outputs = sorted(sigs["encode"]["outputs"])
        self.identity = {"server": server, "model_name": model_name, "version": served}
        self.text = any(info.get("dtype") == "DT_STRING" for info in sigs["encode"].get("inputs", {}).values())
        #: The shape of one row from the signature's input (None: not fully known, or text).
        self.data_shape = _row_shape(sigs["encode"].get("inputs", {}))

    def __call__(self, x: np.ndarray) -> dict[str, np.ndarray]:
        return self.client.encode(x)


def _row_shape(inputs: Mapping) -> tuple[int, ...] | None:
    """The per-row shape of a one-input signature's TensorInfo (metadata JSON), batch axis off."""
    if len(inputs) != 1:
        return None
    dims = [int(d.get("size", -1)) for d in next(iter(inputs.values())).get("tensor_shape", {}).get("dim", [])]
    return tuple(dims[1:]) if dims and all(d > 0 for d in dims[1:]) else None


# -- data ----------------------------------------------------------------------------------------


@dataclass
class EmbedSource:
    """The rows to embed: ``x`` (``len(x)`` rows; ``x[start:stop]`` gives float32, batch-leading
    rows: a :class:`vae_tf.data.SplitRows` that reads only those rows, or an array; for a text
    model, sentences: :class:`serving.text_rows.SentenceRows` or an array of ``str``) and optional
    int64 labels (``y[start:stop]``). ``positions(start, stop)``: the rows' positions in the input
    (written as ``index``; default: ``start .. stop - 1``)."""

    x: Any
    y: Any
    description: dict = field(default_factory=dict)
    positions: Callable[[int, int], np.ndarray] | None = None
    #: Rows of the whole input (every split) when ``x`` is one split of it; None otherwise.
    input_rows: int | None = None

    def index(self, start: int, stop: int) -> np.ndarray:
        """The output's ``index`` of rows ``start .. stop - 1``: their positions in the input."""
        return self.positions(start, stop) if self.positions else np.arange(start, stop, dtype=np.int64)


#: ``vae-tf embed`` defaults of the split options, which whole-file inputs (Parquet, CSV, text) do not use.
SPLIT_DEFAULTS = {"split": "test", "seed": 0, "val_fraction": 0.1, "test_fraction": 0.1, "max_samples": None}


def refuse_split_options(args, what: str) -> None:
    """A whole-file input is embedded whole, in file order: a split option given is a mistake."""
    values = {**vars(args), **getattr(args, "split_given", {})}  # as given, before resolve_embed_data filled them
    # Any value given, the defaults' too (an explicit --split test was ignored: every row embedded,
    # into a file named as a test split); --split all ("every row, in the input's order") is what a
    # whole-file input gets: not a mistake
    given = [f"--{k.replace('_', '-')}" for k in SPLIT_DEFAULTS
             if values[k] is not None and not (k == "split" and values[k] == "all")]
    if given:
        raise ConfigError(f"{what} is embedded whole, in file order; drop {', '.join(given)}")


def load_text_source(data: str, *, column: str | None = None,
                     label_column: str | None | bool = None) -> EmbedSource:
    """Sentences for a text model from a ``.txt``/``.txt.gz`` file (one per line) or a column of a
    Parquet/CSV file (:mod:`serving.text_rows`): every sentence in file order, blank rows skipped,
    ``index`` the line or row it came from; labels from ``label_column`` (``False``: none)."""
    from serving.text_rows import input_kind, table_rows, text_file_rows

    kind = input_kind(data)
    if kind == "text":
        if column is not None or label_column not in (None, False):
            raise ConfigError("--column and --label-column are for Parquet/CSV input; a text file has one sentence "
                              "per line")
        rows = text_file_rows(data)
    elif kind == "table":
        rows = table_rows(data, column, label_column)
    else:
        raise DataError(f"{data!r} is not a text input; give a .txt/.txt.gz file (one sentence per line) or a "
                        ".parquet/.csv file with a column of sentences")
    return EmbedSource(rows, rows.labels, dict(rows.description), rows.positions)


def load_source(data: str, *, split: str = "test", path: str | None = None, seed: int = 0,
                val_fraction: float = 0.1, test_fraction: float = 0.1, max_samples: int | None = None,
                options: dict | None = None, labels: bool = True) -> EmbedSource:
    """A split of a registered data set (``digits``, ``mnist``, ``text_synthetic``, ...) or of a
    file/folder (``data`` may be a path to an ``.npz``, ``.npy`` or image folder). ``split='all'``
    takes every row of train, val and test in the order of the input (a file's rows in file
    order; an ``.npz``'s ``x_test`` after its ``x``; a built-in data set's splits one after
    another), each row's ``index`` its position there. ``options``: the data set's own options
    (``data.options`` of a training config, e.g. ``n_samples``, ``image_size``). ``labels=False``
    leaves the labels out (an ``.npz``'s are then not read, so labels that are not class indices
    do not stop it).

    The rows stay lazy (:func:`vae_tf.data.open_dataset`): the same rows, values and checks as
    :func:`vae_tf.data.load_dataset`, but a file's rows are read and converted a chunk at a time
    by :func:`extract_embeddings`, so memory does not grow with the data (only the split's row
    indices and labels, 8 bytes per row each, are held). Built-in data sets are held in memory.
    """
    from vae_tf.data import DATASETS, SplitRows, dataset_options, open_dataset

    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    name = data
    candidate = Path(data).expanduser()
    if path is not None and data.lower().replace("-", "_") not in DATASETS and (
            candidate.exists() or candidate.suffix.lower() in (".npz", ".npy")):
        # (it said "unknown data set 'my.npz'", a file that exists)
        raise ConfigError(f"--data {data} is a file and --path {path} another; give the file alone (--data FILE), or "
                          "the kind and the file (--data npz --path FILE)")
    if path is None and data.lower().replace("-", "_") not in DATASETS:
        if candidate.is_dir():
            name, path = "images", str(candidate)
        elif candidate.suffix.lower() in (".npz", ".npy"):
            name, path = candidate.suffix.lower()[1:], str(candidate)
        elif not candidate.exists():
            raise DataError(f"unknown data set or missing file {data!r}; give a registered name "
                            f"({', '.join(sorted(DATASETS))}) or an existing .npz/.npy file or image folder")
    if not labels and "labels" in dataset_options(name):  # not read at all (an .npz's)
        options = {**(options or {}), "labels": False}
    splits = open_dataset(name, seed=seed, val_fraction=val_fraction, test_fraction=test_fraction,
                          max_samples=max_samples, path=path, **(options or {}))
    parts = ("train", "val", "test") if split == "all" else (split,)
    x = SplitRows.concat([splits.split(p) for p in parts])
    input_rows = sum(len(splits.split(p)) for p in ("train", "val", "test"))
    if len(x) == 0:
        raise DataError(f"split {split!r} of {data!r} is empty; pick another split or change the fractions")
    positions = None
    if split == "all":  # every row: in the input's order, `index` the row of the file
        x, order = x.in_input_order()
        positions = RowPositions(order)
    description = {"data": name, "path": path, "split": split, "seed": seed, "val_fraction": val_fraction,
                   "test_fraction": test_fraction, "max_samples": max_samples, "options": dict(options or {}),
                   "rows": len(x),
                   "modality": str(splits.metadata.get("modality", "image")),
                   **({"order": "input"} if split == "all" else {}),
                   # string labels are written as their codes: the names, code by code (docs/data.md)
                   **({"class_names": [str(c) for c in splits.metadata["class_names"]]}
                      if labels and splits.metadata.get("class_names") is not None else {})}
    y = None if x.y is None or not labels else np.asarray(x.y, np.int64)
    return EmbedSource(x, y, description, positions, input_rows)


def truncation_summary(truncated: tuple[int, int, int] | None, rows: int) -> str | None:
    """The summary line of the sentences a text model cut (``(truncated, counted, max_length)``),
    or None when none were (or they were not counted): both runners of ``vae-tf embed``."""
    if not truncated or not truncated[0]:
        return None
    cut, counted, max_length = truncated
    among = "sentences" if counted == rows else "sentences encoded in this run"
    return (f"{cut} of {counted} {among} have more than the model's {max_length} words; each is embedded from its "
            f"first {max_length}, as the model reads it")


def split_summary(source: EmbedSource, rows: int, *, as_trained: bool) -> str | None:
    """What ``vae-tf embed`` read, for its summary: every row of the input, or which split and how
    many of the input's rows (a user's own file embeds its test split, 10 % of it, by default);
    None for inputs that are not split (text files, Parquet, CSV)."""
    if source.input_rows is None:
        return None
    d = source.description
    what = d.get("path") or d.get("data")
    sample = f"; max_samples {d['max_samples']}" if d.get("max_samples") else ""
    if d.get("split") == "all":
        if d.get("path") and Path(d["path"]).is_dir():
            return (f"every image of {what} ({rows}{sample}), in the folder's sorted order; index is the image's "
                    "position in it")
        if d.get("path"):
            return f"every row of {what} ({rows}{sample}), in file order; index is the row of the file"
        # a registered data set: its splits as it reads them, not the order of its own source
        return (f"every row of {what} ({rows}{sample}): its train, val and test rows one after another, index that "
                "position")
    how = ("as the model's training run split it" if as_trained else
           f"seed {d.get('seed')}, val/test fractions {d.get('val_fraction')}/{d.get('test_fraction')}")
    return (f"split {d.get('split')} of {what}: {rows} of its {source.input_rows} rows ({how}{sample}); --split all "
            "embeds every row")


class RowPositions:
    """``positions(start, stop)`` of an :class:`EmbedSource` from an array of every row's
    position (a plain class: Beam pickles it to its workers)."""

    def __init__(self, positions: np.ndarray):
        self.positions = np.asarray(positions, np.int64)

    def __call__(self, start: int, stop: int) -> np.ndarray:
        return self.positions[start:stop]


def resolve_embed_data(args, version_dir=None) -> dict:
    """Fill the data and split settings of ``vae-tf embed`` that were not given: with a local
    model (``version_dir``) and data that is the data set it was trained on (or no ``--data``),
    the training run's own (data set, path, seed, fractions, ``max_samples``), so that ``--split
    test`` is the model's test split and no training row is embedded as a test row; otherwise
    ``digits`` and the split defaults. Returns the data set options to load it with; what the
    user gave is kept in ``args.split_given`` (for :func:`refuse_split_options`)."""
    from vae_tf.export import load_model_info

    args.split_given = {k: getattr(args, k) for k in ("seed", "val_fraction", "test_fraction", "max_samples")}
    config = (load_model_info(version_dir).get("config") or {}) if version_dir is not None else {}
    trained = config.get("data") or {}
    if args.data is None:
        args.data, args.path = (trained.get("name"), args.path or trained.get("path")) if trained else ("digits", args.path)
    same = bool(trained) and _same_data(trained, args.data, args.path)
    args.as_trained = same
    fallback = {"seed": config.get("seed", 0), "val_fraction": trained.get("val_fraction", 0.1),
                "test_fraction": trained.get("test_fraction", 0.1), "max_samples": trained.get("max_samples")}
    for key in ("seed", "val_fraction", "test_fraction", "max_samples"):
        if getattr(args, key) is None:
            setattr(args, key, fallback[key] if same else SPLIT_DEFAULTS[key])
    return dict(trained.get("options") or {}) if same else {}


def _same_data(trained: dict, data: str, path: str | None) -> bool:
    """Whether ``data`` (a registered name or a path) and ``path`` are the data set ``trained``
    (a training config's ``data`` section) read."""
    name = str(trained.get("name", "")).lower().replace("-", "_")
    if trained.get("path"):  # a user's file or folder: the same file or folder
        given = Path(path or data).expanduser()
        return given.exists() and given.resolve() == Path(trained["path"]).expanduser().resolve()
    return name == data.lower().replace("-", "_")


def load_split_source(args, text_model: bool, options: dict) -> EmbedSource:
    """:func:`load_source` of the resolved ``args`` (:func:`resolve_embed_data`) for a model
    reading sentences (``text_model``) or arrays: data of the other kind is refused before a
    registered data set loads (its registration says what it holds) and after a file loads."""
    from vae_tf.data import DATASETS, dataset_modality

    if args.path is None and args.data.lower().replace("-", "_") not in DATASETS:
        # A path: one this model's data cannot be read from is named as such, with the inputs that can.
        kind = "text" if text_model else "image"
        takes = {"text"} if text_model else {"image", None}  # npz/npy declare no modality: they hold arrays
        names = ", ".join(sorted(n for n in DATASETS if dataset_modality(n) in takes))
        readable = ("a .txt/.txt.gz file (one sentence per line) or a .parquet/.csv file with a column of sentences"
                    if text_model else "an .npz/.npy file or an image folder")
        candidate = Path(args.data).expanduser()
        if not candidate.exists():
            raise DataError(f"unknown data set or missing file {args.data!r}; give {readable} that exists, or a "
                            f"registered name ({names})")
        if candidate.is_file() and candidate.suffix.lower() not in (".npz", ".npy"):
            raise DataError(f"{args.data!r} is not a kind of file vae-tf embed reads for this {kind} model; give "
                            f"{readable}, or a registered name ({names})")
    refuse_modality_mismatch(dataset_modality(args.data), text_model, args.data)
    source = load_source(args.data, split=args.split or SPLIT_DEFAULTS["split"], path=args.path, seed=args.seed,
                         val_fraction=args.val_fraction,
                         test_fraction=args.test_fraction, max_samples=args.max_samples, options=options,
                         labels=not getattr(args, "no_labels", False))
    refuse_modality_mismatch(source, text_model, args.path or args.data)
    return source


def refuse_modality_mismatch(source: EmbedSource | str | None, text_model: bool, data: str) -> None:
    """One line when the data (a loaded ``source``, or a modality, "text" or "image", as a
    registered data set declares it: checked before it loads) is not what the model's encode
    takes, before any row reaches the model (whose own error is a graph's input-type mismatch)."""
    modality = source.description.get("modality") if isinstance(source, EmbedSource) else source
    if modality is None:
        return
    text_data = modality == "text"
    if text_model and not text_data:
        raise ConfigError(f"{data!r} holds images/arrays but this model's encode takes sentences; give a text data "
                          "set (text_synthetic, wordnet, text_file with --path) or a .txt/.txt.gz/.parquet/.csv "
                          "file, or an image model")
    if text_data and not text_model:
        raise ConfigError(f"{data!r} holds sentences but this model's encode takes arrays; give a text model, or "
                          "a data set / .npz / .npy / image folder")


# -- chunks ---------------------------------------------------------------------------------------


def _atomic_write(final: Path, write) -> None:
    """``write(tmp_path)`` then rename to ``final`` (same directory, so the rename is atomic)."""
    tmp = final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        write(tmp)
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)
        handle.flush()
        os.fsync(handle.fileno())


@dataclass
class EmbedResult:
    output: Path
    rows: int
    chunks: int
    reused_chunks: int
    columns: list[str]
    identity: dict
    #: A local text model: sentences longer than its ``max_length`` words, which it reads cut to
    #: their first ``max_length``, among the ``counted`` sentences of the chunks encoded in this
    #: run (``(truncated, counted, max_length)``); None when not counted (images, a server).
    truncated: tuple[int, int, int] | None = None


def extract_embeddings(source: EmbedSource, encoder, output: str | os.PathLike, *, outputs: Sequence[str] = ("embedding",),
                       chunk_size: int = DEFAULT_CHUNK_SIZE, batch_size: int = DEFAULT_BATCH_SIZE,
                       overwrite: bool = False, progress=None) -> EmbedResult:
    """Encode ``source`` chunk by chunk and write ``output`` (``.npz`` or ``.parquet``)."""
    output = Path(output)
    if output.suffix.lower() not in FORMATS:
        raise ConfigError(f"output {str(output)!r} must end in .npz or .parquet")
    if chunk_size < 1 or batch_size < 1:
        raise ConfigError("chunk size and batch size must be positive integers")
    missing = [o for o in outputs if o not in encoder.outputs]
    if missing:
        raise ConfigError(f"encode has no output(s) {', '.join(missing)}; it has {', '.join(encoder.outputs)}")
    if len(set(outputs)) != len(outputs):
        raise ConfigError(f"--outputs names {sorted({o for o in outputs if list(outputs).count(o) > 1})} more than once; "
                          "name each output once")
    if output.is_dir():
        raise ConfigError(f"{output} is a folder; give -o a file name ending in .npz or .parquet")
    given = source.description.get("path")  # the file read (a registered data set has none)
    if given and output.exists() and Path(given).exists() and Path(given).resolve() == output.resolve():
        # --overwrite, which the next message offers, replaced the user's data with its embeddings
        raise ConfigError(f"{output} is the input file: the embeddings would replace the data; choose another --output")
    if output.exists() and not overwrite:
        raise ConfigError(f"{output} exists; pass --overwrite to replace it or choose another --output")
    model_shape, data_shape = getattr(encoder, "data_shape", None), getattr(source.x, "data_shape", None)
    if model_shape is not None and data_shape is not None and tuple(model_shape) != tuple(data_shape):
        raise ConfigError(f"{source.description.get('path') or source.description.get('data')!r} has rows of shape "
                          f"{tuple(data_shape)} but the model encodes {tuple(model_shape)}; give data of the model's "
                          "shape (for an image folder, the image_size it was trained with)")
    output.parent.mkdir(parents=True, exist_ok=True)
    parts = output.with_name(output.name + ".parts")
    n = len(source.x)
    n_chunks = (n + chunk_size - 1) // chunk_size
    # class_names (the output's metadata says them) are not part of what a resumed run must match:
    # chunks written before they were recorded resume as they did
    read = {k: v for k, v in source.description.items() if k != "class_names"}
    manifest = {"format": _chunk_format(outputs), "source": read, "model": encoder.identity, "outputs": list(outputs),
                "chunk_size": int(chunk_size), "batch_size": int(batch_size), "rows": n, "chunks": n_chunks,
                "labels": source.y is not None, "input": input_fingerprint(source.description.get("path"))}
    _prepare_parts(parts, manifest, overwrite)

    reused = 0
    policy = getattr(encoder, "text_policy", None)
    truncated = counted = 0
    try:
        for i in range(n_chunks):
            chunk_file = parts / f"chunk-{i:06d}.npz"
            if chunk_file.is_file():
                reused += 1
                continue
            start, stop = i * chunk_size, min(n, (i + 1) * chunk_size)
            rows = source.x[start:stop]
            _check_finite(rows, start, source)
            _check_support(rows, start, source, encoder)
            if policy is not None:
                truncated, counted = truncated + policy.count_long(rows), counted + len(rows)
            index = source.index(start, stop)
            arrays = encode_chunk(encoder, rows, outputs, batch_size, input_row=_input_row(source, index))
            arrays["index"] = index
            if source.y is not None:
                arrays["label"] = np.asarray(source.y[start:stop], dtype=np.int64)
            _atomic_write(chunk_file, lambda tmp: _save_npz(tmp, arrays))
            if progress:
                progress(i + 1, n_chunks)
    except BaseException:
        # A run that stopped before its first chunk was written leaves nothing to resume: no
        # .parts folder beside the output the user asked for.
        if not any(parts.glob("chunk-*.npz")):
            shutil.rmtree(parts, ignore_errors=True)
        raise
    columns = list(outputs) + ["index"] + (["label"] if source.y is not None else [])
    if output.suffix.lower() == ".parquet":
        metadata = output_metadata(encoder.identity, outputs, source.description, text=getattr(encoder, "text", False))
        _atomic_write(output, lambda tmp: _assemble_parquet(tmp, parts, n_chunks, columns, n, metadata))
    else:
        _atomic_write(output, lambda tmp: _assemble_npz(tmp, parts, n_chunks, columns, n))
    shutil.rmtree(parts, ignore_errors=True)
    return EmbedResult(output, n, n_chunks, reused, columns, encoder.identity,
                       None if policy is None else (truncated, counted, policy.max_length))


def input_fingerprint(path) -> dict | None:
    """``{"files": N, "digest": sha256 of every (file, size, modification time in ns)}`` of the
    input file(s) at ``path`` (a file, a folder's files, or a glob), so that a resume does not mix
    chunks of a file that has changed since with chunks of its new content; None for a registered
    data set. A digest, not the list: an image folder may hold a million files."""
    import glob
    import hashlib

    if not isinstance(path, str) or not path:
        return None
    if glob.has_magic(path):
        files = sorted(glob.glob(path))
    elif os.path.isdir(path):
        files = sorted(os.path.join(root, f) for root, _, names in os.walk(path) for f in names)
    else:
        files = [path]
    digest, count = hashlib.sha256(), 0
    for name in files:
        try:
            stat = os.stat(name)
        except OSError:
            continue
        digest.update(f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
        count += 1
    return {"files": count, "digest": digest.hexdigest()}


#: What each chunk format changed, for the message of a resume across it.
_FORMAT_CHANGES = {2: ": the category as int32, not float32"}


def _chunk_format(outputs) -> int:
    """The layout of the chunks, recorded in the manifest: 2 where they hold the category, which
    is int32 since 2026-12-07 (float32 before: a resume across the change gave .npz a float64
    column and failed to assemble Parquet); 1 otherwise, so that other chunks written before
    still resume."""
    return 2 if "category" in outputs else 1


#: What each key of the manifest is, for the message of a resume with other settings.
_MANIFEST_KEYS = {"source": "data or split", "model": "model or version", "outputs": "--outputs",
                  "chunk_size": "--chunk-size", "batch_size": "--batch-size", "rows": "rows", "chunks": "rows",
                  "labels": "labels", "input": "input file contents"}


def _prepare_parts(parts: Path, manifest: dict, overwrite: bool) -> None:
    path = parts / MANIFEST
    if parts.is_dir() and path.is_file() and not overwrite:
        try:
            previous = json.loads(path.read_text())
        except ValueError:
            previous = None
        if isinstance(previous, dict) and "input" not in previous:
            # chunks of a vae-tf that did not record the input's files: what they were is unknown
            manifest = {k: v for k, v in manifest.items() if k != "input"}
        if previous == manifest:
            return  # resume
        if isinstance(previous, dict) and previous.get("format") != manifest["format"]:  # no settings resume these
            raise ConfigError(f"{parts} holds chunks of another layout (format {previous.get('format')}, this vae-tf "
                              f"writes {manifest['format']}{_FORMAT_CHANGES.get(manifest['format'], '')}); pass "
                              "--overwrite to embed it anew")
        changed = sorted({_MANIFEST_KEYS.get(k, k) for k in set(manifest) | set(previous or {})
                          if (previous or {}).get(k) != manifest.get(k)})
        if changed == ["input file contents"]:
            raise ConfigError(f"{parts} holds chunks of an earlier content of the input (a file's size or modification "
                              "time has changed since); pass --overwrite to embed it anew")
        raise ConfigError(f"{parts} holds chunks of a run with other settings ({', '.join(changed)}); rerun with "
                          "those settings to resume, or pass --overwrite to start over")
    if parts.exists():
        shutil.rmtree(parts)
    parts.mkdir(parents=True)
    _atomic_write(path, lambda tmp: tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True)))


def _check_finite(rows: np.ndarray, start: int, source: EmbedSource) -> None:
    """Refuse a chunk holding NaN or ±Inf: the encoder would turn it into finite-looking
    embeddings (locally, or through a server started with ``--allow-non-finite``). Files are
    already checked when opened (:func:`vae_tf.data.open_dataset`); this covers every source."""
    found = first_non_finite(np.asarray(rows))
    if found is None:
        return
    index, value, count = found
    positions = source.index(start, start + len(rows))
    row = int(positions[index[0]])
    raise DataError(f"row {row} of {data_description(source.description)} has a non-finite value "
                    f"{non_finite_text(value)} at index {(row,) + index[1:]} ({count} NaN/Inf values in rows "
                    f"{int(positions[0])}-{int(positions[-1])}); remove or impute those rows before embedding them")


def _check_support(rows: np.ndarray, start: int, source: EmbedSource, encoder) -> None:
    """Refuse a chunk outside the support of the likelihood the model was trained with (a
    Bernoulli model reads [0, 1]), as training refuses such data: the encoder would embed values
    it never saw without a word."""
    positions = source.index(start, start + len(rows))
    error = support_error(rows, positions, getattr(encoder, "support", None), getattr(encoder, "likelihood", None),
                          data_description(source.description))
    if error is not None:
        raise error


def _input_row(source, index: np.ndarray) -> Callable[[int], str]:
    """How a message names row ``i`` of a chunk whose rows are ``index`` in the input: a text
    file's line (1-based, as an editor counts; blank lines count), else the input's row (0-based,
    the output's ``index``)."""
    from serving.text_rows import input_kind

    where = data_description(source.description)
    text_file = input_kind(source.description.get("path") or "") == "text"
    return lambda i: f"line {int(index[i]) + 1} of {where}" if text_file else f"row {int(index[i])} of {where}"


def data_description(description: Mapping) -> str:
    """How messages name the rows' input: its path or data set name, and the split if any."""
    where = description.get("path") or description.get("data") or "the data"
    split = description.get("split")
    return f"{where} (split {split})" if split else str(where)


def support_error(rows, positions: np.ndarray, support: tuple[float, float] | None, likelihood: str | None,
                  where: str) -> DataError | None:
    """The error for ``rows`` holding values outside ``support`` (``None``: every value is within
    it, or the likelihood has no bounded support), naming the first such row by its position
    (the output's ``index``) and the chunk's range; ``vae-tf embed`` in one process and on Beam."""
    rows = np.asarray(rows)
    if support is None or rows.size == 0 or rows.dtype.kind not in "iuf":
        return None
    low, high = float(np.min(rows)), float(np.max(rows))
    if low >= support[0] and high <= support[1]:
        return None
    outside = np.any((rows < support[0]) | (rows > support[1]), axis=tuple(range(1, rows.ndim)))
    return DataError(f"row {int(positions[int(np.argmax(outside))])} of {where} has values outside "
                     f"[{support[0]:g}, {support[1]:g}], which the model's {likelihood} likelihood reads (rows "
                     f"{int(positions[0])}-{int(positions[-1])} lie in [{low:g}, {high:g}]); scale the data as its "
                     "training data was (uint8 images in .npz/.npy/image folders are read as /255 already)")


def encode_chunk(encoder, x: np.ndarray, outputs: Sequence[str], batch_size: int,
                 input_row: Callable[[int], str] | None = None) -> dict[str, np.ndarray]:
    """``outputs`` of ``encoder`` for rows ``x``, called on ``batch_size`` rows at a time from the
    first row (so every caller that cuts the same chunks gets the same batches, hence the same
    numbers); float32, but an integer output (a categorical family's ``category``, int32 in the
    signature) keeps its dtype; concatenated in row order. ``input_row(i)`` names row ``i`` of
    ``x`` in the input (``"line 229 of corpus.txt"``): a server's refusal of "row 227", a row of
    its request, then says which."""
    from serving.client import ServingRequestError

    pieces: dict[str, list[np.ndarray]] = {name: [] for name in outputs}
    for start in range(0, len(x), batch_size):
        try:
            result = encoder(np.ascontiguousarray(x[start:start + batch_size]))
        except ServingRequestError as err:
            found = re.search(r"\brow (\d+)\b", str(err))
            if input_row is None or found is None or start + int(found.group(1)) >= len(x):
                raise
            raise ServingRequestError(f"{err} (the request's row {found.group(1)} is "
                                      f"{input_row(start + int(found.group(1)))})", err.code) from None
        for name in outputs:
            value = np.asarray(result[name])
            pieces[name].append(value if value.dtype.kind in "iu" else value.astype(np.float32))
    return {name: np.concatenate(values) for name, values in pieces.items()}


def _chunk(parts: Path, i: int) -> dict[str, np.ndarray]:
    with np.load(parts / f"chunk-{i:06d}.npz", allow_pickle=False) as archive:
        return {k: archive[k] for k in archive.files}


def _assemble_npz(tmp: Path, parts: Path, n_chunks: int, columns: list[str], total: int) -> None:
    """One ``.npy`` member per column, streamed chunk by chunk into the zip (what ``np.load``
    reads back as an ordinary ``.npz``)."""
    from numpy.lib import format as npy_format

    first = _chunk(parts, 0)
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for column in columns:
            ref = first[column]
            header = {"descr": npy_format.dtype_to_descr(ref.dtype), "fortran_order": False,
                      "shape": (total,) + ref.shape[1:]}
            with archive.open(f"{column}.npy", "w", force_zip64=True) as member:
                npy_format.write_array_header_2_0(member, header)
                for i in range(n_chunks):
                    data = first[column] if i == 0 else _chunk(parts, i)[column]
                    member.write(np.ascontiguousarray(data, dtype=ref.dtype).tobytes())
    with open(tmp, "rb+") as handle:
        os.fsync(handle.fileno())


#: The schema metadata key of a Parquet output's JSON description (:func:`output_metadata`).
PARQUET_METADATA_KEY = b"vae_tf.embed"


def index_meaning(description: Mapping, text: bool) -> str:
    """What the output's ``index`` column is, for ``description`` (an :class:`EmbedSource`'s) and
    a text model's sentences (``text``) or rows of numbers."""
    split = description.get("split")
    if split in ("train", "val", "test"):
        return (f"the row's position in the {split!r} split of the input (0-based; the splits are shuffled with seed "
                f"{description.get('seed')}): join it to that split, not to the file")
    if split == "all":  # a registered data set or an array file, text models' included
        return ("the row's position in the input, 0-based (a file's row; a data set's train, val and test rows one "
                "after another, as it reads them)")
    if text:
        return ("the line (text file) or row (table) of the input each sentence came from, 0-based; rows without one "
                "are skipped")
    return "the row's position in the input, 0-based (across several files, counted on in file order)"


def output_metadata(identity: Mapping, outputs: Sequence[str], description: Mapping, *,
                    text: bool) -> dict[bytes, bytes]:
    """The Parquet schema metadata of an embed output: ``{PARQUET_METADATA_KEY: JSON}`` saying which
    model wrote it, which ``encode`` outputs the columns hold, what ``index`` is and what was
    read, so a table found later says what it is (``pq.read_schema(path).metadata``;
    :func:`read_output_metadata`)."""
    from vae_tf import __version__

    info = {"format": 1, "writer": f"vae-tf {__version__} embed", "model": dict(identity), "outputs": list(outputs),
            "index": index_meaning(description, text), "data": dict(description)}
    return {PARQUET_METADATA_KEY: json.dumps(info, sort_keys=True, default=str).encode("utf-8")}


def read_output_metadata(path: str | os.PathLike) -> dict | None:
    """The description :func:`output_metadata` put in a Parquet output (a file, or one part file
    of a ``--runner beam`` directory); None when it has none (another writer, an older vae-tf)."""
    import pyarrow.parquet as pq

    path = Path(path)
    if path.is_dir():
        parts = sorted(path.glob("*.parquet"))
        if not parts:
            raise DataError(f"{path} holds no Parquet file; give a vae-tf embed output")
        path = parts[0]
    with open(path, "rb") as f:  # pyarrow's own words: "Parquet magic bytes not found", a traceback
        if f.read(4) != b"PAR1":
            raise DataError(f"{path} is not a Parquet file: only a .parquet output (or a --runner beam directory) "
                            "carries this metadata")
    raw = (pq.read_schema(path).metadata or {}).get(PARQUET_METADATA_KEY)
    return None if raw is None else json.loads(raw)


def arrow_table(arrays: dict[str, np.ndarray], columns: Sequence[str]):
    """The Parquet layout of embed outputs: ``columns`` of ``arrays`` in that order, a 1-D array
    as it is (``index``, ``label``), an ``[N, ...]`` tensor as ``fixed_size_list<float>``, an
    Arrow array (a column kept from the input) as it is."""
    import pyarrow as pa

    cols = {}
    for column in columns:
        data = arrays[column]
        if isinstance(data, (pa.Array, pa.ChunkedArray)):
            cols[column] = data
        elif data.ndim == 1:
            cols[column] = pa.array(data)
        else:
            flat = pa.array(np.ascontiguousarray(data, dtype=np.float32).reshape(-1))
            cols[column] = pa.FixedSizeListArray.from_arrays(flat, int(np.prod(data.shape[1:])))
    return pa.table(cols)


def _assemble_parquet(tmp: Path, parts: Path, n_chunks: int, columns: list[str], total: int,
                      metadata: dict[bytes, bytes] | None = None) -> None:
    import pyarrow.parquet as pq

    writer = None
    try:
        for i in range(n_chunks):
            chunk_table = arrow_table(_chunk(parts, i), columns)
            if writer is None:
                writer = pq.ParquetWriter(str(tmp), chunk_table.schema.with_metadata(metadata or {}))
            writer.write_table(chunk_table)  # one row group per chunk
    finally:
        if writer is not None:
            writer.close()


# -- reading back and probing ------------------------------------------------------------------


def read_embeddings(path: str | os.PathLike, column: str = "embedding") -> tuple[np.ndarray, np.ndarray | None]:
    """``(embeddings, labels or None)`` from a ``vae-tf embed`` output (``.npz``/``.parquet``, or the
    folder of Parquet files ``--runner beam`` writes, rows sorted on ``index``)."""
    path = Path(path)
    if column in ("index", "label"):  # what embed writes beside the codes: a probe on it says nothing
        raise DataError(f"--column {column} is the row's {'position' if column == 'index' else 'class'}, not a code; "
                        "name an encode output (embedding, z_mean, ...)")
    folder = path.is_dir() and any(path.glob("*.parquet"))  # `vae-tf embed --runner beam`'s output
    if not path.is_file() and not folder:
        raise DataError(f"no such file: {str(path)!r}; run vae-tf embed first")
    try:
        if folder or path.suffix.lower() == ".parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(path)
            if folder and "index" in table.column_names:  # its part files hold rows in no particular order
                table = table.sort_by("index")
            if column not in table.column_names:
                raise DataError(f"{path} has no column {column!r} (columns: {', '.join(table.column_names)})")
            values = table.column(column).combine_chunks()
            codes = _code_rows(values, f"{path} column {column!r}")
            labels = table.column("label").to_numpy() if "label" in table.column_names else None
        elif path.suffix.lower() == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                if column not in archive.files:
                    raise DataError(f"{path} has no array {column!r} (arrays: {', '.join(archive.files)})")
                codes = archive[column]
                labels = archive["label"] if "label" in archive.files else None
        else:
            raise DataError(f"{path} is not .npz or .parquet; give a file written by vae-tf embed")
    except DataError:
        raise
    except Exception as err:
        raise DataError(f"could not read {str(path)!r} ({type(err).__name__}: {' '.join(str(err).split())[:160]}); "
                        "re-create it with vae-tf embed") from None
    if not (np.issubdtype(codes.dtype, np.number) or codes.dtype == bool):
        raise DataError(f"{path} {column!r} holds {codes.dtype} values, not numbers; name an encode output "
                        "(embedding, z_mean, ...)")
    return np.asarray(codes, dtype=np.float32).reshape(len(codes), -1), None if labels is None else np.asarray(labels)


def _code_rows(values, what: str) -> np.ndarray:
    """A Parquet column of codes as a ``[rows, width]`` array: a fixed-size list per row (what
    ``vae-tf embed`` writes), a list per row of one length (pandas' and Spark's ``list<float>`` /
    ``array<float>``), or one number per row."""
    import pyarrow as pa

    if values.null_count:
        row = int(np.flatnonzero(values.is_null().to_numpy(zero_copy_only=False))[0])
        raise DataError(f"{what} is empty (null) in row {row} ({values.null_count} rows are); drop or fill those rows")
    if pa.types.is_fixed_size_list(values.type):
        return values.flatten().to_numpy(zero_copy_only=False).reshape(len(values), values.type.list_size)
    if pa.types.is_list(values.type) or pa.types.is_large_list(values.type):
        lengths = values.value_lengths().to_numpy(zero_copy_only=False)
        if len(lengths) and (lengths != lengths[0]).any():
            row = int(np.flatnonzero(lengths != lengths[0])[0])
            raise DataError(f"{what} has lists of different lengths ({int(lengths[0])} in row 0, {int(lengths[row])} in "
                            f"row {row}); every row's code must have the same width")
        return values.flatten().to_numpy(zero_copy_only=False).reshape(len(values), -1)
    return np.asarray(values.to_numpy(zero_copy_only=False)).reshape(len(values), -1)


def probe(train_path: str | os.PathLike, test_path: str | os.PathLike | None = None, *, test_fraction: float = 0.2,
          seed: int = 0, column: str = "embedding") -> dict[str, Any]:
    """Linear-probe accuracy (:func:`vae_tf.metrics.linear_probe_accuracy`) on embeddings: a
    stratified ``test_fraction`` split of one file, or ``train_path`` / ``test_path``."""
    from vae_tf.metrics import linear_probe_accuracy

    codes, labels = read_embeddings(train_path, column)
    if labels is None:
        raise DataError(f"{train_path} has no labels; extract embeddings from a labelled data set to probe them")
    if test_path is not None:
        test_codes, test_labels = read_embeddings(test_path, column)
        if test_labels is None:
            raise DataError(f"{test_path} has no labels; extract embeddings from a labelled data set to probe them")
        train_codes, train_labels = codes, labels
    else:
        if not 0 < test_fraction < 1:
            raise ConfigError(f"--test-fraction must be in (0, 1), got {test_fraction}")
        from sklearn.model_selection import train_test_split

        stratified = None
        try:
            train_codes, test_codes, train_labels, test_labels = train_test_split(
                codes, labels, test_size=test_fraction, random_state=seed, stratify=labels)
        except ValueError as err:  # a class too small to stratify, or a test part smaller than the classes
            stratified = f"not stratified ({' '.join(str(err).split())[:200]})"
            train_codes, test_codes, train_labels, test_labels = train_test_split(
                codes, labels, test_size=test_fraction, random_state=seed)
    details = linear_probe_accuracy(train_codes, train_labels, test_codes, test_labels, seed, return_details=True)
    if test_path is None:
        details["split"] = stratified or "stratified"
    classes, counts = np.unique(test_labels, return_counts=True)
    details.update(num_classes=int(len(np.unique(train_labels))), majority_accuracy=float(counts.max() / counts.sum()),
                   dims=int(codes.shape[1]))
    return details


__all__ = ["EmbedResult", "EmbedSource", "LocalEncoder", "RemoteEncoder", "SPLIT_DEFAULTS", "arrow_table",
           "encode_chunk", "extract_embeddings", "load_source", "load_split_source", "load_text_source",
           "output_metadata", "probe", "read_embeddings", "read_output_metadata", "refuse_modality_mismatch",
           "refuse_split_options", "resolve_embed_data"]
