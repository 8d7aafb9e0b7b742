"""Checks that an array can be trained on, with one-line messages that say what to fix.

The checks are vectorised and cheap: the common case (finite data) costs one ``min`` and one
``max`` pass over the array; the element-wise ``isfinite`` pass that locates bad values runs only
when ``min``/``max`` already showed a NaN or an Inf.
"""

from __future__ import annotations

import numpy as np

from vae_tf.errors import DataError

# Accepted array kinds: bool, signed and unsigned integers, floats. Complex, strings and objects
# are not data a VAE likelihood can score.
_NUMERIC_KINDS = "biuf"


def is_int(value) -> bool:
    """True for Python / NumPy integers, False for bools (``True`` is not a count)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _fmt(value: float) -> str:
    return f"{float(value):.4g}"


def validate_array(x, *, what: str = "data", support: tuple[float, float] | None = None) -> None:
    """Raise :class:`~vae_tf.errors.DataError` unless ``x`` is trainable data.

    ``x`` must be a numeric (bool, integer or float) array of shape ``(N, ...)`` with rank 2
    (vectors ``(N, D)``), 3 (``(N, H, W)``) or 4 (images ``(N, H, W, C)``), at least one example
    and one feature, and only finite values. With ``support=(lo, hi)`` every value must also lie in
    the closed interval ``[lo, hi]`` — the support a likelihood needs (e.g. ``(0, 1)`` for
    Bernoulli and continuous Bernoulli); which support applies is the caller's business.

    Args:
        x: the array (anything ``np.asarray`` accepts; it is not copied when already an array).
        what: how to name the array in messages, e.g. ``"digits train split"``.
        support: closed interval the values must lie in, or ``None`` for no bound.

    Raises:
        DataError: with a one-line message naming the problem and the fix.
    """
    try:
        arr = np.asarray(x)
    except Exception as exc:  # ragged lists, unconvertible objects
        raise DataError(
            f"{what} is not a numeric array ({type(exc).__name__}: {exc}); "
            "pass a NumPy array of shape (N, ...) with one row per example"
        ) from None
    if arr.dtype.kind not in _NUMERIC_KINDS:
        raise DataError(
            f"{what} is not a numeric array (dtype {arr.dtype}); "
            "convert it to a float or integer NumPy array of shape (N, ...)"
        )
    if arr.ndim < 2 or arr.ndim > 4:
        raise DataError(
            f"{what} has shape {arr.shape} (rank {arr.ndim}) but rank 2 (N, D), 3 (N, H, W) or "
            "4 (N, H, W, C) is needed; reshape it so the first axis indexes examples"
        )
    if arr.shape[0] == 0:
        raise DataError(f"{what} is empty (shape {arr.shape}); provide at least one example")
    if arr.size == 0:
        raise DataError(
            f"{what} has no features (shape {arr.shape}); every example needs at least one value"
        )
    lo = arr.min()
    hi = arr.max()
    if arr.dtype.kind == "f" and not (np.isfinite(lo) and np.isfinite(hi)):
        # min/max propagate NaN and expose +-Inf, so this pass only runs on bad data.
        bad = ~np.isfinite(arr)
        n_nan = int(np.count_nonzero(np.isnan(arr)))
        n_inf = int(np.count_nonzero(bad)) - n_nan
        first = tuple(int(i) for i in np.unravel_index(int(np.argmax(bad.ravel())), arr.shape))
        raise DataError(
            f"{what} contains {n_nan} NaN and {n_inf} Inf values (first at index {first}, "
            f"example {first[0]}); remove or impute those examples before training"
        )
    if support is not None:
        s_lo, s_hi = float(support[0]), float(support[1])
        if lo < s_lo or hi > s_hi:
            raise DataError(
                f"{what} values lie in [{_fmt(lo)}, {_fmt(hi)}] but the likelihood needs "
                f"[{_fmt(s_lo)}, {_fmt(s_hi)}]: rescale the data or choose a Gaussian likelihood"
            )
