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


class CollapseDiagnostics(keras.callbacks.Callback):
    """The cheap collapse diagnostics, every ``every`` epochs, on (up to ``max_examples`` of) the
    validation data: active units (Burda et al. 2016), the full-data mutual information I_q(x; z)
    (Gaussian codes only) and the fraction of (0.01, 0.01)-collapsed dims (Lucas et al. 2019).

    Adds ``val_active_units``, ``val_mi`` and ``val_collapsed_fraction`` to the epoch's logs, so
    later callbacks (MLflow) see them.
    """

    def __init__(self, x, every: int = 1, max_examples: int = 2000, seed: int = 0):
        super().__init__()
        x = np.asarray(x, np.float32)
        if len(x) > max_examples:
            x = x[np.random.default_rng(seed).choice(len(x), max_examples, replace=False)]
        self.x = x
        self.every = max(1, int(every))
        self.seed = seed

    def on_epoch_end(self, epoch, logs=None):
        if logs is None or len(self.x) < 2 or (epoch + 1) % self.every:
            return
        from vae_tf.metrics import active_units, collapse_fraction, encode_posterior, mutual_information

        post = encode_posterior(self.model, self.x, seed=self.seed)
        logs["val_active_units"] = float(active_units(post["embedding"])[0])
        logs["val_collapsed_fraction"] = float(collapse_fraction(post["kl_per_dim"], 0.01))
        if "z_mean" in post and "z_log_var" in post:
            logs["val_mi"] = float(mutual_information(post["z_mean"], post["z_log_var"], seed=self.seed))
