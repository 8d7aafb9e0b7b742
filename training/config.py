"""Training configuration: YAML file + ``--set key=value`` overrides, validated with one-line errors.

The schema is the dataclasses below. ``model.latent``, ``model.likelihood`` and
``model.network`` are open mappings: their first key names a registry entry (``family``,
``name``, ``kind``) and the rest are that entry's options, checked by the builders in
``vae_tf``. Every other section is closed: an unknown key is an error that suggests the
closest valid one.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vae_tf.errors import ConfigError

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "default.yaml"


@dataclass
class DataConfig:
    name: str = "digits"                 # registry name (vae_tf.data.DATASETS)
    path: str | None = None              # file/folder for npz, npy, images
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    max_samples: int | None = None       # truncate (after the seeded shuffle) for quick runs
    options: dict = field(default_factory=dict)  # loader options, e.g. {image_size: 32} for dsprites


@dataclass
class ModelConfig:
    latent: dict = field(default_factory=lambda: {"family": "gaussian", "latent_dim": 8})
    likelihood: dict = field(default_factory=lambda: {"name": "bernoulli"})
    network: dict = field(default_factory=lambda: {"kind": "mlp", "hidden": [256, 128]})


@dataclass
class ObjectiveConfig:
    name: str = "elbo"
    beta: float = 1.0
    options: dict = field(default_factory=dict)  # objective-specific options


@dataclass
class PretrainConfig:
    """Encoder pretraining (vae_tf.pretraining): off while ``fraction`` is 0."""

    fraction: float = 0.0                # labelled fraction of the training split reserved for it
    epochs: int = 30                     # 10 % of digits is ~3 steps per epoch: 5 epochs reached chance
    batch_size: int | None = None        # None: train.batch_size
    learning_rate: float | None = None   # None: train.learning_rate


@dataclass
class TrainConfig:
    epochs: int = 30
    batch_size: int = 64
    learning_rate: float = 1e-3
    steps_per_execution: int = 4         # steps per tf.function call; 4 measured best on CPU (docs/performance.md)
    early_stopping_patience: int | None = None  # epochs without val ELBO improvement; None: off
    run_dir: str = "runs"                # checkpoints go to <run_dir>/<mlflow run id>/checkpoints
    checkpoints_to_keep: int = 3
    checkpoint_every_steps: int | None = None  # also save every N training steps (besides every epoch)
    clip_norm: float | None = None       # clip the global gradient norm (Adam's global_clipnorm); None: off
    strategy: str = "none"               # none | mirrored | multi_worker (tf.distribute; training/distribute.py)
    cpu_replicas: int | None = None      # mirrored without GPUs: split the CPU into this many replicas (tests)
    scale_learning_rate: str = "none"    # none | linear | sqrt: learning_rate x R or x sqrt(R) for R replicas
    precision: str = "float32"           # float32 | mixed_bfloat16 | mixed_float16 (KL and log-probs stay float32)
    deterministic: bool = False          # tf.config.experimental.enable_op_determinism()
    verbose: int = 1                     # Keras fit verbosity: 0 silent, 1 progress bar, 2 one line/epoch
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)  # encoder pretraining on a labelled fraction


@dataclass
class ExportConfig:
    base_dir: str = "models"             # MODEL_BASE_PATH; the model goes to <base_dir>/<name>/<version>
    version: int | None = None           # None: next free version


@dataclass
class MlflowConfig:
    experiment: str = "vae-tf"
    tracking_uri: str | None = None      # None: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here
    run_name: str | None = None
    register: bool = True                # register the logged model under `name`
    log_figures: bool = True
    retry_seconds: float = 60.0          # while MLflow is unreachable, retry the buffered logging this often


@dataclass
class Config:
    name: str = "vae"                    # model name: export directory and registered model
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, Any]:
        """``{"train.epochs": 30, ...}``: the form MLflow params take."""
        return flatten(self.to_dict())


# --- loading -----------------------------------------------------------------------------------

def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.epochs=5"`` -> (["train", "epochs"], 5); the value is parsed as YAML."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {text!r} is not of the form key.path=value (e.g. --set train.epochs=5)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw  # not YAML: keep the text as a string
    return key.split("."), value


def _set_path(tree: dict, path: list[str], value: Any, text: str) -> None:
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


def _deep_merge(base: dict, update: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def read_yaml(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found: pass an existing YAML file to --config")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"config file {path} is not valid YAML{where}: {getattr(err, 'problem', err)}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections, found a {type(tree).__name__}")
    return tree


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults, then the YAML file (if any), then ``--set`` overrides; validated."""
    tree: dict = {}
    if path is not None:
        tree = read_yaml(path)
    for text in overrides:
        keys, value = parse_override(text)
        _set_path(tree, keys, value, text)
    return from_dict(tree)


def from_dict(tree: dict) -> Config:
    merged = _deep_merge(Config().to_dict(), tree)
    config = _build(Config, merged, "")
    _check_values(config)
    return config


# --- validation --------------------------------------------------------------------------------

def _type_name(tp) -> str:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp, where: str):
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return _coerce(value, option, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where} must be {_type_name(tp)}, got {value!r}")
    if tp is type(None):
        if value is None:
            return None
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is dict or origin is dict:
        if isinstance(value, dict):
            return value
    raise ConfigError(f"{where} must be {_type_name(tp)}, got {value!r}")


def _build(cls, tree: Any, prefix: str):
    if not isinstance(tree, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {tree!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [key for key in tree if key not in names]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(str(key), names, n=1)
        hint = f"; did you mean {prefix}{close[0]!s}?" if close else f"; valid keys: {', '.join(prefix + n for n in names)}"
        raise ConfigError(f"unknown config key {prefix}{key}{hint}")
    values = {}
    for name in names:
        tp = hints[name]
        where = prefix + name
        if dataclasses.is_dataclass(tp):
            values[name] = _build(tp, tree.get(name, {}), where + ".")
        else:
            values[name] = _coerce(tree.get(name), tp, where)
    return cls(**values)


def _check_values(c: Config) -> None:
    def need(cond: bool, message: str) -> None:
        if not cond:
            raise ConfigError(message)

    need(bool(c.name) and c.name.replace("_", "").replace("-", "").replace(".", "").isalnum(),
         f"name {c.name!r} must be letters, digits, '_', '-', '.' (it names the export directory and the registered model)")
    need(c.seed >= 0, f"seed must be >= 0, got {c.seed}")
    need(0.0 <= c.data.val_fraction < 1.0, f"data.val_fraction must be in [0, 1), got {c.data.val_fraction}")
    need(0.0 <= c.data.test_fraction < 1.0, f"data.test_fraction must be in [0, 1), got {c.data.test_fraction}")
    need(c.data.val_fraction + c.data.test_fraction < 1.0, "data.val_fraction + data.test_fraction must be < 1 to leave training data")
    need(c.data.max_samples is None or c.data.max_samples > 0, f"data.max_samples must be positive or null, got {c.data.max_samples}")
    for section, key in (("latent", "family"), ("likelihood", "name"), ("network", "kind")):
        value = getattr(c.model, section)
        need(isinstance(value.get(key), str), f"model.{section}.{key} must name a registered {section} (a string), got {value.get(key)!r}")
    latent_dim = c.model.latent.get("latent_dim")
    need(isinstance(latent_dim, int) and not isinstance(latent_dim, bool) and latent_dim > 0,
         f"model.latent.latent_dim must be a positive integer, got {latent_dim!r}")
    need(c.objective.beta >= 0, f"objective.beta must be >= 0, got {c.objective.beta}")
    need(c.train.epochs > 0, f"train.epochs must be a positive integer, got {c.train.epochs}")
    need(c.train.batch_size > 0, f"train.batch_size must be a positive integer, got {c.train.batch_size}")
    need(c.train.learning_rate > 0, f"train.learning_rate must be > 0, got {c.train.learning_rate}")
    need(c.train.steps_per_execution > 0, f"train.steps_per_execution must be a positive integer, got {c.train.steps_per_execution}")
    need(c.train.early_stopping_patience is None or c.train.early_stopping_patience > 0,
         f"train.early_stopping_patience must be a positive integer or null, got {c.train.early_stopping_patience}")
    need(c.train.checkpoints_to_keep > 0, f"train.checkpoints_to_keep must be positive, got {c.train.checkpoints_to_keep}")
    need(c.train.checkpoint_every_steps is None or c.train.checkpoint_every_steps > 0,
         f"train.checkpoint_every_steps must be a positive integer or null, got {c.train.checkpoint_every_steps}")
    need(c.train.clip_norm is None or c.train.clip_norm > 0, f"train.clip_norm must be > 0 or null, got {c.train.clip_norm}")
    need(c.train.strategy in ("none", "mirrored", "multi_worker"),
         f"train.strategy must be none, mirrored or multi_worker, got {c.train.strategy!r}")
    need(c.train.cpu_replicas is None or c.train.cpu_replicas > 0,
         f"train.cpu_replicas must be a positive integer or null, got {c.train.cpu_replicas}")
    need(c.train.scale_learning_rate in ("none", "linear", "sqrt"),
         f"train.scale_learning_rate must be none, linear or sqrt, got {c.train.scale_learning_rate!r}")
    need(c.train.precision in ("float32", "mixed_bfloat16", "mixed_float16"),
         f"train.precision must be float32, mixed_bfloat16 or mixed_float16, got {c.train.precision!r}")
    need(c.mlflow.retry_seconds >= 0, f"mlflow.retry_seconds must be >= 0, got {c.mlflow.retry_seconds}")
    need(c.train.verbose in (0, 1, 2), f"train.verbose must be 0, 1 or 2, got {c.train.verbose}")
    pre = c.train.pretrain
    need(0.0 <= pre.fraction < 1.0, f"train.pretrain.fraction must be in [0, 1) (0: no pretraining), got {pre.fraction}")
    need(pre.epochs > 0, f"train.pretrain.epochs must be a positive integer, got {pre.epochs}")
    need(pre.batch_size is None or pre.batch_size > 0, f"train.pretrain.batch_size must be a positive integer or null, got {pre.batch_size}")
    need(pre.learning_rate is None or pre.learning_rate > 0, f"train.pretrain.learning_rate must be > 0 or null, got {pre.learning_rate}")
    need(c.export.version is None or c.export.version > 0, f"export.version must be a positive integer or null, got {c.export.version}")
    need(bool(c.mlflow.experiment), "mlflow.experiment must be a non-empty name")
