"""MLflow tracking for training runs: URI resolution, params, metrics, figures, model logging.

Embedded default: MLflow's own ``sqlite:///mlflow.db`` in the working directory;
``MLFLOW_TRACKING_URI`` (or ``mlflow.tracking_uri`` in the config) points anywhere else.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import mlflow
import numpy as np

MAX_PARAM_LENGTH = 6000  # MLflow 3 rejects longer param values


def resolve_tracking_uri(configured: str | None) -> str:
    """Config value, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<cwd>/mlflow.db``."""
    if configured:
        return configured
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{Path.cwd() / 'mlflow.db'}"


_registry_uri_we_set: str | None = None


def resolve_registry_uri(tracking_uri: str) -> str:
    """``$MLFLOW_REGISTRY_URI`` when the user set it, else the tracking URI.

    MLflow's ``set_registry_uri`` writes that variable itself, so a value this process put there
    for an earlier run is not taken as the user's choice.
    """
    from_env = os.environ.get("MLFLOW_REGISTRY_URI")
    return from_env if from_env and from_env != _registry_uri_we_set else tracking_uri


def use_tracking(tracking_uri: str) -> str:
    """Point MLflow's fluent API at ``tracking_uri`` and the matching registry; returns the registry URI."""
    global _registry_uri_we_set
    registry_uri = resolve_registry_uri(tracking_uri)
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(registry_uri)
    _registry_uri_we_set = registry_uri
    return registry_uri


def ui_command(tracking_uri: str) -> str:
    if tracking_uri.startswith(("http://", "https://")):
        return f"open {tracking_uri}"
    return f"mlflow ui --backend-store-uri {tracking_uri}"


def log_params(flat: dict[str, Any]) -> None:
    params = {}
    for key, value in flat.items():
        text = "null" if value is None else str(value)
        params[key] = text[:MAX_PARAM_LENGTH]
    mlflow.log_params(params)


class RunLogger:
    """Thin wrapper the callbacks write through (kept small so tests can fake it)."""

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if metrics:
            mlflow.log_metrics(metrics, step=step)


def log_figures(figures: dict, artifact_dir: str = "figures") -> None:
    import matplotlib.pyplot as plt

    for name, fig in figures.items():
        mlflow.log_figure(fig, f"{artifact_dir}/{name}")
        plt.close(fig)


def log_saved_model(export_dir: Path, data_shape, registered_name: str | None):
    """Log the SavedModel as an MLflow pyfunc model (the SavedModel is its artifact) and, if
    ``registered_name`` is given, register a new model version. Returns ``(model_uri, version)``.

    The ``signature`` param picks encode / decode / reconstruct / sample
    (``training/pyfunc_model.py``). Their inputs differ (``x``, ``z``, ``seed``), so the MLflow
    signature declares the param only and no input schema (one would reject three of the four
    signatures); the pyfunc checks and casts inputs itself, and the model metadata records each
    signature's input."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ParamSchema, ParamSpec

    signature = ModelSignature(params=ParamSchema([ParamSpec("signature", "string", "encode")]))
    inputs = {"encode": f"x: float32[-1, {', '.join(map(str, data_shape))}]", "decode": "z: float32[-1, code_size]",
              "reconstruct": f"x: float32[-1, {', '.join(map(str, data_shape))}]", "sample": "seed: int32[-1, 2]"}
    with warnings.catch_warnings():
        # The schema is explicit, so MLflow's advice about input examples and type hints (for
        # schema inference) does not apply. MLflow forces "once" filters around the type-hint
        # check, so that one is dropped at display time.
        warnings.filterwarnings("ignore", message=".*input example was not provided.*")
        warnings.showwarning = _without_type_hint_advice(warnings.showwarning)
        info = _log_pyfunc(signature, export_dir, registered_name, inputs)
    version = getattr(info, "registered_model_version", None)
    return info.model_uri, version


def _without_type_hint_advice(show):
    def filtered(message, category, filename, lineno, file=None, line=None):
        if "Add type hints to the `predict` method" not in str(message):
            show(message, category, filename, lineno, file, line)

    return filtered


def _log_pyfunc(signature, export_dir: Path, registered_name: str | None, inputs: dict | None = None):
    import tensorflow as tf

    import vae_tf

    return mlflow.pyfunc.log_model(
        name="model",
        python_model=str(Path(__file__).with_name("pyfunc_model.py")),
        artifacts={"saved_model": str(export_dir)},
        signature=signature,
        # Inference of requirements is wrong for this stack (stack-notes §5): name them.
        pip_requirements=[f"tensorflow=={tf.__version__}", f"numpy=={np.__version__}", f"mlflow=={mlflow.__version__}"],
        registered_model_name=registered_name,
        metadata={"vae_tf_version": vae_tf.__version__, "signature_param": "encode | decode | reconstruct | sample",
                  "signature_inputs": inputs or {}},
    )
