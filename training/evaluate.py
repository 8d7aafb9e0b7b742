"""The evaluation job behind ``vae-tf evaluate``: load a trained model (export directory,
registered model or MLflow run), compute every diagnostic that applies on its data, write a JSON
report and log metrics, figures and the report to MLflow."""

from __future__ import annotations

import dataclasses
import re
import sys
import tempfile
from pathlib import Path

from vae_tf.errors import ConfigError, ModelNotFoundError

#: Disentanglement sample sizes: "quick" for a first look (minutes), "full" = disentanglement_lib.
DISENTANGLEMENT_SIZES = {
    "quick": {"num_train": 1000, "num_eval": 500, "num_variance_estimate": 1000, "batch_size": 64},
    "full": None,
}


@dataclasses.dataclass
class EvaluationResult:
    metrics: dict
    info: dict
    report_path: Path
    run_id: str | None
    version_dir: Path | None  # None for a registered model (downloaded into a folder removed since)


def resolve_model(source: str, download_dir: str | Path | None = None) -> tuple[Path, str | None]:
    """A local SavedModel version directory for ``source`` and the MLflow run that trained it.

    ``source`` is an export directory (``models/vae`` -> highest version, or ``models/vae/3``),
    a registered model URI (``models:/vae/3``, ``models:/vae@champion``; downloaded into
    ``download_dir``, a new temporary folder if None, which the caller removes) or ``runs:/<run id>``.
    """
    from vae_tf.export import load_model_info, resolve_version_dir

    if source.startswith(("models:/", "runs:/")):
        import mlflow

        from training.tracking import resolve_tracking_uri, use_tracking

        use_tracking(resolve_tracking_uri(None))
        if source.startswith("runs:/"):
            run_id = source[len("runs:/"):].strip("/").split("/")[0]
            try:
                run = mlflow.MlflowClient().get_run(run_id)
            except mlflow.exceptions.MlflowException:
                raise ModelNotFoundError(f"MLflow run {run_id!r} not found at {mlflow.get_tracking_uri()}: "
                                         "check the run id or MLFLOW_TRACKING_URI") from None
            if run.data.tags.get("vae_tf.kind") == "evaluation":
                evaluated = run.data.tags.get("vae_tf.evaluates_run_id")
                target = f"runs:/{evaluated}" if evaluated else f"models:/{run.data.tags.get('vae_tf.model', 'NAME/VERSION')}"
                raise ModelNotFoundError(f"run {run_id} is an evaluation (of {run.data.tags.get('vae_tf.model', 'a model')}), "
                                         f"not a training run; evaluate the model itself: {target}")
            export = run.data.tags.get("vae_tf.export_dir")
            if not export or not Path(export).exists():
                raise ModelNotFoundError(f"run {run_id} has no local export (tag vae_tf.export_dir={export!r}); "
                                         "evaluate its registered model (models:/NAME/VERSION) instead")
            return resolve_version_dir(export), run_id
        if re.fullmatch(r"models:/[^/@]+/?", source):  # a name alone: MLflow looks for a logged-model id
            raise ModelNotFoundError(f"{source} names no version: give models:/{source[8:].strip('/')}/VERSION or "
                                     f"models:/{source[8:].strip('/')}@ALIAS")
        try:
            local = Path(mlflow.artifacts.download_artifacts(
                source, dst_path=str(download_dir or tempfile.mkdtemp(prefix="vae-tf-eval-"))))
        except mlflow.exceptions.MlflowException as err:
            raise ModelNotFoundError(f"{source} not found in the MLflow registry at {mlflow.get_registry_uri()}: "
                                     f"{str(err).splitlines()[0]}") from None
        version_dir = _pyfunc_saved_model(local)
        info = load_model_info(version_dir)
        return version_dir, info.get("mlflow_run_id")
    path = Path(source)
    if not path.exists():
        raise ModelNotFoundError(f"{source} does not exist: give an export directory (models/NAME[/VERSION]), "
                                 "models:/NAME/VERSION or runs:/RUN_ID")
    version_dir = resolve_version_dir(path)
    return version_dir, load_model_info(version_dir).get("mlflow_run_id")


def _pyfunc_saved_model(local: Path) -> Path:
    """The SavedModel directory inside a downloaded vae-tf pyfunc model (its ``saved_model`` artifact)."""
    from mlflow.models import Model

    try:
        artifacts = Model.load(str(local / "MLmodel")).flavors["python_function"]["artifacts"]
        return local / artifacts["saved_model"]["path"]
    except (OSError, KeyError) as err:
        raise ModelNotFoundError(f"{local} is not a vae-tf MLflow model (no saved_model artifact: {err})") from None


#: ``vae_tf.metrics.likelihood.IW_CHUNK`` (importance samples are drawn this many at a time),
#: repeated so that the command line is checked without importing TensorFlow (a test keeps them equal).
IW_CHUNK = 100


def iw_k_problem(iw_k: int) -> str | None:
    """What is wrong with ``iw_k`` importance samples, said as the end of a sentence; None when
    nothing is (the IW-NLL draws them ``IW_CHUNK`` at a time, and 0 skips it)."""
    if iw_k % IW_CHUNK:
        return (f"must be 0 (no IW-NLL) or a multiple of {IW_CHUNK} (samples are drawn {IW_CHUNK} at a time), got "
                f"{iw_k}; use e.g. {-(-iw_k // IW_CHUNK) * IW_CHUNK}")
    return None


def evaluate(source: str, *, split: str = "test", overrides: list[str] | tuple = (), max_examples: int | None = None,
             iw_k: int = 500, disentanglement: str = "quick", fd: bool = False, output: str | None = None,
             log_to_mlflow: bool = True, into_run: str | None = None, allow_unnormalised_nll: bool = False,
             out=None) -> EvaluationResult:
    from training.config import apply_overrides, from_dict, load_config
    from training.train import prepare_data
    from vae_tf.export import load_model_info, load_vae
    from vae_tf.metrics import evaluate_model, evaluation_figures, report

    if disentanglement not in DISENTANGLEMENT_SIZES and disentanglement != "off":
        raise ConfigError(f"--disentanglement must be off, quick or full, got {disentanglement!r}")
    problem = iw_k_problem(iw_k)
    if problem:  # before anything loads (the MLflow project's entry; `vae-tf evaluate` checks when parsing)
        raise ConfigError(f"iw_k {problem}")
    # A registered model is downloaded into a temporary folder, removed once the model is in memory.
    with tempfile.TemporaryDirectory(prefix="vae-tf-eval-") as download:
        version_dir, run_id = resolve_model(source, download)
        info = load_model_info(version_dir)
        model = load_vae(version_dir)
    downloaded = source.startswith("models:/")
    shown = source if downloaded else str(version_dir)  # how messages and the report name the model
    saved = info.get("config")
    # The overrides apply to the saved config before it is validated: `--set data.name=...` can
    # name another data set for a model whose training set cannot be loaded here.
    config = from_dict(apply_overrides(saved, overrides)) if saved else load_config(None, overrides)
    modality = getattr(model, "modality", "image")
    data = prepare_data(config, model_modality=modality, model_name=shown,
                        model_data_shape=model.data_shape if modality == "image" else None)

    result = evaluate_model(model, data, split=split, seed=config.seed, max_examples=max_examples, iw_k=iw_k,
                            disentanglement=disentanglement != "off",
                            disentanglement_sizes=DISENTANGLEMENT_SIZES.get(disentanglement), fd=fd,
                            allow_unnormalised_nll=allow_unnormalised_nll)
    x, _ = data.split(split)
    figures = evaluation_figures(result, model=model, x=x[:10], value_range=data.value_range)
    document = report(result)
    document["model"] = {"source": source, "version_dir": None if downloaded else str(version_dir),
                         "name": info.get("name"), "version": info.get("version"), "trained_in_run": run_id}

    # A subsample's report (--max-examples) does not take the whole split's file name.
    sample = f"-max{max_examples}" if max_examples else ""
    report_path = Path(output) if output else (
        Path("evaluation") / f"{info.get('name', 'model')}-v{info.get('version', 0)}-{split}{sample}.json")
    _write_json_atomically(report_path, document)

    from training.lineage import result_verdict

    verdict = result_verdict(result)
    document["collapse"] = {"verdict": verdict.line, "status": verdict.verdict.status,
                            "thresholds": verdict.verdict.thresholds()}
    eval_run_id = None
    if log_to_mlflow:
        eval_run_id = _log(config, info, result, figures, document, run_id, split, data, verdict, into_run)
    else:
        import matplotlib.pyplot as plt

        for fig in figures.values():
            plt.close(fig)
    _print_summary(result, report_path, eval_run_id, out or sys.stdout, verdict.line)
    return EvaluationResult(metrics=result["metrics"], info=result["info"], report_path=report_path,
                            run_id=eval_run_id, version_dir=None if downloaded else version_dir)


def _write_json_atomically(path: Path, document: dict) -> None:
    from training.atomic import write_json_atomic

    write_json_atomic(path, document, allow_nan=False)


def _log(config, info, result, figures, document, trained_run_id, split, data, verdict, into_run=None) -> str:
    """Log the evaluation as a new run in the config's experiment, or into the existing run
    ``into_run`` (the one `mlflow run` made for the project's evaluate entry), which keeps its
    experiment and takes the evaluation's name and tags."""
    import mlflow

    from training.lineage import dataset_digest, dataset_source
    from training.tracking import activate_experiment, log_figures, meta_dataset, resolve_tracking_uri, use_tracking

    use_tracking(resolve_tracking_uri(config.mlflow.tracking_uri))
    if into_run is None:
        activate_experiment(config.mlflow.experiment)
    name = f"evaluate {info.get('name')} v{info.get('version')} ({split})"
    tags = {"vae_tf.kind": "evaluation", "vae_tf.model": f"{info.get('name')}/{info.get('version')}"}
    if trained_run_id:
        tags["vae_tf.evaluates_run_id"] = trained_run_id
    with mlflow.start_run(run_id=into_run, run_name=name, tags={**tags, **verdict.tags()}) as run:
        x, y = data.split(split)
        mlflow.log_input(meta_dataset(f"{data.name}-{split}", dataset_source(config, data), dataset_digest(x, y)),
                         context="evaluation", tags={"split": split, "n_examples": str(len(x))})
        mlflow.log_metrics({k: float(v) for k, v in result["metrics"].items() if v == v})  # NaN: not logged
        mlflow.log_dict(document, "evaluation/report.json")
        log_figures(figures, "evaluation")
    return run.info.run_id


def _print_summary(result, report_path: Path, run_id: str | None, out, verdict: str) -> None:
    """Every scalar metric except the per-dimension ones (those are in the report and the figures),
    then the collapse verdict."""
    print(file=out)
    for key, value in result["metrics"].items():
        if not key.startswith("kl_dim_"):
            print(f"{key:32s} {value:.4f}", file=out)
    for key, reason in result["info"].get("skipped", {}).items():
        print(f"{key:32s} skipped: {reason}", file=out)
    print(f"\ncollapse:      {verdict}", file=out)
    print(f"report:        {report_path.resolve()}", file=out)
    if run_id:
        print(f"MLflow run:    {run_id}", file=out)
