"""Keras callbacks of the training application: checkpoints and MLflow metric logging."""

from __future__ import annotations

import json
import math
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from vae_tf.models.vae import checkpoint_for  # the library's; re-exported for the training code


def all_finite(variables) -> bool:
    """True when no variable holds a NaN or an infinity (one reduction per variable)."""
    return all(bool(tf.reduce_all(tf.math.is_finite(v))) for v in variables
               if tf.as_dtype(v.dtype).is_floating)


class TrainingProgress(tf.Module):
    """Where training stands, saved inside every checkpoint so a resume knows where to go on:
    ``epoch`` (the epoch in progress, or the next one after an epoch-end save),
    ``step_in_epoch`` (batches of that epoch already trained) and ``history`` (the logs of every
    finished epoch, JSON: what MLflow must hold after a resume)."""

    def __init__(self):
        super().__init__(name="training_progress")
        self.position = tf.Variable([0, 0], dtype=tf.int64, trainable=False, name="position")
        self.history_json = tf.Variable("[]", dtype=tf.string, trainable=False, name="history")

    @property
    def epoch(self) -> int:
        return int(self.position[0])

    @property
    def step_in_epoch(self) -> int:
        return int(self.position[1])

    @property
    def history(self) -> list[dict]:
        return json.loads(self.history_json.numpy().decode())

    def set(self, epoch: int, step_in_epoch: int, history: list[dict]) -> None:
        self.position.assign([epoch, step_in_epoch])
        self.history_json.assign(json.dumps(history))


def scalar_logs(logs) -> dict[str, float]:
    """The finite scalars of a Keras ``logs`` dict as floats (what MLflow and the history keep)."""
    out = {}
    for key, value in (logs or {}).items():
        array = np.asarray(value)
        if array.size == 1 and math.isfinite(float(array)):
            out[key] = float(array)
    return out


def epoch_metrics(model, logs) -> dict[str, float]:
    """What an epoch logs to MLflow: every finite scalar of the epoch's logs (train and ``val_``
    metrics) plus the validation KL of every latent dimension (``val_kl_dim_<i>``) when the
    model tracks it."""
    metrics = scalar_logs(logs)
    if "val_elbo" in metrics and hasattr(model, "kl_per_dim"):
        for i, value in enumerate(model.kl_per_dim):
            metrics[f"val_kl_dim_{i}"] = float(value)
    return metrics


class TrainingCheckpoint(keras.callbacks.Callback):
    """Crash-safe checkpoints: model, optimizer, metric trackers and :class:`TrainingProgress`
    after every epoch and, with ``every_steps``, every that many training steps (at the end of
    the ``steps_per_execution`` group that reaches the step).

    A checkpoint is numbered by the global step it was taken at. TensorFlow writes its files
    first and the ``checkpoint`` index last, by an atomic rename, so a process killed in the
    middle of a save leaves the previous checkpoint as the latest. A checkpoint is written only
    when the loss is finite and every variable is finite, so the latest checkpoint is always a
    good one to resume from (:class:`StopOnNonFinite` stops training on a NaN/Inf loss).

    ``start`` = ``(epoch, step_in_epoch, history)`` is where a resumed run starts.
    """

    def __init__(self, directory: str | Path, steps_per_epoch: int, max_to_keep: int = 3,
                 every_steps: int | None = None, start: tuple[int, int, list] = (0, 0, [])):
        super().__init__()
        self.directory = str(directory)
        self.steps_per_epoch = int(steps_per_epoch)
        self.max_to_keep = max_to_keep
        self.every_steps = int(every_steps) if every_steps else None
        self.progress = TrainingProgress()
        self.epoch, self.step_in_epoch, self.history = start[0], start[1], list(start[2])
        self.manager: tf.train.CheckpointManager | None = None
        self.last_path: str | None = tf.train.latest_checkpoint(self.directory)

    @property
    def global_step(self) -> int:
        return self.epoch * self.steps_per_epoch + self.step_in_epoch

    def _manager(self) -> tf.train.CheckpointManager:
        if self.manager is None:  # the optimizer's variables exist only after its first step
            self.manager = tf.train.CheckpointManager(checkpoint_for(self.model, progress=self.progress),
                                                      self.directory, max_to_keep=self.max_to_keep)
        return self.manager

    def save(self, logs=None) -> str | None:
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(np.asarray(loss).reshape(-1)[0])):
            return None
        if not all_finite(self.model.variables):
            return None
        self.progress.set(self.epoch, self.step_in_epoch, self.history)
        self.last_path = self._manager().save(checkpoint_number=self.global_step)
        return self.last_path

    def on_epoch_begin(self, epoch, logs=None):
        if epoch != self.epoch:  # a fresh epoch (a resumed one keeps its step_in_epoch)
            self.epoch, self.step_in_epoch = epoch, 0

    def on_train_batch_end(self, batch, logs=None):
        before = self.global_step
        self.step_in_epoch = self._base_step + batch + 1
        if self.every_steps and self.global_step // self.every_steps > before // self.every_steps \
                and self.step_in_epoch < self.steps_per_epoch:  # the epoch-end save follows anyway
            self.save(logs)

    def on_train_begin(self, logs=None):
        # A resumed partial epoch is fitted with its remaining steps only: Keras counts its batches
        # from 0, so they are offset by the steps already done.
        self._base_step = self.step_in_epoch

    def on_epoch_end(self, epoch, logs=None):
        self._base_step = 0
        self.history.append({"epoch": epoch, "metrics": epoch_metrics(self.model, logs)})
        self.epoch, self.step_in_epoch = epoch + 1, 0
        self.save(logs)


class RestoreEpochTrackers(keras.callbacks.Callback):
    """Puts the metric trackers' running sums, as restored from a mid-epoch checkpoint, back at
    the start of that epoch (Keras resets every tracker when an epoch begins), so the resumed
    epoch reports its means over all of its steps, as an uninterrupted run would."""

    def __init__(self, model: keras.Model, epoch: int):
        super().__init__()
        self.epoch = epoch
        self.values = [(v, v.numpy()) for m in model.metrics for v in m.variables]

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch and self.values:
            for variable, value in self.values:
                variable.assign(value)
            self.values = []


class StopOnNonFinite(keras.callbacks.TerminateOnNaN):
    """Keras' ``TerminateOnNaN``, remembering where it happened: ``failed_step`` (the global step
    at the end of the ``steps_per_execution`` group that produced it) and ``failed_epoch``, read
    from ``position`` (the :class:`TrainingCheckpoint`, which must come first in the callback
    list so that it has counted the batch)."""

    def __init__(self, position: TrainingCheckpoint):
        super().__init__()
        self.position = position
        self.failed_step: int | None = None
        self.failed_epoch: int | None = None
        self.value: float | None = None

    def on_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is None or self.failed_step is not None:
            return
        value = float(np.asarray(loss).reshape(-1)[0])
        if not math.isfinite(value):
            self.failed_step, self.failed_epoch = self.position.global_step, self.position.epoch
            self.value = value
            self.model.stop_training = True


class MlflowMetrics(keras.callbacks.Callback):
    """Logs :func:`epoch_metrics` to MLflow through ``logger`` (``log_metrics(metrics, step)``)."""

    def __init__(self, logger):
        super().__init__()
        self.logger = logger

    def on_epoch_end(self, epoch, logs=None):
        self.logger.log_metrics(epoch_metrics(self.model, logs), step=epoch)


class CollapseDiagnostics(keras.callbacks.Callback):
    """The cheap collapse diagnostics, every ``every`` epochs, on (up to ``max_examples`` of) the
    validation data: active units (Burda et al. 2016), the full-data mutual information I_q(x; z)
    (Gaussian codes only) and the fraction of (0.01, 0.01)-collapsed dims (Lucas et al. 2019).

    Adds ``val_active_units``, ``val_mi`` and ``val_collapsed_fraction`` to the epoch's logs, so
    later callbacks (MLflow) see them.
    """

    def __init__(self, x, every: int = 1, max_examples: int = 2000, seed: int = 0):
        super().__init__()
        x = np.asarray(x)
        x = x if x.dtype == object else x.astype(np.float32)  # sentences stay strings
        if len(x) > max_examples:
            x = x[np.random.default_rng(seed).choice(len(x), max_examples, replace=False)]
        self.x = x
        self.every = max(1, int(every))
        self.seed = seed

    def on_epoch_end(self, epoch, logs=None):
        if logs is None or len(self.x) < 2 or (epoch + 1) % self.every:
            return
        loss = logs.get("loss")
        if loss is not None and not math.isfinite(float(np.asarray(loss).reshape(-1)[0])):
            return  # a diverged epoch: its weights are not finite, and StopOnNonFinite ends the run
        from vae_tf.metrics import (
            active_units,
            collapse_fraction,
            encode_posterior,
            mutual_information,
        )

        post = encode_posterior(self.model, self.x, seed=self.seed)
        # Units of the encoder means, as evaluate_model and the verdict count them (a categorical
        # family's embedding also holds its category probabilities, which are no units).
        logs["val_active_units"] = float(active_units(post.get("z_mean", post["embedding"]))[0])
        logs["val_collapsed_fraction"] = float(collapse_fraction(post["kl_per_dim"], 0.01))
        if "z_mean" in post and "z_log_var" in post:
            logs["val_mi"] = float(mutual_information(post["z_mean"], post["z_log_var"], seed=self.seed))


class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
    """Keras' ``EarlyStopping`` whose state survives a resume.

    The state is the best monitored value, the epoch it came from, the epochs since, and (with
    ``restore_best_weights``) the weights of that epoch and its optimizer's state (Adam's moments
    and step count; Keras keeps the last epoch's optimizer with the best weights, so a model
    fine-tuned from the export went on with moments and a step count from after the best epoch
    while its own step counter ``train_steps``, which the schedules read, was the best epoch's).
    The first three are a function of the finished epochs' logs, which every checkpoint carries
    (``position.history``, the :class:`TrainingCheckpoint`'s): ``on_train_begin`` replays them with
    Keras' own rule instead of starting from scratch. The best weights are written to ``weights_path`` (atomically, with their
    epoch) whenever they change, before that epoch's checkpoint (the callback comes first), and
    read back on a resume. Keras restores the best weights at the end of every ``fit`` call; a
    resumed run fits a partial epoch first, so here they are restored once, by :meth:`restore_best`
    after the last ``fit``.
    """

    def __init__(self, position: "TrainingCheckpoint", weights_path: str | Path, **kwargs):
        super().__init__(**kwargs)
        self.position = position
        self.weights_path = Path(weights_path)
        self.best_optimizer_state: list[np.ndarray] | None = None
        self.restored_optimizer = False  # whether restore_best found the best epoch's optimizer state

    def _optimizer_variables(self) -> list:
        """The optimizer's state: every variable but the learning rate, which is the run's setting
        (a resume's ``--set train.learning_rate`` re-applies it), not state of the best epoch."""
        optimizer = getattr(self.model, "optimizer", None)
        if optimizer is None or not optimizer.built:
            return []
        return [v for v in optimizer.variables if not v.path.endswith("learning_rate")]

    def _is_improvement(self, monitor_value, reference_value):
        # A NaN val_elbo is no value: Keras took the first epoch's NaN as the best, which no later
        # value beats (the run stopped after `patience` epochs and kept that epoch's weights).
        return bool(np.isfinite(monitor_value)) and super()._is_improvement(monitor_value, reference_value)

    def _replay(self, history: list[dict]) -> None:
        if self.monitor_op is None:
            self._set_monitor_op()
        for entry in history:
            current = entry["metrics"].get(self.monitor)
            if current is None or entry["epoch"] < self.start_from_epoch:
                continue
            self.wait += 1
            if self._is_improvement(current, self.best):
                self.best, self.best_epoch = current, entry["epoch"]
                if self.baseline is None or self._is_improvement(current, self.baseline):
                    self.wait = 0

    def stopped_before(self) -> bool:
        """Whether the finished epochs (the checkpoint's history) had already run out of patience."""
        self.on_train_begin()
        epochs = [e["epoch"] for e in self.position.history]
        return bool(epochs) and self.wait >= self.patience and max(epochs) > 0

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self._replay(self.position.history)
        if self.restore_best_weights and self.best is not None and self.weights_path.is_file():
            with np.load(self.weights_path) as saved:
                if int(saved["epoch"]) == self.best_epoch:
                    self.best_weights = [saved[f"w{i}"] for i in range(int(saved["count"]))]
                    # a file written before the optimizer's state was kept holds none
                    self.best_optimizer_state = [saved[f"o{i}"] for i in range(int(saved.get("optimizer_count", 0)))]

    def on_epoch_end(self, epoch, logs=None):
        before = (self.best_epoch, self.best_weights is None)
        super().on_epoch_end(epoch, logs)
        if self.restore_best_weights and self.best_weights is not None and (self.best_epoch, False) != before:
            from training.atomic import replace_atomic

            self.best_optimizer_state = [np.array(v.numpy()) for v in self._optimizer_variables()]  # copies, not views
            arrays = {f"w{i}": w for i, w in enumerate(self.best_weights)}
            arrays.update({f"o{i}": v for i, v in enumerate(self.best_optimizer_state)})
            replace_atomic(self.weights_path, lambda f: np.savez(
                f, epoch=self.best_epoch, count=len(self.best_weights),
                optimizer_count=len(self.best_optimizer_state), **arrays))

    def on_train_end(self, logs=None):
        if self.stopped_epoch > 0 and self.verbose > 0:
            print(f"Epoch {self.stopped_epoch + 1}: early stopping")

    def restore_best(self, model) -> bool:
        """Set ``model``'s weights to the best epoch's (Keras' ``restore_best_weights``), and its
        optimizer's state to that epoch's where it was kept and the optimizer has the same
        variables (otherwise, as in Keras, the optimizer stays as the last epoch left it). True
        when there were best weights to restore.

        The model is given, not the one the last ``fit`` set: a resumed run whose epochs were all
        trained (killed while it tested or exported, or after early stopping had stopped it) fits
        nothing, and its export held the last epoch's weights instead of the best's."""
        self.restored_optimizer = False
        if not (self.restore_best_weights and self.best_weights is not None):
            return False
        self.set_model(model)
        self.model.set_weights(self.best_weights)
        variables, saved = self._optimizer_variables(), self.best_optimizer_state or []
        if saved and len(saved) == len(variables) and all(tuple(v.shape) == s.shape for v, s in zip(variables, saved)):
            for variable, value in zip(variables, saved):
                variable.assign(value)
            self.restored_optimizer = True
        return True

    def outcome(self, epochs_trained: int, epochs: int) -> dict | None:
        """What early stopping decided, after :meth:`stopped_before` or a fit: the best epoch
        (counted from 1, as Keras prints epochs), its monitored value, and whether it stopped
        the run (no better value for ``patience`` epochs) before ``epochs_trained`` reached the
        configured ``epochs``. None before any epoch had a finite monitored value."""
        if self.best is None or self.best_epoch is None:
            return None
        return {"best_epoch": int(self.best_epoch) + 1, "best": float(self.best), "epochs_trained": int(epochs_trained),
                "stopped": bool(self.wait >= self.patience and epochs_trained < epochs)}
