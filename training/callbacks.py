"""Keras callbacks of the training application: checkpoints and MLflow metric logging."""

from __future__ import annotations

import math
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf


def checkpoint_for(model: keras.Model) -> tf.train.Checkpoint:
    """A ``tf.train.Checkpoint`` over every model and optimizer variable, in their (deterministic)
    creation order.

    Keras 3 sub-layers are not reachable through TensorFlow's object graph, so the variables are
    listed explicitly. They are keyed by position, not by ``variable.path``: paths carry
    process-global counters (``dense_31``, ``adam_12``) that differ between the process that saved
    and the one that restores. The model's variables include its schedule/controller state and
    its random-stream state, so a restore continues exactly; a model of another architecture fails
    the restore on the first shape mismatch.
    """
    parts = {"model": list(model.variables)}
    if getattr(model, "optimizer", None) is not None and model.optimizer.built:
        parts["optimizer"] = list(model.optimizer.variables)
    return tf.train.Checkpoint(**parts)


class EpochCheckpoint(keras.callbacks.Callback):
    """Saves model + optimizer state after every epoch into ``directory`` (``ckpt-<epoch>``),
    keeping the newest ``max_to_keep``. TensorFlow writes the checkpoint files first and the
    ``checkpoint`` index last, so an interrupted save never replaces the last good one."""

    def __init__(self, directory: str | Path, max_to_keep: int = 3):
        super().__init__()
        self.directory = str(directory)
        self.max_to_keep = max_to_keep
        self.manager: tf.train.CheckpointManager | None = None
        self.last_path: str | None = None

    def on_epoch_end(self, epoch, logs=None):
        if self.manager is None:  # the optimizer's variables exist only after its first step
            self.manager = tf.train.CheckpointManager(checkpoint_for(self.model), self.directory,
                                                      max_to_keep=self.max_to_keep)
        self.last_path = self.manager.save(checkpoint_number=epoch + 1)


class MlflowMetrics(keras.callbacks.Callback):
    """Logs every scalar in the epoch's logs (train and ``val_`` metrics) to the active MLflow run,
    plus the validation KL of every latent dimension (``val_kl_dim_<i>``) when the model tracks it.
    """

    def __init__(self, logger):
        super().__init__()
        self.logger = logger

    def on_epoch_end(self, epoch, logs=None):
        metrics = {}
        for key, value in (logs or {}).items():
            array = np.asarray(value)
            if array.size == 1 and math.isfinite(float(array)):
                metrics[key] = float(array)
        if "val_elbo" in metrics and hasattr(self.model, "kl_per_dim"):
            for i, value in enumerate(self.model.kl_per_dim):
                metrics[f"val_kl_dim_{i}"] = float(value)
        self.logger.log_metrics(metrics, step=epoch)
