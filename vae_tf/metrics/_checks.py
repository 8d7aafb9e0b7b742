"""Input checks shared by the metric functions: one-line :class:`~vae_tf.errors.DataError` /
:class:`~vae_tf.errors.ConfigError` messages instead of NumPy tracebacks."""

from __future__ import annotations

import numbers

import numpy as np

from vae_tf.data.validation import joint_class_codes
from vae_tf.errors import ConfigError, DataError


def as_matrix(name: str, value, *, min_rows: int = 1, dtype=np.float64) -> np.ndarray:
    """``value`` as a finite 2-D float array ``(N, d)`` with at least ``min_rows`` rows."""
    arr = np.asarray(value)
    if arr.ndim == 1 and name.startswith("factors"):
        arr = arr[:, None]
    if arr.ndim != 2:
        raise DataError(f"{name} must be a 2-D array (examples, dims), got shape {arr.shape}")
    if arr.shape[0] < min_rows:
        raise DataError(f"{name} has {arr.shape[0]} rows; at least {min_rows} are needed")
    if arr.shape[1] < 1:
        raise DataError(f"{name} has no columns (shape {arr.shape})")
    if arr.dtype.kind not in "biuf":
        raise DataError(f"{name} must be numeric, got dtype {arr.dtype}")
    arr = arr.astype(dtype, copy=False)
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        raise DataError(f"{name} contains NaN or Inf; check the encoder outputs")
    return arr


def same_shape(name_a: str, a: np.ndarray, name_b: str, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise DataError(f"{name_a} {a.shape} and {name_b} {b.shape} must have the same shape")


def same_rows(name_a: str, a: np.ndarray, name_b: str, b: np.ndarray) -> None:
    if len(a) != len(b):
        raise DataError(f"{name_a} has {len(a)} rows but {name_b} has {len(b)}; give one row per example")


def integer_labels(name: str, value, *, ndim: int = 1) -> np.ndarray:
    """Integer class labels (``(N,)`` or ``(N, K)``) as int64; floats must be whole numbers."""
    arr = np.asarray(value)
    if ndim == 2 and arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != ndim:
        raise DataError(f"{name} must be a {ndim}-D array of class indices, got shape {arr.shape}")
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise DataError(f"{name} must hold integer class indices, got non-integer values")
    elif arr.dtype.kind not in "biu":
        raise DataError(f"{name} must hold integer class indices, got dtype {arr.dtype}")
    return arr.astype(np.int64)


def class_labels(**named) -> list[np.ndarray]:
    """Class labels of several arrays (``name=value``, e.g. ``train_y`` and ``test_y``) as int64
    class indices under one mapping: integer (or whole float) labels as they are
    (:func:`integer_labels`); string labels (``str`` or ``bytes``, as scikit-learn takes them) by
    their sorted order over all the arrays, so the same name is the same class in each."""
    arrays = {name: np.asarray(value) for name, value in named.items()}
    text = [name for name, arr in arrays.items() if arr.dtype.kind in "USO" and arr.ndim == 1 and arr.size
            and all(isinstance(v, (str, bytes)) for v in arr.tolist())]
    if not text:
        return [integer_labels(name, arr) for name, arr in arrays.items()]
    if len(text) != len(arrays):
        other = next(name for name in arrays if name not in text)
        raise DataError(f"{text[0]} holds strings but {other} does not; give both the same kind of labels")
    codes, _ = joint_class_codes([arr.astype(object).astype(str) for arr in arrays.values()])
    return codes


def positive_int(name: str, value, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def fraction(name: str, value, *, low: float = 0.0, high: float = 1.0) -> float:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not ok or not (low <= float(value) <= high):
        raise ConfigError(f"{name} must be a number in [{low}, {high}], got {value!r}")
    return float(value)


def positive_float(name: str, value) -> float:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not ok or not np.isfinite(float(value)) or float(value) <= 0:
        raise ConfigError(f"{name} must be a positive number, got {value!r}")
    return float(value)


def rng_from(seed) -> np.random.Generator:
    """``np.random.default_rng(seed)``; a Generator passes through (its state is consumed)."""
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is None or (isinstance(seed, numbers.Integral) and not isinstance(seed, bool) and seed >= 0):
        return np.random.default_rng(seed)
    raise ConfigError(f"seed must be a non-negative integer or a numpy Generator, got {seed!r}")
