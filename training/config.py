"""Training configuration: YAML file + ``--set key=value`` overrides, validated by one schema.

The schema is the pydantic models below (strict types, no NaN, unknown keys refused with a "did you
mean"); it is the one source of the defaults (``vae-tf train --print-config`` prints them, and the
embedded ``configs/default.yaml`` only names the run). Sections that name a registry entry are
validated against that registry's own schema, so every option of every part is checked before a
model is built or an MLflow run is created:

- ``model.latent`` / ``model.likelihood`` / ``model.network``: their first key names a registry
  entry (``family``, ``name``, ``kind``); the rest are its options, checked against the builder's
  signature (:func:`vae_tf._schema.signature_model`);
- ``objective``: the composable objective's slots (:mod:`vae_tf.remedies`), each validated by its
  remedy's ``Options``; the earlier preset form (``{name: control_vae, beta, options}``) is
  translated to the slot form (:mod:`vae_tf.remedies.presets`).

Every mistake is one line (:class:`vae_tf.errors.ConfigError`).
"""

from __future__ import annotations

import copy
import glob
import os
import re
import warnings
from pathlib import Path
from typing import Any, Literal

import pydantic
import yaml
from pydantic import (BaseModel, ConfigDict, Field, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt,
                      PrivateAttr, field_validator, model_validator)

from vae_tf.errors import ConfigError

from vae_tf.remedies.pretraining import DEFAULT_EPOCHS as DEFAULT_PRETRAIN_EPOCHS

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "default.yaml"


class Section(BaseModel):
    """A closed config section: strict types, finite numbers, unknown keys refused."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, validate_assignment=True)


class DataConfig(Section):
    name: str = "digits"                            # registry name (vae_tf.data.DATASETS)
    path: str | None = None                         # file/folder for npz, npy, images, text_file, wordnet
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    test_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    max_samples: PositiveInt | None = None          # truncate (after the seeded shuffle) for quick runs
    options: dict = Field(default_factory=dict)     # loader options, e.g. {image_size: 32} for dsprites
    # Static binarisation of images in [0, 1] (threshold at 0.5, or one seeded Bernoulli draw per
    # value): a Bernoulli likelihood is then a normalised density and IW-NLL a real NLL.
    binarize: Literal["none", "threshold", "sample"] = "none"

    @model_validator(mode="after")
    def _leaves_training_data(self):
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError("data.val_fraction + data.test_fraction must be < 1 to leave training data")
        return self

    @field_validator("path")
    @classmethod
    def _absolute_path(cls, path: str | None) -> str | None:
        """A relative path is the working directory's: made absolute here, so that the config a run
        logs and its export keep (which `vae-tf evaluate` reads) still find the data elsewhere."""
        if path is None or "://" in path:
            return path
        return os.path.abspath(os.path.expanduser(path))


class ModelConfig(Section):
    latent: dict = Field(default_factory=lambda: {"family": "gaussian", "latent_dim": 8})
    likelihood: dict = Field(default_factory=lambda: {"name": "bernoulli"})
    network: dict = Field(default_factory=lambda: {"kind": "mlp", "hidden": [256, 128]})


class ObjectiveConfig(Section):
    """The composable objective (:mod:`vae_tf.remedies`); after validation every slot holds its
    full options, defaults included (what ``--print-config`` and MLflow show)."""

    kl_weight: dict = Field(default_factory=lambda: {"kind": "constant", "beta": 1.0})
    regularizers: list[dict] = Field(default_factory=list)
    input_noise: dict = Field(default_factory=lambda: {"kind": "none"})
    inference: dict = Field(default_factory=lambda: {"kind": "standard"})
    _preset: str | None = PrivateAttr(default=None)

    @property
    def preset(self) -> str | None:
        """The preset name the config used (``objective.name``), if any."""
        return self._preset

    def summary(self) -> str:
        """One line naming what is composed, e.g. ``control + mi_q + fgsm + aggressive``."""
        from vae_tf.remedies import parse_objective

        return parse_objective(self.model_dump()).summary()


class PretrainConfig(Section):
    """Encoder pretraining (vae_tf.remedies.pretraining): off while ``fraction`` is 0."""

    fraction: float = Field(0.0, ge=0.0, lt=1.0)    # labelled fraction of the training split reserved for it
    epochs: PositiveInt = DEFAULT_PRETRAIN_EPOCHS
    batch_size: PositiveInt | None = None           # None: train.batch_size
    learning_rate: PositiveFloat | None = None      # None: train.learning_rate


class TrainConfig(Section):
    epochs: PositiveInt = 40
    batch_size: PositiveInt = 64
    learning_rate: PositiveFloat = 1e-3
    steps_per_execution: PositiveInt = 4            # steps per tf.function call; 4 measured best on CPU
    jit_compile: Literal["auto", True, False] = "auto"  # XLA; auto: Keras' choice (on where there is a GPU)
    early_stopping_patience: PositiveInt | None = 10  # epochs without a better val ELBO; null: off
    run_dir: str = "runs"                           # checkpoints go to <run_dir>/<mlflow run id>/checkpoints
    checkpoints_to_keep: PositiveInt = 3
    checkpoint_every_steps: PositiveInt | None = None  # also save every N training steps (besides every epoch)
    clip_norm: PositiveFloat | None = None          # clip the global gradient norm; null: off
    strategy: Literal["none", "mirrored", "multi_worker"] = "none"
    cpu_replicas: PositiveInt | None = None         # mirrored without GPUs: split the CPU into this many replicas
    scale_learning_rate: Literal["none", "linear", "sqrt"] = "none"
    precision: Literal["float32", "mixed_bfloat16", "mixed_float16"] = "float32"
    deterministic: bool = False                     # tf.config.experimental.enable_op_determinism()
    verbose: Literal[0, 1, 2] | None = None         # null: progress bar on a terminal, one line per epoch otherwise
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)


class ExportConfig(Section):
    base_dir: str = "models"                        # MODEL_BASE_PATH; the model goes to <base_dir>/<name>/<version>
    version: PositiveInt | None = None              # null: next free version


#: URI schemes MLflow 3.17 keeps runs under (a database's with any driver: ``postgresql+psycopg2://``);
#: a path without a scheme is a local folder store. Plugins add theirs (``mlflow.tracking_store`` entry points).
TRACKING_SCHEMES = ("sqlite", "file", "http", "https", "postgresql", "mysql", "mssql", "databricks", "databricks-uc",
                    "uc")


def tracking_uri_problem(uri: str, *, opening: bool = False) -> str | None:
    """What is wrong with a tracking URI's scheme (a misspelt ``sqllite:///x.db`` failed after
    training started, with MLflow's traceback), or None. Checked without importing MLflow.

    ``opening``: the store is about to be used (a config given now, the URI a run or evaluation
    opens), so a folder store is refused unless ``MLFLOW_ALLOW_FILE_STORE`` allows it, as MLflow
    3.17 refuses it (after the data was read, in 51 lines). A config read back from an export or
    a run is not opening: ``vae-tf evaluate --no-mlflow`` of a model logged to a folder works."""
    from importlib.metadata import entry_points
    from urllib.parse import urlparse

    scheme = urlparse(uri).scheme.lower()
    if uri.strip().lower() in ("databricks", "databricks-uc", "uc"):  # MLflow's own names for those stores
        return None
    if len(scheme) <= 1 or scheme == "file":  # a folder (or a Windows drive letter), file:PATH
        return _file_store_problem(uri) if opening else None
    if scheme.split("+")[0] in TRACKING_SCHEMES or scheme in {e.name for e in entry_points(group="mlflow.tracking_store")}:
        return None
    import difflib

    close = difflib.get_close_matches(scheme, TRACKING_SCHEMES, n=1)
    hint = f"did you mean {close[0]}://...? " if close else ""
    return (f"{uri!r} has an unknown scheme {scheme + ':'!r}; {hint}MLflow keeps runs at sqlite:///PATH.db, "
            "http(s)://HOST:PORT or a database URI (postgresql://, mysql://, mssql://)")


def env_tracking_uri() -> str | None:
    """``$MLFLOW_TRACKING_URI`` checked as a store about to be opened (:func:`tracking_uri_problem`),
    or None when unset; without importing MLflow, so `vae-tf train` says a bad one at once."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    problem = tracking_uri_problem(uri, opening=True) if uri else None
    if problem:
        from vae_tf.errors import ConfigError

        raise ConfigError(f"MLFLOW_TRACKING_URI {problem}")
    return uri or None


def _file_store_problem(uri: str) -> str | None:
    """Why MLflow will refuse folder store ``uri``, or None when ``MLFLOW_ALLOW_FILE_STORE``
    allows it (read as MLflow reads a boolean variable: true/1 or false/0, any case, nothing else)."""
    raw = os.environ.get("MLFLOW_ALLOW_FILE_STORE")
    if raw is not None and raw.lower() in ("true", "1"):
        return None
    if raw is not None and raw.lower() not in ("false", "0"):
        return (f"is a folder store ({uri!r}) and MLFLOW_ALLOW_FILE_STORE={raw!r} is none of true, false, 1, 0, "
                "which MLflow refuses; set it to true")
    return (f"{uri!r} is a folder store, which MLflow 3.17 refuses (its file store is in maintenance mode); use "
            "sqlite:///PATH.db, or set MLFLOW_ALLOW_FILE_STORE=true to keep logging to the folder")


with warnings.catch_warnings():  # `register` is also ABCMeta.register, which no one calls on a config section
    warnings.filterwarnings("ignore", message='Field name "register"', category=UserWarning)

    class MlflowConfig(Section):
        experiment: str = Field("vae-tf", min_length=1, max_length=500)  # MLflow's limit
        tracking_uri: str | None = None                 # null: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here
        run_name: str | None = None
        register: bool = True                           # register the logged model under `name`
        log_figures: bool = True
        retry_seconds: NonNegativeFloat = 60.0          # while MLflow is unreachable, retry the buffered logging this often

        @field_validator("tracking_uri")
        @classmethod
        def _known_scheme(cls, uri: str | None) -> str | None:
            problem = tracking_uri_problem(uri) if uri else None
            if problem:
                raise ValueError(problem)
            return uri


class Config(Section):
    name: str = Field("vae", pattern=r"^[A-Za-z0-9_.-]+$")  # export directory and registered model name
    seed: NonNegativeInt = 0
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    objective: ObjectiveConfig = Field(default_factory=ObjectiveConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    mlflow: MlflowConfig = Field(default_factory=MlflowConfig)

    def to_dict(self) -> dict:
        return self.model_dump(mode="python")

    def flat(self) -> dict[str, Any]:
        """``{"train.epochs": 40, ...}``: the form MLflow params take (of :meth:`shareable`)."""
        return flatten(self.shareable())

    def shareable(self) -> dict:
        """:meth:`to_dict` as it may be shown to others (MLflow params and ``config.yaml``, an
        export's assets): ``mlflow.tracking_uri`` without the user and password it may hold
        (``postgresql://user:pw@db/mlflow`` -> ``postgresql://db/mlflow``). The run record,
        which a resume reconnects with, keeps them (and is readable by its writer only)."""
        tree = self.to_dict()
        if tree["mlflow"].get("tracking_uri"):
            tree["mlflow"]["tracking_uri"] = without_credentials(tree["mlflow"]["tracking_uri"])
        return tree

    def replace(self, **sections) -> "Config":
        """A copy with some values changed, validated: ``config.replace(train={"steps_per_execution": 1})``."""
        tree = self.to_dict()
        for section, values in sections.items():
            tree[section] = {**tree[section], **values} if isinstance(values, dict) else values
        return from_dict(tree)


# --- loading -----------------------------------------------------------------------------------

def without_credentials(uri: str) -> str:
    """``uri`` without a user or password in its network location."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


class _YamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader (YAML 1.1) with YAML 1.2's floats: 1.1 reads ``1e-4`` (no dot) as
    the string "1e-4", so ``learning_rate: 1e-4``, the usual way to write one, was refused."""


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def yaml_load(text: str):
    """A YAML document as configs and suites read it (:class:`_YamlLoader`)."""
    return yaml.load(text, Loader=_YamlLoader)  # noqa: S506 - a SafeLoader subclass


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.epochs=5"`` -> (["train", "epochs"], 5); the value is parsed as YAML."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {text!r} is not of the form key.path=value (e.g. --set train.epochs=5)")
    try:
        value = yaml_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw  # not YAML: keep the text as a string
    return key.split("."), value


def set_path(tree: dict, path: list[str], value: Any, text: str) -> None:
    """Set ``tree[path[0]][path[1]]... = value`` (creating sections), for the override ``text``."""
    node = tree
    for depth, part in enumerate(path[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            where = ".".join(path[: depth + 1])
            raise ConfigError(f"--set {text!r}: {where} is a value, not a section")
        node = child
    node[path[-1]] = value


def apply_overrides(tree: dict, overrides) -> dict:
    """``tree`` with the ``key.path=value`` of ``overrides`` merged in (a copy): the overrides
    form one tree, merged like a config layer (:func:`deep_merge`), so ``--set
    objective.kl_weight.kind=linear`` replaces the file's controller instead of keeping its
    options."""
    layer: dict = {}
    for text in overrides:
        keys, value = parse_override(text)
        set_path(layer, keys, value, text)
    return deep_merge(tree, layer)


#: Keys that name a registry entry whose options depend on it: a mapping that changes one of them
#: replaces the mapping it updates instead of merging into it (``--set model.network.kind=conv``
#: does not keep the mlp's ``hidden``; a slot's other kind does not inherit the first's options).
#: A latent ``family`` merges (``latent_dim`` is every family's).
REPLACING_KEYS = ("kind", "name")

#: What survives such a replacement, by the mapping's key: another data set (``data.name``) gets
#: its own ``path`` and ``options``, but keeps the splits, the sample cap and the binarisation,
#: which mean the same for every data set (a suite size that moves a binarised study to
#: ``mnist_5k`` stays binarised).
KEPT_ON_REPLACE = {"data": ("val_fraction", "test_fraction", "max_samples", "binarize")}


def deep_merge(base: dict, update: dict) -> dict:
    """``update`` merged into a copy of ``base``, mapping by mapping (:data:`REPLACING_KEYS`,
    :data:`KEPT_ON_REPLACE`)."""
    out = copy.deepcopy(base)
    for key, value in (update or {}).items():
        current = out.get(key)
        if not (isinstance(value, dict) and isinstance(current, dict)):
            out[key] = copy.deepcopy(value)
        elif any(k in value and k in current and value[k] != current[k] for k in REPLACING_KEYS):
            kept = {k: current[k] for k in KEPT_ON_REPLACE.get(key, ()) if k in current and k not in value}
            out[key] = {**copy.deepcopy(kept), **copy.deepcopy(value)}
        else:
            out[key] = deep_merge(current, value)
    return out


def yaml_file(path: Path, what: str):
    """The document of a YAML file (:func:`yaml_load`; empty: ``{}``); a syntax error is one line
    naming ``what`` (e.g. "config file x.yaml") and where."""
    try:
        return yaml_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{what} is not valid YAML{where}: {getattr(err, 'problem', err)}") from None


def read_yaml(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found: pass an existing YAML file to --config")
    tree = yaml_file(path, f"config file {path}")
    if not isinstance(tree, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections, found a {type(tree).__name__}")
    return tree


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults, then the YAML file (if any), then ``--set`` overrides; validated, and what it
    would open checked (:func:`from_dict` with ``given_now``)."""
    tree: dict = read_yaml(path) if path is not None else {}
    return from_dict(apply_overrides(tree, overrides), given_now=True)


def _objective_tree(tree: dict) -> tuple[dict, str | None]:
    """The objective section in the slot form, and the preset name it used (if any)."""
    from vae_tf.remedies.presets import is_preset, preset_to_slots

    objective = tree.get("objective")
    if objective is None:
        return {}, None
    if not isinstance(objective, dict):
        raise ConfigError(f"objective must be a mapping, got {objective!r}")
    if is_preset(objective):
        return preset_to_slots(objective), objective.get("name", "elbo")
    shorthand = {key: {"kind": value} for key, value in objective.items()  # `inference: aggressive`
                 if key in ("kl_weight", "input_noise", "inference") and isinstance(value, str)}
    if isinstance(objective.get("regularizers"), list):
        shorthand["regularizers"] = [{"kind": r} if isinstance(r, str) else r for r in objective["regularizers"]]
    return {**objective, **shorthand}, None


def from_dict(tree: dict, *, given_now: bool = False) -> Config:
    """Validate a config tree (defaults filled in) into a :class:`Config`; one-line ConfigError.
    ``given_now``: a config a user gives now, so what it would open is checked too, before
    TensorFlow is imported (:func:`_check_what_it_opens`); off for configs read back elsewhere
    (an export's, a run's), whose data and store may be reached from another place, or not at all."""
    if not isinstance(tree, dict):
        raise ConfigError(f"a config must be a mapping of sections, got {tree!r}")
    tree = copy.deepcopy(tree)
    objective, preset = _objective_tree(tree)
    if "objective" in tree:
        tree["objective"] = objective
    merged = deep_merge(Config().to_dict(), tree)
    try:
        config = Config.model_validate(merged)
    except pydantic.ValidationError as err:
        raise ConfigError(_config_error(err)) from None
    config.objective._preset = preset
    check_registries(config, given_now=given_now)
    return config


def _config_error(err: pydantic.ValidationError) -> str:
    from vae_tf._schema import one_line

    line = one_line(err, Config, "")
    return line.replace("unknown option ", "unknown config key ", 1)


def tokenizer_of_then(config: Config, tokenizer: dict | None) -> Config:
    """``config`` with its text data set tokenised as ``tokenizer`` says (a run's or a model's
    recorded ``{"lowercase", "split_punctuation", "symbol_clusters"}``; without the key, or
    ``None`` for a run that recorded none: made before symbol clusters existed, so tokenised
    without them), so that resuming or evaluating it rebuilds the vocabulary its checkpoint or
    weights were made with. A setting the config gives itself is kept; other data sets unchanged."""
    from vae_tf.data import dataset_options

    if "symbol_clusters" in config.data.options or "symbol_clusters" not in dataset_options(config.data.name):
        return config
    clusters = bool((tokenizer or {}).get("symbol_clusters", False))
    if clusters:
        return config
    return config.replace(data={"options": {**config.data.options, "symbol_clusters": False}})


def _check_what_it_opens(config: Config) -> None:
    """A local ``data.path`` that does not exist and a tracking store MLflow would refuse (a
    folder store): said now, where the loader and MLflow said it seconds later, after imports."""
    problem = tracking_uri_problem(config.mlflow.tracking_uri, opening=True) if config.mlflow.tracking_uri else None
    if problem:
        raise ConfigError(f"mlflow.tracking_uri {problem}")
    path = config.data.path
    if path and "://" not in path and not glob.has_magic(path) and not Path(path).exists():
        from vae_tf.errors import DataError

        raise DataError(f"no such file: {path!r} (data.path); check the path")


def check_registries(config: Config, *, given_now: bool = False) -> None:
    """Validate the sections that name registry entries against those registries (model parts
    and the objective's slots), and what the parts need of each other; normalises the objective to
    its full slot form. One-line ConfigError; nothing is built. The data set is checked first: its
    registry loads no TensorFlow, the model's and the objective's do (seconds)."""
    from vae_tf.data import check_request

    check_request(config.data.name, path=config.data.path, options=config.data.options)
    if given_now:
        _check_what_it_opens(config)
    from vae_tf.models import check_model_spec, check_requirements
    from vae_tf.remedies import parse_objective

    model = config.model
    check_model_spec(model.latent, model.likelihood, model.network)
    if config.objective.preset:
        check_requirements({"name": config.objective.preset}, model.likelihood)
    composition = parse_objective(config.objective.model_dump())
    for key, value in composition.to_dict().items():
        setattr(config.objective, key, value)
    if composition.inference.kind == "aggressive" and config.data.val_fraction <= 0:
        raise ConfigError("objective.inference aggressive needs held-out data for its per-epoch MI check: set "
                          "data.val_fraction > 0")


__all__ = ["DEFAULT_CONFIG", "DEFAULT_PRETRAIN_EPOCHS", "KEPT_ON_REPLACE", "REPLACING_KEYS", "Config", "DataConfig", "ExportConfig",
           "MlflowConfig", "ModelConfig", "ObjectiveConfig", "PretrainConfig", "TrainConfig", "apply_overrides",
           "check_registries", "deep_merge", "flatten", "from_dict", "load_config", "parse_override", "read_yaml",
           "set_path", "tokenizer_of_then"]
