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
    try:
        return np.asarray(value)
    except ValueError:  # ragged nested lists
        raise DataError(f"{what} is not a rectangular array (rows of different lengths?); pass a NumPy array of "
                        "one row per example") from None


def _kind(dtype) -> str:
    """NumPy's kind letter (``b``, ``i``, ``u``, ``f``, other) of a NumPy or TensorFlow dtype."""
    if isinstance(dtype, tf.DType):
        return "b" if dtype.is_bool else "f" if dtype.is_floating else "i" if dtype.is_integer else "O"
    return np.dtype(dtype).kind


def _shape_text(shape) -> str:
    return "(" + ", ".join(str(int(d)) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def _quote(sentence: str) -> str:
    return repr(sentence if len(sentence) <= QUOTE_CHARS else sentence[:QUOTE_CHARS] + "...")


def _utf8(value: bytes, i: int, what: str) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{what} entry {i} is not valid UTF-8 (byte {exc.start}: {exc.reason}); decode the source "
                        "text correctly, e.g. iconv -f LATIN1 -t UTF-8") from None


def sentences(x, *, what: str = "x", as_array: bool = False):
    """A batch of raw sentences, one per entry: ``str``, or UTF-8 ``bytes`` (what a string tensor,
    a Parquet column or a TFRecord gives back), as a 1-D list, array or string tensor.

    Empty sentences are allowed: a trained model encodes them (``<eos>`` alone), as its
    exported signatures do. Returns ``x`` (an eager string tensor as it is), or, with
    ``as_array``, a 1-D object array of ``str`` (what the metrics slice into batches)."""
    if symbolic(x):
        return x
    if isinstance(x, (str, bytes)):
        shown = _quote(x) if isinstance(x, str) else _quote(repr(x))
        raise DataError(f"{what} is one sentence ({shown}) but a text model takes a batch of sentences; pass a "
                        "list, e.g. [sentence]")
    if isinstance(x, (tf.Tensor, tf.Variable)):
        if x.dtype != tf.string or x.shape.rank != 1 or x.shape[0] == 0:
            raise DataError(f"{what} is a {x.dtype.name} tensor of shape {_shape_text(x.shape)} but a text model "
                            "takes a non-empty 1-D batch of sentences (strings)")
        decoded = np.asarray([_utf8(s, i, what) for i, s in enumerate(x.numpy())], dtype=object)
        return decoded if as_array else tf.convert_to_tensor(x)
    arr = np.asarray(x, dtype=object) if isinstance(x, (list, tuple)) else np.asarray(x)
    if arr.ndim != 1 or len(arr) == 0:
        nested = arr.ndim == 2 and arr.size and isinstance(arr.flat[0], (str, bytes))
        hint = (" (a list of words per sentence? send each sentence as one string: ' '.join(words))" if nested
                else "")
        raise DataError(f"{what} has shape {_shape_text(arr.shape)} but a text model takes a non-empty 1-D batch "
                        f"of sentences, one str per entry{hint}")
    out = np.empty(len(arr), dtype=object)
    for i, s in enumerate(arr):
        if isinstance(s, bytes):
            s = _utf8(s, i, what)
        elif not isinstance(s, str):
            raise DataError(f"{what} entry {i} is of type {type(s).__name__}, not a sentence (str); give one str per "
                            "sentence")
        else:
            try:
                s.encode("utf-8")
            except UnicodeEncodeError as err:  # TensorFlow: "Unable to convert element to UTF-8", no entry named
                raise DataError(f"{what} entry {i} is not valid Unicode text (a lone surrogate at character "
                                f"{err.start}, as errors='surrogateescape' leaves undecodable bytes); read the text "
                                "as UTF-8, or pass the bytes") from None
        out[i] = str(s)
    return out


def model_rows(model, x, *, what: str = "x", as_array: bool = False):
    """``x`` checked as what ``model`` reads: sentences for a text model (:func:`sentences`), else
    a batch ``[N, *model.data_shape]`` of finite values within the model's likelihood's support,
    as float32 (a tensor given eagerly stays a tensor, on its device, unless ``as_array``).

    The values are checked after the cast to float32, in two reductions (minimum and maximum:
    NaN and ±Inf show in them), so a valid batch costs two passes over it; a float64 value beyond
    float32's range is refused rather than encoded as Inf."""
    if getattr(model, "modality", "image") == "text":
        return sentences(x, what=what, as_array=as_array)
    if symbolic(x):
        return x
    tensor = isinstance(x, (tf.Tensor, tf.Variable))
    arr = None if tensor else _array(x, what)
    dtype, shape = (x.dtype, tuple(x.shape)) if tensor else (arr.dtype, arr.shape)
    expected = getattr(model, "data_shape", None)
    if _kind(dtype) not in "biuf":
        raise DataError(f"{what} is not numeric (dtype {dtype}, shape {_shape_text(shape)}); pass a float "
                        f"array of shape (N, {', '.join(map(str, expected or ('...',)))})")
    if expected is not None:
        expected = tuple(expected)
        if shape == expected:
            raise DataError(f"{what} has shape {_shape_text(shape)}: one example without the batch axis; the "
                            f"model takes a batch (N, {', '.join(map(str, expected))}), e.g. x[None]")
        if len(shape) != len(expected) + 1 or tuple(shape[1:]) != expected:
            raise DataError(f"{what} has shape {_shape_text(shape)} but the model reads batches of shape "
                            f"(N, {', '.join(map(str, expected))}); reshape it, or use a model trained on data of "
                            "this shape")
    elif len(shape) < 2:
        raise DataError(f"{what} must be a batch (N, *data_shape), got shape {_shape_text(shape)}")
    if shape[0] == 0:
        raise DataError(f"{what} holds no examples (shape {_shape_text(shape)}); pass at least one row")
    if tensor:
        values = tf.cast(x, tf.float32)
        low, high = (float(v) for v in tf.stack([tf.reduce_min(values), tf.reduce_max(values)]).numpy())
    else:
        with np.errstate(over="ignore"):  # float64 beyond float32's range: Inf, refused below
            values = arr.astype(np.float32, copy=False)
        low, high = float(values.min()), float(values.max())
    support = getattr(getattr(model, "likelihood", None), "support", None)
    finite = np.isfinite(low) and np.isfinite(high)
    if finite and (support is None or (low >= support[0] and high <= support[1])):
        return values.numpy() if tensor and as_array else values
    rows = np.asarray(values).reshape(shape[0], -1)
    if not finite:
        bad = ~np.isfinite(rows).all(axis=1)
        wide = " (or values beyond float32's range, ±3.4e38)" if dtype in (np.float64, tf.float64) else ""
        raise DataError(f"{what} row {int(np.argmax(bad))} has NaN or Inf values{wide} ({int(np.sum(bad))} of "
                        f"{shape[0]} rows do); remove or impute those rows")
    outside = np.any((rows < support[0]) | (rows > support[1]), axis=1)
    name = getattr(model.likelihood, "name_key", type(model.likelihood).__name__)
    raise DataError(f"{what} row {int(np.argmax(outside))} has values outside [{support[0]:g}, {support[1]:g}], "
                    f"which the model's {name} likelihood reads (the batch lies in [{low:g}, {high:g}]); scale it as "
                    "the training data was (e.g. uint8 images / 255)")


def dataset_batches(model, dataset, *, what: str = "x"):
    """A ``tf.data.Dataset`` that ``fit`` / ``evaluate`` of an image ``model`` reads, checked from
    its ``element_spec`` alone (no element is read: the values are checked where they are made,
    e.g. by :class:`vae_tf.data.DataSplits`): batches of ``x`` or ``(x, ...)`` tuples whose ``x``
    is ``[None, *model.data_shape]`` and numeric. A float ``x`` of another width is cast to
    float32; integer values (uint8 images) are refused for a likelihood of bounded support,
    where 0–255 would be read as if they were in [0, 1]. Anything the spec cannot tell (unknown
    rank, ragged or sparse elements) is passed on as it is."""
    spec = dataset.element_spec
    first = spec[0] if isinstance(spec, tuple) and spec else spec
    if isinstance(first, dict):
        keys = ", ".join(repr(k) for k in first)
        raise DataError(f"{what} is a dataset of dicts ({keys}); the model reads batches of x or (x, label) tuples: "
                        "map it, e.g. dataset.map(lambda d: d['image'])")
    if not isinstance(first, tf.TensorSpec) or first.shape.rank is None:
        return dataset
    shape, expected = first.shape, tuple(model.data_shape)
    wanted = f"(N, {', '.join(map(str, expected))})"
    if shape.rank == len(expected) and shape.is_compatible_with(expected):
        raise DataError(f"{what} is a dataset of single examples (element shape {_spec_text(shape)}); the model reads "
                        f"batches {wanted}: batch it, e.g. dataset.batch(64)")
    if shape.rank != len(expected) + 1 or not shape[1:].is_compatible_with(expected):
        raise DataError(f"{what} is a dataset of batches of shape {_spec_text(shape)} but the model reads batches "
                        f"{wanted}; reshape them in the pipeline, or use a model trained on data of this shape")
    kind = _kind(first.dtype)
    if kind not in "biuf":
        raise DataError(f"{what} is a dataset of {first.dtype.name} values; the model reads float batches {wanted}")
    if first.dtype == tf.float32:
        return dataset
    support = getattr(getattr(model, "likelihood", None), "support", None)
    if kind != "f" and support is not None:
        name = getattr(model.likelihood, "name_key", type(model.likelihood).__name__)
        raise DataError(f"{what} is a dataset of {first.dtype.name} values, but the model's {name} likelihood reads "
                        f"floats in [{support[0]:g}, {support[1]:g}]; map them to float32 scaled as the training data "
                        "was, e.g. dataset.map(lambda x: tf.cast(x, tf.float32) / 255)")

    def cast_first(x, *rest):
        x = tf.cast(x, tf.float32)
        return (x, *rest) if rest else x

    return dataset.map(cast_first)


def _spec_text(shape) -> str:
    return "(" + ", ".join("None" if d is None else str(d) for d in shape.as_list()) + ")"


def fit_data(model, data, *, what: str = "x"):
    """``fit`` / ``evaluate``'s data, checked as the model's inference methods check theirs:
    arrays, lists and eager tensors through :func:`model_rows` (images: float32 values, finite,
    within the likelihood's support; text: sentences, and none empty or only whitespace, the rule
    of the training data sets), an image dataset through :func:`dataset_batches`, a tuple
    ``(x, y, ...)`` (``validation_data``) by its ``x``; anything else (a ``PyDataset``, a
    generator, a distributed dataset, a dataset of sentences) as it is."""
    if data is None:
        return data
    text = getattr(model, "modality", "image") == "text"
    if isinstance(data, tf.data.Dataset):
        return data if text else dataset_batches(model, data, what=what)
    if isinstance(data, tuple) and data:
        return (fit_data(model, data[0], what=what), *data[1:])
    if isinstance(data, (np.ndarray, list, tf.Tensor, tf.Variable)) and not symbolic(data):
        if text:  # encode takes an empty sentence (<eos> alone, as the signatures do); training does not
            if isinstance(data, (np.ndarray, tf.Tensor, tf.Variable)) and _kind(data.dtype) in "biuf":
                return data  # token ids (a text model under XLA tokenises before fit)
            from vae_tf.data.validation import validate_text

            rows = sentences(data, what=what, as_array=True)
            validate_text(rows, what=what)
            return rows
        return model_rows(model, data, what=what)
    return data


def codes(model, z, *, what: str = "z", rows: int | None = None):
    """``z`` checked as codes the decoder reads: float ``[N, code_size]``, finite (``rows``: the
    number of rows it must have, e.g. one per seed row). Returns a float32 tensor."""
    if symbolic(z):
        return z
    values = tf.convert_to_tensor(z) if isinstance(z, (tf.Tensor, tf.Variable)) else _array(z, what)
    size = int(model.latent.code_size)
    if _kind(values.dtype) not in "biuf":
        raise DataError(f"{what} is not numeric (dtype {values.dtype}); pass float codes of shape (N, {size})")
    shape = tuple(values.shape)
    if shape == (size,):
        raise DataError(f"{what} has shape {_shape_text(shape)}: one code without the batch axis; the decoder "
                        f"takes a batch (N, {size}), e.g. z[None]")
    if len(shape) != 2 or shape[1] != size or shape[0] == 0:
        raise DataError(f"{what} has shape {_shape_text(shape)} but the decoder reads codes of shape (N, {size}), "
                        "N >= 1: the width of encode's embedding")
    values = tf.cast(values, tf.float32)
    finite = np.asarray(tf.reduce_all(tf.math.is_finite(values), axis=1))
    if not finite.all():
        raise DataError(f"{what} row {int(np.argmin(finite))} has NaN or Inf values; decode finite codes")
    if rows is not None and shape[0] != rows:
        raise DataError(f"{what} has {shape[0]} rows but {rows} seed rows were given; give one seed row per code")
    return values


__all__ = ["codes", "dataset_batches", "fit_data", "model_rows", "sentences", "symbolic"]
