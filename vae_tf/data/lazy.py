"""Data sets kept lazy: each split is a raw row reader, the split's row indices and a scaling rule,
and rows become float32 only when they are asked for.

One implementation serves both ways a file is loaded:

- :func:`~vae_tf.data.load_dataset` (training) gets :meth:`LazySplits.materialise`: every split
  gathered whole into a :class:`~vae_tf.data.DataSplits`;
- :func:`~vae_tf.data.open_dataset` (``vae-tf embed``) gets the :class:`LazySplits` itself and
  reads ``rows[start:stop]`` a chunk at a time, so its memory holds one chunk, not the data.

Both read the same rows (:class:`~vae_tf.data.SplitPlan` indices) through the same
:func:`gather_rows` and :func:`scale_rows`, after the same checks (done by the loader over the
raw data, block by block), so their values are identical.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from vae_tf.data.rows import ArrayRows
from vae_tf.data.splits import SPLIT_NAMES, DataSplits
from vae_tf.errors import DataError

# -- scaling ----------------------------------------------------------------------------------


def choose_scaling(dtype: np.dtype, hi) -> tuple[str, tuple[float, float] | None]:
    """How raw values of ``dtype`` (largest value ``hi``) become float32, and the value range
    that scaling declares (``None``: the observed range is used).

    - ``bool`` -> 0.0 / 1.0;
    - ``uint8`` -> ``x / 255`` to ``[0, 1]``, unless every value is 0 or 1 (kept as is);
    - anything else is kept as it is (``"none"``).
    """
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        return "bool -> {0, 1}", (0.0, 1.0)
    if dtype == np.uint8:
        if int(hi) <= 1:
            return "none (uint8 already {0, 1})", (0.0, 1.0)
        return "x / 255", (0.0, 1.0)
    return "none", None


def scale_rows(raw: np.ndarray, scaling: str | None) -> np.ndarray:
    """Raw rows -> float32 by ``scaling`` (a :func:`choose_scaling` rule, or ``"x / 255"`` for
    images). Rank-3 rows ``(N, H, W)`` get a channel axis. ``scaling=None`` is for rows already
    converted by a loader: cast to float32, shape kept. Element-wise, so scaling a chunk gives the
    same values as scaling the whole array. Text rows (an array of ``str``) with
    ``scaling=None`` are returned as they are."""
    if scaling is None and np.asarray(raw).dtype.kind in "OUS":
        return np.asarray(raw, dtype=object)
    x = np.asarray(raw).astype(np.float32)
    if scaling is None:
        return x
    if scaling == "x / 255":
        x /= 255.0
    if x.ndim == 3:
        x = x[..., None]
    return x


def gather_rows(rows, index: np.ndarray, scaling: str | None) -> np.ndarray:
    """Rows ``index`` (in that order) of reader ``rows``, scaled to float32.

    The reader gets the indices sorted (sequential reads are much faster on files); the result is
    put back in ``index`` order before scaling.
    """
    index = np.asarray(index, dtype=np.int64)
    if len(index) < 2 or bool(np.all(index[1:] > index[:-1])):
        return scale_rows(rows.take(index), scaling)
    order = np.argsort(index, kind="stable")
    got = rows.take(index[order])
    raw = np.empty_like(got)
    raw[order] = got
    del got
    return scale_rows(raw, scaling)


# -- splits -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Segment:
    """Rows ``index`` of reader ``rows``, converted by ``scaling`` (see :func:`scale_rows`)."""

    rows: object
    index: np.ndarray
    scaling: str | None


class SplitRows:
    """The rows of a split (or of several splits, one after another), read on demand.

    ``len(rows)`` is the number of examples; ``rows[start:stop]`` reads and converts only those
    rows (float32, batch-leading); ``rows.y`` holds the int64 labels (in memory: 8 bytes per row)
    or ``None``, ``rows.factors`` the factor class indices or ``None``.
    """

    def __init__(self, segments: Sequence[Segment], y: np.ndarray | None = None,
                 factors: np.ndarray | None = None):
        self.segments = tuple(segments)
        self.y = y
        self.factors = factors
        self._bounds = np.cumsum([0] + [len(s.index) for s in self.segments])
        for what, arr in (("labels", y), ("factors", factors)):
            if arr is not None and len(arr) != len(self):
                raise DataError(f"{what} have {len(arr)} rows but the split has {len(self)}; "
                                "give one row per example")

    def __len__(self) -> int:
        return int(self._bounds[-1])

    @property
    def data_shape(self) -> tuple[int, ...]:
        """Shape of one converted example (a channel axis added to ``(H, W)`` rows)."""
        seg = self.segments[0]
        shape = tuple(int(d) for d in seg.rows.shape[1:])
        return shape + (1,) if len(shape) == 2 and seg.scaling is not None else shape

    def __getitem__(self, key) -> np.ndarray:
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("SplitRows takes a contiguous slice, rows[start:stop]")
        start, stop, _ = key.indices(len(self))
        if start >= stop:
            seg = self.segments[0]
            return gather_rows(seg.rows, seg.index[:0], seg.scaling)
        pieces = []
        for k, seg in enumerate(self.segments):
            lo, hi = int(self._bounds[k]), int(self._bounds[k + 1])
            a, b = max(start, lo), min(stop, hi)
            if a < b:
                pieces.append(gather_rows(seg.rows, seg.index[a - lo : b - lo], seg.scaling))
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)

    def in_input_order(self) -> tuple[SplitRows, np.ndarray]:
        """These rows in the order of the input they were read from, and each row's position in
        that input: its row in its reader, readers numbered on one after another in the order
        they first appear (an ``.npz``'s ``x_test`` rows after its ``x`` rows; a data set held in
        memory split by split keeps its split order). What ``vae-tf embed --split all`` embeds, so
        that its ``index`` is the row of the user's file."""
        readers: list = []
        offsets: list[int] = []
        for seg in self.segments:
            if not any(seg.rows is r for r in readers):
                offsets.append(sum(int(r.shape[0]) for r in readers))
                readers.append(seg.rows)
        rank = [next(k for k, r in enumerate(readers) if r is seg.rows) for seg in self.segments]
        position = np.concatenate([offsets[k] + np.asarray(seg.index, np.int64) for k, seg in zip(rank, self.segments)])
        order = np.argsort(position, kind="stable")
        position = position[order]
        owner = np.repeat(rank, [len(seg.index) for seg in self.segments])[order]
        segments = []
        for k, reader in enumerate(readers):
            mine = owner == k
            if mine.any():
                scaling = next(seg.scaling for seg, r in zip(self.segments, rank) if r == k)
                segments.append(Segment(reader, position[mine] - offsets[k], scaling))
        pick = (lambda a: None if a is None else np.asarray(a)[order])
        return SplitRows(segments, pick(self.y), pick(self.factors)), position

    @staticmethod
    def concat(parts: Sequence[SplitRows]) -> SplitRows:
        """The rows of ``parts`` one after another (labels only when every part has them)."""
        ys = [p.y for p in parts]
        fs = [p.factors for p in parts]
        return SplitRows([s for p in parts for s in p.segments],
                         None if any(y is None for y in ys) else np.concatenate(ys),
                         None if any(f is None for f in fs) else np.concatenate(fs))


@dataclass(frozen=True)
class LazySplits:
    """A data set cut into train / val / test whose rows stay where they are (a file, a list of
    image files) until read: the lazy twin of :class:`~vae_tf.data.DataSplits`, with the same
    metadata (``binary`` excepted: it would need every row)."""

    name: str
    splits: dict
    factor_names: tuple[str, ...] | None = None
    factor_sizes: tuple[int, ...] | None = None
    value_range: tuple[float, float] | None = (0.0, 1.0)
    metadata: dict = field(default_factory=dict)

    def split(self, name: str) -> SplitRows:
        if name not in SPLIT_NAMES:
            raise DataError(
                f"unknown split {name!r}; choose one of {', '.join(repr(s) for s in SPLIT_NAMES)}"
            )
        return self.splits[name]

    @property
    def num_examples(self) -> dict[str, int]:
        return {s: len(self.splits[s]) for s in SPLIT_NAMES}

    def materialise(self) -> DataSplits:
        """Every split gathered whole (what training holds in memory)."""
        xs = {s: self.splits[s][:] for s in SPLIT_NAMES}
        binary = all(a.dtype.kind == "f" and np.all((a == 0.0) | (a == 1.0)) for a in xs.values() if a.size)
        return DataSplits(
            name=self.name,
            **{f"x_{s}": xs[s] for s in SPLIT_NAMES},
            **{f"y_{s}": self.splits[s].y for s in SPLIT_NAMES},
            **{f"factors_{s}": self.splits[s].factors for s in SPLIT_NAMES},
            factor_names=self.factor_names,
            factor_sizes=self.factor_sizes,
            value_range=self.value_range,
            binary=bool(binary),
            metadata=self.metadata,
        )

    @classmethod
    def in_memory(cls, data: DataSplits) -> LazySplits:
        """A :class:`DataSplits` seen as lazy splits (its arrays are already in memory: nothing is
        saved, but ``split="all"`` needs no concatenated copy)."""
        splits = {}
        for s in SPLIT_NAMES:
            x, y = data.split(s)
            index = np.arange(len(x), dtype=np.int64)
            splits[s] = SplitRows([Segment(ArrayRows(x), index, None)], y, data.factors(s))
        return cls(name=data.name, splits=splits, factor_names=data.factor_names,
                   factor_sizes=data.factor_sizes, value_range=data.value_range, metadata=data.metadata)
