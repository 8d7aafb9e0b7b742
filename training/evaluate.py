"""The evaluation job behind ``vae-tf evaluate``: load a trained model (export directory,
registered model or MLflow run), compute every diagnostic that applies on its data, write a JSON
report and log metrics, figures and the report to MLflow."""

from __future__ import annotations

import dataclasses
import json
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


def resolve_model(source: str, download_dir: str | Path | None = None) -> tuple[Path, str | None, str | None]:
    """A local SavedModel version directory for ``source``, the MLflow run that trained it and,
    for a registered model, its name and registry version (``"vae/2"``; None otherwise: an
    export's own version, counted on disk, need not be the registry's).

    ``source`` is an export directory (``models/vae`` -> highest version, or ``models/vae/3``),
    a registered model URI (``models:/vae/3``, ``models:/vae@champion``, ``models:/vae/latest``),
    a logged model (``models:/m-<id>``, as ``vae-tf train`` prints it) or ``runs:/<run id>`` (its
    local export, else the model the run logged). MLflow models are downloaded into
    ``download_dir`` (a new temporary folder if None, which the caller removes).
    """
    from vae_tf.export import load_model_info, resolve_version_dir

    if source.startswith(("models:/", "runs:/")):
        import mlflow

        from training.tracking import resolve_tracking_uri, use_tracking

        use_tracking(resolve_tracking_uri(None))
        if source.startswith("runs:/"):
            run_id = source[len("runs:/"):].strip("/").split("/")[0]
            if not run_id:
                raise ModelNotFoundError(f"{source} names no run: give runs:/RUN_ID (the id `vae-tf train` prints)")
            try:
                run = mlflow.MlflowClient().get_run(run_id)
            except mlflow.exceptions.MlflowException:
                raise ModelNotFoundError(f"MLflow run {run_id!r} not found at {mlflow.get_tracking_uri()}: "
                                         "check the run id or MLFLOW_TRACKING_URI") from None
            if run.data.tags.get("vae_tf.kind") == "evaluation":
                evaluated = run.data.tags.get("vae_tf.evaluates_run_id")
                model = run.data.tags.get("vae_tf.model", "NAME/VERSION")
                # an export's "vae/3" is no registry version: the source it was evaluated from, when logged
                target = f"runs:/{evaluated}" if evaluated else (
                    model if model.startswith("models:/") else run.data.params.get("source", f"models/{model}"))
                raise ModelNotFoundError(f"run {run_id} is an evaluation (of {run.data.tags.get('vae_tf.model', 'a model')}), "
                                         f"not a training run; evaluate the model itself: {target}")
            export = run.data.tags.get("vae_tf.export_dir")
            if export and Path(export).exists():
                return resolve_version_dir(export), run_id, _registered_by(run_id)
            # No local export (moved, deleted, another machine): the model the run logged.
            version_dir = _download_model(f"runs:/{run_id}/model", download_dir,
                                          f"run {run_id} has no local export (tag vae_tf.export_dir={export!r}) and "
                                          "no logged model")
            return version_dir, run_id, _registered_by(run_id)
        logged_model_id = re.fullmatch(r"models:/(m-[0-9a-f]{8,})/?", source)
        if re.fullmatch(r"models:/[^/@]+/?", source) and not logged_model_id:
            raise ModelNotFoundError(f"{source} names no version: give models:/{source[8:].strip('/')}/VERSION or "
                                     f"models:/{source[8:].strip('/')}@ALIAS")
        version_dir = _download_model(source, download_dir, f"{source} not found in the MLflow registry at "
                                                            f"{mlflow.get_registry_uri()}")
        info = load_model_info(version_dir)
        return version_dir, info.get("mlflow_run_id"), None if logged_model_id else _registry_label(source)
    path = Path(source)
    if not path.exists():
        raise ModelNotFoundError(f"{source} does not exist: give an export directory (models/NAME[/VERSION]), "
                                 "models:/NAME/VERSION or runs:/RUN_ID")
    version_dir = resolve_version_dir(path)
    return version_dir, load_model_info(version_dir).get("mlflow_run_id"), None


def _registered_by(run_id: str) -> str | None:
    """``"NAME/VERSION"`` of the registry version a training run registered (its newest, should
    it have several), or None: the report's ``model.registered``, as for ``models:/NAME/VERSION``."""
    import mlflow

    try:
        versions = mlflow.MlflowClient().search_model_versions(f"run_id = '{run_id}'")
    except mlflow.exceptions.MlflowException:  # a store without a registry: named by its export
        return None
    newest = max(versions, key=lambda v: int(v.version), default=None)
    return None if newest is None else f"{newest.name}/{newest.version}"


def _download_model(uri: str, download_dir, failure: str) -> Path:
    """The SavedModel inside the vae-tf pyfunc model at MLflow ``uri``, downloaded; ``failure``
    starts the one-line error when there is none."""
    import mlflow

    try:
        local = Path(mlflow.artifacts.download_artifacts(
            uri, dst_path=str(download_dir or tempfile.mkdtemp(prefix="vae-tf-eval-"))))
    except mlflow.exceptions.MlflowException as err:
        raise ModelNotFoundError(f"{failure}: {str(err).splitlines()[0]}") from None
    return _pyfunc_saved_model(local)


def _registry_label(source: str) -> str | None:
    """``"NAME/VERSION"`` of a registered model URI (``models:/NAME/VERSION``, ``@ALIAS`` or
    ``/latest``) as the registry numbers it; None when the registry cannot say."""
    import mlflow

    match = re.fullmatch(r"models:/([^/@]+)(?:/([^/@]+)|@(.+?))/?", source)
    if not match:
        return None
    name, version, alias = match.groups()
    client = mlflow.MlflowClient()
    try:
        if alias:
            version = client.get_model_version_by_alias(name, alias).version
        elif version == "latest":
            version = max(int(v.version) for v in client.search_model_versions(f"name='{name}'"))
    except (mlflow.exceptions.MlflowException, ValueError):
        return None
    return f"{name}/{version}"


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
    if iw_k < 0:
        return f"must be 0 (no IW-NLL) or a number of samples, got {iw_k}"
    if iw_k > IW_CHUNK and iw_k % IW_CHUNK:
        return (f"must be 0 (no IW-NLL), at most {IW_CHUNK}, or a multiple of {IW_CHUNK} (more samples are drawn "
                f"{IW_CHUNK} at a time), got {iw_k}; use e.g. {-(-iw_k // IW_CHUNK) * IW_CHUNK}")
    return None


def iw_chunk_for(iw_k: int) -> int:
    """Importance samples per decoder pass for ``iw_k`` (:func:`iw_k_problem` passed; ``vae-tf
    evaluate`` and the suites' children alike, so that one K gives one number): all at once up to
    ``IW_CHUNK``, else ``IW_CHUNK`` at a time."""
    return iw_k if 0 < iw_k <= IW_CHUNK else IW_CHUNK


#: The config sections an evaluation reads (the data, where to log, the seed): every other one
#: (model, objective, train, export, name) describes the training that made the export.
EVALUATE_OVERRIDES = ("data", "mlflow", "seed")


def _refuse_model_overrides(overrides) -> None:
    """``--set model.latent.categories=5`` was applied to a copy of the saved config, ignored, and
    recorded as a param of the evaluation run, whose numbers were the unchanged model's. (An
    export that records no config takes any key: the default config stands in for it, and e.g.
    ``model.likelihood.name`` says which likelihood's support its data are checked against.)"""
    from training.config import parse_override

    for text in overrides:
        path, _ = parse_override(str(text))
        if path[0] not in EVALUATE_OVERRIDES:
            key = ".".join(path)
            raise ConfigError(f"--set {key}: an evaluation takes the model as it was exported and reads only "
                              f"{', '.join(k + ('' if k == 'seed' else '.*') for k in EVALUATE_OVERRIDES)} from "
                              "--set; to change the model, train one with vae-tf train --set ...")


def evaluate(source: str, *, split: str = "test", overrides: list[str] | tuple = (), max_examples: int | None = None,
             iw_k: int = 500, disentanglement: str = "quick", fd: bool = False, output: str | None = None,
             log_to_mlflow: bool = True, into_run: str | None = None, allow_unnormalised_nll: bool = False,
             out=None) -> EvaluationResult:
    from training.config import apply_overrides, from_dict, load_config, parse_override, tokenizer_of_then
    from training.lineage import dataset_digest
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
        version_dir, run_id, registered = resolve_model(source, download)
        downloaded = Path(download).resolve() in version_dir.resolve().parents
        info = load_model_info(version_dir)
        if info.get("config"):  # without one, --set model.likelihood.* says how to read its data
            _refuse_model_overrides(overrides)
        model = load_vae(version_dir)
    # How the report and the evaluation run name the model: a registered model by its registry
    # version, marked as such (an export's own version, counted on disk, can differ: models:/vae/2
    # and models/vae/2 can be two models, whose reports overwrote each other), else by its
    # export's (runs:/ too, as the export directory is; its registry version is in the report).
    by_registry = bool(registered) and source.startswith("models:/")
    label = f"models:/{registered}" if by_registry else f"{info.get('name')}/{info.get('version')}"
    shown = source if downloaded else str(version_dir)  # how messages and the report name the model
    saved = info.get("config")
    # The overrides apply to the saved config before it is validated: `--set data.name=...` can
    # name another data set for a model whose training set cannot be loaded here.
    config = from_dict(apply_overrides(saved, overrides)) if saved else load_config(None, overrides)
    overridden = {parse_override(str(o))[0][0] for o in overrides}  # the config's top-level keys set
    if not saved and "data" not in overridden:
        print(f"warning: {shown} records no training config (exported by export_model without one): evaluating it on "
              f"the default data set, {config.data.name}; name its data with --set data.name=...", file=sys.stderr)
    if info.get("modality") == "text":  # a model of before symbol clusters reads its data as then
        config = tokenizer_of_then(config, info.get("text"))
    if log_to_mlflow:  # inside a library caller's own MLflow run: refused before the evaluation, not after
        from training.tracking import check_caller_store, resolve_tracking_uri

        check_caller_store(resolve_tracking_uri(config.mlflow.tracking_uri))
    modality = getattr(model, "modality", "image")
    data = prepare_data(config, model_modality=modality, model_name=shown,
                        model_data_shape=model.data_shape if modality == "image" else None)

    result = evaluate_model(model, data, split=split, seed=config.seed, max_examples=max_examples, iw_k=iw_k,
                            iw_chunk=iw_chunk_for(iw_k),
                            disentanglement=disentanglement != "off",
                            disentanglement_sizes=DISENTANGLEMENT_SIZES.get(disentanglement), fd=fd,
                            allow_unnormalised_nll=allow_unnormalised_nll)
    x, y = data.split(split)
    content = dataset_digest(x, y)  # what the split holds: checked here, logged with the run
    changed = _changed_split(info, config, data, split, content, overridden, label)
    figures = evaluation_figures(result, model=model, x=x[:10], value_range=data.value_range)
    document = report(result)
    if changed:
        document["info"]["split_changed_since_training"] = changed
    truncated = _truncated_sentences(info, data, x, split, max_examples, config.seed, out or sys.stdout)
    if truncated is not None:
        document["info"]["truncated_sentences"] = truncated
    document["model"] = {"source": source, "version_dir": None if downloaded else str(version_dir),
                         "name": info.get("name"), "version": info.get("version"), "trained_in_run": run_id,
                         "registered": registered}

    from training.lineage import result_verdict

    verdict = result_verdict(result)
    document["collapse"] = {"verdict": verdict.line, "status": verdict.verdict.status,
                            "thresholds": verdict.verdict.thresholds()}
    # A subsample's report (--max-examples) does not take the whole split's file name.
    sample = f"-max{max_examples}" if max_examples else ""
    name, version = label.removeprefix("models:/").rsplit("/", 1)
    report_path = Path(output) if output else (
        Path("evaluation") / f"{name}-{'registered-' if by_registry else ''}v{version}-{split}{sample}.json")
    _write_json_atomically(report_path, document)  # the same document as the MLflow run's report.json

    eval_run_id = None
    if log_to_mlflow:
        settings = {"source": source, "split": split, "max_examples": max_examples or "all", "iw_k": iw_k,
                    "disentanglement": disentanglement, "fd": fd, "allow_unnormalised_nll": allow_unnormalised_nll,
                    "overrides": json.dumps(list(overrides))}  # values hold spaces: a list, not a joined string
        tables = {}
        if modality == "text":  # the training run's tables, of this split: what the model makes of its sentences
            from vae_tf import plots

            tables = plots.text_tables(model, x, seed=config.seed)
        eval_run_id = _log(config, label, result, figures, document, run_id, split, data, verdict, into_run,
                           settings, tables, content)
    else:
        import matplotlib.pyplot as plt

        for fig in figures.values():
            plt.close(fig)
    n = min(len(x), max_examples) if max_examples else len(x)
    evaluated = (f"{label}, on {'a random ' + format(n, ',') + ' of the ' if max_examples and n < len(x) else 'the '}"
                 f"{format(len(x), ',')} examples in the {split} split of {data.name}")
    _print_summary(result, report_path, eval_run_id, out or sys.stdout, verdict.line, evaluated)
    return EvaluationResult(metrics=result["metrics"], info=result["info"], report_path=report_path,
                            run_id=eval_run_id, version_dir=None if downloaded else version_dir)


def _truncated_sentences(info: dict, data, x, split: str, max_examples: int | None, seed: int, out) -> dict | None:
    """For a text model, the sentences scored cut short, said in a warning when there are any:
    ``by_data``, those the data loader truncated (``long_sentences: truncate``; of the whole split,
    the loader's own count) and ``by_model``, those of the examples evaluated (the same subsample
    as the metrics) with more words than the model reads (data read with a larger ``max_length``).
    Either way the model scores an ``<eos>`` after the cut. None for an image model."""
    import numpy as np

    from serving.text import TextPolicy
    from vae_tf.metrics.evaluate import _subsample

    policy = TextPolicy.from_model_info(info)
    if policy is None:
        return None
    meta = data.metadata
    by_data = int((meta.get("n_long") or {}).get(split, 0)) if meta.get("long_sentences") == "truncate" else 0
    evaluated = np.asarray(x[:], dtype=object)[_subsample(len(x), max_examples, seed)]
    by_model = policy.count_long(evaluated)
    said = []
    if by_data:
        said.append(f"{by_data} of the {split} split's sentences were truncated by the data loader to max_length="
                    f"{meta.get('max_length')} (long_sentences=truncate)")
    if by_model:
        said.append(f"{by_model} of the {len(evaluated)} sentences evaluated have more than the model's "
                    f"{policy.max_length} words and are read to their first {policy.max_length}")
    if said:
        print(f"warning: {'; '.join(said)}; the model scores an <eos> after each cut, so the likelihoods and "
              "perplexity are partly of cut sentences (data.options.long_sentences=drop scores whole ones only)",
              file=out)
    return {"by_data": by_data, "by_model": by_model}


def _changed_split(info: dict, config, data, split: str, now: str, overridden: set, label: str) -> dict | None:
    """When the model's export recorded the content of its held-out ``split``
    (:func:`training.lineage.held_out_digests`) and the data is read with the training config,
    whether the split read now is another: a corpus file edited or reshuffled since training is
    split anew, and its test split then holds examples the model trained on. Said as a warning
    (the evaluation goes on: a file may have grown on purpose); None when it is the same or
    cannot be told. ``now``: the split's content digest; ``overridden``: the config's top-level
    keys the evaluation sets (``data`` and ``seed`` split the data otherwise on purpose)."""
    from training.lineage import dataset_source

    recorded = ((info.get("data") or {}).get("split_digests") or {}).get(split)
    if not recorded or {"data", "seed"} & overridden:
        return None
    if now == recorded:
        return None
    source = dataset_source(config, data)
    print(f"warning: the {split} split read now is not the one {label} was trained without (content digest {now}, "
          f"{recorded} at training): {source} changed since, and a changed file is split anew, so this {split} split "
          "may hold examples the model trained on and its metrics read better than they are", file=sys.stderr)
    return {"source": source, "digest_at_training": recorded, "digest_now": now}


def _write_json_atomically(path: Path, document: dict) -> None:
    from training.atomic import write_json_atomic

    write_json_atomic(path, document, allow_nan=False)


def _log(config, label, result, figures, document, trained_run_id, split, data, verdict, into_run=None,
         settings: dict | None = None, tables: dict | None = None, content: str = "") -> str:
    """Log the evaluation as a new run in the config's experiment, or into the existing run
    ``into_run`` (the one `mlflow run` made for the project's evaluate entry), which keeps its
    experiment and takes the evaluation's name and tags. ``content``: the split's content digest."""
    import mlflow

    from training.lineage import dataset_source, mlflow_digest
    from training.tracking import (
        check_caller_store,
        log_figures,
        log_params,
        meta_dataset,
        resolve_tracking_uri,
        start_run,
        use_tracking,
    )

    uri = resolve_tracking_uri(config.mlflow.tracking_uri)
    check_caller_store(uri)
    use_tracking(uri)
    # the model as the tag names it: "vae/2" (an export's version) or "models:/vae/2" (the registry's)
    name = (f"evaluate {label} ({split})" if label.startswith("models:/") else
            f"evaluate {label.rsplit('/', 1)[0]} v{label.rsplit('/', 1)[1]} ({split})")
    tags = {"vae_tf.kind": "evaluation", "vae_tf.model": label}
    if trained_run_id:
        tags["vae_tf.evaluates_run_id"] = trained_run_id
    with start_run(config.mlflow.experiment, run_id=into_run, run_name=name, tags={**tags, **verdict.tags()}) as run:
        source = dataset_source(config, data)
        mlflow.log_input(meta_dataset(f"{data.name}-{split}", source, mlflow_digest(source, content)),
                         context="evaluation", tags={"split": split, "n_examples": str(len(data.split(split)[0])),
                                                     "content_digest": content})
        if settings and not into_run:  # how it was evaluated (`mlflow run`'s own run holds the entry's params)
            log_params(settings)
        mlflow.log_metrics({k: float(v) for k, v in result["metrics"].items() if v == v})  # NaN: not logged
        mlflow.log_dict(document, "evaluation/report.json")
        log_figures(figures, "evaluation")
        for file_name, table in (tables or {}).items():  # a text model's Markdown tables
            mlflow.log_text(table, f"evaluation/{file_name}")
    return run.info.run_id


def _print_summary(result, report_path: Path, run_id: str | None, out, verdict: str, evaluated: str) -> None:
    """What was evaluated, every scalar metric except the per-dimension ones (those are in the
    report and the figures), then the collapse verdict."""
    print(f"\nevaluated:     {evaluated}", file=out)
    for key, value in result["metrics"].items():
        if not key.startswith("kl_dim_"):
            print(f"{key:32s} {value:.4f}", file=out)
    for key, reason in result["info"].get("skipped", {}).items():
        print(f"{key:32s} skipped: {reason}", file=out)
    print(f"\ncollapse:      {verdict}", file=out)
    print(f"report:        {report_path.resolve()}", file=out)
    if run_id:
        print(f"MLflow run:    {run_id}", file=out)
