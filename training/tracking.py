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
    ``registered_name`` is given, register a new model version. Returns ``(model_uri, version)``."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ParamSchema, ParamSpec, Schema, TensorSpec

    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype("float32"), (-1, *data_shape), name="x")]),
        params=ParamSchema([ParamSpec("signature", "string", "encode")]),
    )
    with warnings.catch_warnings():
        # The schema is given explicitly, so MLflow's hints about type hints and input examples
        # (for signature inference) do not apply.
        warnings.filterwarnings("ignore", message=".*type hints.*")
        warnings.filterwarnings("ignore", message=".*input example was not provided.*")
        info = _log_pyfunc(signature, export_dir, registered_name)
    version = getattr(info, "registered_model_version", None)
    return info.model_uri, version


def _log_pyfunc(signature, export_dir: Path, registered_name: str | None):
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
        metadata={"vae_tf_version": vae_tf.__version__},
    )
