"""Image rows of a Parquet file for the one-process ``vae-tf embed`` (and ``--server``), read a
range at a time, and the conversion of an Arrow column of (nested) lists to float32 rows that it
shares with the Beam pipeline (:mod:`serving.beam_embed`).

A Parquet file is read row group by row group: the group that holds a chunk's rows is decoded
once and kept while the chunks that follow read from it, so memory holds one row group (the
file's own layout) and the chunk, not the file.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from vae_tf.errors import DataError


def column_rows(column, shape: tuple[int, ...], where: str, first: int = 0, file_first: int = 0) -> np.ndarray:
    """float32 rows ``[N, *shape]`` from an Arrow column of (nested) lists of numbers, one row per
    entry; ``first`` is the input row (``index``) of the first entry and ``file_first`` that of
    the first row of its file (for messages, which name the row of the file).

    Floats are kept as they are (cast to float32) and booleans become 0/1. Integers are refused:
    ``vae-tf embed``'s scaling of integer data (uint8 / 255 unless every value is 0 or 1) depends
    on the whole column, which no worker sees. Nulls, ragged rows, rows of another size than the
    model's data shape and NaN/±Inf (after the cast) are refused too."""
    import pyarrow as pa
    import pyarrow.compute as pc

    n = len(column)
    values = column
    while pa.types.is_list(values.type) or pa.types.is_large_list(values.type) or pa.types.is_fixed_size_list(values.type):
        if values.null_count:
            raise DataError(f"{where} has null rows; drop them or fill them before embedding")
        if not pa.types.is_fixed_size_list(values.type) and len(values):
            lengths = pc.list_value_length(values)
            low, high = pc.min_max(lengths).values()
            if low.as_py() != high.as_py():
                raise DataError(f"{where} has rows of {low} to {high} values; every row needs the same size")
        values = values.flatten()
    kind = values.type
    if not (pa.types.is_floating(kind) or pa.types.is_boolean(kind)):
        raise DataError(f"{where} holds {kind}; store float values scaled as the model was trained on them "
                        "(e.g. uint8 pixels / 255) in a list<float> column")
    if values.null_count:
        raise DataError(f"{where} holds null values; fill them before embedding")
    flat = values.to_numpy(zero_copy_only=False).astype(np.float32)
    size = int(np.prod(shape, dtype=np.int64))
    if flat.size != n * size:
        raise DataError(f"{where} has {flat.size // max(n, 1)} values a row but the model takes {size} "
                        f"(shape {list(shape)}); give rows of the model's data shape")
    if not np.all(np.isfinite(flat)):
        bad = first + int(np.flatnonzero(~np.isfinite(flat))[0]) // size
        row = f"row {bad - file_first}" + (f" (index {bad} over all files)" if file_first else "")
        raise DataError(f"{where} has a NaN or infinite value in {row}; remove or impute those rows before "
                        "embedding them")
    return flat.reshape((n,) + tuple(shape))


def pick_columns(path: str, names: Sequence[str], *, text: bool, column: str | None = None,
                 label_column: str | None | bool = None) -> tuple[str, str | None]:
    """``(data column, label column or None)`` of a Parquet file whose columns are ``names``: the
    data is ``column``, else the first of the default names (an ``.npz``'s ``x``, ``images``,
    ``x_train``, ``imgs`` for rows; ``text``, ``sentence``, ``sentences``, ``x`` for sentences),
    the labels ``label_column``, else the first of ``y``, ``labels``, ``label`` (``False``: none,
    as ``--no-labels`` asks)."""
    from serving.text_rows import LABEL_COLUMNS, TEXT_COLUMNS
    from vae_tf.data.files import X_KEYS, Y_KEYS

    data_keys = (column,) if column else (TEXT_COLUMNS if text else X_KEYS)
    x_column = next((k for k in data_keys if k in names), None)
    if x_column is None:
        raise DataError(f"{path} has no data column: expected {', '.join(map(repr, data_keys))}, found "
                        f"{', '.join(map(repr, names))}; name the column of {'sentences' if text else 'rows'} "
                        "with --column NAME")
    if label_column is False:  # --no-labels
        return x_column, None
    if label_column and label_column not in names:
        raise DataError(f"{path} has no label column {label_column!r} (--label-column); found "
                        f"{', '.join(map(repr, names))}")
    label_keys = (label_column,) if label_column else (LABEL_COLUMNS if text else Y_KEYS + ("label",))
    return x_column, next((k for k in label_keys if k in names and k != x_column), None)


def integer_labels(labels, where: str) -> np.ndarray:
    """An Arrow column of class indices as int64; nulls and other types are refused."""
    import pyarrow as pa

    if labels.null_count or not pa.types.is_integer(labels.type):
        nulls = f" with {labels.null_count} null(s)" if labels.null_count else ""
        raise DataError(f"{where} must hold integer class indices without nulls, got {labels.type}{nulls}; fill or "
                        "drop those rows, name another column with --label-column, or pass --no-labels")
    return labels.to_numpy(zero_copy_only=False).astype(np.int64)


class ParquetImageRows:
    """The rows of an image column of one Parquet file (``column``, else the first named ``x``,
    ``images``, ``x_train`` or ``imgs``), ``len()`` and ``[start:stop]`` as float32
    ``[N, *data_shape]`` (checked as :func:`column_rows` checks them); ``labels`` the integer
    labels (``label_column``, else ``y``, ``labels`` or ``label``; None without), read the same
    way."""

    def __init__(self, path: str, data_shape: Sequence[int], *, column: str | None = None,
                 label_column: str | None = None):
        import pyarrow.parquet as pq

        self.path = str(path)
        self.data_shape = tuple(int(d) for d in data_shape)
        try:
            self._file = pq.ParquetFile(self.path)
            names = self._file.schema_arrow.names
        except Exception as err:  # noqa: BLE001 - not Parquet, cut short, unreadable
            raise DataError(f"could not read {self.path!r} as Parquet ({type(err).__name__}: "
                            f"{' '.join(str(err).split())[:160]}); check or re-create the file") from None
        self.x_column, self.y_column = pick_columns(self.path, names, text=False, column=column,
                                                    label_column=label_column)
        meta = self._file.metadata
        sizes = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
        self._bounds = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
        self._cached: tuple[int, object] | None = None  # (row group, its table)
        self.labels = _Labels(self) if self.y_column is not None else None

    def __len__(self) -> int:
        return int(self._bounds[-1])

    def _group(self, group: int):
        if self._cached is None or self._cached[0] != group:
            wanted = [self.x_column] + ([self.y_column] if self.y_column else [])
            self._cached = (group, self._file.read_row_group(group, columns=wanted))
        return self._cached[1]

    def _column(self, name: str, start: int, stop: int):
        """Rows ``start .. stop - 1`` of column ``name`` as one Arrow array."""
        import pyarrow as pa

        pieces = []
        first = int(np.searchsorted(self._bounds, start, side="right")) - 1
        for group in range(max(first, 0), len(self._bounds) - 1):
            low, high = int(self._bounds[group]), int(self._bounds[group + 1])
            if low >= stop:
                break
            table = self._group(group)
            pieces += table.column(name).slice(max(start, low) - low, min(stop, high) - max(start, low)).chunks
        if not pieces:
            return pa.chunked_array([], type=self._file.schema_arrow.field(name).type).combine_chunks()
        return pa.chunked_array(pieces, type=pieces[0].type).combine_chunks()

    def __getitem__(self, index) -> np.ndarray:
        if not isinstance(index, slice) or index.step not in (None, 1):
            raise TypeError("ParquetImageRows reads contiguous ranges: rows[start:stop]")
        start, stop, _ = index.indices(len(self))
        return column_rows(self._column(self.x_column, start, stop), self.data_shape,
                           f"column {self.x_column!r} of {self.path}", start)


class _Labels:
    """``[start:stop]`` of a :class:`ParquetImageRows`'s label column as int64."""

    def __init__(self, rows: ParquetImageRows):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index) -> np.ndarray:
        start, stop, _ = index.indices(len(self.rows))
        return integer_labels(self.rows._column(self.rows.y_column, start, stop),
                              f"column {self.rows.y_column!r} of {self.rows.path}")


__all__ = ["ParquetImageRows", "column_rows", "integer_labels", "pick_columns"]
