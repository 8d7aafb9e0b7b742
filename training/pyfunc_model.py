"""MLflow pyfunc wrapping an exported vae-tf SavedModel (models-from-code).

MLflow loads this file, not a pickle. ``predict`` runs one SavedModel signature, chosen with the
``signature`` param, and returns its named outputs as NumPy arrays:

========================  ==========================  ===============================
``signature``             input                       outputs
========================  ==========================  ===============================
``encode`` (default)      ``x: float32[B, *shape]``   ``embedding``, ``z_mean``, ...
``decode``                ``z: float32[B, code]``     ``x_mean``, ``x_sample``
``reconstruct``           ``x``                       ``x_mean``
``sample``                ``seed: int32[n, 2]``       ``z``, ``x_mean``, ``x_sample``
========================  ==========================  ===============================

A text model's ``x`` is a column of raw sentences (``string[B]``: a list of ``str``, a DataFrame
with one string column, ``{"x": [...]}``); its ``decode`` / ``reconstruct`` / ``sample`` return
``text`` as ``str`` (MLflow's JSON writer would base64-encode ``bytes``), and ``tokens`` /
``lengths``. Every entry must be a ``str`` (a number is refused, not turned into its digits), valid
Unicode and hold a word; a sentence longer than the model's ``max_length`` words is truncated to
its first ``max_length`` words by the model (as ``vae-tf serve`` does by default).

The input may be an array, a ``{name: array}`` dict, a pandas DataFrame or nested lists (as
``mlflow models serve`` passes JSON ``{"inputs": ...}``, ``{"instances": ...}`` or
``{"dataframe_split": ...}``); rows flattened to one dimension are reshaped to the signature's
example shape, and values are cast to its dtype (seeds must be whole numbers). Mistakes raise
:class:`InputError` (a ``ValueError``, and an ``MlflowException``, so the scoring server answers
400 with the line) saying what to send.

This file is loaded by MLflow on its own (models-from-code): it imports TensorFlow, NumPy and
MLflow only, never vae_tf, so the logged model runs where only its pip requirements are installed.

Second serving path (MLflow's protocol, not TF Serving's)::

    mlflow models serve -m models:/vae/1 --env-manager local -p 5001
    curl -d '{"inputs": [[1, 2]], "params": {"signature": "sample"}}' \\
         -H 'Content-Type: application/json' 127.0.0.1:5001/invocations
"""

from __future__ import annotations

import contextlib
import unicodedata
import warnings

import mlflow
import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel

PYFUNC_SIGNATURES = ("encode", "decode", "reconstruct", "sample")


class InputError(MlflowException, ValueError):
    """A request the model cannot take: one line saying what to send (HTTP 400 in the scoring
    server, whose generic message would otherwise hide it in a stack trace)."""

    def __init__(self, message: str):
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)


@contextlib.contextmanager
def _without_type_hint_advice():
    """Defining a ``PythonModel`` makes MLflow advise type hints on ``predict`` (a yellow warning
    wherever the model is logged or loaded). This ``predict`` takes arrays, ``{name: array}``
    dicts, DataFrames and lists and checks them itself (:class:`InputError`), which no type hint
    MLflow accepts can say (a union is refused, a single type would be untrue). MLflow wraps its
    check in a ``"once"`` filter, which a filter of ours cannot override, so the advice is dropped
    when it is shown; every other warning is shown."""
    show = warnings.showwarning

    def filtered(message, category, filename, lineno, file=None, line=None):
        if "Add type hints to the `predict` method" not in str(message):
            show(message, category, filename, lineno, file, line)

    warnings.showwarning = filtered
    try:
        yield
    finally:
        warnings.showwarning = show


with _without_type_hint_advice():
    class VaeTfSavedModel(PythonModel):
        def load_context(self, context):
            import json
            from pathlib import Path

            import tensorflow as tf

            self._model = tf.saved_model.load(context.artifacts["saved_model"])
            info = Path(context.artifacts["saved_model"]) / "assets" / "vae_tf_model.json"
            likelihood = (json.loads(info.read_text()).get("likelihood") if info.is_file() else None) or {}
            support = likelihood.get("support") if isinstance(likelihood, dict) else None
            #: The values encode/reconstruct's x may take (the likelihood's support), or None.
            self._support = (tuple(float(v) for v in support), str(likelihood.get("name"))) if support else None
            self._inputs = {}
            for name in PYFUNC_SIGNATURES:
                if name in self._model.signatures:
                    (key, spec), = self._model.signatures[name].structured_input_signature[1].items()
                    self._inputs[name] = (key, spec.dtype.as_numpy_dtype, tuple(spec.shape.as_list()[1:]))

        def predict(self, context, model_input, params=None):
            import tensorflow as tf

            name = (params or {}).get("signature") or "encode"
            if name not in self._inputs:
                raise InputError(f"signature {name!r} is not served by the pyfunc model; choose one of "
                                 f"{', '.join(self._inputs)}")
            key, dtype, example_shape = self._inputs[name]
            values = _as_array(model_input, key, text=np.dtype(dtype).kind == "O")
            if values.ndim == 0:
                raise InputError(f"signature {name!r} needs a batch of {key}: send a list of "
                                 f"{'sentences' if np.dtype(dtype).kind == 'O' else 'rows'} (e.g. [value]), not "
                                 "a single value")
            if len(values) == 0:
                raise InputError(f"signature {name!r} got no {key} rows; send at least one")
            values = _reshape_rows(values, example_shape, name, key)
            values = _cast(values, dtype, name, key)
            if values.dtype.kind == "f":
                _check_values(values, name, key, self._support if key == "x" else None)
            outputs = self._model.signatures[name](**{key: tf.constant(values)})
            return {out: _output(value.numpy()) for out, value in outputs.items()}


def _output(value: np.ndarray) -> np.ndarray:
    """String outputs (a text model's ``text``) as ``str``: MLflow writes ``bytes`` as base64."""
    if value.dtype != object:
        return value
    return np.vectorize(lambda v: v.decode("utf-8", "replace") if isinstance(v, bytes) else v, otypes=[object])(value)


def _as_array(model_input, key: str, text: bool = False) -> np.ndarray:
    if isinstance(model_input, dict):  # named-tensor input: {"x": array}
        if key not in model_input:  # a one-key dict of another name was taken as the input
            raise InputError(f"input has tensor(s) {', '.join(map(repr, model_input))} but this signature takes "
                             f"{key!r}; send {{{key!r}: ...}} or the array alone")
        extra = [name for name in model_input if name != key]
        if extra:  # dropped without a word before (TF Serving refuses them too)
            raise InputError(f"input has tensor(s) {', '.join(map(repr, extra))} that this signature does not take "
                             f"(it takes {key!r} alone); leave them out")
        model_input = model_input[key]
    if hasattr(model_input, "to_numpy"):  # pandas
        model_input = model_input.to_numpy()
        if (not text and model_input.ndim == 2 and model_input.shape[1] == 1 and len(model_input)
                and isinstance(model_input[0, 0], (list, tuple, np.ndarray))):
            # one column of arrays, one per row ({"dataframe_records": [{"x": [...]}, ...]})
            model_input = list(model_input[:, 0])
    try:
        # Sentences keep their Python types: NumPy would turn ["a", 3] into the strings "a", "3".
        return np.asarray(model_input, dtype=object if text and isinstance(model_input, (list, tuple)) else None)
    except ValueError:
        raise InputError(f"input {key!r} is ragged; send rows of equal shape") from None


def _reshape_rows(values: np.ndarray, example_shape: tuple, name: str, key: str) -> np.ndarray:
    if example_shape == () and values.ndim == 2 and values.shape[1] == 1:  # one column of sentences
        return values[:, 0]
    if values.ndim == 1 + len(example_shape) and all(
            want is None or want == got for want, got in zip(example_shape, values.shape[1:])):
        return values
    size = int(np.prod(example_shape)) if None not in example_shape else None
    if values.ndim == 2 and size is not None and values.shape[1] == size:
        return values.reshape((len(values),) + example_shape)
    if example_shape == ():  # sentences
        raise InputError(f"signature {name!r} needs {key} as one sentence per row (a list of strings or a "
                         f"one-column DataFrame), got shape {list(values.shape)}")
    raise InputError(f"signature {name!r} needs {key} with shape [batch, {', '.join(map(str, example_shape))}] "
                     f"(or rows of {size} values), got {list(values.shape)}")


def _cast(values: np.ndarray, dtype, name: str, key: str) -> np.ndarray:
    dtype = np.dtype(dtype)
    if dtype.kind == "O":  # tf.string: sentences
        flat = values.ravel()
        out = np.empty(len(flat), dtype=object)
        for row, value in enumerate(flat):
            out[row] = _sentence(value, row, name, key)
        return out.reshape(values.shape)
    if values.dtype.kind not in "iuf":
        raise InputError(f"signature {name!r} needs numeric {key}, got {values.dtype}")
    if dtype.kind == "i" and values.dtype.kind == "f":
        if not np.all(np.isfinite(values)) or not np.array_equal(values, np.round(values)):
            raise InputError(f"signature {name!r} needs whole-number {key} values (e.g. seed rows [[1, 2]])")
    if dtype.kind == "i" and values.size:
        # astype would wrap 2**32 + 5 round to 5: another seed's sample, answered as if it were this one's
        limits = np.iinfo(dtype)
        low, high = values.min(), values.max()
        if low < limits.min or high > limits.max:
            raise InputError(f"signature {name!r} needs {key} values that fit {dtype.name} ([{limits.min}, "
                             f"{limits.max}]), got {int(low) if low < limits.min else int(high)}")
    return values.astype(dtype, copy=False)


def _check_values(values: np.ndarray, name: str, key: str, support) -> None:
    """Refuse NaN/±Inf (the model turns them into ordinary-looking codes, as ``vae-tf serve``
    refuses them by default) and, for ``x``, values outside the likelihood's support (``support``:
    ``((low, high), likelihood name)``; a Bernoulli model reads [0, 1], not 0-255 pixels)."""
    rows = values.reshape(len(values), -1)
    low, high = (float(rows.min()), float(rows.max())) if rows.size else (0.0, 0.0)
    if not (np.isfinite(low) and np.isfinite(high)):
        bad = ~np.isfinite(rows).all(axis=1)
        raise InputError(f"signature {name!r}: {key} row {int(np.argmax(bad))} has NaN or Inf values "
                         f"({int(bad.sum())} of {len(rows)} rows do); send finite numbers")
    if support is not None:
        (lo, hi), likelihood = support
        if low < lo or high > hi:
            outside = ((rows < lo) | (rows > hi)).any(axis=1)
            raise InputError(f"signature {name!r}: {key} row {int(np.argmax(outside))} has values outside "
                             f"[{lo:g}, {hi:g}], which the model's {likelihood} likelihood reads (they lie in "
                             f"[{low:g}, {high:g}]); scale them as the training data was (e.g. uint8 images / 255)")


def _sentence(value, row: int, name: str, key: str) -> bytes:
    """One sentence as UTF-8 bytes, or :class:`InputError`: the rules of ``vae-tf serve``
    (``serving/text.py``, which this file cannot import)."""
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError as err:
            raise InputError(f"signature {name!r}: {key} row {row} is not valid UTF-8 (byte {err.start}); send "
                             "sentences as UTF-8 text") from None
    if not isinstance(value, str):
        raise InputError(f"signature {name!r} needs {key} as strings (sentences); row {row} is of type "
                         f"{type(value).__name__}")
    # No word: only the tokenizer's whitespace (RE2's \s and the Unicode separators).
    if all(ch in "\t\n\f\r " or unicodedata.category(ch).startswith("Z") for ch in value):
        raise InputError(f"signature {name!r}: {key} row {row} is empty; send at least one word per sentence")
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(f"signature {name!r}: {key} row {row} is not valid Unicode text (a lone surrogate); send "
                         "UTF-8 text") from None


mlflow.models.set_model(VaeTfSavedModel())
