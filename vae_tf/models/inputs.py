"""What a model's inference methods and the metrics take, checked once, with one line per mistake.

``model.encode(x)``, ``reconstruct(x)``, ``decode(z)``, the metrics that run the encoder
(``iw_nll``, ``elbo_estimate``, ``encode_posterior``, ``representation_function``) and
``evaluate_model`` read their inputs through :func:`model_rows` / :func:`codes`. Without the
checks, a single image without its batch axis, another model's image size or a list of words
came back as a Keras shape error many lines long; NaN rows were encoded as NaN codes; a uint8 image
(0–255) given to a Bernoulli model was embedded (and scored) as if it were in [0, 1] without a
word. Training refuses all of these already (:func:`vae_tf.data.validation.validate_array`);
these are the same rules for a model that is trained.

Only values given eagerly are checked (NumPy arrays, lists, eager tensors). Inside a traced
function (the exported signatures, Keras' symbolic build) the input is a graph tensor whose
values do not exist yet: it is passed through as it is, as :func:`vae_tf.models.vae.seed_rows` does.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from vae_tf.errors import DataError

#: How many characters of a sentence a message quotes.
QUOTE_CHARS = 40


def symbolic(value) -> bool:
    """Whether ``value`` is a graph tensor (inside ``tf.function``) or a Keras symbolic tensor."""
    return isinstance(value, keras.KerasTensor) or (isinstance(value, tf.Tensor) and not tf.executing_eagerly())


def _array(value, what: str) -> np.ndarray:
    if isinstance(value, (tf.Tensor, tf.Variable)):
        return value.numpy()
    try:
        return np.asarray(value)
    except ValueError:  # ragged nested lists
        raise DataError(f"{what} is not a rectangular array (rows of different lengths?); pass a NumPy array of "
                        "one row per example") from None


def _shape_text(shape) -> str:
    return "(" + ", ".join(str(int(d)) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def _quote(sentence: str) -> str:
    return repr(sentence if len(sentence) <= QUOTE_CHARS else sentence[:QUOTE_CHARS] + "...")


def sentences(x, *, what: str = "x", as_array: bool = False):
    """A batch of raw sentences, one ``str`` per entry (a 1-D array, list or string tensor).

    Empty sentences are allowed: a trained model encodes them (``<eos>`` alone), as its
    exported signatures do. Returns ``x`` (an eager string tensor as it is), or, with
    ``as_array``, a 1-D object array of ``str`` (what the metrics slice into batches)."""
    if symbolic(x):
        return x
    if isinstance(x, (str, bytes)):
        raise DataError(f"{what} is one sentence ({_quote(x if isinstance(x, str) else repr(x))}) but a text "
                        "model takes a batch of sentences; pass a list, e.g. [sentence]")
    if isinstance(x, tf.Tensor):
        if x.dtype != tf.string or x.shape.rank != 1 or x.shape[0] == 0:
            raise DataError(f"{what} is a {x.dtype.name} tensor of shape {_shape_text(x.shape)} but a text model "
                            "takes a non-empty 1-D batch of sentences (strings)")
        if not as_array:
            return x
        return np.asarray([s.decode("utf-8") for s in x.numpy()], dtype=object)
    arr = np.asarray(x, dtype=object) if isinstance(x, (list, tuple)) else np.asarray(x)
    if arr.ndim != 1 or len(arr) == 0:
        nested = arr.ndim == 2 and arr.size and isinstance(arr.flat[0], str)
        hint = (" (a list of words per sentence? send each sentence as one string: ' '.join(words))" if nested
                else "")
        raise DataError(f"{what} has shape {_shape_text(arr.shape)} but a text model takes a non-empty 1-D batch "
                        f"of sentences, one str per entry{hint}")
    for i, s in enumerate(arr):
        if not isinstance(s, str):
            hint = "decode bytes as UTF-8 first" if isinstance(s, bytes) else "give one str per sentence"
            raise DataError(f"{what} entry {i} is of type {type(s).__name__}, not a sentence (str); {hint}")
    return arr.astype(object) if as_array else arr


def model_rows(model, x, *, what: str = "x", as_array: bool = False):
    """``x`` checked as what ``model`` reads: sentences for a text model (:func:`sentences`), else
    a float32 batch ``[N, *model.data_shape]`` of finite values within the model's likelihood's
    support. Returns float32 (a tensor given eagerly stays a tensor unless ``as_array``)."""
    if getattr(model, "modality", "image") == "text":
        return sentences(x, what=what, as_array=as_array)
    if symbolic(x):
        return x
    arr = _array(x, what)
    expected = getattr(model, "data_shape", None)
    if arr.dtype.kind not in "biuf":
        raise DataError(f"{what} is not numeric (dtype {arr.dtype}, shape {_shape_text(arr.shape)}); pass a float "
                        f"array of shape (N, {', '.join(map(str, expected or ('...',)))})")
    if expected is not None:
        expected = tuple(expected)
        if tuple(arr.shape) == expected:
            raise DataError(f"{what} has shape {_shape_text(arr.shape)}: one example without the batch axis; the "
                            f"model takes a batch (N, {', '.join(map(str, expected))}), e.g. x[None]")
        if arr.ndim != len(expected) + 1 or tuple(arr.shape[1:]) != expected:
            raise DataError(f"{what} has shape {_shape_text(arr.shape)} but the model reads batches of shape "
                            f"(N, {', '.join(map(str, expected))}); reshape it, or use a model trained on data of "
                            "this shape")
    elif arr.ndim < 2:
        raise DataError(f"{what} must be a batch (N, *data_shape), got shape {_shape_text(arr.shape)}")
    if len(arr) == 0:
        raise DataError(f"{what} holds no examples (shape {_shape_text(arr.shape)}); pass at least one row")
    rows = arr.reshape(len(arr), -1)
    if arr.dtype.kind == "f":
        finite = np.isfinite(rows).all(axis=1)
        if not finite.all():
            first = int(np.argmin(finite))
            raise DataError(f"{what} row {first} has NaN or Inf values ({int(np.sum(~finite))} of {len(arr)} rows "
                            "do); remove or impute those rows")
    support = getattr(getattr(model, "likelihood", None), "support", None)
    if support is not None:
        low, high = float(np.min(rows)), float(np.max(rows))
        if low < support[0] or high > support[1]:
            outside = np.any((rows < support[0]) | (rows > support[1]), axis=1)
            name = getattr(model.likelihood, "name_key", type(model.likelihood).__name__)
            raise DataError(f"{what} row {int(np.argmax(outside))} has values outside [{support[0]:g}, "
                            f"{support[1]:g}], which the model's {name} likelihood reads (the batch lies in "
                            f"[{low:g}, {high:g}]); scale it as the training data was (e.g. uint8 images / 255)")
    if isinstance(x, tf.Tensor) and not as_array:
        return tf.cast(x, tf.float32)
    return arr.astype(np.float32, copy=False)


def codes(model, z, *, what: str = "z", rows: int | None = None):
    """``z`` checked as codes the decoder reads: float ``[N, code_size]``, finite (``rows``: the
    number of rows it must have, e.g. one per seed row). Returns a float32 tensor."""
    if symbolic(z):
        return z
    arr = _array(z, what)
    size = int(model.latent.code_size)
    if arr.dtype.kind not in "biuf":
        raise DataError(f"{what} is not numeric (dtype {arr.dtype}); pass float codes of shape (N, {size})")
    if arr.shape == (size,):
        raise DataError(f"{what} has shape {_shape_text(arr.shape)}: one code without the batch axis; the decoder "
                        f"takes a batch (N, {size}), e.g. z[None]")
    if arr.ndim != 2 or arr.shape[1] != size or len(arr) == 0:
        raise DataError(f"{what} has shape {_shape_text(arr.shape)} but the decoder reads codes of shape (N, {size}), "
                        f"N >= 1 (the family's code_size: what encode's z_mean has)")
    finite = np.isfinite(arr).all(axis=1)
    if not finite.all():
        raise DataError(f"{what} row {int(np.argmin(finite))} has NaN or Inf values; decode finite codes")
    if rows is not None and len(arr) != rows:
        raise DataError(f"{what} has {len(arr)} rows but {rows} seed rows were given; give one seed row per code")
    return tf.convert_to_tensor(arr, tf.float32)


__all__ = ["codes", "model_rows", "sentences", "symbolic"]
