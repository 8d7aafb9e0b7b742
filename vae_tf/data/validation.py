"""Checks that an array can be trained on, with one-line messages that say what to fix.

Numeric data (images, vectors) and text (a 1-D array of Python ``str``, one sentence each) are
both checked by :func:`validate_array`; text goes to :func:`validate_text`.

The checks are vectorised and cheap: the common case (finite data) costs one ``min`` and one
``max`` pass over the array; the element-wise ``isfinite`` pass that locates bad values runs only
when ``min``/``max`` already showed a NaN or an Inf. A row reader (:mod:`vae_tf.data.rows`) is
scanned block by block, with the same answers and messages, so a file need not fit in memory.
"""

from __future__ import annotations

import numpy as np

from vae_tf.errors import DataError

# Accepted array kinds: bool, signed and unsigned integers, floats. Complex, strings and objects
# are not data a VAE likelihood can score.
_NUMERIC_KINDS = "biuf"


def exception_cause(exc: BaseException, limit: int = 200) -> str:
    """``"Type: message"`` of an exception on one line, at most ``limit`` characters: the cause a
    one-line DataError quotes."""
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:limit]


#: Byte-order marks of the Unicode encodings a text file may be saved in other than UTF-8 (UTF-32
#: first: its little-endian mark starts with UTF-16's). Windows' Notepad and PowerShell write UTF-16.
_WIDE_BOMS = ((b"\xff\xfe\x00\x00", "UTF-32 (little-endian)"), (b"\x00\x00\xfe\xff", "UTF-32 (big-endian)"),
              (b"\xff\xfe", "UTF-16 (little-endian)"), (b"\xfe\xff", "UTF-16 (big-endian)"))


#: The first two bytes of every gzip file (RFC 1952): a compressed text file under a plain name.
GZIP_MAGIC = b"\x1f\x8b"


def wide_unicode_encoding(start: bytes) -> str | None:
    """The encoding a file's first bytes' byte-order mark names when it is UTF-16 or UTF-32 (whose
    NUL bytes would otherwise read as binary), else None."""
    return next((name for bom, name in _WIDE_BOMS if start.startswith(bom)), None)


def is_int(value) -> bool:
    """True for Python / NumPy integers, False for bools (``True`` is not a count)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _fmt(value: float) -> str:
    return f"{float(value):.4g}"


def is_text(x) -> bool:
    """True for a 1-D array (or list / tuple) whose dtype is a string or object kind: text, one
    sentence per entry (what :func:`validate_text` checks)."""
    if hasattr(x, "blocks"):
        return False
    if isinstance(x, (list, tuple)):
        return len(x) > 0 and isinstance(x[0], (str, bytes))
    return isinstance(x, np.ndarray) and x.ndim == 1 and x.dtype.kind in "OUS"


def validate_text(x, *, what: str = "text") -> None:
    """Raise :class:`~vae_tf.errors.DataError` unless ``x`` is trainable text: a non-empty 1-D
    sequence of Python ``str``, none empty or only whitespace, each encodable as UTF-8 (a lone
    surrogate from a bad decode is not). The message names the first bad entry by its index and
    counts the bad entries."""
    arr = np.asarray(x, dtype=object) if isinstance(x, (list, tuple)) else np.asarray(x)
    if arr.ndim != 1:
        raise DataError(
            f"{what} has shape {arr.shape} but text must be a 1-D array with one sentence (str) "
            "per entry; flatten it"
        )
    if len(arr) == 0:
        raise DataError(f"{what} holds no sentences; provide at least one")
    not_str = [i for i, s in enumerate(arr) if not isinstance(s, str)]
    if not_str:
        first = arr[not_str[0]]
        hint = "decode bytes as UTF-8 first" if isinstance(first, bytes) else "give one str per sentence"
        raise DataError(
            f"{what} has {len(not_str)} entries that are not str (first: entry {not_str[0]}, a "
            f"{type(first).__name__}); {hint}"
        )
    empty = [i for i, s in enumerate(arr) if not s.strip()]
    if empty:
        raise DataError(
            f"{what} has {len(empty)} empty or whitespace-only sentences (first: entry {empty[0]}); "
            "remove them"
        )
    for i, s in enumerate(arr):
        try:
            s.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise DataError(
                f"{what} entry {i} is not valid Unicode text ({exc.reason} at character "
                f"{exc.start}); decode the source as UTF-8 without errors='surrogateescape'"
            ) from None


def validate_array(x, *, what: str = "data", support: tuple[float, float] | None = None):
    """Raise :class:`~vae_tf.errors.DataError` unless ``x`` is trainable data; return its bounds.

    Text (:func:`is_text`: a 1-D array of ``str`` / object entries) is checked by
    :func:`validate_text` and returns ``None``; a ``support`` given for text is an error (a
    likelihood over numbers cannot score sentences).

    ``x`` must be a numeric (bool, integer or float) array of shape ``(N, ...)`` with rank 2
    (vectors ``(N, D)``), 3 (``(N, H, W)``) or 4 (images ``(N, H, W, C)``), at least one example
    and one feature, and only finite values. With ``support=(lo, hi)`` every value must also lie in
    the closed interval ``[lo, hi]`` — the support a likelihood needs (e.g. ``(0, 1)`` for
    Bernoulli and continuous Bernoulli); which support applies is the caller's business.

    Args:
        x: the array (anything ``np.asarray`` accepts; it is not copied when already an array),
            or a row reader of :mod:`vae_tf.data.rows` (``shape``, ``dtype``, ``blocks()``),
            which is scanned block by block so a file larger than memory can be checked. Both
            give the same answers and the same messages.
        what: how to name the array in messages, e.g. ``"digits train split"``.
        support: closed interval the values must lie in, or ``None`` for no bound.

    Returns:
        ``(min, max)`` of the values, as NumPy scalars of the array's dtype; ``None`` for text.

    Raises:
        DataError: with a one-line message naming the problem and the fix.
    """
    if is_text(x):
        validate_text(x, what=what)
        if support is not None:
            raise DataError(
                f"{what} holds sentences, which a likelihood over numbers in "
                f"[{_fmt(support[0])}, {_fmt(support[1])}] cannot score; configure a text model "
                "for this data set"
            )
        return None
    if hasattr(x, "blocks") and hasattr(x, "shape") and hasattr(x, "dtype"):
        shape, dtype, blocks = tuple(x.shape), np.dtype(x.dtype), x.blocks
    else:
        try:
            arr = np.asarray(x)
        except Exception as exc:  # ragged lists, unconvertible objects
            raise DataError(
                f"{what} is not a numeric array ({type(exc).__name__}: {exc}); "
                "pass a NumPy array of shape (N, ...) with one row per example"
            ) from None
        shape, dtype = arr.shape, arr.dtype

        def blocks():
            yield 0, arr

    check_layout(shape, dtype, what=what)
    lo, hi = value_bounds(blocks(), shape, dtype, what=what)
    if support is not None:
        s_lo, s_hi = float(support[0]), float(support[1])
        if lo < s_lo or hi > s_hi:
            raise DataError(
                f"{what} values lie in [{_fmt(lo)}, {_fmt(hi)}] but the likelihood needs "
                f"[{_fmt(s_lo)}, {_fmt(s_hi)}]: rescale the data or choose a Gaussian likelihood"
            )
    return lo, hi


def joint_class_codes(arrays: list[np.ndarray]) -> tuple[list[np.ndarray], np.ndarray]:
    """Class names of several label arrays (e.g. the splits) as int64 codes under one mapping,
    the names' sorted order, so the same name is the same class in each; and the names."""
    names, codes = np.unique(np.concatenate(arrays), return_inverse=True)
    bounds = np.cumsum([0, *(len(a) for a in arrays)])
    return [codes[bounds[i]:bounds[i + 1]].astype(np.int64) for i in range(len(arrays))], names


def check_layout(shape: tuple[int, ...], dtype: np.dtype, *, what: str = "data") -> None:
    """The checks of :func:`validate_array` that need only the shape and the dtype."""
    ndim = len(shape)
    if dtype.kind not in _NUMERIC_KINDS:
        if dtype.kind in "US" and ndim == 1:  # sentences: text models read them from text files
            raise DataError(f"{what} holds strings (dtype {dtype}, shape {shape}): for sentences, write them one per "
                            "line to a .txt file and use data set text_file; image models take numeric arrays")
        raise DataError(
            f"{what} is not a numeric array (dtype {dtype}, shape {shape}); convert it to a float "
            "or integer NumPy array of shape (N, ...)"
        )
    if ndim < 2 or ndim > 4:
        raise DataError(
            f"{what} has shape {shape} (rank {ndim}) but rank 2 (N, D), 3 (N, H, W) or "
            "4 (N, H, W, C) is needed; reshape it so the first axis indexes examples"
        )
    if shape[0] == 0:
        raise DataError(f"{what} is empty (shape {shape}); provide at least one example")
    if int(np.prod(shape)) == 0:
        raise DataError(
            f"{what} has no features (shape {shape}); every example needs at least one value"
        )


def value_bounds(blocks, shape: tuple[int, ...], dtype: np.dtype, *, what: str = "data"):
    """``(min, max)`` over ``(start_row, rows)`` blocks that cover an array of ``shape`` in order;
    a :class:`~vae_tf.errors.DataError` when float values are NaN or infinite (counted over the
    whole array, the first one located by its index in the whole array)."""
    lo = hi = None
    n_nan = n_bad = 0
    first = None
    for start, block in blocks:
        if block.size == 0:
            continue
        b_lo, b_hi = block.min(), block.max()
        if dtype.kind == "f" and not (np.isfinite(b_lo) and np.isfinite(b_hi)):
            # min/max propagate NaN and expose +-Inf, so this pass only runs on bad blocks.
            bad = ~np.isfinite(block)
            n_nan += int(np.count_nonzero(np.isnan(block)))
            n_bad += int(np.count_nonzero(bad))
            if first is None:
                at = np.unravel_index(int(np.argmax(bad.ravel())), block.shape)
                first = (int(at[0]) + int(start),) + tuple(int(i) for i in at[1:])
            continue
        lo = b_lo if lo is None else min(lo, b_lo)
        hi = b_hi if hi is None else max(hi, b_hi)
    if first is not None:
        raise DataError(
            f"{what} contains {n_nan} NaN and {n_bad - n_nan} Inf values (first at index {first}, "
            f"example {first[0]}); remove or impute those examples first"
        )
    return lo, hi
