"""SavedModel writer: the serving contract (DESIGN.md, ../shared/reference/tf-serving-api.md §8).

Layout: ``<base_dir>/<name>/<version>/`` with ``saved_model.pb``, ``variables/`` and
``assets/vae_tf_model.json``, the layout TensorFlow Serving polls. Signatures (all inputs and
outputs batch-leading):

- ``encode(x: float32[B, *data_shape]) -> {embedding, z_mean, ...family outputs}``, registered
  first, so it is also ``serving_default``;
- ``decode(z: float32[B, code_size]) -> {x_mean, x_sample}``;
- ``reconstruct(x) -> {x_mean}``;
- ``sample(seed: int32[n, 2]) -> {z, x_mean, x_sample}``, one sample per seed row, stateless;
- then the latent family's own signatures (``LatentFamily.extra_signatures``), e.g.
  ``decode_category(z_gauss, category)`` of the Gaussian + categorical family.

A version is written into a hidden temporary sibling directory (TF Serving ignores names that
are not integers) and renamed into place, so a crash never leaves a half-written version and a
polling server never loads one.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import re
import shutil
import uuid
import warnings
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import tensorflow as tf

from vae_tf._traced import traced  # one tf.function per model, counted as its own
from vae_tf.errors import ConfigError, ModelNotFoundError

ASSET_NAME = "vae_tf_model.json"
WEIGHTS_NAME = "vae_tf.weights.h5"  # Keras weights, so vae_tf.export.load_vae can rebuild the model
FORMAT_VERSION = 1
SIGNATURES = ("encode", "decode", "reconstruct", "sample")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def list_versions(model_dir: str | os.PathLike) -> list[int]:
    """Integer version directories under ``model_dir`` (TF Serving's rule), ascending."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit() and int(p.name) > 0)


def _fsync_tree(root: Path) -> None:
    """Flush every file under ``root`` to disk before the rename makes the version visible."""
    for dirpath, _, filenames in os.walk(root):
        for filename in filenames:
            _fsync_file(os.path.join(dirpath, filename))


def _fsync_file(path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def export_model(
    model,
    base_dir: str | os.PathLike,
    name: str = "vae",
    version: int | None = None,
    *,
    config: Mapping[str, Any] | None = None,
    data_info: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model`` (a built :class:`vae_tf.models.VAE`) as a new SavedModel version.

    Args:
        base_dir: the model base path (TF Serving's ``MODEL_BASE_PATH``).
        name: the model name (directory under ``base_dir``; TF Serving's ``MODEL_NAME``).
        version: positive integer; default: one more than the highest existing version (or
            the next free one, when another process exports a version of the same model meanwhile).
        config: the resolved training config, stored in the assets JSON.
        data_info: data facts stored in the assets JSON (``value_range``, data set name, ...).
        extra: more top-level entries for the assets JSON (e.g. ``mlflow_run_id``).

    A model loaded with :func:`load_vae` (and fine-tuned) is exported, without ``config`` and
    ``data_info``, with those of the export it was loaded from, and ``fine_tuned_from`` naming
    that export and its MLflow run: ``vae-tf evaluate`` then evaluates it on its training data.

    The Keras weights go to ``assets/vae_tf.weights.h5`` and, for models made by
    :func:`vae_tf.models.build_vae`, the build spec to the assets JSON, so :func:`load_vae` can
    rebuild them as Python models (for ``vae-tf evaluate``, fine-tuning); serving uses the
    signatures only.

    Returns the final version directory. Refuses to overwrite an existing version.
    """
    from vae_tf.models import VAE

    if not isinstance(model, VAE):
        raise ConfigError(f"export_model writes a vae_tf VAE (vae_tf.models.build_vae), got a {type(model).__name__}; "
                          "export other Keras models with model.export(path)")
    if not _NAME_RE.match(name):
        raise ConfigError(f"model name {name!r} is not usable as a directory name: use letters, digits, '_', '.', '-'")
    model_dir = Path(base_dir) / name
    existing = list_versions(model_dir)
    next_free = version is None
    if next_free:
        version = (existing[-1] + 1) if existing else 1
    if not (isinstance(version, int) and version > 0):
        raise ConfigError(f"export version must be a positive integer, got {version!r}")
    final = model_dir / str(version)
    if final.exists():
        raise ConfigError(f"{final} already exists: export versions are immutable, pick another version or omit it")

    origin = getattr(model, "exported_from", None)
    if origin is not None and config is None and data_info is None:  # fine-tuned from an export: its training's
        config = origin.config
        data_info = {**(origin.data or {}), "value_range": origin.value_range}
        extra = {"fine_tuned_from": {"export": origin.version_dir, "mlflow_run_id": origin.mlflow_run_id},
                 **(extra or {})}
        warnings.warn(f"exporting with the training config and data facts of {origin.version_dir}, which this model "
                      "was loaded from (fine_tuned_from names it); give config= and data_info= if it was trained on "
                      "other data since", UserWarning, stacklevel=2)
    data_shape = tuple(model.data_shape)
    archive, endpoints = _build_archive(model)

    model_dir.mkdir(parents=True, exist_ok=True)
    tmp = model_dir / f".tmp-{version}-{uuid.uuid4().hex[:8]}"
    try:
        archive.write_out(str(tmp), verbose=False)
        assets = tmp / "assets"
        assets.mkdir(exist_ok=True)
        info = model_info(model, name, version, data_shape, config=config, data_info=data_info, endpoints=endpoints)
        if extra:
            info.update(extra)
        # Keras' own weights file, keyed by the layer tree (stable across processes): the model
        # can be rebuilt for evaluation or fine-tuning (load_vae, from the build spec; a model
        # of the caller's own networks, by building it again and loading these weights). TF
        # Serving ignores assets.
        if not model.built:  # a VAE of the caller's own networks, fitted but never called
            model.build()
        model.save_weights(str(assets / WEIGHTS_NAME))
        (assets / ASSET_NAME).write_text(json.dumps(info, indent=2, sort_keys=True, default=str))
        _fsync_tree(tmp)
        for _ in range(1000):
            try:
                os.rename(tmp, final)  # atomic on one file system; fails rather than overwrite
                break
            except OSError:
                if not (next_free and final.exists()):
                    raise
            # Another process exported this version first (two runs of one model at once, as
            # `vae-tf compare --jobs 2` trains a run's seeds): take the next free version.
            version = max([version, *list_versions(model_dir)]) + 1
            final = model_dir / str(version)
            info["version"] = version
            (assets / ASSET_NAME).write_text(json.dumps(info, indent=2, sort_keys=True, default=str))
            _fsync_file(assets / ASSET_NAME)
        else:
            raise OSError(f"no free version under {model_dir} after 1000 tries; export with an explicit version")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


class _ServingFunctions:
    """Holds a model's serving functions as a plain attribute: not a Keras layer, variable or
    TensorFlow trackable, so neither Keras' state tracking nor a checkpoint of the model sees it."""

    __slots__ = ("functions",)

    def __init__(self, functions: dict):
        self.functions = functions


def serving_functions(model) -> dict:
    """The model's signatures as ``{name: tf.function}`` with fixed input signatures: ``encode``,
    ``decode``, ``reconstruct``, ``sample`` (:data:`SIGNATURES`), then the latent family's own.

    Made once per model and kept on it, so each is traced once per process: the export writes
    these graphs, and a run's figures and text tables (:mod:`vae_tf.plots`) call them, in graph
    mode, instead of running the same methods eagerly (a text model's decoding loop ran op by
    op, 0.6-0.9 s a run; docs/performance.md, "Figures call the traced signatures"). The functions
    capture the model's variables, not their values: a call after more training sees the new
    weights. Traced without AutoGraph (why: vae_tf.metrics._compiled): the model's code writes its
    loops and branches as tf.while_loop / tf.cond itself."""
    holder = getattr(model, "_vae_tf_serving_functions", None)
    if holder is None:
        holder = _ServingFunctions(_make_serving_functions(model))
        model._vae_tf_serving_functions = holder
    return holder.functions


def _make_serving_functions(model) -> dict:
    x_spec = model.input_signature  # float32 [B, *data_shape], or string [B] for a text model
    z_spec = tf.TensorSpec((None, model.latent.code_size), tf.float32, name="z")
    seed_spec = tf.TensorSpec((None, 2), tf.int32, name="seed")
    functions = {name: traced(fn, model, name=name, input_signature=[spec])
                 for name, fn, spec in zip(SIGNATURES, (_encode, _decode, _reconstruct, _sample),
                                           (x_spec, z_spec, x_spec, seed_spec))}
    return {**functions, **model.latent.extra_signatures(model)}


# The signatures' bodies: module-level, bound to a model by vae_tf._traced.traced.
def _encode(model, x):
    return model.encode(x)


def _decode(model, z):
    return model.decode(z)


def _reconstruct(model, x):
    return model.reconstruct(x)


def _sample(model, seed):
    return model.sample(seed)


def _build_archive(model):
    """The export archive and its endpoint functions, ``{name: tf.function}``."""
    from keras.export import ExportArchive

    # Endpoints capture the model's variables; ExportArchive.track(model) is deliberately not
    # called: it would store every variable twice (keras-team/keras#23553).
    archive = ExportArchive()
    for resource in getattr(model, "export_resources", lambda: [])():
        archive.track(resource)  # lookup tables (a text model's vocabulary): resources, no variables
    endpoints = serving_functions(model)
    # Keras is handed each endpoint's traced graph (wrapped in a thin tf.function of its own), not
    # the tf.function: TensorFlow caches traces per save context, so a tf.function traced before
    # `tf.saved_model.save` (Keras must, to find its variables) is traced again inside it and
    # stored twice. This way the model is traced once per endpoint and the SavedModel holds one
    # graph of each (docs/performance.md, "Exports traced once").
    for endpoint_name, fn in endpoints.items():  # `encode` first: it becomes serving_default
        archive.add_endpoint(endpoint_name, fn.get_concrete_function(), input_signature=fn.input_signature)
    return archive, endpoints


def _signature_info(endpoints: dict) -> dict:
    """``{name: {"inputs": [...], "outputs": [...]}}`` of every exported signature."""
    info = {}
    for endpoint_name, fn in endpoints.items():
        outputs = fn.get_concrete_function().structured_outputs
        info[endpoint_name] = {"inputs": [spec.name for spec in fn.input_signature], "outputs": sorted(outputs)}
    return info


def model_info(model, name: str, version: int, data_shape, *, config=None, data_info=None, endpoints=None) -> dict:
    """The contents of ``assets/vae_tf_model.json``."""
    import vae_tf

    data_info = dict(data_info or {})
    data_info.pop("vocabulary", None)  # a text model's vocabulary is in its build spec (and its lookup table)
    if endpoints is None:
        endpoints = serving_functions(model)
    # Not given (a library export without data_info): the likelihood's support where it is bounded
    # (what its data must lie in), else unknown; [0, 1] was recorded for standardised tabular data.
    support = getattr(getattr(model, "likelihood", None), "support", None)
    bounded = support is not None and all(np.isfinite(support)) and getattr(model, "modality", "image") != "text"
    value_range = data_info.pop("value_range", tuple(map(float, support)) if bounded else None)
    info = {
        "format_version": FORMAT_VERSION,
        "vae_tf_version": vae_tf.__version__,
        "tensorflow_version": tf.__version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "name": name,
        "version": version,
        "modality": getattr(model, "modality", "image"),
        "objective": getattr(model, "objective", type(model).__name__),
        "composition": getattr(model, "composition", None),
        "data_shape": list(data_shape),
        "value_range": None if value_range is None else list(value_range),
        "data": data_info,
        "latent": model.latent.layout(),
        "likelihood": model.likelihood.describe(),
        "signatures": _signature_info(endpoints),
        "config": dict(config) if config is not None else None,
        "build_spec": getattr(model, "build_spec", None),
        # whether load_vae(optimizer=...) may restore the optimizer state the weights file holds
        "optimizer": optimizer_state_kind(getattr(model, "optimizer", None)),
    }
    if getattr(model, "codec", None) is not None:
        info["text"] = model.codec.describe()
    return info


def load_model_info(version_dir: str | os.PathLike) -> dict:
    """Read ``assets/vae_tf_model.json`` of an exported version."""
    path = Path(version_dir) / "assets" / ASSET_NAME
    if not path.is_file():
        raise ModelNotFoundError(f"{path} not found: {version_dir} is not a vae-tf export (`vae-tf train` or vae_tf.export.export_model makes one)")
    return json.loads(path.read_text())


def resolve_version_dir(path: str | os.PathLike) -> Path:
    """Accept a version directory or a model directory (then its highest version)."""
    if str(path).startswith(("models:/", "runs:/")):  # a registry or run URI, which no path resolves
        raise ModelNotFoundError(f"{path} is an MLflow model URI, not a directory: download it first, e.g. "
                                 "training.evaluate.resolve_model(uri, folder)[0] (what vae-tf evaluate does), and "
                                 "give that directory")
    path = Path(path)
    if (path / "saved_model.pb").is_file():
        return path
    versions = list_versions(path)
    if not versions:
        raise ModelNotFoundError(f"no SavedModel at {path}: give a model directory with integer versions or a version directory")
    return path / str(versions[-1])


def optimizer_state_kind(optimizer) -> dict | None:
    """What decides whether one optimizer's saved state fits another: the Keras optimizer class
    (a subclass such as vae-tf's ``FusedAdam`` counts as the Keras class it extends, a
    ``LossScaleOptimizer`` as the optimizer it wraps) and whether its learning rate is a schedule
    (then it has no learning-rate variable). None for no optimizer."""
    if optimizer is None:
        return None
    import keras

    inner = getattr(optimizer, "inner_optimizer", optimizer)
    keras_class = next((c for c in type(inner).__mro__ if c.__module__.startswith("keras.")), type(inner))
    return {"class": keras_class.__name__, "learning_rate_schedule": not isinstance(inner.learning_rate, keras.Variable)}


def _state_misfit(saved, given: dict) -> str | None:
    """Why an export's optimizer state (``saved``, :func:`optimizer_state_kind` at export; None
    for none; ``"unknown"`` for exports made before it was recorded) cannot be restored into an
    optimizer of kind ``given``; None when it can (or, unknown, may: Keras checks the count)."""
    if saved is None:
        return "was exported from a model that was not compiled, so it holds no optimizer state"
    if saved == "unknown":
        return None
    if saved["class"] != given["class"]:
        return f"holds the state of an {saved['class']} optimizer, not of {given['class']} (pass one to continue it)"
    if saved["learning_rate_schedule"] != given["learning_rate_schedule"]:
        then = "a learning-rate schedule" if saved["learning_rate_schedule"] else "a constant learning rate"
        return f"holds the state of an optimizer that ran with {then}, which this one does not"
    return None


def load_vae(version_dir: str | os.PathLike, optimizer=None, **compile_options):
    """Rebuild the Python :class:`~vae_tf.models.VAE` of an export (or of a model directory's
    highest version) from its build spec and Keras weights, for evaluation or fine-tuning.

    The model comes back uncompiled, unless ``optimizer`` is given (a Keras optimizer or its
    name, with any other ``model.compile`` options): then it is compiled with it and, when it is
    of the kind the run trained with (the Keras class, Adam for vae-tf's own, and a constant
    learning rate or a schedule as then: the export records it), the optimizer state the export
    holds is restored. Fine-tuning then continues the run's optimizer (Adam's moments and its
    step count ``model.optimizer.iterations``) at the constant learning rate given, not the
    saved one; a schedule given continues from that step count (``iterations.assign(0)``
    restarts it). Otherwise, or when the export holds no state, the optimizer starts afresh and
    a warning says why. A model compiled later, by the caller, starts its optimizer afresh too.

    What the model's own variables hold always continues from the export: β, a controller's
    state and the step counter ``model.train_steps`` that schedules (annealing, capacity, a
    temperature) read; ``model.train_steps.assign(0)`` restarts them. To fine-tune under another
    KL weight, build the model with :func:`vae_tf.models.build_vae` and the new objective, then
    ``model.load_weights(f"{version_dir}/assets/{WEIGHTS_NAME}")``."""
    version_dir = resolve_version_dir(version_dir)
    info = load_model_info(version_dir)
    model = _load_vae(version_dir, info, optimizer, **compile_options)
    # What the export recorded of its training, for an export of this model after fine-tuning
    # (export_model): it had no data or config, and vae-tf evaluate evaluated it on the default
    # data set without a word.
    model.exported_from = ExportOrigin(str(version_dir.resolve()), info.get("config"), info.get("data"),
                                       info.get("value_range"), info.get("mlflow_run_id"))
    return model


@dataclasses.dataclass(frozen=True)
class ExportOrigin:
    """The export a model was loaded from (:func:`load_vae`): its directory and what it recorded
    of its training (config, data facts, value range, MLflow run)."""

    version_dir: str
    config: dict | None
    data: dict | None
    value_range: list | None
    mlflow_run_id: str | None


def _load_vae(version_dir: Path, info: dict, optimizer=None, **compile_options):
    """:func:`load_vae` once the export is found and read."""
    spec = info.get("build_spec")
    weights = version_dir / "assets" / WEIGHTS_NAME
    if not spec and weights.is_file():
        raise ModelNotFoundError(f"{version_dir} is a model of networks not built by build_vae (no build spec): it "
                                 "can be served, but load_vae cannot rebuild it; build the same model in Python and "
                                 f"call model.load_weights('{weights}')")
    if not spec or not weights.is_file():
        raise ModelNotFoundError(f"{version_dir} has no build spec or weights (exported by an older vae-tf or "
                                 "not from build_vae): it can be served but not rebuilt; export it again")
    import keras

    from vae_tf.models import build_vae

    spec = dict(spec)
    if isinstance(spec.get("text"), dict):  # exported before symbol clusters: its tokens are split as then
        spec["text"] = {"symbol_clusters": False, **spec["text"]}

    def rebuilt():
        try:
            return build_vae(spec["data_shape"], **{k: v for k, v in spec.items() if k != "data_shape"})
        except ConfigError as err:  # a part the user registered (NETWORKS.register, ...) lives in their code
            if str(err).startswith("unknown ") and not str(err).startswith("unknown option"):
                raise ConfigError(f"{version_dir} was built with a part this process does not know ({err}); if it is "
                                  "one registered where the model was trained, register it (e.g. "
                                  "vae_tf.networks.NETWORKS.register) before load_vae") from None
            raise

    model = rebuilt()
    if optimizer is None:
        model.load_weights(str(weights))
        return model
    optimizer = keras.optimizers.get(optimizer)
    why = _state_misfit(info.get("optimizer", "unknown"), optimizer_state_kind(optimizer))
    if why is None:
        model.compile(optimizer=optimizer, **compile_options)
        model._build_optimizer()  # its variables must exist for Keras to load the saved ones
        rate = model.optimizer.learning_rate
        constant = float(rate.numpy()) if isinstance(rate, keras.Variable) else None
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                model.load_weights(str(weights))
        except ValueError:  # an export of before: same count of variables, other shapes
            caught, why = [], "holds an optimizer state that does not fit this optimizer"
        for warning in caught:
            if "Skipping variable loading for optimizer" in str(warning.message):
                why = "holds no optimizer state that fits this optimizer"
            else:
                warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
        if why is None:
            if constant is not None:
                model.optimizer.learning_rate.assign(constant)
            return model
        model = rebuilt()  # a failed load may have left some variables loaded
        optimizer = type(optimizer).from_config(optimizer.get_config())  # the first was built for that model
    # The model's weights alone (an uncompiled model reads no optimizer state), then the optimizer.
    model.load_weights(str(weights))
    model.compile(optimizer=optimizer, **compile_options)
    model._build_optimizer()
    warnings.warn(f"{version_dir} {why}: fine-tuning starts the optimizer afresh", UserWarning, stacklevel=2)
    return model


__all__ = ["ASSET_NAME", "SIGNATURES", "WEIGHTS_NAME", "export_model", "list_versions", "load_model_info", "load_vae",
           "optimizer_state_kind",
           "model_info", "resolve_version_dir", "serving_functions"]
