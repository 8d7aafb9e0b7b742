"""The training job behind ``vae-tf train``: config -> data -> model -> fit -> evaluate ->
figures -> export -> MLflow (params, metrics, figures, resolved config, model + registry)."""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from pathlib import Path

from training.config import Config



@dataclasses.dataclass
class TrainResult:
    run_id: str
    experiment_id: str
    tracking_uri: str
    export_dir: Path
    checkpoint_dir: Path
    history: dict
    test_metrics: dict
    model_uri: str | None = None
    registered_version: str | None = None


def prepare_data(config: Config):
    """Load and validate the data set against the chosen likelihood's support."""
    from vae_tf.data import load_dataset, validate_array
    from vae_tf.likelihoods import LIKELIHOODS

    likelihood_cls = LIKELIHOODS.get(config.model.likelihood["name"])
    data = load_dataset(
        config.data.name,
        seed=config.seed,
        val_fraction=config.data.val_fraction,
        test_fraction=config.data.test_fraction,
        max_samples=config.data.max_samples,
        path=config.data.path,
        **config.data.options,
    )
    for split in ("train", "val", "test"):
        x, _ = data.split(split)
        if split != "train" and len(x) == 0:
            continue
        validate_array(x, what=f"{data.name} {split} split (for the {likelihood_cls.name_key} likelihood)",
                       support=likelihood_cls.support)
    return data


def objective_spec(config: Config, steps_per_epoch: int) -> dict:
    """The objective dict for ``build_vae``; a cyclical β schedule without ``total_steps`` spans
    the whole run (``epochs × steps_per_epoch``)."""
    spec = {"name": config.objective.name, "beta": config.objective.beta, **config.objective.options}
    schedule = spec.get("beta_schedule")
    if isinstance(schedule, dict) and schedule.get("kind") == "cyclical" and "total_steps" not in schedule:
        spec["beta_schedule"] = {**schedule, "total_steps": config.train.epochs * steps_per_epoch}
    return spec


def build_model(config: Config, data_shape, steps_per_epoch: int = 1):
    import keras

    from vae_tf.models import build_vae

    model_cfg = config.model
    model = build_vae(
        data_shape,
        latent=model_cfg.latent,
        likelihood=model_cfg.likelihood,
        network=model_cfg.network,
        objective=objective_spec(config, steps_per_epoch),
        seed=config.seed,
        name=config.name.replace("-", "_").replace(".", "_"),
    )
    model.compile(optimizer=keras.optimizers.Adam(config.train.learning_rate),
                  steps_per_execution=config.train.steps_per_execution)
    return model


def split_for_pretraining(config: Config, data):
    """``(data for the VAE, (x, y) labelled for encoder pretraining or None)``: with
    ``train.pretrain.fraction > 0`` that fraction of the training split is reserved for
    pretraining and removed from the VAE's training data (vae_tf.pretraining)."""
    if config.train.pretrain.fraction <= 0:
        return data, None
    from vae_tf.pretraining import split_labelled

    remaining, x, y = split_labelled(data, config.train.pretrain.fraction, seed=config.seed)
    return remaining, (x, y)


def run_pretraining(config: Config, model, labelled, data) -> dict:
    """Pretrain ``model``'s encoder with a classification head on ``labelled`` and log
    ``pretrain_accuracy`` / ``pretrain_loss`` (and ``pretrain_val_accuracy``) per pretraining
    epoch to the active MLflow run."""
    import mlflow

    from vae_tf.pretraining import pretrain_encoder

    pre, train_cfg = config.train.pretrain, config.train
    x, y = labelled
    labels = [y, *(v for v in (data.y_train, data.y_val, data.y_test) if v is not None and len(v))]
    num_classes = int(max(v.max() for v in labels)) + 1
    result = pretrain_encoder(model, x, y, epochs=pre.epochs, batch_size=pre.batch_size or train_cfg.batch_size,
                              learning_rate=pre.learning_rate or train_cfg.learning_rate, num_classes=num_classes,
                              validation_data=data.split("val"), seed=config.seed)
    for key in ("pretrain_accuracy", "pretrain_loss", "pretrain_val_accuracy"):
        for epoch, value in enumerate(result.get(key, [])):
            mlflow.log_metric(key, value, step=epoch)
    mlflow.log_param("data.n_pretrain", len(x))
    return result


def seed_everything(config: Config) -> None:
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(config.seed)  # Python, NumPy and TensorFlow
    if config.train.deterministic:
        tf.config.experimental.enable_op_determinism()


def run_training(config: Config, *, tags: dict | None = None, after_training=None) -> TrainResult:
    """Train, evaluate, export and track one run. A failure marks the MLflow run FAILED with the
    error message (tag ``error``) and re-raises.

    ``tags`` are set on the run (``mlflow.parentRunId`` nests it under a parent run);
    ``after_training(model, data)`` runs inside the run after the export, for callers that log
    more (the experiment suites' evaluation).
    """
    import mlflow

    from training.tracking import resolve_tracking_uri, use_tracking

    tracking_uri = resolve_tracking_uri(config.mlflow.tracking_uri)
    use_tracking(tracking_uri)
    if not os.environ.get("MLFLOW_RUN_ID"):  # `mlflow run` made the run, in its own experiment
        mlflow.set_experiment(config.mlflow.experiment)
    with mlflow.start_run(run_name=config.mlflow.run_name, tags=tags) as run:
        try:
            result = _run(config, run, tracking_uri, after_training)
        except BaseException as err:
            mlflow.set_tag("error", f"{type(err).__name__}: {' '.join(str(err).split())}"[:5000])
            mlflow.end_run(status="KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
            raise
    return result


def _run(config: Config, run, tracking_uri: str, after_training=None) -> TrainResult:
    import keras
    import mlflow
    import numpy as np

    from training.callbacks import CollapseDiagnostics, EpochCheckpoint, MlflowMetrics
    from training.tracking import RunLogger, log_figures, log_params, log_saved_model
    from vae_tf import plots
    from vae_tf.export import export_model

    run_id = run.info.run_id
    log_params(config.flat())
    mlflow.log_dict(config.to_dict(), "config.yaml")
    mlflow.set_tags({"vae_tf.objective": config.objective.name, "vae_tf.latent": config.model.latent["family"],
                     "vae_tf.likelihood": config.model.likelihood["name"], "vae_tf.data": config.data.name})

    seed_everything(config)
    if config.model.latent.get("family") == "normal_gamma" and not config.objective.options.get("beta_schedule"):
        # Without KL warm-up every mixture weight goes to the uninformative component in the first
        # epoch and never recovers (docs/latent_families.md).
        print("warning: model.latent.family=normal_gamma without objective.options.beta_schedule usually "
              "collapses every dimension; add e.g. beta_schedule: {kind: linear, steps: 1000}", file=sys.stderr)
    data = prepare_data(config)
    data, labelled = split_for_pretraining(config, data)
    mlflow.log_params({"data.n_train": len(data.x_train), "data.n_val": len(data.x_val),
                       "data.n_test": len(data.x_test), "data.shape": str(data.data_shape)})
    steps_per_epoch = max(1, math.ceil(len(data.x_train) / config.train.batch_size))
    model = build_model(config, data.data_shape, steps_per_epoch)
    if labelled is not None:
        run_pretraining(config, model, labelled, data)

    train_cfg = config.train
    checkpoint_dir = Path(train_cfg.run_dir) / run_id / "checkpoints"
    checkpoints = EpochCheckpoint(checkpoint_dir, max_to_keep=train_cfg.checkpoints_to_keep)
    has_val = len(data.x_val) > 0
    callbacks = [checkpoints]
    if has_val:  # before the MLflow logger, which logs what it adds
        callbacks.append(CollapseDiagnostics(data.x_val, seed=config.seed))
    callbacks.append(MlflowMetrics(RunLogger()))
    if train_cfg.early_stopping_patience and has_val:
        callbacks.append(keras.callbacks.EarlyStopping(monitor="val_elbo", mode="max", restore_best_weights=True,
                                                       patience=train_cfg.early_stopping_patience))

    train_ds = data.pipeline("train", train_cfg.batch_size, seed=config.seed)
    val_ds = data.pipeline("val", train_cfg.batch_size) if has_val else None
    history = model.fit(train_ds, validation_data=val_ds, epochs=train_cfg.epochs, callbacks=callbacks,
                        verbose=train_cfg.verbose, shuffle=False)  # the pipeline shuffles
    epochs_run = len(history.history.get("loss", []))
    mlflow.log_metric("epochs_run", epochs_run)

    eval_split = "test" if len(data.x_test) else ("val" if has_val else "train")
    test_metrics = model.evaluate(data.pipeline(eval_split, train_cfg.batch_size), return_dict=True, verbose=0)
    test_metrics = {f"{eval_split}_{k}": float(v) for k, v in test_metrics.items()}
    kl = model.kl_per_dim
    mlflow.log_metrics({**test_metrics, **{f"{eval_split}_kl_dim_{i}": float(v) for i, v in enumerate(kl)}})

    x_eval, _ = data.split(eval_split)
    if config.mlflow.log_figures:
        log_figures(plots.model_figures(model, x_eval, value_range=data.value_range, kl=kl, seed=config.seed))

    export_dir = export_model(model, config.export.base_dir, config.name, config.export.version,
                              config=config.to_dict(),
                              data_info={"value_range": data.value_range, "name": data.name,
                                         "binary": data.binary, **data.metadata},
                              extra={"mlflow_run_id": run_id})
    mlflow.set_tag("vae_tf.export_dir", str(export_dir.resolve()))
    model_uri, version = log_saved_model(export_dir, data.data_shape,
                                         config.name if config.mlflow.register else None)

    if after_training is not None:
        after_training(model, data)
    result = TrainResult(run_id=run_id, experiment_id=run.info.experiment_id, tracking_uri=tracking_uri,
                         export_dir=export_dir, checkpoint_dir=checkpoint_dir,
                         history={k: [float(np.asarray(v)) for v in vals] for k, vals in history.history.items()},
                         test_metrics=test_metrics, model_uri=model_uri,
                         registered_version=None if version is None else str(version))
    return result
