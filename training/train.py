"""The training job behind ``vae-tf train``: config -> data -> model -> fit -> evaluate ->
figures -> export -> MLflow (params, metrics, figures, resolved config, model + registry)."""

from __future__ import annotations

import dataclasses
import math
import sys
import warnings
from pathlib import Path

import numpy as np

from training.config import Config, tokenizer_of_then


@dataclasses.dataclass
class TrainResult:
    run_id: str | None                   # None on a non-chief worker (the chief logs and exports)
    experiment_id: str | None
    tracking_uri: str
    export_dir: Path | None
    checkpoint_dir: Path | None
    history: dict
    test_metrics: dict
    model_uri: str | None = None
    registered_version: str | None = None
    collapse: str | None = None          # the one-line collapse verdict (training.lineage.collapse_verdict)
    name: str | None = None              # the model's name (config.name; a resumed run's own)


def prepare_data(config: Config, model_modality: str | None = None, model_name: str = "the model",
                 model_data_shape: tuple | None = None):
    """Load and validate the data set against the chosen likelihood's support; with
    ``model_modality`` (``"text"`` or ``"image"``: an existing model's, as `vae-tf evaluate` reads
    one), data of the other kind is refused in one line naming both, and with
    ``model_data_shape`` (an image model's example shape) data of another shape."""
    from vae_tf.data import load_dataset, validate_array
    from vae_tf.likelihoods import LIKELIHOODS

    likelihood_cls = LIKELIHOODS.get(config.model.likelihood["name"])
    if model_modality is not None:
        from vae_tf.data import dataset_modality

        _refuse_other_modality(config, dataset_modality(config.data.name), model_modality, model_name)  # before it loads
    data = load_dataset(
        config.data.name,
        seed=config.seed,
        val_fraction=config.data.val_fraction,
        test_fraction=config.data.test_fraction,
        max_samples=config.data.max_samples,
        path=config.data.path,
        **config.data.options,
    )
    if model_modality is not None:
        _refuse_other_modality(config, data.modality, model_modality, model_name)
    if model_data_shape is not None and data.modality != "text" and tuple(data.data_shape) != tuple(model_data_shape):
        from vae_tf.errors import DataError

        raise DataError(f"data set {config.data.name!r} has examples of shape {tuple(data.data_shape)} but {model_name} "
                        f"reads {tuple(model_data_shape)}; evaluate it on data of that shape (drop --set data.*, or "
                        "give such a data set)")
    if config.data.binarize != "none":
        data = data.binarized(config.data.binarize, seed=config.seed)
    for split in ("train", "val", "test"):
        x, _ = data.split(split)
        if split != "train" and len(x) == 0:
            continue
        validate_array(x, what=f"{data.name} {split} split (for the {likelihood_cls.name_key} likelihood)",
                       support=likelihood_cls.support)
    return data


def evaluation_split(data) -> str:
    """The split a training run is scored and judged on (test metrics, collapse verdict,
    figures): the test split, else the validation split, else the training data."""
    return "test" if len(data.x_test) else ("val" if len(data.x_val) else "train")


def _refuse_too_few_examples_to_judge(config: Config, data) -> None:
    """Refuse, before training, data whose evaluation split is too small for the collapse
    verdict (active units are a variance over examples): it failed after training, with a
    message about the metric's arguments."""
    from vae_tf.errors import DataError

    split = evaluation_split(data)
    n = len(data.split(split)[0])
    if n >= 2:
        return
    larger = f" or a larger data.{split}_fraction" if split != "train" else ""
    raise DataError(f"data set {config.data.name!r} leaves {n} example(s) in its {split} split, on which the run is "
                    f"scored and its collapse judged (active units need at least 2); give more examples (a larger "
                    f"data.max_samples or data set){larger}")


def objective_spec(config: Config, steps_per_epoch: int) -> dict:
    """The objective (slot form) for ``build_vae``; a cyclical KL weight without ``total_steps``
    spans the whole run (``epochs × steps_per_epoch``)."""
    spec = config.objective.model_dump()
    kl_weight = spec["kl_weight"]
    if kl_weight.get("kind") == "cyclical" and kl_weight.get("total_steps") is None:
        spec["kl_weight"] = {**kl_weight, "total_steps": config.train.epochs * steps_per_epoch}
    return spec


def learning_rate(config: Config, replicas: int = 1) -> float:
    """``train.learning_rate``, scaled for R replicas by ``train.scale_learning_rate`` (none,
    linear: × R, sqrt: × √R) for users who grow the global batch with the replicas."""
    factor = {"none": 1.0, "linear": float(replicas), "sqrt": math.sqrt(replicas)}[config.train.scale_learning_rate]
    return config.train.learning_rate * factor


def build_model(config: Config, data_shape, steps_per_epoch: int = 1, replicas: int = 1, text: dict | None = None):
    """Build and compile the model of ``config`` (inside ``strategy.scope()`` when distributed):
    Adam (``vae_tf.optimizers.FusedAdam``: Keras' Adam with TensorFlow's fused update kernel) at
    :func:`learning_rate`, clipping the global gradient norm at ``train.clip_norm``,
    ``train.precision`` for the networks. ``text``: a text data set's tokenizer
    (:func:`vae_tf.models.text.text_settings`) for a sentence model."""
    from vae_tf.errors import ConfigError
    from vae_tf.models import build_vae
    from vae_tf.optimizers import FusedAdam

    model_cfg = config.model
    model = build_vae(
        data_shape,
        text=text,
        latent=model_cfg.latent,
        likelihood=model_cfg.likelihood,
        network=model_cfg.network,
        objective=objective_spec(config, steps_per_epoch),
        seed=config.seed,
        name=config.name.replace("-", "_").replace(".", "_"),
        precision=config.train.precision,
    )
    optimizer = FusedAdam(learning_rate(config, replicas), global_clipnorm=config.train.clip_norm)
    # A training procedure XLA cannot compile (e.g. aggressive inference) compiles without it,
    # asked for or Keras' auto; asked for, the error below says why.
    jit_compile = False if model.inference.xla_refusal else config.train.jit_compile
    with warnings.catch_warnings():  # Keras' "Proceeding with jit_compile=False": the error below says more
        warnings.filterwarnings("ignore", message=".*doesn't support `jit_compile=True`")
        model.compile(optimizer=optimizer, steps_per_execution=config.train.steps_per_execution,
                      jit_compile=jit_compile)
    if config.train.jit_compile is True and not model.jit_compile:
        raise ConfigError(f"train.jit_compile=true cannot be honoured: {_why_no_xla(config, model)}; "
                          "set train.jit_compile=auto (or false) to train without XLA")
    return model


def _why_no_xla(config: Config, model) -> str:
    """Why a model asked for ``jit_compile=True`` trains without XLA: its training procedure's
    refusal (:attr:`vae_tf.remedies.base.Inference.xla_refusal`), else Keras' causes (Keras 3.15's
    ``model_supports_jit``): a layer without an XLA kernel, and/or TensorFlow's op determinism
    (``train.deterministic=true``, or left on by an earlier run in this process); every cause that
    applies, so that fixing one does not meet the next."""
    from tensorflow.python.framework.config import is_op_determinism_enabled

    if model.inference.xla_refusal:
        return model.inference.xla_refusal
    causes = []
    layers = model.layers_without_xla()
    if layers:
        causes.append(f"{', '.join(layers)} has no XLA kernel, so Keras turns XLA off for this model")
    if is_op_determinism_enabled():
        where = "train.deterministic=true" if config.train.deterministic else "left on by an earlier run in this process"
        causes.append(f"Keras turns XLA off under TensorFlow's op determinism ({where})")
    return ", and ".join(causes) or "Keras turned XLA off for this model"


def split_for_pretraining(config: Config, data):
    """``(data for the VAE, (x, y) labelled for encoder pretraining or None)``: with
    ``train.pretrain.fraction > 0`` that fraction of the training split is reserved for
    pretraining and removed from the VAE's training data (vae_tf.remedies.pretraining)."""
    if config.train.pretrain.fraction <= 0:
        return data, None
    from vae_tf.remedies.pretraining import split_labelled

    remaining, x, y = split_labelled(data, config.train.pretrain.fraction, seed=config.seed)
    return remaining, (x, y)


def run_pretraining(config: Config, model, labelled, data, tracker) -> dict:
    """Pretrain ``model``'s encoder with a classification head on ``labelled`` and log
    ``pretrain_accuracy`` / ``pretrain_loss`` (and ``pretrain_val_accuracy``) per pretraining
    epoch through ``tracker`` (a :class:`training.tracking.TrackedRun`)."""
    from vae_tf.remedies.pretraining import pretrain_encoder

    pre, train_cfg = config.train.pretrain, config.train
    x, y = labelled
    labels = [y, *(v for v in (data.y_train, data.y_val, data.y_test) if v is not None and len(v))]
    num_classes = int(max(v.max() for v in labels)) + 1
    result = pretrain_encoder(model, x, y, epochs=pre.epochs, batch_size=pre.batch_size or train_cfg.batch_size,
                              learning_rate=pre.learning_rate or train_cfg.learning_rate, num_classes=num_classes,
                              validation_data=data.split("val"), seed=config.seed)
    for epoch in range(pre.epochs):
        tracker.log_metrics({key: result[key][epoch] for key in ("pretrain_accuracy", "pretrain_loss",
                                                                 "pretrain_val_accuracy")
                             if len(result.get(key, [])) > epoch}, step=epoch)
    tracker.log_params({"data.n_pretrain": len(x)})
    return result


def seed_everything(config: Config) -> None:
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(config.seed)  # Python, NumPy and TensorFlow
    if config.train.deterministic:
        tf.config.experimental.enable_op_determinism()


@dataclasses.dataclass
class Prepared:
    """What a run trains, made before anything is logged: the validated data (the part the VAE
    trains on, and the labelled part reserved for encoder pretraining), the steps of an epoch, and
    the compiled model."""

    data: object
    labelled: tuple | None
    steps_per_epoch: int
    model: object


def prepare(config: Config, strategy) -> Prepared:
    """Seed, load and check the data, build and compile the model (in ``strategy.scope()``):
    everything a user's config or data can make fail, so that it fails before an MLflow run, a
    run directory or a checkpoint exists."""
    seed_everything(config)
    _refuse_a_model_of_the_other_modality(config)
    data = prepare_data(config)
    _refuse_too_few_examples_to_judge(config, data)
    data, labelled = split_for_pretraining(config, data)
    steps_per_epoch = training_steps_per_epoch(data, config.train)
    warn_unread_arrays(data.metadata)
    warn_channels_first(data.data_shape)
    text = None
    if data.metadata.get("modality") == "text":
        from vae_tf.models.text import text_settings

        text = text_settings(data.metadata)
        warn_long_sentences(data.metadata)
        warn_unknown_words(data.metadata)
    with strategy.scope():
        model = build_model(config, data.data_shape, steps_per_epoch, strategy.num_replicas_in_sync, text=text)
    if config.model.latent.get("family") == "normal_gamma" and config.objective.kl_weight["kind"] == "constant":
        # Without KL warm-up every mixture weight goes to the uninformative component in the first
        # epoch and never recovers (docs/latent_families.md). Said once the model is built: after
        # any error in the family's own options.
        print("warning: model.latent.family=normal_gamma with a constant KL weight usually collapses every "
              "dimension; anneal it, e.g. objective.kl_weight={kind: linear, steps: 1000}", file=sys.stderr)
    return Prepared(data=data, labelled=labelled, steps_per_epoch=steps_per_epoch, model=model)


def run_training(config: Config, *, tags: dict | None = None, after_training=None,
                 resume: str | bool | None = None, overrides: tuple[str, ...] = ()) -> TrainResult:
    """Train, evaluate, export and track one run. Bad configs and data fail before the MLflow run
    is created (:func:`prepare`); a later failure marks the run FAILED with the error message (tag
    ``error``) and re-raises.

    ``tags`` are set on the run (``mlflow.parentRunId`` nests it under a parent run);
    ``after_training(model, data, tracker)`` runs inside the run after the export, for callers
    that log more (the experiment suites' evaluation) through ``tracker`` (a
    :class:`training.tracking.TrackedRun`: MLflow outages are journaled, not fatal).

    ``resume`` continues an interrupted run from its last checkpoint, in the same MLflow run:
    ``True`` takes the most recent unfinished run of ``config.name`` in ``config.train.run_dir``,
    a string names the run (its directory or MLflow run id). The run's own config is used, with
    ``overrides`` (``key=value``, :data:`training.resume.RESUMABLE_KEYS` only) applied.
    """
    from training.distribute import is_chief, make_strategy, worker_description
    from training.resume import find_run, resumed_config
    from training.tracking import TrackedRun, WorkerRun, check_caller_store, resolve_tracking_uri
    from vae_tf.errors import ConfigError

    if resume:  # the run's own config, strategy included (no TensorFlow work yet)
        run_dir, record = find_run(config.train.run_dir, resume if isinstance(resume, str) else None,
                                   None if isinstance(resume, str) else config.name, config.mlflow.tracking_uri)
        config = resumed_config(record, overrides)
        changed = resume_changes(record["config"], config)
        # a text run started before symbol clusters rebuilds the vocabulary its checkpoint was made with
        config = tokenizer_of_then(config, record.get("tokenizer"))
    if resume and config.train.strategy == "multi_worker":  # said by every worker, before the cluster forms
        raise ConfigError("--resume is for single-process and mirrored runs; a multi_worker run cannot be resumed: "
                          "restart the cluster from scratch (without --resume)")
    strategy = make_strategy(config.train)  # first TF work: MultiWorkerMirroredStrategy must precede the rest
    replicas = strategy.num_replicas_in_sync
    if config.train.batch_size % replicas:
        lower, higher = config.train.batch_size // replicas * replicas, (config.train.batch_size // replicas + 1) * replicas
        raise ConfigError(f"train.batch_size={config.train.batch_size} does not split over the {replicas} replicas of "
                          f"train.strategy={config.train.strategy} (each takes an equal share of a batch); use a "
                          f"multiple of {replicas}, e.g. {f'{lower} or ' if lower else ''}{higher}")
    if config.train.strategy != "none" and config.train.steps_per_execution > 1:
        # Keras 3.15 / TF 2.21: Keras' multi-step loop under MirroredStrategy (and MWMS) fails with
        # "You must feed a value for placeholder tensor 'while/cond/Placeholder'", bare Keras too.
        print(f"warning: train.steps_per_execution={config.train.steps_per_execution} does not work under "
              f"tf.distribute with this Keras/TensorFlow; using 1 for train.strategy={config.train.strategy}",
              file=sys.stderr)
        config = config.replace(train={"steps_per_execution": 1})
    if is_chief(strategy):  # before any data, model or MLflow run exists
        if config.train.precision != "float32":
            import tensorflow as tf

            slower = None if tf.config.list_logical_devices("GPU") else cpu_precision_warning(
                config.train.precision, _cpu_flags())
            if slower:
                print(f"warning: {slower}", file=sys.stderr)
        for folder, setting in ((config.train.run_dir, "train.run_dir"), (config.export.base_dir, "export.base_dir")):
            check_writable_folder(folder, setting)
        # inside a library caller's own MLflow run: refused now, not after the data and model are ready
        check_caller_store(record["tracking_uri"] if resume else resolve_tracking_uri(config.mlflow.tracking_uri))
    prepared = prepare(config, strategy)
    if not is_chief(strategy):
        worker = WorkerRun(worker_description(strategy)).start()
        try:
            return _run(config, prepared, worker, strategy=strategy)
        except Exception as err:
            failure = cluster_failure(err, strategy)
            if failure is None:
                raise
            raise failure from None
        finally:
            worker.finish()
    if resume:
        tracker = TrackedRun(record["tracking_uri"], run_root=run_dir.parent, experiment=record["experiment"],
                             run_name=record.get("run_name"), tags=record.get("tags"),
                             run_id=record.get("mlflow_run_id"), run_dir=run_dir,
                             retry_seconds=config.mlflow.retry_seconds)
    else:
        tracker = TrackedRun(resolve_tracking_uri(config.mlflow.tracking_uri), run_root=config.train.run_dir,
                             experiment=config.mlflow.experiment,
                             run_name=config.mlflow.run_name or default_run_name(config), tags=tags,
                             retry_seconds=config.mlflow.retry_seconds)
    tracker.start()
    try:
        tracker.save_record(status="running", name=config.name, config=config.to_dict(),
                            tokenizer=prepared.data.metadata.get("tokenizer"))
        if resume and changed:
            # MLflow params cannot change once logged: they keep the values the run started with. The
            # resolved config (config.yaml) is the one the run goes on with, and a tag says what changed.
            said = "; ".join(changed)
            earlier = record.get("resume_changes") or []
            tracker.set_tags({"vae_tf.resume.changed": " | ".join([*earlier, said])[-5000:]})  # the latest kept
            tracker.log_dict(config.shareable(), "config.yaml")
            tracker.save_record(resume_changes=[*earlier, said])
            print(f"resuming with: {said} (the run's params keep their first values; config.yaml and the tag "
                  "vae_tf.resume.changed say what changed)", file=sys.stderr)
    except BaseException:
        getattr(tracker, "release_lock", lambda: None)()  # a process that goes on must not keep the run locked
        raise
    try:
        result = _run(config, prepared, tracker, after_training, resumed=bool(resume), strategy=strategy)
    except BaseException as err:
        failure = cluster_failure(err, strategy)
        said = " ".join(str(failure or err).split()) or ("interrupted (Ctrl-C or SIGINT)"
                                                         if isinstance(err, KeyboardInterrupt) else "no message")
        message = f"{type(failure or err).__name__}: {said}"[:5000]
        interrupted = isinstance(err, KeyboardInterrupt)
        # The record first (a local file): an MLflow that failed the run may fail these calls too
        # (a proxy's 404 did: the run record kept "running", with no error, and the tag was lost).
        tracker.save_record(status="interrupted" if interrupted else "failed", error=message)
        try:
            tracker.set_tags({"error": message})
            if resume and record.get("error"):  # what stopped the run the first time is not lost
                tracker.set_tags({"vae_tf.resumed_after": record["error"]})
            tracker.finish("KILLED" if interrupted else "FAILED")
        except Exception as logging_failed:  # noqa: BLE001  (the run's own error is the one to report)
            from training.tracking import _first_line

            getattr(tracker, "release_lock", lambda: None)()
            print(f"warning: MLflow did not take the run's end ({_first_line(logging_failed)}); run.json in "
                  f"{tracker.run_dir} records it", file=sys.stderr)
        if failure is not None:
            raise failure from None
        raise
    if resume and record.get("error"):
        # The run failed or was interrupted before and has now finished: its `error` tag would
        # say it failed; what stopped it is kept as `vae_tf.resumed_after`.
        tracker.delete_tag("error")
        tracker.set_tags({"vae_tf.resumed_after": record["error"]})
    tracker.save_record(status="finished", export_dir=str(result.export_dir.resolve()), error=None)
    tracker.finish("FINISHED")
    return result


#: TensorFlow's errors for a collective whose peers left or stopped answering; an InternalError
#: only when it names a collective (workers that disagree on the ops), not any device fault.
_CLUSTER_ERRORS = ("UnavailableError", "AbortedError", "DeadlineExceededError")
_COLLECTIVE_WORDS = ("Collective", "collective", "tasks have crashed", "heartbeat")


def cluster_failure(err: BaseException, strategy):
    """One line for a multi_worker run stopped by its cluster (a worker killed or unreachable,
    workers started with different configs) in place of TensorFlow's collective-op traceback;
    None for any other error or strategy."""
    import tensorflow as tf

    from vae_tf.errors import VaeTfError

    if not (isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and isinstance(err, tf.errors.OpError)):
        return None
    said = " ".join(str(err.message).split())
    collective = any(word in said for word in _COLLECTIVE_WORDS)
    if not (type(err).__name__ in _CLUSTER_ERRORS or (type(err).__name__ == "InternalError" and collective)):
        return None
    return VaeTfError(f"the training cluster failed, most likely a worker stopped or became unreachable or the "
                      f"workers run different configs (TensorFlow: {type(err).__name__}: {said[:160]}); a "
                      "multi_worker run cannot be resumed: start every worker again, with the same config")


def resume_changes(before: dict, config: Config) -> list[str]:
    """``["train.epochs: 40 -> 9", ...]``: the settings a resume changes from the run's config."""
    from training.config import flatten, from_dict
    from vae_tf.errors import VaeTfError

    try:  # with the defaults filled in, as `config` has them: a key an older record lacks is no change
        old = from_dict(before).flat()
    except VaeTfError:
        old = flatten(before)
    new = config.flat()
    return [f"{key}: {old.get(key)} -> {new.get(key)}" for key in sorted(set(old) | set(new))
            if old.get(key) != new.get(key)]


def training_steps_per_epoch(data, train_cfg) -> int:
    """Training steps in one epoch: the batches of one pass over the training split, rounded up
    to whole ``steps_per_execution`` groups.

    The training data is one stream of batches over all epochs (``DataSplits.resumable_pipeline``,
    every example once per pass, the order of pass p a function of (seed, p)), and Keras runs
    whole groups of ``steps_per_execution`` steps, so when the group size does not divide the
    batches of a pass an epoch is a little longer than a pass and the stream goes on across the
    epoch boundary. The step count is then exact: the data position of a checkpoint is its
    global step."""
    batches = data.steps_per_epoch("train", train_cfg.batch_size)
    return math.ceil(batches / train_cfg.steps_per_execution) * train_cfg.steps_per_execution


def _restore(model, checkpoint_dir: Path, progress) -> str | None:
    """Restore the latest checkpoint in ``checkpoint_dir`` into ``model`` (and ``progress``);
    returns its path, or None when there is none. A latest checkpoint that cannot be read (a
    file cut short by a full disk or a crash mid-write) gives way to the one before it, with a
    warning; when none can be read, the first failure is the one-line error."""
    import tensorflow as tf

    from training.callbacks import checkpoint_for
    from vae_tf.errors import ConfigError

    latest = tf.train.latest_checkpoint(str(checkpoint_dir))
    if latest is None:
        return None
    state = tf.train.get_checkpoint_state(str(checkpoint_dir))
    kept = list(state.all_model_checkpoint_paths) if state is not None else []
    candidates = [latest, *[path for path in reversed(kept) if path != latest]]
    model.optimizer.build(model.trainable_variables)  # its variables must exist to be restored into
    # .numpy(): under a strategy the rate is a MirroredVariable, which float() refuses
    learning_rate = float(model.optimizer.learning_rate.numpy())
    failures = []
    for path in candidates:
        try:
            checkpoint_for(model, progress=progress).restore(path).expect_partial()
        except (ValueError, IndexError, tf.errors.OpError) as err:  # unreadable or not this model's; bugs propagate
            failures.append((path, " ".join(str(err).split())[:200] or type(err).__name__))
            continue
        if failures:
            print(f"warning: checkpoint {failures[0][0]} could not be read ({failures[0][1]}); resumed from {path}, "
                  "the one before it (the steps since are trained again)", file=sys.stderr, flush=True)
        model.optimizer.learning_rate.assign(learning_rate)  # a resume may lower it (--set train.learning_rate)
        return path
    before = f"nor any of the {len(failures) - 1} kept before it" if len(failures) > 1 else "and none is kept before it"
    raise ConfigError(f"checkpoint {latest} cannot be restored ({failures[0][1]}), {before}: it does not fit this "
                      "model (resume with the run's own config) or the files are damaged (start the run again)")


#: Offset of the aggressive inner loop's data stream from the training stream's seed: the two
#: orders differ, and each is a function of (seed, pass), so a resume restarts both exactly.
INNER_STREAM_SEED_OFFSET = 7919


def fit_verbosity(train_cfg) -> int:
    """``train.verbose``, or when it is null: Keras' progress bar on a terminal, one line per epoch
    when standard output is not one (CI, ``nohup``, a log file: no control codes)."""
    if train_cfg.verbose is not None:
        return int(train_cfg.verbose)
    isatty = getattr(sys.stdout, "isatty", None)
    return 1 if isatty is not None and isatty() else 2


def _set_up_inference(config: Config, model, data) -> None:
    """Data the inference procedure reads besides its batch (aggressive: fresh batches from their
    own resumable stream, started where the model's ``inner_batches`` says, and the held-out batch
    of the MI check)."""
    inference = model.inference
    if not hasattr(inference, "set_inner_data"):
        return
    train_cfg = config.train
    inference.set_inner_data(data.resumable_pipeline(
        "train", train_cfg.batch_size, seed=config.seed + INNER_STREAM_SEED_OFFSET, epochs=2**31 - 1,
        start_step=int(inference.inner_batches.numpy())))
    x_val, _ = data.split("val")
    inference.set_heldout(x_val)


def fit_xla_guarded(model, jit_compile, *args, **kwargs):
    """``model.fit``; when XLA is on and TensorFlow fails before the first training step with a
    compiler's error (an ``InternalError`` or ``UnimplementedError``, or any error that names XLA:
    seen on an H200 for the conv model under mixed precision, "Failed to compute symbolic tile"),
    a one-line :class:`ConfigError` naming the cause and the way out (``train.jit_compile=false``)
    instead of TensorFlow's page of HLO. Errors after a step ran, or without XLA, pass through
    unchanged."""
    import tensorflow as tf

    from vae_tf.errors import ConfigError, tensorflow_root_error

    steps_before = int(model.optimizer.iterations.numpy())
    try:
        return model.fit(*args, **kwargs)
    except tf.errors.OpError as err:
        compiler = isinstance(err, (tf.errors.InternalError, tf.errors.UnimplementedError)) or "xla" in str(err).lower()
        if not (compiler and model.jit_compile and int(model.optimizer.iterations.numpy()) == steps_before):
            raise
        raise ConfigError(
            f"XLA could not compile the training step (train.jit_compile={str(jit_compile).lower()}: "
            f"{type(err).__name__}: {tensorflow_root_error(err, 240)}); train without XLA with "
            "--set train.jit_compile=false") from err


#: A max_length set by the longest sentence is said when it exceeds this many times what 99 % of
#: the sentences need (and 16 words): every batch is padded to it.
LONG_TAIL_FACTOR = 2


def _refuse_a_model_of_the_other_modality(config: Config) -> None:
    """A text network or likelihood on a data set of images, or the reverse, refused before the data
    set loads (a download, or the synthetic corpus's generation) where its registry entry says which
    kind it holds; the model's builder checks the loaded data again (files decide for npz, npy)."""
    from vae_tf.data import dataset_modality
    from vae_tf.models import check_modality

    declared = dataset_modality(config.data.name)
    if declared is not None:
        check_modality(config.model.network.get("kind", "mlp"), config.model.likelihood.get("name", "bernoulli"),
                       text=declared == "text")


def _refuse_other_modality(config: Config, data_modality: str | None, model_modality: str, model_name: str) -> None:
    if data_modality is None or data_modality == model_modality:
        return
    from vae_tf.errors import DataError

    holds = "sentences" if data_modality == "text" else "images/arrays"
    takes = "sentences" if model_modality == "text" else "images/arrays"
    kind = "a text model" if model_modality == "text" else "an image model"
    raise DataError(f"data set {config.data.name!r} holds {holds} but {model_name} is {kind} and reads {takes}; "
                    f"evaluate it on {takes} (drop --set data.*, or give such a data set)")


def default_run_name(config: Config) -> str:
    """The MLflow run's name when ``mlflow.run_name`` is not set: the model's name and the start
    time (``vae-20261205-194501``). MLflow's own random names come from Python's ``random``, which
    the run's seed has just seeded: every run of one seed got the same name."""
    import time

    return f"{config.name}-{time.strftime('%Y%m%d-%H%M%S', time.localtime())}"


def _early_stopping_outcome(early_stopping, restored_best: bool, epochs_trained: int, train_cfg, chief: bool):
    """What early stopping decided (:meth:`ResumableEarlyStopping.outcome`), said on the chief's
    stderr; None when there was no early stopping, no best epoch, or its weights could not be
    restored (then the model is the last epoch's, which the warning says)."""
    kept = early_stopping.outcome(epochs_trained, train_cfg.epochs) if early_stopping is not None else None
    if kept is None:
        return None
    said = None
    if not restored_best:  # the file written with each better epoch is gone or of another epoch
        said = (f"warning: the weights of the best epoch ({kept['best_epoch']}) could not be read from "
                f"{early_stopping.weights_path}; the model tested and exported is the last epoch's")
    elif not early_stopping.restored_optimizer:
        said = (f"note: {early_stopping.weights_path} holds no optimizer state of the best epoch (written by an "
                "earlier vae-tf); the export holds the best epoch's weights with the last epoch's optimizer state")
    if chief and said:
        print(said, file=sys.stderr)
    if not restored_best:
        return None
    if chief and kept["stopped"]:
        print(f"early stopping: no better val_elbo for {train_cfg.early_stopping_patience} epoch(s) after epoch "
              f"{kept['best_epoch']}; stopped after epoch {epochs_trained} of {train_cfg.epochs}; the model is "
              f"epoch {kept['best_epoch']}'s (val_elbo {kept['best']:.4f})", file=sys.stderr)
    elif chief and kept["best_epoch"] != epochs_trained:
        print(f"best epoch:    {kept['best_epoch']} of {epochs_trained} by val_elbo ({kept['best']:.4f}); the model "
              "is its weights, not the last epoch's", file=sys.stderr)
    return kept


def _cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> set[str] | None:
    """The x86 CPU's feature flags (the ``flags`` line of Linux's /proc/cpuinfo), or None where
    there is none (another OS, an ARM CPU: its ``Features`` name other instructions)."""
    try:
        with open(cpuinfo, encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.partition(":")[2].split())
    except OSError:
        pass
    return None


def cpu_precision_warning(precision: str, cpu_flags: set[str] | None) -> str | None:
    """Why ``precision`` trains slower than float32 on a CPU with ``cpu_flags``, or None (also
    where the flags are unknown: no guess). Measured with `benchmarks/train_settings.py`
    (docs/performance.md, "Mixed precision on a CPU"): on a 2-CPU Xeon with AVX-512 but neither
    bfloat16 nor float16 instructions, mixed_bfloat16 0.46x and mixed_float16 0.31x float32's
    images/s. TensorFlow's only word was "oneDNN supports DT_HALF only on platforms with
    AVX-512", printed on CPUs that have AVX-512. The 16-bit types pay where the CPU has
    instructions for them (AMX, AVX512_BF16 / AVX512_FP16)."""
    units = {"mixed_bfloat16": ("bfloat16", {"amx_bf16", "avx512_bf16"}, "AMX or AVX512_BF16", "0.46x"),
             "mixed_float16": ("float16", {"amx_fp16", "avx512_fp16"}, "AMX-FP16 or AVX512_FP16", "0.31x")}
    if precision not in units or cpu_flags is None:
        return None
    kind, flags, names, measured = units[precision]
    if cpu_flags & flags:
        return None
    return (f"train.precision={precision} on a CPU without {kind} instructions ({names}): it trains slower than "
            f"float32 ({measured} on a 2-CPU Xeon, docs/performance.md); it pays on GPUs and on CPUs that have them")


def check_writable_folder(folder, setting: str) -> None:
    """Check that ``folder`` is, or can be created as, a folder this process may write in (its
    nearest existing ancestor a writable folder), leaving no trace: one line naming ``setting``
    otherwise (a read-only or mistyped folder failed with a traceback after the MLflow run was
    created, or, for the export, after the whole training)."""
    import os

    from vae_tf.errors import ConfigError

    path = Path(folder).expanduser().absolute()
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        why = f"{existing} is a file"
    elif not os.access(existing, os.W_OK | os.X_OK):
        why = f"{existing} is not writable"
    else:
        return
    raise ConfigError(f"{setting}={folder} cannot be written ({why}); set {setting} to a writable folder")


def warn_long_sentences(metadata: dict, stream=None) -> None:
    """One line on stderr when the length rule dropped or cut sentences (a small ``max_length`` can
    throw away most of a corpus without failing), or when a few very long sentences set
    ``max_length`` (without the option) far above what the others need: every batch is padded to
    it, so training is slower by about that factor, and generation and serving allow it."""
    n_long = {s: int(n) for s, n in (metadata.get("n_long") or {}).items()}
    p99, longest = metadata.get("length_p99"), int(metadata.get("max_length") or 0)
    if p99 is not None and longest > max(16, LONG_TAIL_FACTOR * int(p99)):
        print(f"warning: max_length is {longest} words, the longest sentence's, but 99 % of the sentences have at "
              f"most {p99}: batches are padded to {longest}; set data.options.max_length (e.g. {p99}) to drop or "
              "truncate the few long ones", file=stream or sys.stderr)
    if not sum(n_long.values()):
        return
    kept = {s: int(metadata.get(f"n_{s}", 0)) for s in n_long}
    total = sum(kept.values()) + (sum(n_long.values()) if metadata.get("long_sentences") == "drop" else 0)
    per_split = ", ".join(f"{s} {n}" for s, n in n_long.items() if n)
    if metadata.get("long_sentences") == "drop":
        what, fix = "dropped", "raise data.options.max_length or set data.options.long_sentences=truncate"
    else:
        what, fix = "truncated", "raise data.options.max_length to keep them whole"
    print(f"warning: {what} {sum(n_long.values())} of {total} sentences longer than max_length="
          f"{metadata.get('max_length')} words ({per_split}); {fix}", file=stream or sys.stderr)


#: Above this share of the training split's words outside the vocabulary, `vae-tf train` warns
#: (the Penn Treebank's standard 10k-word vocabulary leaves about 5 % of its words as <unk>).
UNK_RATE_WARNING = 0.10


def warn_channels_first(data_shape, stream=None) -> None:
    """One line on stderr when images look channel-first: arrays are read channel-last
    ``(N, H, W, C)`` (docs/data.md), so an ``(N, 3, 32, 32)`` array trains as 3-pixel-high images
    of 32 channels without any error."""
    shape = tuple(int(d) for d in data_shape or ())
    # (C, H, W) with a square image: channel-first images are nearly always square, and
    # (1, 256, 32)-like arrays (signals of many channels) are legitimately channel-last
    if len(shape) == 3 and shape[0] in (1, 3, 4) and shape[1] == shape[2] > 4:
        print(f"warning: the images are read as {shape[0]} x {shape[1]} pixels with {shape[2]} channels (arrays are "
              f"channel-last, (N, H, W, C)); if the data are channel-first, (N, C, H, W), save them channel-last: "
              "np.moveaxis(x, 1, -1)", file=stream or sys.stderr)


def warn_unread_arrays(metadata: dict, stream=None) -> None:
    """One line on stderr naming the arrays of an ``.npz`` that training does not read: an
    ``x_val`` or an ``x_test`` beside ``x`` reads like a split the run would use, and is not."""
    unread = metadata.get("unread_keys") or []
    if unread:
        print(f"warning: {metadata.get('source')} also holds {', '.join(map(repr, unread))}, which training does not "
              f"read (it reads {metadata.get('x_key')!r}"
              + (f", {metadata.get('y_key')!r}" if metadata.get("y_key") else "")
              + "; an official test split comes only from x_train with x_test, the validation split from "
                "data.val_fraction): see docs/data.md", file=stream or sys.stderr)


def warn_unknown_words(metadata: dict, stream=None) -> None:
    """One line on stderr when many training words are outside the vocabulary: the model learns
    ``<unk>`` as a word, writes it in its decodes, and its perplexity counts it as one word (a
    small ``vocab_size`` or a large ``min_count`` makes the numbers look good while the model
    says little); with why the vocabulary is that small."""
    rate = float((metadata.get("unk_rate") or {}).get("train", 0.0))
    if rate <= UNK_RATE_WARNING:
        return
    size, asked = int(metadata.get("vocab_size") or 0), metadata.get("vocab_size_option")
    if asked is not None and size < int(asked):
        words = f"{size - 4} word occurs" if size - 4 == 1 else f"{size - 4} words occur"
        why = (f"only {words} min_count={metadata.get('min_count')} times (vocab_size {asked} asked): lower "
               "data.options.min_count")
    else:
        why = "raise data.options.vocab_size" + (" or lower data.options.min_count" if metadata.get("min_count", 1) > 1
                                                 else "")
    print(f"warning: {100 * rate:.1f} % of the training words are outside the vocabulary of {size} tokens (written "
          f"<unk>): the model learns <unk> as a word, writes it, and perplexity counts it as one; {why}",
          file=stream or sys.stderr)


def text_params(metadata: dict) -> dict:
    """A text corpus' numbers as run params: vocabulary, length rule, what it dropped or cut, and
    the share of words outside the vocabulary per split."""
    params = {f"data.{k}": metadata[k] for k in ("vocab_size", "max_length", "min_count", "long_sentences")
              if k in metadata}
    for key in ("n_long", "unk_rate"):
        for split, value in (metadata.get(key) or {}).items():
            params[f"data.{key}.{split}"] = round(float(value), 6) if key == "unk_rate" else int(value)
    return params


def _run(config: Config, prepared: Prepared, tracker, after_training=None, resumed: bool = False,
         strategy=None) -> TrainResult:
    import numpy as np

    from training.callbacks import (
        CollapseDiagnostics,
        MlflowMetrics,
        ResumableEarlyStopping,
        RestoreEpochTrackers,
        StopOnNonFinite,
        TrainingCheckpoint,
        TrainingProgress,
    )
    from training.distribute import distribute_options, is_chief
    from training.lineage import held_out_digests, log_datasets, model_verdict
    from vae_tf.errors import TrainingDivergedError
    from vae_tf.export import export_model

    if strategy is None:
        import tensorflow as tf

        strategy = tf.distribute.get_strategy()
    data, labelled, steps_per_epoch, model = prepared.data, prepared.labelled, prepared.steps_per_epoch, prepared.model
    if not resumed:
        tracker.log_params(_params(config.flat()))
        tracker.log_dict(config.shareable(), "config.yaml")
        tracker.set_tags(run_tags(config))
        tracker.log_params({"data.n_train": len(data.x_train), "data.n_val": len(data.x_val),
                            "data.n_test": len(data.x_test), "data.shape": str(data.data_shape)})
        if data.metadata.get("modality") == "text":
            tracker.log_params(text_params(data.metadata))
        log_datasets(tracker, config, data, labelled)
    train_cfg = config.train
    chief = is_chief(strategy)
    checkpoint_dir = tracker.run_dir / "checkpoints"
    progress = TrainingProgress()  # not a distributed variable: MWMS cannot broadcast a string
    with strategy.scope():
        restored = _restore(model, checkpoint_dir, progress) if resumed else None
    if restored is None and labelled is not None:  # a restored encoder is already pretrained
        with strategy.scope():  # the classifier's head and optimizer are distributed like the VAE's
            run_pretraining(config, model, labelled, data, tracker)
    start = (progress.epoch, progress.step_in_epoch, progress.history)
    if restored is not None:
        if start[0] >= config.train.epochs:  # stopped after its last epoch (evaluating or exporting)
            print(f"resuming from {restored}: its {config.train.epochs} epoch(s) are trained", file=sys.stderr)
        else:
            print(f"resuming from {restored}: epoch {start[0] + 1}, step {start[1]} of {steps_per_epoch}",
                  file=sys.stderr)
        tracker.set_tags({"vae_tf.resumed_from": restored})
        _log_missing_epochs(tracker, start[2])
    elif resumed and chief:  # stopped before its first checkpoint: nothing to continue from
        print(f"resuming run {tracker.run_id}: it stopped before its first checkpoint, so training starts again from "
              "epoch 1 (in the same MLflow run)", file=sys.stderr)
    _set_up_inference(config, model, data)

    checkpoints = TrainingCheckpoint(checkpoint_dir, steps_per_epoch, max_to_keep=train_cfg.checkpoints_to_keep,
                                     every_steps=train_cfg.checkpoint_every_steps, start=start)
    nan_guard = StopOnNonFinite(checkpoints)
    has_val = len(data.x_val) > 0
    callbacks = []
    if start[1] > 0:  # the interrupted epoch's running means go on from the checkpoint's
        callbacks.append(RestoreEpochTrackers(model, start[0]))
    if has_val and chief:  # before the checkpoint and the MLflow logger, which record what it adds
        callbacks.append(CollapseDiagnostics(data.x_val, seed=config.seed))
    early_stopping = None
    if train_cfg.early_stopping_patience and has_val:
        # Its state is a function of the checkpoint's history (replayed on a resume) and of the best
        # weights, which it saves before the checkpoint of the same epoch is written.
        early_stopping = ResumableEarlyStopping(checkpoints, tracker.run_dir / "best_weights.npz",
                                                monitor="val_elbo", mode="max", restore_best_weights=True,
                                                patience=train_cfg.early_stopping_patience)
        callbacks.append(early_stopping)
    callbacks += [checkpoints, nan_guard, MlflowMetrics(_EpochLogger(tracker))]

    val_ds = distribute_options(data.pipeline("val", train_cfg.batch_size), strategy) if has_val else None
    epoch, step = start[0], start[1]
    batches_per_pass = data.steps_per_epoch("train", train_cfg.batch_size)
    verbose = fit_verbosity(train_cfg)
    model.stop_training = bool(early_stopping is not None and early_stopping.stopped_before())
    if model.stop_training and resumed and epoch < train_cfg.epochs:
        print(f"resumed:       early stopping stops this run: no better val_elbo in its last {early_stopping.wait} "
              f"epoch(s) (train.early_stopping_patience={train_cfg.early_stopping_patience}), so no epoch is trained; "
              "to train on, resume with a larger --set train.early_stopping_patience=...", file=sys.stderr)
    if train_cfg.early_stopping_patience and not has_val and chief and not resumed:
        print(f"note: early stopping (train.early_stopping_patience={train_cfg.early_stopping_patience}) is off: "
              "it watches val_elbo and this run has no validation split (data.val_fraction)", file=sys.stderr)
    while epoch < train_cfg.epochs and not model.stop_training:
        # One fit for the rest of an interrupted epoch (Keras epochs have a fixed length), then one
        # for the remaining epochs; the pipeline starts at the global step either way.
        last = epoch + 1 if step else train_cfg.epochs
        train_ds = data.resumable_pipeline("train", train_cfg.batch_size, seed=config.seed,
                                           start_step=epoch * steps_per_epoch + step,
                                           epochs=math.ceil(train_cfg.epochs * steps_per_epoch / batches_per_pass) + 1)
        train_ds = distribute_options(train_ds, strategy)
        fit_xla_guarded(model, train_cfg.jit_compile, train_ds, validation_data=val_ds, initial_epoch=epoch,
                        epochs=last, steps_per_epoch=steps_per_epoch - step, callbacks=callbacks, verbose=verbose,
                        shuffle=False)  # the pipeline orders the data
        epoch, step = checkpoints.epoch, 0
    restored_best = early_stopping is not None and early_stopping.restore_best(model)
    if nan_guard.failed_step is not None:
        happened = (f"training stopped: the loss became {nan_guard.value} at step {nan_guard.failed_step} (epoch "
                    f"{nan_guard.failed_epoch + 1})")
        if checkpoints.last_path is None:  # nothing to resume from: start again, changed
            raise TrainingDivergedError(
                f"{happened}, before the first checkpoint; train again with a lower --set train.learning_rate=... "
                "or with --set train.clip_norm=..., or see docs/reliability.md")
        raise TrainingDivergedError(
            f"{happened}; the last good checkpoint is {checkpoints.last_path}; resume from it with "
            f"`vae-tf train --resume {tracker.run_dir.name} --set train.learning_rate=...` (lower) or "
            "--set train.clip_norm=..., or see docs/reliability.md")
    history = checkpoints.history
    exported = tracker.record().get("exported") if resumed and chief else None
    if exported and exported.get("epochs") == len(history) and Path(exported["export_dir"]).is_dir():
        # Stopped after its export (in `after_training`: a suite child's evaluation): evaluating and
        # exporting again would log every test metric twice and export a second version.
        print(f"resumed:       trained, tested and exported before ({exported['export_dir']}); running what "
              "came after it", file=sys.stderr)
        if after_training is not None:
            after_training(model, data, tracker)
        return TrainResult(run_id=tracker.run_id or tracker.run_dir.name, experiment_id=tracker.experiment_id,
                           tracking_uri=tracker.tracking_uri, export_dir=Path(exported["export_dir"]),
                           checkpoint_dir=checkpoint_dir, history=_history_dict(history),
                           test_metrics=exported["test_metrics"], model_uri=exported.get("model_uri"),
                           registered_version=exported.get("registered_version"), collapse=exported.get("collapse"),
                           name=config.name)
    # The end-of-training numbers at the step of the epochs trained: a finished run resumed for
    # more epochs logs them again, at its new length (both were step 0, indistinguishable).
    end_step = len(history)
    tracker.log_metrics({"epochs_run": len(history)}, step=end_step)
    kept = _early_stopping_outcome(early_stopping, restored_best, len(history), train_cfg, chief)
    if kept is not None:
        # The model tested, judged and exported below is the best epoch's, not the last one's
        # (whose val_elbo is the last point of the run's curve).
        tracker.log_metrics({"best_epoch": kept["best_epoch"], "best_val_elbo": kept["best"]}, step=end_step)

    eval_split = evaluation_split(data)
    test_metrics = model.evaluate(distribute_options(data.pipeline(eval_split, train_cfg.batch_size), strategy),
                                  return_dict=True, verbose=0)
    test_metrics = {f"{eval_split}_{k}": float(np.asarray(v).reshape(-1)[0]) for k, v in test_metrics.items()}
    kl = model.kl_per_dim
    tracker.log_metrics({**test_metrics, **{f"{eval_split}_kl_dim_{i}": float(v) for i, v in enumerate(kl)}},
                        step=end_step)

    if not chief:  # the chief logs and exports
        return TrainResult(run_id=None, experiment_id=None, tracking_uri=tracker.tracking_uri, export_dir=None,
                           checkpoint_dir=None, history=_history_dict(checkpoints.history), test_metrics=test_metrics)
    x_eval, _ = data.split(eval_split)
    verdict = model_verdict(model, x_eval, seed=config.seed)
    tracker.log_metrics({f"{eval_split}_{k}": v for k, v in verdict.metrics.items()}, step=end_step)
    tracker.set_tags(verdict.tags())
    print(f"collapse:      {verdict.line}", file=sys.stderr)
    if config.mlflow.log_figures:
        log_model_figures(tracker, model, data, eval_split, kl, config.seed)

    export_dir = export_model(model, config.export.base_dir, config.name, config.export.version,
                              config=config.shareable(),
                              data_info={"value_range": data.value_range, "name": data.name,
                                         "binary": data.binary, **data.metadata,
                                         "split_digests": held_out_digests(data)},
                              extra={"mlflow_run_id": tracker.run_id})
    tracker.set_tags({"vae_tf.export_dir": str(export_dir.resolve())})
    model_uri, version = tracker.log_model(export_dir, data.data_shape, config.name if config.mlflow.register else None)
    tracker.save_record(exported={"epochs": len(history), "export_dir": str(export_dir.resolve()),
                                  "model_uri": model_uri, "registered_version": None if version is None else str(version),
                                  "test_metrics": test_metrics, "collapse": verdict.line})

    if after_training is not None:
        after_training(model, data, tracker)
    return TrainResult(run_id=tracker.run_id or tracker.run_dir.name, experiment_id=tracker.experiment_id,
                       tracking_uri=tracker.tracking_uri, export_dir=export_dir, checkpoint_dir=checkpoint_dir,
                       history=_history_dict(history),
                       test_metrics=test_metrics, model_uri=model_uri,
                       registered_version=None if version is None else str(version), collapse=verdict.line,
                       name=config.name)


def log_model_figures(tracker, model, data, split: str, kl, seed: int) -> None:
    """The run's figures: image grids for image models; for text models Markdown tables
    (reconstructions, prior samples, an interpolation) and, when the data know the true z (the
    synthetic corpus), the posterior means against it."""
    from vae_tf import plots

    x, y = data.split(split)
    if getattr(model, "modality", "image") != "text":
        tracker.log_figures(plots.model_figures(model, x, value_range=data.value_range, kl=kl, seed=seed))
        return
    for name, table in plots.text_tables(model, x, seed=seed).items():
        tracker.log_text(table, f"figures/{name}")
    figures = {"kl_per_dim.png": plots.kl_per_dim(kl)}
    factors = data.factors(split)
    if factors is not None and np.asarray(factors).dtype.kind == "f":
        from vae_tf.metrics import encode_posterior

        means = encode_posterior(model, x[:2000], seed=seed)["embedding"]
        figures["latent_vs_true_z.png"] = plots.latent_scatter(means, np.asarray(factors)[:2000],
                                                               None if y is None else np.asarray(y)[:2000])
    tracker.log_figures(figures)


def run_tags(config: Config) -> dict:
    """Tags that let a user filter runs by what they compose (MLflow's runs table)."""
    objective = config.objective
    return {"vae_tf.objective": objective.summary(), "vae_tf.kl_weight": objective.kl_weight["kind"],
            "vae_tf.regularizers": ",".join(r["kind"] for r in objective.regularizers) or "none",
            "vae_tf.input_noise": objective.input_noise["kind"], "vae_tf.inference": objective.inference["kind"],
            "vae_tf.skip_decoder": str(bool(config.model.network.get("skip", False))).lower(),
            "vae_tf.pretraining": str(config.train.pretrain.fraction > 0).lower(),
            "vae_tf.latent": config.model.latent["family"], "vae_tf.likelihood": config.model.likelihood["name"],
            "vae_tf.data": config.data.name}


def _history_dict(history: list[dict]) -> dict[str, list[float]]:
    keys = sorted({k for entry in history for k in entry["metrics"]})
    return {k: [e["metrics"].get(k, float("nan")) for e in history] for k in keys}


def _params(flat: dict) -> dict:
    from training.tracking import MAX_PARAM_LENGTH

    return {key: ("null" if value is None else str(value))[:MAX_PARAM_LENGTH] for key, value in flat.items()}


class _EpochLogger:
    """Logs an epoch's metrics through the tracker and records it in run.json, so a resume knows
    which finished epochs MLflow has (when MLflow cannot be asked)."""

    def __init__(self, tracker):
        self.tracker = tracker

    def log_metrics(self, metrics: dict, step: int) -> None:
        self.tracker.log_metrics(metrics, step=step)
        self.tracker.save_record(last_logged_epoch=step)


def _log_missing_epochs(tracker, history: list[dict]) -> None:
    """After a restore: log the checkpoint's finished epochs that the run does not have yet (a
    process killed between an epoch's checkpoint and its logging), so no epoch is lost or doubled."""
    logged = tracker.logged_steps("loss")
    for entry in history:
        if entry["epoch"] not in logged:
            tracker.log_metrics(entry["metrics"], step=entry["epoch"])
            tracker.save_record(last_logged_epoch=entry["epoch"])
