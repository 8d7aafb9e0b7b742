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

A text model's ``x`` is a column of raw sentences (``string[B]``: a list of strings, a
DataFrame with one string column); its ``decode`` / ``reconstruct`` / ``sample`` return ``text``
(and ``tokens`` / ``lengths``).

The input may be an array, a ``{name: array}`` dict, a pandas DataFrame or nested lists (as
``mlflow models serve`` passes JSON ``{"inputs": ...}``); rows flattened to one dimension are
reshaped to the signature's example shape, and values are cast to its dtype (seeds must be
whole numbers). Mistakes raise ``ValueError`` with one line saying what to send.

Second serving path (MLflow's protocol, not TF Serving's)::

    mlflow models serve -m models:/vae@champion --env-manager local -p 5001
    curl -d '{"inputs": [[1, 2]], "params": {"signature": "sample"}}' \\
         -H 'Content-Type: application/json' 127.0.0.1:5001/invocations
"""

from __future__ import annotations

import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel

PYFUNC_SIGNATURES = ("encode", "decode", "reconstruct", "sample")


class VaeTfSavedModel(PythonModel):
    def load_context(self, context):
        import tensorflow as tf

        self._model = tf.saved_model.load(context.artifacts["saved_model"])
        self._inputs = {}
        for name in PYFUNC_SIGNATURES:
            if name in self._model.signatures:
                (key, spec), = self._model.signatures[name].structured_input_signature[1].items()
                self._inputs[name] = (key, spec.dtype.as_numpy_dtype, tuple(spec.shape.as_list()[1:]))

    def predict(self, context, model_input, params=None):
        import tensorflow as tf

        name = (params or {}).get("signature") or "encode"
        if name not in self._inputs:
            raise ValueError(f"signature {name!r} is not served by the pyfunc model; choose one of "
                             f"{', '.join(self._inputs)}")
        key, dtype, example_shape = self._inputs[name]
        values = _as_array(model_input, key)
        values = _reshape_rows(values, example_shape, name, key)
        values = _cast(values, dtype, name, key)
        outputs = self._model.signatures[name](**{key: tf.constant(values)})
        return {out: value.numpy() for out, value in outputs.items()}


def _as_array(model_input, key: str) -> np.ndarray:
    if isinstance(model_input, dict):  # named-tensor input: {"x": array}
        if key in model_input:
            model_input = model_input[key]
        elif len(model_input) == 1:
            model_input = next(iter(model_input.values()))
        else:
            raise ValueError(f"input has tensors {', '.join(map(str, model_input))} but this signature takes one, {key!r}")
    if hasattr(model_input, "to_numpy"):  # pandas
        model_input = model_input.to_numpy()
    try:
        return np.asarray(model_input)
    except ValueError:
        raise ValueError(f"input {key!r} is ragged; send rows of equal shape") from None


def _reshape_rows(values: np.ndarray, example_shape: tuple, name: str, key: str) -> np.ndarray:
    if example_shape == () and values.ndim == 2 and values.shape[1] == 1:  # one column of sentences
        return values[:, 0]
    if values.ndim == 1 + len(example_shape) and all(
            want is None or want == got for want, got in zip(example_shape, values.shape[1:])):
        return values
    size = int(np.prod(example_shape)) if None not in example_shape else None
    if values.ndim == 2 and size is not None and values.shape[1] == size:
        return values.reshape((len(values),) + example_shape)
    raise ValueError(f"signature {name!r} needs {key} with shape [batch, {', '.join(map(str, example_shape))}] "
                     f"(or rows of {size} values), got {list(values.shape)}")


def _cast(values: np.ndarray, dtype, name: str, key: str) -> np.ndarray:
    dtype = np.dtype(dtype)
    if dtype.kind == "O":  # tf.string: sentences
        if not all(isinstance(v, (str, bytes)) for v in values.ravel()):
            raise ValueError(f"signature {name!r} needs {key} as strings (sentences), got {values.dtype}")
        return np.array([v if isinstance(v, bytes) else v.encode("utf-8") for v in values.ravel()],
                        dtype=object).reshape(values.shape)
    if values.dtype.kind not in "iuf":
        raise ValueError(f"signature {name!r} needs numeric {key}, got {values.dtype}")
    if dtype.kind == "i" and values.dtype.kind == "f":
        if not np.all(np.isfinite(values)) or not np.array_equal(values, np.round(values)):
            raise ValueError(f"signature {name!r} needs whole-number {key} values (e.g. seed rows [[1, 2]])")
    return values.astype(dtype, copy=False)


mlflow.models.set_model(VaeTfSavedModel())
