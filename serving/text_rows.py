"""Sentences read lazily from files, for ``vae-tf embed`` with a text model (local and Beam).

Inputs:

- a **text file**, one sentence per line: UTF-8 ``.txt`` or gzip-compressed ``.txt.gz`` (lines
  end at ``\\n``, ``\\r\\n`` works too; a leading byte-order mark is ignored; each line is
  stripped of surrounding whitespace, as the ``text_file`` data set reads it);
- a **column of strings** of a Parquet (``.parquet``) or CSV (``.csv``, ``.csv.gz``) file, with
  optional integer labels from another column.

A row without a sentence (a blank line, a null or an empty/whitespace-only string) is skipped;
every sentence keeps its **position** in the input (the line number of a text file, the row of a
table, from 0), which ``vae-tf embed`` writes as ``index`` so embeddings join back to the input.
Bad input fails in one line naming the file and the line or row: bytes that are not UTF-8, a NUL
byte (a binary file), a missing column, labels that are not integers.

Memory stays flat: a first pass counts the sentences (and checks them), recording where every
``every``-th sentence starts; :class:`SentenceRows` then reads windows ``rows[start:stop]``
forward from the nearest recorded place (a plain text file seeks there; gzip and tables read on
from where the previous window stopped, which is where the next chunk starts, or from the start).
"""

from __future__ import annotations

import gzip
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from serving.text import is_blank
from vae_tf.data.files import Y_KEYS
from vae_tf.data.text import lone_carriage_return
from vae_tf.data.validation import GZIP_MAGIC, wide_unicode_encoding
from vae_tf.errors import DataError

TEXT_SUFFIXES = (".txt", ".txt.gz")
TABLE_SUFFIXES = (".parquet", ".csv", ".csv.gz")
#: Default sentence columns of a table, tried in this order (else the only string column).
TEXT_COLUMNS = ("text", "sentence", "sentences", "x")
#: Label columns of a table, tried in this order (integer class indices): ``.npz``'s and Beam's
#: Parquet input's names, then ``label``.
LABEL_COLUMNS = (*Y_KEYS, "label")
CHECKPOINT_EVERY = 4096
_BATCH = 4096

Row = tuple[int, str, int | None]  # (position in the input, sentence, label or None)


def input_kind(path: str | os.PathLike) -> str | None:
    """``"text"`` for ``.txt``/``.txt.gz``, ``"table"`` for Parquet/CSV, else None."""
    name = str(path).lower()
    if name.endswith(TEXT_SUFFIXES):
        return "text"
    if name.endswith(TABLE_SUFFIXES):
        return "table"
    return None


# -- text files ----------------------------------------------------------------------------------


def open_binary(path: str | os.PathLike):
    """A binary file handle, decompressing ``.gz``."""
    return gzip.open(path, "rb") if str(path).lower().endswith(".gz") else open(path, "rb")


def _line_text(raw: bytes, line: int, where: str) -> str | None:
    """A line as the sentence it holds (stripped), None when blank; DataError when not text."""
    wide = wide_unicode_encoding(raw[:4]) if line == 0 else None
    if wide:
        raise DataError(f"{where} is {wide} text (its byte-order mark says so); give UTF-8 text: re-save it as UTF-8")
    if line == 0 and raw[:2] == GZIP_MAGIC:  # a compressed file under a plain name
        raise DataError(f"{where} is gzip-compressed; name it .txt.gz (vae-tf embed decompresses .gz files)")
    if b"\x00" in raw:
        raise DataError(f"{where} looks binary (a NUL byte on line {line + 1}); give UTF-8 text, one sentence per "
                        "line")
    try:
        text = raw.decode("utf-8-sig" if line == 0 else "utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{where} is not valid UTF-8 (line {line + 1}, byte {err.start} of the line: {err.reason}); "
                        "re-save it as UTF-8 (e.g. iconv -f latin1 -t utf-8 when it is Latin-1)") from None
    text = text.strip()
    return None if not text or is_blank(text) else text


@dataclass
class Checkpoint:
    """Where sentence ``row`` (counting sentences only) starts: line ``line``, byte ``offset``."""

    row: int
    line: int
    offset: int


@dataclass
class TextScan:
    """What one pass over a text file found: its lines and sentences, and checkpoints."""

    path: str
    lines: int
    sentences: int
    checkpoints: list[Checkpoint] = field(default_factory=list)


def scan_text_file(path: str | os.PathLike, every: int = CHECKPOINT_EVERY, opener=None) -> TextScan:
    """Count and check the lines of ``path`` (module docstring); a checkpoint every ``every``
    sentences (byte offsets in the decompressed stream for ``.gz``). ``opener(path)``: a binary
    handle (default :func:`open_binary`, local files; Beam passes its file systems')."""
    where = str(path)
    if opener is None:
        _require_file(path)
    scan = TextScan(where, 0, 0)
    offset = 0
    try:
        with (opener or open_binary)(path) as handle:
            for line, raw in enumerate(iter(handle.readline, b"")):  # Beam's CompressedFile is not iterable
                text = _line_text(raw, line, where)  # first: UTF-16, gzip or binary data holds \r bytes too
                if b"\r" in raw.strip():  # lines cut by \r alone, read as one (\r\n endings are stripped)
                    raise lone_carriage_return(where, line)
                if text is not None:
                    if scan.sentences % every == 0:
                        scan.checkpoints.append(Checkpoint(scan.sentences, line, offset))
                    scan.sentences += 1
                offset += len(raw)
                scan.lines = line + 1
    except (OSError, EOFError, gzip.BadGzipFile) as err:
        raise DataError(f"could not read {where} ({type(err).__name__}: {' '.join(str(err).split())[:120]}); check "
                        "the file (a .gz must be gzip)") from None
    return scan


def read_text_file(path: str | os.PathLike, checkpoint: Checkpoint | None = None, first_position: int = 0,
                   opener=None) -> Iterator[Row]:
    """The sentences of ``path`` from ``checkpoint`` on (a plain file seeks there; ``.gz`` reads
    from the start), as ``(first_position + line, sentence, None)``."""
    where = str(path)
    start = checkpoint or Checkpoint(0, 0, 0)
    gz = str(path).lower().endswith(".gz")
    with (opener or open_binary)(path) as handle:
        line = 0
        if start.offset and not gz:
            handle.seek(start.offset)
            line = start.line
        for raw in iter(handle.readline, b""):
            if line >= start.line:
                text = _line_text(raw, line, where)
                if text is not None:
                    yield first_position + line, text, None
            line += 1


# -- tables ---------------------------------------------------------------------------------------


def _require_file(path) -> None:
    p = Path(path)
    if not p.exists():
        raise DataError(f"no such file: {str(p)!r}; check the path")
    if p.is_dir():
        raise DataError(f"{str(p)!r} is a folder; give a file (.txt, .txt.gz, .parquet, .csv)")


def _table_batches(path: str, columns: Sequence[str]):
    """Record batches of ``columns`` of a Parquet or CSV file, in file order."""
    import pyarrow as pa

    if str(path).lower().endswith(".parquet"):
        import pyarrow.parquet as pq

        yield from pq.ParquetFile(path).iter_batches(_BATCH, columns=list(columns))
        return
    from pyarrow import csv

    convert = csv.ConvertOptions(include_columns=list(columns), column_types={columns[0]: pa.string()})
    yield from csv.open_csv(path, convert_options=convert)


def table_columns(path: str | os.PathLike) -> list[tuple[str, str]]:
    """``[(name, Arrow type)]`` of a Parquet or CSV file (a CSV's types as inferred from its first rows)."""
    _require_file(path)
    try:
        if str(path).lower().endswith(".parquet"):
            import pyarrow.parquet as pq

            schema = pq.ParquetFile(path).schema_arrow
        else:
            from pyarrow import csv

            schema = csv.open_csv(path).schema
    except Exception as err:  # pyarrow's own words, one line
        raise DataError(f"could not read {str(path)!r} ({type(err).__name__}: {' '.join(str(err).split())[:160]}); "
                        "check the file") from None
    return [(f.name, str(f.type)) for f in schema]


def choose_columns(path, column: str | None, label_column: str | None | bool) -> tuple[str, str | None]:
    """The sentence column (``column``, else the first of :data:`TEXT_COLUMNS`, else the only
    string column) and the label column (``label_column``, else the first of
    :data:`LABEL_COLUMNS` present, else None; ``False``: none, as ``--no-labels`` asks)."""
    found = table_columns(path)
    names = [name for name, _ in found]
    listing = ", ".join(f"{n} ({t})" for n, t in found)
    if column is not None and column not in names:
        raise DataError(f"{path} has no column {column!r}; its columns are {listing}")
    if column is None:
        strings = [n for n, t in found if t in ("string", "large_string")]
        column = next((c for c in TEXT_COLUMNS if c in names), None) or (strings[0] if len(strings) == 1 else None)
        if column is None:
            raise DataError(f"{path}: which column holds the sentences? Its columns are {listing}; pass --column NAME")
    kind = dict(found)[column]
    if not str(path).lower().endswith(".parquet") and kind not in ("string", "large_string", "null"):
        # A CSV column is read as text whatever it holds (so that "42" stays a sentence), and its type
        # is only guessed from the first block of rows: said, not refused (a column of sentences can
        # start with numbers); an id column was embedded as the sentences "0", "1", ... without a word
        print(f"warning: column {column!r} of {path} looks like {kind} (from its first rows), not sentences; its "
              f"values are embedded as text: if that is not the sentence column, give it with --column NAME (its "
              f"columns are {listing})", file=sys.stderr)
    if label_column is False:  # --no-labels
        return column, None
    if label_column is not None and label_column not in names:
        raise DataError(f"{path} has no label column {label_column!r}; its columns are {listing}")
    if label_column is None:
        label_column = next((c for c in LABEL_COLUMNS if c in names and c != column), None)
    return column, label_column


def batch_rows(values, labels, position: int, where: str, label_where: str | None = None) -> list[Row]:
    """The rows of one Arrow batch that hold a sentence: ``values`` a string column, ``labels``
    an integer column or None, ``position`` the input row of the batch's first entry."""
    import pyarrow as pa

    if pa.types.is_dictionary(values.type) and (pa.types.is_string(values.type.value_type)
                                                or pa.types.is_large_string(values.type.value_type)):
        values = values.dictionary_decode()  # a dictionary-encoded string column (pandas' category dtype)
    if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
        raise DataError(f"{where} holds {values.type}, not sentences; give the column of strings with --column NAME")
    if labels is not None:
        if not pa.types.is_integer(labels.type) or labels.null_count:
            raise DataError(f"{label_where} must hold integer class indices without nulls, got {labels.type}; name "
                            "another with --label-column, or pass --no-labels")
        labels = labels.to_numpy(zero_copy_only=False).astype(np.int64)
    rows = []
    for i, text in enumerate(values.to_pylist()):
        text = text.strip() if text is not None else None
        if text and not is_blank(text):
            rows.append((position + i, text, None if labels is None else int(labels[i])))
    return rows


def read_table(path: str, column: str, label_column: str | None) -> Iterator[Row]:
    """``(row, sentence, label)`` of the rows of ``column`` that hold a sentence, in file order."""
    where = f"column {column!r} of {path}"
    position = 0
    try:
        for batch in _table_batches(path, [column] + ([label_column] if label_column else [])):
            yield from batch_rows(batch.column(0), batch.column(1) if label_column else None, position, where,
                                  f"column {label_column!r} of {path}")
            position += batch.num_rows
    except DataError:
        raise
    except Exception as err:  # pyarrow: a CSV parse error, invalid UTF-8, a broken Parquet file
        raise DataError(f"could not read {where} ({type(err).__name__}: {' '.join(str(err).split())[:160]}); check "
                        "the file") from None


# -- windows --------------------------------------------------------------------------------------


class SentenceRows:
    """``len(rows)`` sentences, read forward in windows (module docstring).

    ``rows[start:stop]`` gives an object array of ``str``; :meth:`positions` the same window's
    positions in the input (int64) and ``rows.labels[start:stop]`` its labels (int64), or
    ``rows.labels`` is None. ``open(start)`` returns ``(row of its first sentence, iterator of
    rows)`` starting at or before sentence ``start``."""

    def __init__(self, count: int, open_at: Callable[[int], tuple[int, Iterator[Row]]], has_labels: bool,
                 description: dict):
        self.count = int(count)
        self._open_at = open_at
        self.description = description
        self.labels = _Labels(self) if has_labels else None
        self.data_shape = ()
        self._cursor: tuple[int, Iterator[Row]] | None = None  # (next sentence's row, its iterator)
        self._window: tuple[int, int, list[Row]] | None = None

    def __len__(self) -> int:
        return self.count

    def window(self, start: int, stop: int) -> list[Row]:
        start, stop = max(0, start), min(self.count, stop)
        if start >= stop:
            return []
        if self._window is not None and self._window[:2] == (start, stop):
            return self._window[2]
        if self._cursor is None or self._cursor[0] > start:
            self._cursor = self._open_at(start)
        row, rows = self._cursor
        self._cursor = None  # until this read has finished: a failed read starts afresh next time
        out: list[Row] = []
        for item in rows:
            if row >= start:
                out.append(item)
            row += 1
            if row >= stop:
                break
        self._cursor = (row, rows)
        self._window = (start, stop, out)
        return out

    def __getitem__(self, key) -> np.ndarray:
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("SentenceRows reads contiguous windows: rows[start:stop]")
        window = self.window(key.start or 0, self.count if key.stop is None else key.stop)
        out = np.empty(len(window), dtype=object)
        out[:] = [text for _, text, _ in window]
        return out

    def positions(self, start: int, stop: int) -> np.ndarray:
        return np.array([position for position, _, _ in self.window(start, stop)], dtype=np.int64)


class _Labels:
    def __init__(self, rows: SentenceRows):
        self._rows = rows

    def __getitem__(self, key: slice) -> np.ndarray:
        window = self._rows.window(key.start or 0, self._rows.count if key.stop is None else key.stop)
        return np.array([label for _, _, label in window], dtype=np.int64)


def text_file_rows(path: str | os.PathLike) -> SentenceRows:
    """The sentences of a ``.txt`` / ``.txt.gz`` file (one pass to count and check them now)."""
    scan = scan_text_file(path)
    if not scan.sentences:
        raise DataError(f"{path} has no sentence (every line is blank); put one sentence per line")

    def open_at(start: int):
        checkpoint = max((c for c in scan.checkpoints if c.row <= start), key=lambda c: c.row)
        return checkpoint.row, read_text_file(path, checkpoint)

    return SentenceRows(scan.sentences, open_at, False,
                        {"data": "text", "path": str(path), "lines": scan.lines, "rows": scan.sentences})


def table_rows(path: str | os.PathLike, column: str | None = None, label_column: str | None = None) -> SentenceRows:
    """The sentences of a column of a Parquet / CSV file (one pass to count and check them now)."""
    path = str(path)
    column, label_column = choose_columns(path, column, label_column)
    count = sum(1 for _ in read_table(path, column, label_column))
    if not count:
        raise DataError(f"column {column!r} of {path} holds no sentence (every row is null or blank)")
    return SentenceRows(count, lambda start: (0, read_table(path, column, label_column)), label_column is not None,
                        {"data": "table", "path": path, "column": column, "label_column": label_column,
                         "rows": count})


__all__ = ["CHECKPOINT_EVERY", "Checkpoint", "batch_rows", "LABEL_COLUMNS", "SentenceRows", "TABLE_SUFFIXES", "TEXT_COLUMNS",
           "TEXT_SUFFIXES", "TextScan", "choose_columns", "input_kind", "open_binary", "read_table", "read_text_file",
           "scan_text_file", "table_columns", "table_rows", "text_file_rows"]
