"""The model store: versions of one model loaded from ``MODEL_BASE_PATH/MODEL_NAME/<version>/``.

What TensorFlow Serving's ``ServerCore`` does for one model, in Python (reference §1, §3, §6):

- **Versions.** Sub-directories whose name parses as an int64 (``00000123`` is 123; other names,
  such as the hidden temporary directories :func:`vae_tf.export.export_model` writes into, are
  ignored). The store serves the **highest** version, plus every version a label names.
- **Polling and hot swap.** Every ``poll_seconds`` (default 1 s, TF Serving's
  ``--file_system_poll_wait_seconds``) the store rescans the directory. A new version is loaded
  and warmed up *before* it is published; publishing swaps one dict reference, so a request
  either sees the old set or the new one, and a request that already holds a
  :class:`Servable` keeps using it until it finishes. Versions that are no longer wanted are
  dropped from the dict (state ``END``); Python frees them when the last request lets go.
- **Labels.** A small YAML or JSON file ``{labels: {stable: 1, canary: 2}}``, re-read whenever
  it changes. A label that names a version which is not loaded is ignored (with a warning), so a
  request for it gets ``Unrecognized servable version label``.
- **Status.** Every version the store has seen keeps its last state (``LOADING``,
  ``AVAILABLE``, ``END``, with the load error if loading failed), listed newest first.
- **Signatures.** Each :class:`Servable` carries the ``SignatureDefMap`` read from its
  ``saved_model.pb`` (every signature, ``__saved_model_init_op`` included, as the official
  metadata endpoint lists them) and one :class:`Signature` per callable signature, which
  validates inputs (names, dtype, shape, and by default finite float values) before the model
  runs. The sentences sent to a text model (an export whose ``assets/vae_tf_model.json`` says
  ``"modality": "text"``) are checked too: UTF-8, not empty, within the limits, and, with
  ``--long-text refuse``, no longer than the model's ``max_length`` words (:mod:`serving.text`).

Path safety: the model name comes from the operator (``MODEL_NAME``) and must be one plain path
segment; names in requests are only compared with it, never joined to a path, so no request
(``..``, ``%2F``, absolute paths) can reach a file outside ``MODEL_BASE_PATH``. Symbolic links
are not a way out either: a version whose directory, or any file or directory inside it,
resolves outside ``MODEL_BASE_PATH`` is not loaded (status ``END`` with the reason) unless the
operator allows it (``follow_external_links``, ``--follow-external-links``). Nothing from a
request is ever deserialised with pickle or executed: requests are JSON or protobuf, read into
NumPy arrays.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from serving.status import Code, ServingError, from_tensorflow_error, invalid_argument, not_found, one_line
from serving.text import SentenceError, TextLimits, TextPolicy
from vae_tf.errors import ConfigError

log = logging.getLogger("serving.model_store")

DEFAULT_POLL_SECONDS = 1.0
PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"
DEFAULT_SIGNATURE = "serving_default"
INIT_OP_SIGNATURE = "__saved_model_init_op"
INT64_MAX = 2**63 - 1

# ModelVersionStatus.State (apis/get_model_status.proto).
UNKNOWN, START, LOADING, AVAILABLE, UNLOADING, END = 0, 10, 20, 30, 40, 50

_MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_VERSION_DIR_RE = re.compile(r"^[0-9]+$")

# DataType enum -> (NumPy dtype, TensorFlow's DataTypeString name).
_DTYPES: dict[int, tuple[Any, str]] = {
    1: (np.float32, "float"), 2: (np.float64, "double"), 3: (np.int32, "int32"), 4: (np.uint8, "uint8"),
    5: (np.int16, "int16"), 6: (np.int8, "int8"), 7: (object, "string"), 9: (np.int64, "int64"),
    10: (np.bool_, "bool"), 19: (np.float16, "half"), 22: (np.uint32, "uint32"), 23: (np.uint64, "uint64"),
}


def validate_model_name(name: str) -> str:
    """``name`` if it is one plain path segment, else :class:`ConfigError`."""
    if not isinstance(name, str) or not _MODEL_NAME_RE.match(name):
        raise ConfigError(f"model name {name!r} is not a plain directory name: use letters, digits, '_', '.', '-' "
                          "(no '/', no leading '.'); set MODEL_NAME or --model-name")
    return name


def scan_versions(model_dir: Path) -> dict[int, Path] | None:
    """``{version: directory}`` for the integer-named sub-directories (TF Serving's rule); None
    when ``model_dir`` cannot be listed (gone, not a directory, no permission): a base path that
    is transiently unavailable (a rename swap, a remount) is not one with no versions."""
    found: dict[int, Path] = {}
    try:
        entries = sorted(os.scandir(model_dir), key=lambda e: e.name)
    except OSError:  # gone, not a folder, no permission, a stale NFS handle, a FUSE mount gone (ENOTCONN), EIO
        return None
    for entry in entries:
        if not _VERSION_DIR_RE.match(entry.name):
            continue
        version = int(entry.name)
        if version > INT64_MAX or version in found:
            continue
        try:
            if entry.is_dir():
                found[version] = Path(entry.path)
        except OSError:
            continue
    return found


def check_inside(version_dir: Path, base_path: Path) -> None:
    """Raise ``ValueError`` if ``version_dir`` or anything under it resolves (through symbolic
    links) outside ``base_path``. Links inside the base path are fine (e.g. Kubernetes volume
    mounts, which link ``saved_model.pb`` to ``..data/saved_model.pb``)."""
    root = base_path.resolve()

    def outside(path: Path) -> bool:
        resolved = path.resolve()
        return resolved != root and root not in resolved.parents

    if outside(version_dir):
        raise ValueError(f"{version_dir} resolves to {version_dir.resolve()}, outside MODEL_BASE_PATH {root}; copy "
                         "the model into MODEL_BASE_PATH or pass --follow-external-links")
    for parent, dirs, files in os.walk(version_dir, followlinks=False):
        for entry in dirs + files:
            path = Path(parent) / entry
            if path.is_symlink() and outside(path):
                raise ValueError(f"{path} links to {path.resolve()}, outside MODEL_BASE_PATH {root}; copy the file "
                                 "into MODEL_BASE_PATH or pass --follow-external-links")


def read_labels(path: str | os.PathLike) -> dict[str, int]:
    """``{label: version}`` from a YAML/JSON file ``{labels: {stable: 1, canary: 2}}``."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(f"cannot read the labels file {str(path)!r} ({err.strerror or err}); "
                          "check --labels-file") from None
    try:
        doc = yaml.safe_load(text) if path.suffix.lower() != ".json" else json.loads(text)
    except (yaml.YAMLError, ValueError) as err:
        raise ConfigError(f"labels file {str(path)!r} is not valid YAML/JSON ({one_line(err, 120)}); write "
                          "{labels: {stable: 1, canary: 2}}") from None
    if doc is None:
        return {}
    labels = doc.get("labels") if isinstance(doc, dict) else None
    if not isinstance(doc, dict) or set(doc) - {"labels"} or not isinstance(labels, (dict, type(None))):
        raise ConfigError(f"labels file {str(path)!r} must hold one mapping 'labels: {{name: version}}', e.g. "
                          "labels: {stable: 1, canary: 2}")
    result = {}
    for label, version in (labels or {}).items():
        if not isinstance(label, str) or not label or "/" in label or ":" in label:
            raise ConfigError(f"label {label!r} in {str(path)!r} must be a non-empty string without '/' or ':'")
        if isinstance(version, bool) or not isinstance(version, int) or not 0 < version <= INT64_MAX:
            raise ConfigError(f"label {label!r} in {str(path)!r} must name a positive integer version, got {version!r}")
        result[label] = version
    return result


# -- signatures ------------------------------------------------------------------------------


@dataclass(frozen=True)
class InputSpec:
    """One signature input: alias, NumPy dtype, TF dtype name and shape (``None`` dims are
    free; ``shape is None`` means unknown rank)."""

    alias: str
    dtype: Any
    dtype_name: str
    dtype_enum: int
    shape: tuple[int | None, ...] | None

    def shape_text(self) -> str:
        if self.shape is None:
            return "[?]"
        return "[" + ",".join("-1" if d is None else str(d) for d in self.shape) + "]"


def _input_spec(alias: str, tensor_info) -> InputSpec:
    dtype, name = _DTYPES.get(tensor_info.dtype, (None, f"type {tensor_info.dtype}"))
    shape_proto = tensor_info.tensor_shape
    shape = None if shape_proto.unknown_rank else tuple(None if d.size < 0 else int(d.size) for d in shape_proto.dim)
    return InputSpec(alias, dtype, name, int(tensor_info.dtype), shape)


class Signature:
    """One SignatureDef of a loaded version, callable with validated NumPy inputs. ``text``: the
    sentence checks of a text model's string inputs (:mod:`serving.text`), or None."""

    def __init__(self, name: str, signature_def, function: Callable | None, text: TextPolicy | None = None):
        self.name = name
        self.text = text
        self.method_name = signature_def.method_name
        self.inputs: dict[str, InputSpec] = {alias: _input_spec(alias, info)
                                             for alias, info in sorted(signature_def.inputs.items())}
        self.output_names: tuple[str, ...] = tuple(sorted(signature_def.outputs))
        self._signature_def = signature_def
        self._function = function

    def debug_string(self) -> str:
        """The SignatureDef in protobuf text format, what C++'s ``DebugString()`` prints (TF
        Serving quotes it in some messages; its line breaks become ``\\n`` there)."""
        from google.protobuf import text_format

        return text_format.MessageToString(self._signature_def)

    @property
    def callable(self) -> bool:
        return self._function is not None and self.method_name == PREDICT_METHOD

    def prepare(self, arrays: Mapping[str, np.ndarray], *, allow_non_finite: bool = False,
                typed: bool = False) -> dict[str, np.ndarray]:
        """Inputs cast to the signature dtypes and checked against its shapes (project rule:
        a one-line INVALID_ARGUMENT before TensorFlow sees the data). Float inputs holding NaN
        or ±Inf are refused the same way unless ``allow_non_finite`` (TF Serving passes them to
        the model, which turns them into finite-looking garbage or NaN outputs). ``typed``: the
        dtypes are the client's own choice (gRPC's TensorProtos), not JSON numbers, and an
        integer tensor for a float input is refused, as TF Serving refuses it (``Expects arg[0]
        to be float but uint8 is provided``): it is nearly always 0-255 pixels sent to a model
        that reads [0, 1], which would encode them without a word. Names are checked by the
        callers (their messages differ between REST and gRPC)."""
        prepared = {}
        for alias, arr in arrays.items():
            spec = self.inputs[alias]
            arr = _cast(np.asarray(arr) if not isinstance(arr, np.ndarray) else arr, spec, self.name,
                        integers_to_float=not typed)
            _check_shape(arr, spec, self.name)
            if not allow_non_finite:
                _check_finite(arr, spec, self.name)
            if self.text is not None and spec.dtype_name == "string":
                arr = self._check_sentences(arr, spec)
            elif self.text is not None and arr.ndim and len(arr) > self.text.limits.max_rows:
                # decode and sample: each row generates a sentence (memory grows with rows x words as well)
                raise invalid_argument(f"Input {spec.alias} of signature {self.name}: {len(arr)} rows in one request, "
                                       f"more than this server's limit of {self.text.limits.max_rows} for a text model "
                                       "(each row makes a sentence); send smaller batches (or raise --max-text-rows)")
            prepared[alias] = arr
        return prepared

    def _check_sentences(self, arr: np.ndarray, spec: InputSpec) -> np.ndarray:
        try:
            return self.text.check(arr)
        except SentenceError as err:
            raise invalid_argument(f"Input {spec.alias} of signature {self.name}: {err.message}") from None

    def run(self, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the signature on NumPy inputs (``{alias: array}``, every input of the signature);
        ``{output alias: array}``. TensorFlow errors become :class:`ServingError`."""
        import tensorflow as tf

        if self._function is None:
            raise invalid_argument(f"Signature {self.name!r} cannot be run")
        try:
            return self._function(**arrays)
        except tf.errors.OpError as err:
            raise from_tensorflow_error(err) from None
        except (ValueError, TypeError) as err:  # argument binding / conversion
            raise invalid_argument(one_line(err)) from None


class SessionFunction:
    """One SignatureDef run as TF Serving runs it: the session feeds the signature's input
    tensors and fetches its output tensors through a callable built once
    (``Session::MakeCallable``, then ``RunCallable`` per request).

    Why not the TF2 restored concrete function: at batch 1, binding its structured signature and
    converting tensors cost about as much as the graph itself, all of it holding the GIL; nor
    ``Session.make_callable`` with feeds, which falls back to ``Session.run`` and resolves the
    feeds and fetches again on every call. A ``RunCallable`` is one C++ call that releases the
    GIL while the graph runs: about a third of the TF2 signature's CPU time, under half of
    ``Session.run``'s, for the default model at batch 1 (``benchmarks/serving_request_parts.py``).
    The Python entry point, ``Session._make_callable_from_options``, is TensorFlow's own (Keras'
    TF1 backend used it); where a TensorFlow version lacks it, the public ``make_callable`` runs
    instead."""

    def __init__(self, session, signature_def):
        from tensorflow.core.protobuf import config_pb2

        self.input_names = tuple(sorted(signature_def.inputs))
        self.output_names = tuple(sorted(signature_def.outputs))
        feeds = [signature_def.inputs[k].name for k in self.input_names]
        fetches = [signature_def.outputs[k].name for k in self.output_names]
        make = getattr(session, "_make_callable_from_options", None)
        if make is not None:
            self._call = make(config_pb2.CallableOptions(feed=feeds, fetch=fetches))
        else:
            self._call = session.make_callable(fetches, feeds)

    def __call__(self, **arrays: np.ndarray) -> dict[str, np.ndarray]:
        if len(arrays) != len(self.input_names) or any(name not in arrays for name in self.input_names):
            raise TypeError(f"inputs {sorted(arrays)} do not match the signature's {list(self.input_names)}")
        return dict(zip(self.output_names, self._call(*(arrays[name] for name in self.input_names))))


def _cast(arr: np.ndarray, spec: InputSpec, signature: str, *, integers_to_float: bool = True) -> np.ndarray:
    """Cast ``arr`` to the signature dtype when that loses nothing; else INVALID_ARGUMENT
    (integers for a float input too, unless ``integers_to_float``)."""
    target = spec.dtype
    if target is None:
        raise ServingError(Code.UNIMPLEMENTED, f"Input {spec.alias} of signature {signature} has a dtype "
                                               f"({spec.dtype_name}) this server does not support")
    if arr.dtype == target:
        return arr
    kind, target_kind = arr.dtype.kind, np.dtype(target).kind

    def refuse(why: str) -> ServingError:
        return invalid_argument(f"Input {spec.alias} of signature {signature} needs {spec.dtype_name} values but got "
                                f"{_dtype_text(arr.dtype)} {why}; send {spec.dtype_name} data")

    if target_kind == "O":
        if kind in "SO":
            return arr.astype(object)
        raise refuse("values")
    if target_kind == "b":
        raise refuse("values")
    if kind not in "iuf":
        raise refuse("values")
    if target_kind == "f":
        if kind in "iu" and not integers_to_float:
            images = spec.shape is not None and len(spec.shape) > 2  # [batch, height, width, channels]
            how = ("scaled as the model's training data was (uint8 pixels / 255 for a model of [0, 1] images; "
                   if images else "(")
            raise invalid_argument(
                f"Input {spec.alias} of signature {signature} needs {spec.dtype_name} values but got "
                f"{_dtype_text(arr.dtype)} values; send {spec.dtype_name} data {how}TF Serving refuses integer "
                "tensors here too)")
        with np.errstate(over="ignore"):  # values beyond the target's range are refused just below
            cast = arr.astype(target)
        if kind == "f" and not np.array_equal(np.isfinite(cast), np.isfinite(arr)):
            raise refuse("values outside its range")
        return cast
    # Integer target: whole numbers within range only.
    info = np.iinfo(target)
    if arr.size:
        if kind == "f" and not (np.all(np.isfinite(arr)) and np.all(arr == np.round(arr))):
            raise refuse("values that are not whole numbers")
        low, high = (float(arr.min()), float(arr.max())) if kind == "f" else (int(arr.min()), int(arr.max()))
        if low < info.min or high > info.max:
            raise refuse("values outside its range")
    return arr.astype(target)


def _dtype_text(dtype) -> str:
    for np_type, name in _DTYPES.values():
        if np_type is not object and np.dtype(np_type) == dtype:
            return name
    return "string" if dtype.kind in "SUO" else str(dtype)


def _check_shape(arr: np.ndarray, spec: InputSpec, signature: str) -> None:
    if spec.shape is None:
        return
    ok = arr.ndim == len(spec.shape) and all(want is None or want == got for want, got in zip(spec.shape, arr.shape))
    if ok:
        return
    got = "[" + ",".join(str(d) for d in arr.shape) + "]"
    advice = ""
    if spec.shape == (None,) and spec.dtype_name == "string" and arr.ndim == 0:  # a text model's sentences
        advice = '; send a list of sentences, even of one: ["a cat"], not "a cat"'
    elif spec.shape == (None,) and spec.dtype_name == "string":
        advice = "; send a list of sentences, each one string (not a list of words)"
    elif spec.shape and spec.shape[0] is None:
        example = "[" + ",".join("?" if d is None else str(d) for d in spec.shape[1:]) + "]"
        advice = f"; send a batch of examples, each of shape {example}"
    raise invalid_argument(f"Input {spec.alias} of signature {signature} has shape {got} but the signature expects "
                           f"{spec.shape_text()} (-1: any size){advice}")


def first_non_finite(arr: np.ndarray) -> tuple[tuple[int, ...], float, int] | None:
    """``None`` when ``arr`` holds no NaN or ±Inf (always for non-float arrays), else the index
    of the first one in C order, its value and how many there are.

    The common case costs one vectorised sum: NaN or ±Inf anywhere make it non-finite (so does
    an overflow of large finite values, which the element-wise search then clears). Only then
    does ``np.isfinite`` run over the elements to find the position."""
    if arr.dtype.kind != "f" or math.isfinite(arr.sum()):
        return None
    bad = ~np.isfinite(arr)
    if not bad.any():  # the sum overflowed; every value is finite
        return None
    flat = int(np.argmax(bad))  # argmax on booleans: the first True
    index = tuple(int(i) for i in np.unravel_index(flat, arr.shape))
    return index, float(arr.reshape(-1)[flat]), int(np.count_nonzero(bad))


def non_finite_text(value: float) -> str:
    """``NaN``, ``Infinity`` or ``-Infinity``: the JSON tokens clients send (Python's ``json``)."""
    return json.dumps(value, allow_nan=True)


def _check_finite(arr: np.ndarray, spec: InputSpec, signature: str) -> None:
    found = first_non_finite(arr)
    if found is None:
        return
    index, value, count = found
    where = "(" + ", ".join(map(str, index)) + ")"
    raise invalid_argument(f"Input {spec.alias} of signature {signature} has a non-finite value "
                           f"{non_finite_text(value)} at index {where} ({count} of {arr.size} values are NaN or "
                           "infinite); send finite numbers, or start the server with --allow-non-finite to pass "
                           "them to the model")


# -- one loaded version ------------------------------------------------------------------------


def refuse_classify_or_regress(servable: "Servable", signature_key: str, kind: str):
    """TF Serving's answer to ``:classify`` / ``:regress`` (REST) and Classify / Regress (gRPC)
    with its default flags (``--enable_signature_method_name_check=false``, ``server.h``), so
    the method name is not checked: ``GetClassificationSignatureDef`` /
    ``PreProcessClassification`` (``servables/tensorflow/classifier.cc``) and the regression
    twins (``regressor.cc``) check the signature's shape of inputs and outputs, with their
    messages. A signature that passes them would be run by TF Serving; this server serves
    predict only and answers UNIMPLEMENTED (project). Always raises. ``kind`` is
    ``"classification"`` or ``"regression"``."""
    key = signature_key or DEFAULT_SIGNATURE
    signature = servable.signatures.get(key)
    if signature is None:
        raise invalid_argument(f"No signature was found with the name: {key}")
    inputs, outputs = set(signature.inputs), set(signature.output_names)
    if len(inputs) != 1:
        raise invalid_argument("Expected one input Tensor.")
    if kind == "classification":
        if len(outputs) not in (1, 2):
            raise invalid_argument(f"Expected one or two output Tensors, found {len(outputs)}")
        if "inputs" not in inputs:
            raise invalid_argument(f"No classification inputs found in SignatureDef: {signature.debug_string()}")
        if not outputs & {"classes", "scores"}:
            raise invalid_argument('Expected classification signature outputs to contain at least one of "classes" or '
                                   f'"scores". Signature was: {signature.debug_string()}')
    else:
        if len(outputs) != 1:
            raise invalid_argument("Expected one output Tensor.")
        if "inputs" not in inputs:
            raise invalid_argument(f"No regression inputs found in SignatureDef: {signature.debug_string()}")
        if "outputs" not in outputs:
            raise invalid_argument(f"No regression outputs found in SignatureDef: {signature.debug_string()}")
    raise ServingError(Code.UNIMPLEMENTED, f"{kind.capitalize()} signatures are not served by this server "
                                           f"({key} is one); serve it with TensorFlow Serving or call :predict")


class _DeprecationNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "is deprecated and will be removed" not in record.getMessage()


@contextlib.contextmanager
def _without_deprecation_notice():
    """The TF1 SavedModel loader is how TF Serving loads models, and the way to run a signature
    with one C++ call; its deprecation notice (for training code) would only confuse operators."""
    import tensorflow as tf

    notice = _DeprecationNotice()
    tf.get_logger().addFilter(notice)
    try:
        yield
    finally:
        tf.get_logger().removeFilter(notice)


class Servable:
    """One loaded version: its SignatureDefMap (for metadata) and callable signatures."""

    def __init__(self, name: str, version: int, path: Path, session, signature_def_map,
                 signatures: dict[str, Signature], text: TextPolicy | None = None):
        self.name = name
        self.text = text  # the sentence checks of a text model, else None
        self.version = version
        self.path = path
        self.signature_def_map = signature_def_map
        self.signatures = signatures
        self._session = session  # keeps the loaded graph and variables alive while requests use it

    @property
    def session(self):
        """The ``tf.compat.v1.Session`` this version's signatures run in."""
        return self._session

    @classmethod
    def load(cls, name: str, version: int, path: Path, *, warmup: bool = True,
             text_limits: TextLimits = TextLimits()) -> "Servable":
        """Load a version as TF Serving's ``SavedModelBundle`` does: the MetaGraph tagged
        ``serve`` imported into a session of its own, variables restored and the init op (lookup
        tables) run by the SavedModel loader; each predict signature then runs in that session.
        A text model's string inputs get its sentence checks (``text_limits``)."""
        import tensorflow as tf
        from tensorflow.core.protobuf import saved_model_pb2
        from tensorflow_serving.apis import get_model_metadata_pb2

        proto = saved_model_pb2.SavedModel()
        proto.ParseFromString((path / "saved_model.pb").read_bytes())
        graphs = [g for g in proto.meta_graphs if "serve" in g.meta_info_def.tags] or list(proto.meta_graphs)
        if not graphs:
            raise ValueError(f"{path / 'saved_model.pb'} has no MetaGraph")
        signature_def_map = get_model_metadata_pb2.SignatureDefMap()
        for key, signature_def in graphs[0].signature_def.items():
            signature_def_map.signature_def[key].CopyFrom(signature_def)
        info = _model_info(path)
        from vae_tf.export import ASSET_NAME, SIGNATURES

        if info is None and set(SIGNATURES) <= set(signature_def_map.signature_def):
            # A vae-tf export whose facts file is not there (yet): served without it, a text
            # model would take any input unchecked, for good (a version is not re-read).
            raise ValueError(f"{path} has vae-tf's signatures but no readable assets/{ASSET_NAME} (a version still "
                             "being copied? copy it under another name and rename it into place); it is tried again "
                             "when its files change")

        graph = tf.Graph()
        session = tf.compat.v1.Session(graph=graph)
        with graph.as_default(), _without_deprecation_notice():
            tf.compat.v1.saved_model.loader.load(session, list(graphs[0].meta_info_def.tags), str(path))
        text = TextPolicy.from_model_info(info, text_limits)
        signatures = {}
        for key, signature_def in signature_def_map.signature_def.items():
            runnable = signature_def.method_name == PREDICT_METHOD and signature_def.outputs
            function = SessionFunction(session, signature_def) if runnable else None
            signatures[key] = Signature(key, signature_def, function, text)
        servable = cls(name, version, path, session, signature_def_map, signatures, text)
        if warmup:
            servable.warm_up()
        return servable

    def warm_up(self) -> None:
        """Run every callable signature once on one row of zeros (empty strings for string
        inputs), so the first request after a (hot) load does not pay for graph optimisation. A
        failure fails the load."""
        for signature in self.signatures.values():
            if not signature.callable:
                continue
            arrays = {}
            for alias, spec in signature.inputs.items():
                if spec.shape is None or spec.dtype is None or any(d is None for d in spec.shape[1:]):
                    break
                shape = (1,) + tuple(spec.shape[1:]) if spec.shape else ()
                # A string input gets a word (a text model refuses empty sentences; zeros of
                # dtype object would be ints).
                arrays[alias] = (np.full(shape, b"warm", dtype=object) if spec.dtype_name == "string"
                                 else np.zeros(shape, spec.dtype))
            else:
                signature.run(arrays)


def _model_info(path: Path) -> dict | None:
    """``assets/vae_tf_model.json`` of a version (vae-tf's facts about the model), or None for a
    SavedModel from elsewhere."""
    try:
        from vae_tf.export import ASSET_NAME

        return json.loads((path / "assets" / ASSET_NAME).read_text())
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class VersionStatus:
    version: int
    state: int
    error_code: Code = Code.OK
    error_message: str = ""


# -- the store ---------------------------------------------------------------------------------


class ModelStore:
    """Loads, serves and hot-swaps the versions of one model. Thread-safe for readers.

    Args:
        base_path: ``MODEL_BASE_PATH``; the model lives in ``base_path/model_name``.
        model_name: ``MODEL_NAME`` (one plain path segment).
        model_dir: the model directory itself, served as ``model_name`` whatever it is called
            (TF Serving's own ``--model_base_path``); it is then also the boundary that
            ``follow_external_links`` speaks of. None: ``base_path/model_name``.
        poll_seconds: rescan interval of the background poller (:meth:`start`); ``<= 0`` polls
            only when :meth:`poll` is called.
        labels_file: optional YAML/JSON ``{labels: {name: version}}``, re-read when it changes.
        warmup: run each signature once after loading.
        follow_external_links: load versions whose files resolve (through symbolic links)
            outside ``base_path``; off by default, so the base path is the whole of what the
            server reads.
        text_limits: how the sentences sent to a text model are checked (:mod:`serving.text`).
    """

    def __init__(self, base_path: str | os.PathLike, model_name: str, *, poll_seconds: float = DEFAULT_POLL_SECONDS,
                 labels_file: str | os.PathLike | None = None, warmup: bool = True,
                 follow_external_links: bool = False, text_limits: TextLimits = TextLimits(),
                 model_dir: str | os.PathLike | None = None):
        self.model_name = validate_model_name(model_name)
        if model_dir is not None:
            self.base_path = self.model_dir = Path(model_dir)
        else:
            self.base_path = Path(base_path)
            self.model_dir = self.base_path / self.model_name
        self.poll_seconds = float(poll_seconds)
        self.labels_file = Path(labels_file) if labels_file else None
        self.warmup = warmup
        self.text_limits = text_limits
        self.follow_external_links = follow_external_links
        # Published state: replaced as a whole, never mutated, so readers need no lock.
        self._servables: dict[int, Servable] = {}
        self._labels: dict[str, int] = {}
        self._status: dict[int, VersionStatus] = {}
        self._failed: dict[int, tuple] = {}  # version -> _files_stamp of its directory at the failed attempt
        self._labels_mtime: float | None = None
        self._poll_lock = threading.Lock()
        self._unreadable = False  # the model directory could not be listed at the last poll
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if self.labels_file is not None:
            self._labels = read_labels(self.labels_file)  # a bad file stops the start-up
            self._labels_mtime = _mtime(self.labels_file)

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> "ModelStore":
        """First poll (synchronous), then the background poller."""
        self.poll()
        if not self._servables:
            log.warning("no servable version of model %r under %s yet; polling every %.3g s", self.model_name,
                        self.model_dir, self.poll_seconds)
        if self.poll_seconds > 0 and self._thread is None:
            self._thread = threading.Thread(target=self._poll_loop, name="model-store-poller", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def _poll_loop(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                self.poll()
            except Exception:  # the poller must survive anything the file system does
                log.exception("polling %s failed", self.model_dir)

    # -- polling -------------------------------------------------------------------------

    def poll(self) -> None:
        """Rescan labels and versions once; load what is wanted and new, then publish."""
        with self._poll_lock:
            self._reload_labels()
            on_disk = scan_versions(self.model_dir)
            if on_disk is None:
                # TF Serving's file system source emits no version list for a base path it cannot
                # read ("transiently unavailable"), so nothing is unloaded: the same here. Nothing
                # served yet (a start before the folder exists): start() has said so already.
                if self._servables and not self._unreadable:
                    log.warning("cannot list %s (missing, not a folder, no permission or an I/O error): keeping "
                                "version(s) %s until it is back", self.model_dir, ", ".join(map(str, self._servables)))
                    self._unreadable = True
                return
            if self._unreadable:
                log.info("%s can be listed again", self.model_dir)
                self._unreadable = False
            current = self._servables
            candidates = {v: s for v, s in current.items() if v in on_disk}
            wanted = {v for v in self._labels.values() if v in on_disk}
            if on_disk:
                wanted.add(max(on_disk))
            for version in sorted(wanted - set(candidates), reverse=True):
                servable = self._load(version, on_disk[version])
                if servable is not None:
                    candidates[version] = servable
            keep = {v for v in wanted if v in candidates}
            if on_disk and max(on_disk) not in candidates:
                # The newest version failed to load: keep serving the newest one that works
                # rather than nothing (its files are still there).
                fallback = [v for v in candidates if v not in keep]
                if not fallback and not keep:
                    # Nothing serves (a start, a restart, a new replica): the newest older version
                    # on disk that loads, as the one that served before the broken one arrived
                    # would have kept serving.
                    for version in sorted(set(on_disk) - set(candidates), reverse=True):
                        servable = self._load(version, on_disk[version])
                        if servable is not None:
                            candidates[version] = servable
                            fallback = [version]
                            break
                if fallback:
                    keep.add(max(fallback))
            published = {v: candidates[v] for v in sorted(keep)}
            dropped = set(current) - set(published)
            if set(published) != set(current):
                self._servables = published  # the atomic swap
                for version in dropped:
                    self._set_status(VersionStatus(version, END))
                    log.info("unloaded %s version %d", self.model_name, version)
            self._forget_missing_failures(on_disk)

    def _reload_labels(self) -> None:
        if self.labels_file is None:
            return
        mtime = _mtime(self.labels_file)
        if mtime == self._labels_mtime:
            return
        self._labels_mtime = mtime
        try:
            self._labels = read_labels(self.labels_file)
            log.info("labels of %s: %s", self.model_name, self._labels)
        except ConfigError as err:
            log.error("%s; keeping the previous labels %s", err, self._labels)

    def _load(self, version: int, path: Path) -> Servable | None:
        stamp = _files_stamp(path)
        if version in self._failed and self._failed[version] == stamp:
            return None  # same files as the failed attempt: wait until any of them changes
        self._set_status(VersionStatus(version, LOADING))
        started = time.perf_counter()
        try:
            if not self.follow_external_links:
                check_inside(path, self.base_path)
            servable = Servable.load(self.model_name, version, path, warmup=self.warmup, text_limits=self.text_limits)
        except Exception as err:  # a broken version must not take the server down
            code = from_tensorflow_error(err).code if hasattr(err, "error_code") else Code.UNKNOWN
            message = f"Failed to load {self.model_name} version {version} from {path}: {one_line(err, 400)}"
            log.error("%s", message)
            self._failed[version] = stamp
            self._set_status(VersionStatus(version, END, code, message))
            return None
        self._failed.pop(version, None)
        self._set_status(VersionStatus(version, AVAILABLE))
        log.info("loaded %s version %d in %.2f s", self.model_name, version, time.perf_counter() - started)
        if servable.text is not None and self._servables:
            # A version that arrives while others serve (a hot swap) says what it accepts; the
            # first one is described once, in `vae-tf serve`'s start-up lines.
            log.info("%s version %d is a %s", self.model_name, version, servable.text.describe())
        return servable

    def _set_status(self, status: VersionStatus) -> None:
        self._status = {**self._status, status.version: status}

    def _forget_missing_failures(self, on_disk: Mapping[int, Path]) -> None:
        for version in [v for v in self._failed if v not in on_disk]:
            self._failed.pop(version)

    # -- requests ------------------------------------------------------------------------

    @property
    def versions(self) -> list[int]:
        """Loaded (servable) versions, ascending."""
        return sorted(self._servables)

    @property
    def labels(self) -> dict[str, int]:
        """Labels that resolve to a loaded version."""
        servables = self._servables
        return {label: v for label, v in self._labels.items() if v in servables}

    def resolve_label(self, name: str, label: str) -> int:
        if name == self.model_name:
            version = self._labels.get(label)
            if version is not None and version in self._servables:
                return version
        raise invalid_argument(f"Unrecognized servable version label: {label}")

    def servable(self, name: str, version: int | None = None, label: str | None = None) -> Servable:
        """The servable a request addresses (``ServerCore::GetServableHandle``)."""
        if version is not None and label is not None:
            raise invalid_argument(f"Both model version ({version}) and model version label ({label}) cannot be "
                                   "supplied.")
        if label is not None:
            version = self.resolve_label(name, label)
        servables = self._servables if name == self.model_name else {}
        if version is None:
            if not servables:
                raise not_found(f"Servable not found for request: Latest({name})")
            return servables[max(servables)]
        servable = servables.get(version)
        if servable is None:
            raise not_found(f"Servable not found for request: Specific({name}, {version})")
        return servable

    def status(self, name: str, version: int | None = None, label: str | None = None) -> list[VersionStatus]:
        """Version states, newest first (``GetModelStatusImpl``). A label is ignored and every
        version listed, as TF Serving does (``GetModelStatusWithModelSpec`` looks at the version
        only), over REST (``/labels/{l}``) and gRPC alike: to learn which version a label names,
        ask for the metadata with the label."""
        del label
        known = self._status if name == self.model_name else {}
        if version is not None:
            if version not in known:
                raise not_found(f"Could not find version {version} of model {name}")
            return [known[version]]
        if not known:
            raise not_found(f"Could not find any versions of model {name}")
        return [known[v] for v in sorted(known, reverse=True)]


def _files_stamp(path: Path) -> tuple:
    """What a version directory holds, as ``(relative path, size, mtime)`` of every file: a
    failed version is tried again when any of them changes (a version copied file by file failed
    while half there and was never retried once complete, as only saved_model.pb was looked at)."""
    found = []
    for root, _, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            try:
                info = os.stat(full)
            except OSError:
                continue
            found.append((os.path.relpath(full, path), info.st_size, info.st_mtime_ns))
    return tuple(sorted(found))


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


__all__ = ["AVAILABLE", "DEFAULT_POLL_SECONDS", "DEFAULT_SIGNATURE", "END", "INIT_OP_SIGNATURE", "InputSpec", "LOADING",
           "ModelStore", "PREDICT_METHOD", "Servable", "SessionFunction", "Signature", "VersionStatus", "check_inside",
           "first_non_finite", "non_finite_text", "read_labels", "scan_versions", "validate_model_name"]
