"""Experiment suites behind ``vae-tf compare --suite NAME``: run a suite of configs over seeds as
MLflow parent/child runs, evaluate every child with the diagnostics, and write a report
(Markdown + figures, also logged to the parent run). Resumable: a child that already FINISHED in
this suite's parent run is not trained again; its logged metrics are reused.

A suite is a YAML file under ``training/suites/``::

    name: collapse
    claim: what the suite tests, in one paragraph
    base: {...}                  # config overrides shared by every run (same schema as vae-tf train)
    sizes:
      quick: {seeds: [0], config: {train: {epochs: 5}}, evaluate: {iw_k: 10, tsne_max_points: 100}}
      full:  {seeds: [0, 1, 2], config: {train: {epochs: 60}}}
      big:   {config: {...}, runs: {vae: {...}}}   # optional per-run adjustments, merged last
    runs:
      - name: vae
        claim: optional, per run
        group: optional; runs of one group share a collapse-curve figure (default: one figure)
        config: {objective: {kl_weight: {kind: constant, beta: 1.0}}}

A child's config is ``base``, then the size's ``config``, then the run's ``config``, then the
size's ``runs.<name>`` (so a size can resize a run that brings its own network).

While a suite runs, the report directory always holds what has finished: after every child the
report is rewritten with the children so far (marked "in progress: k of n children") and
``children.json`` with every finished child's MLflow run id and metrics, so a long suite's numbers
can be committed as they come and outlive the tracking store they were logged to.

Children log through :class:`training.tracking.TrackedRun` (their evaluation included), so an
MLflow outage during a suite is journaled, not fatal: ``vae-tf sync-mlflow runs/<child>`` sends
what is left.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from vae_tf.errors import ConfigError, VaeTfError

SUITES_DIR = Path(__file__).parent / "suites"

#: Columns of the report: metric key -> (header, format).
REPORT_COLUMNS = {
    "eval_elbo": ("ELBO", "{:.2f}"),
    "eval_iw_nll": ("IW-NLL", "{:.2f}"),
    "eval_nll_per_word": ("NLL/word", "{:.3f}"),
    "eval_perplexity": ("PPL", "{:.1f}"),
    "eval_kl": ("KL", "{:.2f}"),
    "eval_active_units": ("AU", "{:.1f}"),
    "test_active_kl_dims": ("dims KL>0.01", "{:.1f}"),
    "test_informative_dims": ("NG informative dims", "{:.1f}"),
    "eval_mi_full": ("MI", "{:.2f}"),
    "eval_collapsed_frac_eps_0.01": ("collapsed @ε=0.01", "{:.2f}"),
    "eval_linear_probe_accuracy": ("probe acc.", "{:.3f}"),
    "eval_cluster_accuracy": ("cluster acc.", "{:.3f}"),
    "eval_kmeans_accuracy": ("k-means acc.", "{:.3f}"),
    "eval_fd_classifier": ("fd_classifier", "{:.2f}"),
    "eval_kid_classifier": ("kid_classifier", "{:.4f}"),
    "eval_mig": ("MIG", "{:.3f}"),
    "eval_dci_disentanglement": ("DCI-D", "{:.3f}"),
    "eval_sap": ("SAP", "{:.3f}"),
    "eval_factor_vae_score": ("FactorVAE", "{:.3f}"),
    "eval_beta_vae_score": ("BetaVAE", "{:.3f}"),
}

#: What each column is, said under the report's table (units; docs/diagnostics.md defines each).
COLUMN_LEGEND = {
    "eval_elbo": "ELBO: nats per example (one-sample estimate; a Gaussian likelihood's is a density, not comparable "
                 "with a Bernoulli's)",
    "eval_iw_nll": "IW-NLL: Burda et al.'s importance-weighted bound on −log p(x), nats per example, K = {iw_k} "
                   "samples (a larger K gives a lower, tighter bound: compare only at the same K)",
    "eval_nll_per_word": "NLL/word and PPL: the IW-NLL per word (the words and `<eos>`) and its exponential",
    "eval_kl": "KL: nats, summed over latent dims, mean over examples",
    "eval_active_units": "AU: active units, Var_x E[z_u | x] ≥ 0.01 (Burda et al. 2016)",
    "test_active_kl_dims": "dims KL>0.01: dims whose mean KL exceeds 0.01 nats",
    "test_informative_dims": "NG informative dims: Normal-Gamma dims whose mean weight of the informative component exceeds ½",
    "eval_mi_full": "MI: I_q(x; z) in nats over the whole split, at most about log N (a negative value is the "
                    "estimator's noise around 0)",
    "eval_collapsed_frac_eps_0.01": "collapsed @ε=0.01: fraction of dims (0.01, 0.01)-collapsed (Lucas et al. 2019)",
    "eval_linear_probe_accuracy": "probe acc.: logistic regression on the posterior means",
    "eval_cluster_accuracy": "cluster acc.: the categorical code matched to the labels (Hungarian)",
    "eval_kmeans_accuracy": "k-means acc.: k-means on the posterior means matched to the labels (Hungarian)",
    "eval_fd_classifier": "fd_classifier / kid_classifier: Fréchet and kernel distances of prior samples on a small "
                          "classifier's features (lower is better; not FID / KID)",
    "eval_mig": "MIG, DCI-D, SAP, FactorVAE, BetaVAE: disentanglement_lib's scores against the data's factors",
}


#: A suite size's ``evaluate`` options and their defaults (``tsne_max_points``: the codes a t-SNE
#: embeds, vae_tf.metrics.downstream.TSNE_MAX_POINTS; t-SNE's cost grows faster than linearly).
DEFAULT_EVALUATE = {"iw_k": 100, "disentanglement": True, "fd": False, "tsne": True, "tsne_max_points": 2000,
                    "disentanglement_sizes": {"num_train": 1000, "num_eval": 500, "num_variance_estimate": 1000,
                                              "batch_size": 64}}


def evaluate_options(suite: Suite, size: str) -> dict:
    """:data:`DEFAULT_EVALUATE` with the size's ``evaluate`` merged in; an option it does not
    know is a one-line error (a misspelt option would otherwise be ignored silently)."""
    from training.config import deep_merge

    given = (suite.sizes.get(size) or {}).get("evaluate") or {}
    where = f"suite {suite.name!r} size {size!r}"
    unknown = sorted(set(given) - set(DEFAULT_EVALUATE))
    if unknown:
        raise ConfigError(f"{where}: unknown evaluate option(s) {unknown}; options: {', '.join(DEFAULT_EVALUATE)}")
    merged = deep_merge(DEFAULT_EVALUATE, given)
    # Their values too, now: a bad one failed after the child had trained, or was misread ("no" as true)
    for key in ("disentanglement", "fd", "tsne"):
        if not isinstance(merged[key], bool):
            raise ConfigError(f"{where}: evaluate {key} must be true or false, got {merged[key]!r}")
    for key, low in (("iw_k", 0), ("tsne_max_points", 2)):
        if isinstance(merged[key], bool) or not isinstance(merged[key], int) or merged[key] < low:
            raise ConfigError(f"{where}: evaluate {key} must be an integer >= {low}, got {merged[key]!r}")
    from training.evaluate import iw_k_problem

    problem = iw_k_problem(merged["iw_k"])  # the rule of `vae-tf evaluate --iw-k`: one K, one number
    if problem:
        raise ConfigError(f"{where}: evaluate iw_k {problem}")
    sizes = merged["disentanglement_sizes"]
    if not isinstance(sizes, dict) or set(sizes) - set(DEFAULT_EVALUATE["disentanglement_sizes"]) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in sizes.values()):
        raise ConfigError(f"{where}: evaluate disentanglement_sizes must map "
                          f"{', '.join(DEFAULT_EVALUATE['disentanglement_sizes'])} to integers >= 1, got {sizes!r}")
    return merged


@dataclasses.dataclass
class Suite:
    name: str
    claim: str
    base: dict
    sizes: dict
    runs: list[dict]
    path: Path


def list_suites() -> list[str]:
    return sorted(p.stem for p in SUITES_DIR.glob("*.yaml"))


def load_suite(name: str) -> Suite:
    path = Path(name) if name.endswith((".yaml", ".yml")) else SUITES_DIR / f"{name}.yaml"
    if not path.is_file():
        if path.parent != SUITES_DIR:  # a path the user gave
            raise ConfigError(f"suite file {name!r} {'is a directory' if path.is_dir() else 'does not exist'}; give "
                              f"a suite YAML or one of the shipped suites: {', '.join(list_suites())}")
        raise ConfigError(f"unknown suite {name!r}; choose one of: {', '.join(list_suites())} (or a path to a suite YAML)")
    from training.config import yaml_file

    tree = yaml_file(path, f"suite {path}")
    _check_suite_tree(tree, path)
    return Suite(name=tree["name"], claim=" ".join(str(tree["claim"]).split()), base=tree.get("base") or {},
                 sizes=tree["sizes"], runs=tree["runs"], path=path)


#: The keys a suite YAML may hold: at the top, in a size, in a run (training/suites/*.yaml).
SUITE_KEYS = ("name", "claim", "base", "sizes", "runs")
SIZE_KEYS = ("seeds", "config", "evaluate", "runs")
RUN_KEYS = ("name", "claim", "group", "config")


def _unknown_keys(mapping: dict, allowed, where: str) -> None:
    import difflib

    for key in mapping:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(f"{where} has an unknown key {key!r}; {hint}keys: {', '.join(allowed)}")


def _check_suite_tree(tree, path: Path) -> None:
    """One line for a suite YAML that would otherwise train something else than it says (an
    unknown key was silently ignored: a misspelt ``base`` trained every child on the defaults) or
    fail with a traceback."""
    if not isinstance(tree, dict):
        raise ConfigError(f"suite {path} must hold a mapping (name, claim, base, sizes, runs), found a "
                          f"{type(tree).__name__}")
    _unknown_keys(tree, SUITE_KEYS, f"suite {path}")
    for key in ("name", "claim", "runs", "sizes"):
        if key not in tree:
            raise ConfigError(f"suite {path} has no {key!r}")
    for key, kind in (("base", dict), ("sizes", dict), ("runs", list)):
        if tree.get(key) is not None and not isinstance(tree[key], kind):
            raise ConfigError(f"suite {path}: {key!r} must be a {'mapping' if kind is dict else 'list of runs'}, "
                              f"found {type(tree[key]).__name__}")
    for size, spec in tree["sizes"].items():
        where = f"suite {path} size {size!r}"
        if spec is None:
            continue
        if not isinstance(spec, dict):
            raise ConfigError(f"{where} must be a mapping ({', '.join(SIZE_KEYS)}), found {type(spec).__name__}")
        _unknown_keys(spec, SIZE_KEYS, where)
        seeds = spec.get("seeds", [0])
        if (not isinstance(seeds, list) or not seeds
                or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in seeds)
                or len(set(seeds)) != len(seeds)):
            raise ConfigError(f"{where}: seeds must be a non-empty list of distinct integers >= 0, got {seeds!r}")
        for key in ("config", "evaluate", "runs"):
            if spec.get(key) is not None and not isinstance(spec[key], dict):
                raise ConfigError(f"{where}: {key!r} must be a mapping, found {type(spec[key]).__name__}")
    for i, run in enumerate(tree["runs"]):
        if not isinstance(run, dict):
            raise ConfigError(f"suite {path}: run {i + 1} must be a mapping ({', '.join(RUN_KEYS)}), found "
                              f"{type(run).__name__} {run!r}")
        _unknown_keys(run, RUN_KEYS, f"suite {path} run {run.get('name', i + 1)!r}")
        if run.get("config") is not None and not isinstance(run["config"], dict):
            raise ConfigError(f"suite {path} run {run.get('name')!r}: 'config' must be a mapping")
    names = [run.get("name") for run in tree["runs"]]
    if not names:
        raise ConfigError(f"suite {path} has no runs; list at least one under 'runs' (name, config)")
    if len(set(names)) != len(names) or not all(isinstance(n, str) and n for n in names):
        raise ConfigError(f"suite {path}: every run needs a unique non-empty name, got {names}")
    for run in tree["runs"]:
        group = run.get("group")
        # a group names the report's figure files (collapse_curves_<group>.png): a "/" crashed the
        # report after every child had trained
        if group is not None and not (isinstance(group, str) and re.fullmatch(r"[A-Za-z0-9_.+ -]+", group)):
            raise ConfigError(f"suite {path} run {run['name']!r}: group must be a name of letters, digits, spaces "
                              f"and _ . + -, got {group!r}")


def child_configs(suite: Suite, size: str, seeds: list[int] | None = None, only: list[str] | None = None):
    """``[(run name, seed, Config, run spec)]`` for one size of a suite."""
    from training.config import deep_merge, from_dict

    if size not in suite.sizes:
        raise ConfigError(f"suite {suite.name!r} has no size {size!r}; sizes: {', '.join(suite.sizes)}")
    spec = suite.sizes[size] or {}
    seeds = list(seeds if seeds is not None else spec.get("seeds", [0]))
    runs = [r for r in suite.runs if only is None or r["name"] in only]
    if only is not None and len(runs) != len(only):
        raise ConfigError(f"suite {suite.name!r} has no run(s) {sorted(set(only) - {r['name'] for r in runs})}; "
                          f"runs: {', '.join(r['name'] for r in suite.runs)}")
    # A size may adjust single runs last (``sizes.<size>.runs.<run>``), e.g. a Skip decoder's
    # layers at that size's width, since a run's own network replaces the size's.
    evaluate_options(suite, size)  # its errors now, not after the first child has trained
    per_run = spec.get("runs") or {}
    unknown = sorted(set(per_run) - {r["name"] for r in suite.runs})
    if unknown:
        raise ConfigError(f"suite {suite.name!r} size {size!r} adjusts unknown run(s) {unknown}; "
                          f"runs: {', '.join(r['name'] for r in suite.runs)}")
    children = []
    for run in runs:
        for seed in seeds:
            tree = deep_merge(deep_merge(suite.base, spec.get("config") or {}), run.get("config") or {})
            tree = deep_merge(tree, per_run.get(run["name"]) or {})
            tree["seed"] = int(seed)
            tree.setdefault("mlflow", {})["run_name"] = f"{run['name']} (seed {seed})"
            tree["mlflow"]["register"] = False
            tree["name"] = re.sub(r"[^A-Za-z0-9.-]+", "-", f"{suite.name}-{run['name']}")  # a valid model name
            try:
                config = from_dict(tree)
            except VaeTfError as err:  # which of the suite's runs is wrong
                raise type(err)(f"suite {suite.name!r} run {run['name']!r}: {err}") from None
            children.append((run["name"], int(seed), config, run))
    return children


def _check_runs_build(suite: Suite, pending: list[tuple[str, Any]], out) -> None:
    """Build the model of every run that will train (its first seed's config) on its data, before
    any child trains: an option only a built part checks (a likelihood's ``sigma: -1``, an MI
    target the latent family lacks) failed when that run's turn came, after the others had
    trained, and without the run's name. Data sets are loaded once per data config."""
    import json

    from training.train import build_model, prepare_data
    from vae_tf.models.text import text_settings

    first: dict[str, Any] = {}
    for run_name, config in pending:
        first.setdefault(run_name, config)
    if not first:
        return
    print(f"[{suite.name}] checking that {len(first)} run(s) build before training", file=out, flush=True)
    shapes: dict[str, tuple] = {}
    for run_name, config in first.items():
        key = json.dumps(config.data.model_dump(), sort_keys=True, default=str)
        try:
            if key not in shapes:
                data = prepare_data(config)
                text = text_settings(data.metadata) if data.metadata.get("modality") == "text" else None
                shapes[key] = (data.data_shape, text)
            build_model(config, shapes[key][0], text=shapes[key][1])
        except VaeTfError as err:
            raise type(err)(f"suite {suite.name!r} run {run_name!r}: {err}") from None


def run_suite(name: str, *, size: str = "quick", seeds: list[int] | None = None, only: list[str] | None = None,
              output_dir: str | None = None, experiment: str | None = None, out=None, jobs: int = 1,
              report: bool = True) -> Path | None:
    """Run (or resume) a suite; returns the report path.

    Resuming: a child that FINISHED in this suite's parent run is not trained again (its logged
    metrics are reused); a child that was interrupted (Ctrl-C, ``kill``, a crash) after its first
    checkpoint continues from its last checkpoint in its own MLflow run (``vae-tf train --resume``),
    so a killed full-size suite loses at most one child's progress since its last checkpoint.

    ``jobs`` > 1 trains that many children at a time, each in its own process with
    ``cpus / jobs`` TensorFlow threads (``_run_parallel``); the evaluation, the report and the
    parent run are then made here as for a serial run. ``report=False`` (what those child
    processes use) trains and evaluates only."""
    with contextlib.ExitStack() as held:  # the suite's lock, released however the call ends
        return _run_suite(name, size=size, seeds=seeds, only=only, output_dir=output_dir, experiment=experiment,
                          out=out, jobs=jobs, report=report, held=held)


def _run_suite(name: str, *, size: str, seeds, only, output_dir, experiment, out, jobs: int, report: bool,
               held: contextlib.ExitStack) -> Path | None:
    """:func:`run_suite`'s work; the suite's lock goes on ``held``."""
    import mlflow

    from training.tracking import (TrackedRun, activate_experiment, caller_run, require_reachable,
                                   resolve_tracking_uri, use_tracking)
    from training.train import run_training

    if caller_run() is not None:  # its children would nest under the caller's run, where reruns cannot find them
        raise ConfigError(f"vae-tf compare makes its own parent run (experiment vae-tf-suite-NAME) and finds its "
                          f"finished children under it; call it outside the MLflow run "
                          f"{caller_run().info.run_id} that is active here")
    out = out or sys.stdout
    suite = load_suite(name)
    children = child_configs(suite, size, seeds, only)
    evaluate_opts = evaluate_options(suite, size)
    experiment = experiment or f"vae-tf-suite-{suite.name}"
    require_reachable(resolve_tracking_uri(None), "vae-tf compare finds a suite's finished children there")
    use_tracking(resolve_tracking_uri(None))
    # Held until this call returns (or the process dies): a second compare of the suite would
    # resume the first's running child beside it and train every other child a second time.
    lock = _suite_lock(mlflow.get_tracking_uri(), experiment, suite, size) if report else None
    if lock is not None:
        held.callback(lock.close)
    exp_id = activate_experiment(experiment)
    client = mlflow.MlflowClient()

    parent = _find_or_create_parent(client, exp_id, suite, size, out)
    digests = {f"{r}/{s_}": child_digest(c, evaluate_opts) for r, s_, c, _ in children}
    done = _finished_children(client, exp_id, parent, digests, out)
    report_dir = Path(output_dir or Path("reports") / report_name(suite, size, children))
    if report:  # before the first child trains (a --jobs child process trains what its parent checked)
        from training.train import check_writable_folder

        check_writable_folder(report_dir, "--output-dir")
        _check_runs_build(suite, [(r, c) for r, s_, c, _ in children if f"{r}/{s_}" not in done], out)
    progress_report = _ProgressReport(suite, size, children, report_dir, out)
    trained_now: set[str] = set()  # children the --jobs processes train in this call
    if jobs > 1:
        def progress():  # the table and children.json of what the child processes have finished
            finished = _finished_children(client, exp_id, parent, digests)
            rows_ = {(r, s_): finished[f"{r}/{s_}"].data.metrics for r, s_, _, _ in children if f"{r}/{s_}" in finished}
            ids = {key: run.info.run_id for key, run in finished.items()}
            progress_report.write(rows_, ids)

        pending = [(r, s_) for r, s_, _, _ in children if f"{r}/{s_}" not in done]
        trained_now = {f"{r}/{s_}" for r, s_ in pending}
        _run_parallel(suite, size, pending, experiment, jobs, report_dir, out, on_finished=progress if report else None)
        done = _finished_children(client, exp_id, parent, digests)
    interrupted = _interrupted_children(client, exp_id, parent, digests, out)
    # Per child (run name, seed): metrics, collapse curve, t-SNE of the test embeddings, MLflow run.
    rows: dict[tuple[str, int], dict] = {}
    curves: dict[tuple[str, int], Any] = {}
    tsnes: dict[tuple[str, int], Any] = {}
    run_ids: dict[str, str] = {}  # "run/seed" -> its MLflow run

    def by_run():
        """The report's inputs: every seed's curve per run; each run's first finished seed's
        t-SNE; that seed's MLflow run (its prior-samples figure)."""
        curves_, embeddings_, first_runs_ = {}, {}, {}
        for name, seed, *_ in children:
            if (name, seed) in rows:
                curves_.setdefault(name, []).append(curves.get((name, seed)))
                embeddings_.setdefault(name, tsnes.get((name, seed)))
                if run_ids.get(f"{name}/{seed}"):
                    first_runs_.setdefault(name, run_ids[f"{name}/{seed}"])
        return curves_, embeddings_, first_runs_

    # The children that finished earlier first, so that a report written between two trained
    # children counts every finished one, whatever its place in the suite.
    for run_name, seed, _, _ in children:
        key = f"{run_name}/{seed}"
        if key in done:
            how = "trained in its own process, run" if key in trained_now else "finished earlier, reusing run"
            print(f"[{suite.name}] {key}: {how} {done[key].info.run_id}", file=out, flush=True)
            rows[(run_name, seed)] = done[key].data.metrics
            run_ids[key] = done[key].info.run_id
            curves[(run_name, seed)] = _load_curve(client, done[key].info.run_id)
            tsnes[(run_name, seed)] = _load_json(client, done[key].info.run_id, "evaluation/tsne.json")
    for run_name, seed, config, _ in children:
        config.mlflow.experiment = experiment
        key = f"{run_name}/{seed}"
        if key in done:
            continue
        print(f"[{suite.name}] {key}: training", file=out, flush=True)
        captured: dict[str, Any] = {}
        tags = {"mlflow.parentRunId": parent, "vae_tf.suite": suite.name, "vae_tf.suite_size": size,
                "vae_tf.suite_child": key, DIGEST_TAG: digests[key]}
        def evaluate_child(model, data, tracker, captured=captured, config=config):
            captured.update(_evaluate_child(model, data, config, evaluate_opts, tracker))

        resume = None
        if key in interrupted:  # a killed child: on from its last checkpoint, in its own MLflow run
            resume = interrupted[key]
            print(f"[{suite.name}] {key}: resuming the interrupted run {resume}", file=out, flush=True)
        with keras_step_traces_counted_per_child():
            result = run_training(config, tags=tags, after_training=evaluate_child, resume=resume)
        # The same keys a resumed child's run holds: eval_* (diagnostics) and test_* (Keras evaluate).
        rows[(run_name, seed)] = {**captured["metrics"], **result.test_metrics}
        curves[(run_name, seed)] = captured["curve"]
        tsnes[(run_name, seed)] = captured["tsne"]
        if result.run_id:
            run_ids[key] = result.run_id
        if report and len(rows) < len(children):  # what has finished, in case the rest never does
            curves_, embeddings_, _ = by_run()
            progress_report.write(rows, run_ids, curves_, embeddings_)

    if not report:
        return None
    write_children_json(suite, size, children, rows, run_ids, report_dir)
    curves_, embeddings, first_runs = by_run()
    clustered = any("eval_cluster_accuracy" in r or "eval_kmeans_accuracy" in r for r in rows.values())
    baseline = raw_kmeans_baseline(children) if clustered else None
    sample_sheets = {name: _load_image(client, run_id, "evaluation/samples.png") for name, run_id in first_runs.items()}
    report_path = write_report(suite, size, children, rows, curves_, report_dir, embeddings, baseline, sample_sheets)
    # The parent's report goes through a TrackedRun too: an outage at the end is journaled.
    run_root = children[0][2].train.run_dir if children else "runs"
    parent_run = TrackedRun(resolve_tracking_uri(None), run_root=run_root, experiment=experiment, run_id=parent)
    parent_run.start()
    name = report_name(suite, size, children)  # a part of the suite's report beside the whole's
    parent_run.log_artifacts(report_dir, "report" if name == f"{suite.name}-{size}" else f"report/{name}")
    parent_run.finish("FINISHED")
    print(f"report: {report_path.resolve()}", file=out)
    return report_path


class _KerasStepRetracingFilter(logging.Filter):
    """Drops TensorFlow's "N out of the last M calls to <function
    TensorFlowTrainer._make_function.<locals>.multi_step_on_iterator> triggered tf.function
    retracing" warning, and the same about ``TensorFlowTrainer.make_predict_function.<locals>``
    (:func:`keras_step_traces_counted_per_child`); every other record passes."""

    KERAS_STEP = re.compile(r"<function TensorFlowTrainer\.(_make_function|make_predict_function)\.<locals>\.")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.msg  # TensorFlow formats this warning before logging it; never raises
        return not (isinstance(message, str) and "triggered tf.function retracing" in message
                    and self.KERAS_STEP.search(message))


@contextlib.contextmanager
def keras_step_traces_counted_per_child():
    """Keep TensorFlow's retracing warning about Keras' own step functions out of a suite's output.

    Keras makes each model's train, test and predict functions as ``tf.function``s of closures
    (``TensorFlowTrainer._make_function``, ``make_predict_function``), and TensorFlow counts the
    traces of all functions with one code object together, so children trained one after another
    in this process, each tracing its train and test functions once, add up to "5 out of the last
    11 calls ... triggered tf.function retracing" by the third child: a warning that is not true of
    any model. (vae-tf's own functions are counted per model, :mod:`vae_tf._traced`; the Fréchet
    distance's classifier is loaded once per process.) The cost: while a child trains, a
    real retracing of its step functions is not warned about either; Keras traces them with
    ``reduce_retracing=True`` (shapes generalised after the first retrace), which makes that rare.
    And TensorFlow warns at most twice per code object, dropped warnings included, so Keras
    training later in the same process may not warn either (a `vae-tf compare` process ends with
    its suite)."""
    logger = logging.getLogger("tensorflow")
    quiet = _KerasStepRetracingFilter()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


#: While a suite runs, its report's figures are redrawn at most this often (seconds): a quick suite's
#: children finish seconds apart and drawing them all takes about a second; the final report has them.
PROGRESS_FIGURE_INTERVAL_S = 60.0


class _ProgressReport:
    """While a suite runs: its report (marked in progress) and ``children.json`` of the children
    finished so far, and a line on ``out`` saying how many and where, after every finished child;
    the figures at most every :data:`PROGRESS_FIGURE_INTERVAL_S` seconds."""

    def __init__(self, suite: Suite, size: str, children, report_dir: Path, out):
        self.suite, self.size, self.children, self.report_dir, self.out = suite, size, children, report_dir, out
        self.figures_drawn = -math.inf
        self.failed = False

    def write(self, rows: dict, run_ids: dict, curves: dict | None = None, embeddings: dict | None = None) -> None:
        """A report that cannot be written (a full disk) does not stop the children still to train:
        it is said once, and the report at the end (which does stop the call) tries again."""
        figures = time.monotonic() - self.figures_drawn >= PROGRESS_FIGURE_INTERVAL_S
        try:
            write_children_json(self.suite, self.size, self.children, rows, run_ids, self.report_dir)
            path = write_report(self.suite, self.size, self.children, rows, curves or {}, self.report_dir, embeddings,
                                figures=figures)
        except OSError as err:
            if not self.failed:
                print(f"warning: the report of the children finished so far cannot be written in {self.report_dir} "
                      f"({err.strerror or err}); the suite goes on and writes it at the end", file=self.out, flush=True)
            self.failed = True
            return
        if figures:
            self.figures_drawn = time.monotonic()
        print(f"[{self.suite.name}] {len(rows)} of {len(self.children)} children finished: {path}", file=self.out,
              flush=True)


def _find_or_create_parent(client, exp_id: str, suite: Suite, size: str, out=None) -> str:
    """The suite's parent run (found by the suite's ``name:`` and size), made when there is none.
    A parent first run from another suite file is said on ``out``: two files of one ``name:`` (a
    copy of a shipped suite that kept its name) share the parent, its children and the report."""
    path = str(suite.path.resolve())
    existing = client.search_runs([exp_id], filter_string=(
        f"tags.`vae_tf.suite` = '{suite.name}' and tags.`vae_tf.suite_size` = '{size}' "
        "and tags.`vae_tf.suite_parent` = 'true'"), order_by=["attributes.start_time DESC"], max_results=1)
    if existing:
        tags = existing[0].data.tags
        if not tags.get("vae_tf.suite_command"):  # a parent of an older vae-tf
            client.set_tag(existing[0].info.run_id, "vae_tf.suite_command", _command(suite, size))
        if tags.get("vae_tf.suite_path") is None:
            client.set_tag(existing[0].info.run_id, "vae_tf.suite_path", path)
        elif tags["vae_tf.suite_path"] != path and out is not None:
            print(f"warning: suite {suite.name} ({size}) was run from {tags['vae_tf.suite_path']} before; this file, "
                  f"{path}, shares its parent run, finished children and report folder (give your copy another "
                  "name: to keep them apart)", file=out, flush=True)
        return existing[0].info.run_id
    run = client.create_run(exp_id, run_name=f"suite {suite.name} ({size})",
                            tags={"vae_tf.suite": suite.name, "vae_tf.suite_size": size, "vae_tf.suite_parent": "true",
                                  "vae_tf.suite_path": path,
                                  "vae_tf.claim": suite.claim[:5000],
                                  # what reruns it (`vae-tf train --resume PARENT` says it)
                                  "vae_tf.suite_command": _command(suite, size)})
    return run.info.run_id


#: The tag holding a child's :func:`child_digest`: a finished or interrupted child is reused or
#: resumed only when the suite would train it with the same config and evaluate it the same way.
DIGEST_TAG = "vae_tf.suite_child_config"


def child_digest(config, evaluate_opts: dict) -> str:
    """A digest of what a child trains and how it is evaluated (its resolved config without the
    ``mlflow`` section, which only says where it is logged, and the size's evaluate options)."""
    import hashlib
    import json

    tree = config.to_dict()
    tree.pop("mlflow", None)
    blob = json.dumps({"config": tree, "evaluate": evaluate_opts}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _finished_children(client, exp_id: str, parent: str, digests: dict | None = None, out=None) -> dict:
    """``{child key: its latest FINISHED run}`` under ``parent`` whose config digest is the one
    in ``digests`` (runs recorded before digests existed count as matching); a finished child of
    another config is said on ``out`` and not reused."""
    runs = client.search_runs([exp_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent}' and "
                                                       "attributes.status = 'FINISHED'", max_results=10000)
    found, stale = {}, {}
    for run in sorted(runs, key=lambda r: r.info.start_time):  # the latest of a key last
        key = run.data.tags.get("vae_tf.suite_child")
        if key is None:
            continue
        recorded, wanted = run.data.tags.get(DIGEST_TAG), (digests or {}).get(key)
        if digests is not None and recorded is not None and recorded != wanted:
            stale[key] = run.info.run_id
            continue
        found[key] = run
    for key, run_id in stale.items():
        if key not in found and key in (digests or {}) and out is not None:
            print(f"suite child {key}: its config or evaluation changed since run {run_id} finished; training it "
                  "again", file=out, flush=True)
    return found


def _interrupted_children(client, exp_id: str, parent: str, keys: dict, out=None) -> dict:
    """``{child key: MLflow run id}`` of this parent's children among ``keys`` (the ones this call
    trains, with their config digests: a ``--jobs`` child process never touches another's run)
    that did not finish but left a checkpoint to resume from (their run directory under
    ``train.run_dir``), with the config they are to train with now. Interrupted children without a
    checkpoint, or of another config, are marked KILLED and trained again from scratch, which is
    said on ``out``."""
    runs = client.search_runs([exp_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent}' and "
                                                       "attributes.status != 'FINISHED'", max_results=10000)
    found, restarted = {}, {}
    for run in sorted(runs, key=lambda r: r.info.start_time):
        key = run.data.tags.get("vae_tf.suite_child")
        if key not in keys:
            continue
        run_dir = Path(run.data.params.get("train.run_dir", "runs")) / run.info.run_id
        recorded = run.data.tags.get(DIGEST_TAG)
        checkpointed = (run_dir / "checkpoints" / "checkpoint").is_file()
        if key and checkpointed and recorded in (None, keys[key]):
            found[key] = run.info.run_id
        elif run.info.status == "RUNNING":
            client.set_terminated(run.info.run_id, "KILLED")
            restarted[key] = (
                f"its config or evaluation changed since its interrupted run {run.info.run_id}" if checkpointed else
                f"its interrupted run {run.info.run_id} stopped before its first checkpoint" if run_dir.is_dir() else
                f"its interrupted run {run.info.run_id} has no checkpoint in {run_dir.resolve()} (run the call from "
                "the folder that started it to resume it)")
    for key, why in restarted.items():
        if key not in found and out is not None:
            print(f"suite child {key}: {why}; training it again from the start", file=out, flush=True)
    return found


def _suite_lock(tracking_uri: str, experiment: str, suite: Suite, size: str):
    """An open file holding an exclusive lock for (tracking store, experiment, suite, size) on
    this machine, or ConfigError naming the process that holds it. The operating system releases
    it when the process ends, however it ends (no stale lock after ``kill -9``). The lock files
    are in the user's own ``~/.cache/vae-tf/locks`` (a shared temporary folder would let another
    user plant a link there), opened without following links. None where the platform has no
    ``flock`` (Windows) or that folder cannot be made (a read-only home): no lock then."""
    import hashlib

    from training.locks import hold_exclusive

    store = tracking_uri
    if store.startswith("sqlite:///"):  # a relative path names another file in another folder
        store = "sqlite:" + str(Path(store[len("sqlite:///"):]).resolve())
    elif store.startswith("file:") or "://" not in store:
        store = "file:" + str(Path(store.removeprefix("file://").removeprefix("file:")).resolve())
    key = hashlib.sha256("\0".join((store, experiment, suite.name, size)).encode()).hexdigest()[:16]
    try:
        folder = Path.home() / ".cache" / "vae-tf" / "locks"
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError:
        return None
    return hold_exclusive(folder / f"compare-{key}.lock", lambda holder: (
        f"another vae-tf compare of suite {suite.name} ({size}, experiment {experiment}) is running on this machine "
        f"({holder}) with the same MLflow runs; wait for it to end or stop it, then run this again (it resumes)"))


def _stop_with_the_suite() -> None:
    """In a ``--jobs`` child process: be sent SIGTERM when the suite's process ends, however it
    ends (Linux's parent-death signal), so ``kill`` or ``kill -9`` of ``vae-tf compare`` does not
    leave children training into runs that the rerun then resumes beside them (every metric
    logged twice). A suite process that was already gone when this ran is the same case."""
    import signal

    if not sys.platform.startswith("linux"):  # elsewhere a venv's python may be a launcher: no parent check
        return
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    suite_pid = os.environ.get("VAE_TF_SUITE_PID")
    if suite_pid and str(os.getppid()) != suite_pid:
        raise SystemExit("error: the vae-tf compare that started this child has ended; run it again to resume")


def _run_parallel(suite: Suite, size: str, pending: list, experiment: str, jobs: int, report_dir: Path, out,
                  on_finished=None) -> None:
    """Train and evaluate ``pending`` children (``[(run name, seed)]``), ``jobs`` at a time, each in
    ``python -m training.compare CHILD`` (a serial ``run_suite`` of that one child without the
    report) with ``cpus // jobs`` TensorFlow threads; its output goes to
    ``<report dir>/logs/<run>-<seed>.log``. ``on_finished()`` is called after each child that
    succeeded. A child that fails is named with its log, in one line, after the others finished."""
    import os
    import subprocess

    if not pending:
        return
    logs = Path(report_dir) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    threads = str(max(1, (os.cpu_count() or 1) // jobs))
    env = {**os.environ, "TF_NUM_INTRAOP_THREADS": threads, "TF_NUM_INTEROP_THREADS": threads,
           "OMP_NUM_THREADS": threads, "VAE_TF_SUITE_PID": str(os.getpid())}
    queue, running, failed = list(pending), [], []
    try:
        while queue or running:
            while queue and len(running) < jobs:
                run_name, seed = queue.pop(0)
                log_path = logs / f"{re.sub(r'[^A-Za-z0-9.-]+', '-', run_name)}-{seed}.log"
                handle = open(log_path, "a")  # a rerun's attempt goes after the failed one's, not over it
                if handle.tell():
                    handle.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')}: this child again ===\n")
                    handle.flush()
                command = [sys.executable, "-m", "training.compare", str(suite.path), size, run_name, str(seed),
                           experiment]
                print(f"[{suite.name}] {run_name}/{seed}: training in a process of its own (log {log_path})",
                      file=out, flush=True)
                running.append((subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env),
                                handle, f"{run_name}/{seed}", log_path))
            for item in list(running):
                process, handle, key, log_path = item
                if process.poll() is not None:
                    handle.close()
                    running.remove(item)
                    if process.returncode != 0:
                        failed.append(f"{key} (see {log_path})")
                    elif on_finished is not None and (queue or running):
                        on_finished()
            time.sleep(0.5)
    finally:
        for process, handle, _, _ in running:
            process.terminate()
            process.wait()
            handle.close()
    if failed:
        if on_finished is not None:  # the report and children.json of every child that did finish
            try:
                on_finished()
            except Exception as err:  # noqa: BLE001 - the failed children's line must not be lost to it
                why = " ".join(str(err).split())[:200] or type(err).__name__
                print(f"warning: the report of the finished children could not be written ({why})",
                      file=out, flush=True)
        raise ConfigError(f"suite {suite.name}: {len(failed)} child run(s) failed: {'; '.join(failed)}; rerun the "
                          "same command to resume")


def _child_main(argv: list[str]) -> int:
    """``python -m training.compare SUITE SIZE RUN SEED EXPERIMENT``: one child of a ``--jobs``
    suite (trained, exported and evaluated into the suite's parent run; no report)."""
    from vae_tf.errors import VaeTfError

    suite_path, size, run_name, seed, experiment = argv
    _stop_with_the_suite()
    try:
        run_suite(suite_path, size=size, seeds=[int(seed)], only=[run_name], experiment=experiment, report=False)
    except VaeTfError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def _evaluate_child(model, data, config, opts: dict, tracker) -> dict:
    """Diagnostics of a freshly trained child, logged into its run (through its ``tracker``) as
    ``eval_*`` metrics, with the report, the figures, the collapse curve and the t-SNE."""
    from training.evaluate import iw_chunk_for
    from training.lineage import result_verdict
    from vae_tf.metrics import evaluate_model, evaluation_figures, report

    result = evaluate_model(model, data, split="test", seed=config.seed, iw_k=opts["iw_k"],
                            iw_chunk=iw_chunk_for(opts["iw_k"]),
                            tsne=opts["tsne"], tsne_max_points=opts["tsne_max_points"],
                            disentanglement=opts["disentanglement"],
                            disentanglement_sizes=opts["disentanglement_sizes"], fd=opts["fd"])
    metrics = {f"eval_{k}": float(v) for k, v in result["metrics"].items() if not k.startswith("kl_dim_") and v == v}
    tracker.log_metrics(metrics)
    tracker.log_dict(report(result), "evaluation/report.json")
    tracker.set_tags({f"{k}.eval": v for k, v in result_verdict(result).tags().items() if k == "vae_tf.collapse"})
    x, _ = data.split("test")
    tracker.log_figures(evaluation_figures(result, model=model, x=x[:10], value_range=data.value_range), "evaluation")
    arrays = result["arrays"]
    curve = [arrays["collapse_curve_eps"].tolist(), arrays["collapse_curve_fraction"].tolist()]
    tracker.log_dict({"eps": curve[0], "fraction": curve[1]}, "evaluation/collapse_curve.json")
    tsne = None
    if "tsne_embedding" in arrays:
        labels = arrays.get("tsne_labels")
        tsne = {"points": np.asarray(arrays["tsne_embedding"]).tolist(),
                "labels": None if labels is None else np.asarray(labels).tolist()}
        tracker.log_dict(tsne, "evaluation/tsne.json")
    return {"metrics": metrics, "curve": curve, "tsne": tsne}


def _download(client, run_id: str, artifact: str, read):
    """``read(local path)`` of one artifact of a finished child, or None when it is missing or
    unreadable (a missing one removes one panel of a figure). No progress bar (one small file)
    unless the user asked for MLflow's bars. The copy goes to a temporary folder removed once read (MLflow's own default, a new folder
    under the system's temporary directory per call, is never removed: three per child per
    report)."""
    import tempfile

    from training.tracking import artifact_progress_bars_off

    try:
        with artifact_progress_bars_off(), tempfile.TemporaryDirectory(prefix="vae-tf-report-") as folder:
            return read(client.download_artifacts(run_id, artifact, dst_path=folder))
    except Exception:  # noqa: BLE001
        return None


def _load_json(client, run_id: str, artifact: str):
    """A JSON artifact of a finished child, or None."""
    import json

    return _download(client, run_id, artifact, lambda path: json.loads(Path(path).read_text()))


def _load_image(client, run_id: str, artifact: str):
    """A PNG artifact of a child as an RGB(A) array, or None (text models log no image figures)."""
    import matplotlib.image

    return _download(client, run_id, artifact, matplotlib.image.imread)


def _load_curve(client, run_id: str):
    data = _load_json(client, run_id, "evaluation/collapse_curve.json")
    return None if data is None else [data["eps"], data["fraction"]]


def raw_kmeans_baseline(children) -> dict | None:
    """What a code's cluster accuracy must beat: k-means (k = the number of classes) on the raw
    pixels of the same test split, per seed (each seed has its own split). ``{seed: accuracy}``, or
    None when the data are not labelled images."""
    from training.train import prepare_data
    from vae_tf.metrics import kmeans_accuracy

    accuracies = {}
    for _, seed, config, _ in children:
        if seed in accuracies:
            continue
        x, y = prepare_data(config).split("test")
        if y is None or np.ndim(y) != 1 or not np.issubdtype(np.asarray(x).dtype, np.number):
            return None
        accuracies[seed] = kmeans_accuracy(np.asarray(x, np.float32).reshape(len(x), -1), np.asarray(y), seed=seed)
    return accuracies or None


def _mean_std(values: list, fmt: str) -> str:
    """A report cell: mean ± std (ddof 1) over seeds, the value alone for one seed, — for none."""
    if not values:
        return "—"
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(np.mean(values))} ± {fmt.format(np.std(values, ddof=1))}"


def selection(suite: Suite, size: str, children) -> tuple[list[str] | None, list[int] | None]:
    """The ``--runs`` and ``--seeds`` that chose ``children`` out of the suite's size (None: all)."""
    names = list(dict.fromkeys(name for name, *_ in children))
    seeds = sorted({seed for _, seed, *_ in children})
    every_seed = sorted((suite.sizes[size] or {}).get("seeds", [0]))
    return (None if names == [r["name"] for r in suite.runs] else names,
            None if seeds == every_seed else seeds)


def _command(suite: Suite, size: str, children=None) -> str:
    """The command that trains ``children`` (default: the whole suite at ``size``)."""
    runs, seeds = selection(suite, size, children) if children is not None else (None, None)
    # a suite of one's own is named by its file: `--suite NAME` finds only the shipped ones
    shipped = suite.path.resolve().parent == SUITES_DIR.resolve()
    return (f"vae-tf compare --suite {suite.name if shipped else suite.path}"
            f"{' --quick' if size == 'quick' else ' --size ' + size}"
            + (f" --runs {','.join(runs)}" if runs else "") + (f" --seeds {','.join(map(str, seeds))}" if seeds else ""))


def report_name(suite: Suite, size: str, children) -> str:
    """The report folder's name (under ``reports/``) and the parent run's report artifact folder
    (under ``report/``) for ``children``: ``<suite>-<size>`` for the whole suite, with the runs and
    seeds appended for a part of it, so that training a part does not overwrite the whole's report."""
    runs, seeds = selection(suite, size, children)
    name = f"{suite.name}-{size}" + (f"-runs-{','.join(runs)}" if runs else "") + (
        f"-seeds-{','.join(map(str, seeds))}" if seeds else "")
    if len(name) > 120:  # many runs named: a digest of the list instead
        import hashlib

        part = hashlib.sha256(f"{runs}|{seeds}".encode()).hexdigest()[:10]
        name = f"{suite.name}-{size}-part-{part}"
    return name


def write_children_json(suite: Suite, size: str, children, rows: dict, run_ids: dict, report_dir: Path) -> Path:
    """``children.json`` in the report directory: every finished child's MLflow run id and metrics
    (``{"children": {"run/seed": {"run_id", "metrics"}}}``) and the keys still to train: the numbers
    behind the report in a form that survives the tracking store."""
    import json

    from training.atomic import write_text_atomic

    report_dir.mkdir(parents=True, exist_ok=True)
    finished = {f"{name}/{seed}": {"run_id": run_ids.get(f"{name}/{seed}"),
                                   "metrics": {k: (float(v) if math.isfinite(float(v)) else None)  # strict JSON
                                               for k, v in sorted(rows[(name, seed)].items()) if v is not None}}
                for name, seed, *_ in children if (name, seed) in rows}
    pending = [f"{name}/{seed}" for name, seed, *_ in children if (name, seed) not in rows]
    doc = {"suite": suite.name, "size": size, "command": _command(suite, size, children), "finished": len(finished),
           "total": len(children), "pending": pending, "children": finished}
    path = report_dir / "children.json"
    write_text_atomic(path, json.dumps(doc, indent=1, allow_nan=False) + "\n")
    return path


def write_report(suite: Suite, size: str, children, rows: dict, curves: dict, report_dir: Path,
                 embeddings: dict | None = None, baseline: dict | None = None,
                 sample_sheets: dict | None = None, figures: bool = True) -> Path:
    """Markdown table (mean ± std over seeds), one collapse-curve figure per group of runs (the
    runs' ``group``; one figure when no run has one), a grid of the t-SNE of every run's test
    embeddings (first seed) and, for image models, every run's prior samples (first seed; mean and
    ancestral decodes of the same z side by side) stacked in one figure. ``baseline``: raw-pixel
    k-means accuracy per seed (:func:`raw_kmeans_baseline`), stated under the table;
    ``sample_sheets``: run -> its ``evaluation/samples.png`` as an array (None: not drawn).

    With only some children in ``rows`` (a suite still running) the report says so under its
    title, and a ``seeds`` column gives how many seeds each row's mean ± std is over.
    ``figures=False`` (a progress report between two redraws) writes the table and notes only."""
    from training.atomic import write_text_atomic

    report_dir.mkdir(parents=True, exist_ok=True)
    run_names = list(dict.fromkeys(name for name, *_ in children))
    seeds = sorted({seed for _, seed, *_ in children})
    columns = [k for k in REPORT_COLUMNS if any(k in rows.get((n, s), {}) for n in run_names for s in seeds)]
    specs = {name: spec for name, _, _, spec in children}
    claims = {name: spec.get("claim") for name, spec in specs.items()}

    finished = [(name, seed) for name, seed, *_ in children if (name, seed) in rows]
    partial = len(finished) < len(children)
    status = []
    if partial:
        pending = [f"{name}/{seed}" for name, seed, *_ in children if (name, seed) not in rows]
        status = [f"**In progress: {len(finished)} of {len(children)} children finished** (written "
                  f"{time.strftime('%Y-%m-%d %H:%M')}); still to train: {', '.join(pending)}. The same command "
                  "resumes the suite and rewrites this report.", ""]
    over = "mean ± std over seeds" if len(seeds) > 1 else "one seed, so no std"
    lines = [f"# Suite `{suite.name}` ({size})", "", *status, f"**Claim tested.** {suite.claim}", "",
             f"Command: `{_command(suite, size, children)}` "
             f"(seeds {', '.join(map(str, seeds))}; {over}; test split).", "",
             "| run | " + ("seeds | " if partial else "") + " | ".join(REPORT_COLUMNS[k][0] for k in columns) + " |",
             "|---|" + ("---:|" if partial else "") + "---:|" * len(columns)]
    for name in run_names:
        behind = sum((name, s) in rows for s in seeds)  # the run's finished seeds
        cells = [str(behind)] if partial else []
        for key in columns:
            values = [rows[(name, s)][key] for s in seeds if key in rows.get((name, s), {})]
            values = [v for v in values if v is not None and math.isfinite(v)]
            fmt = REPORT_COLUMNS[key][1]
            # fewer seeds than the row's (a metric missing or NaN in some): said, not passed off as the mean
            short = f" ({len(values)} of {behind} seeds)" if values and len(values) < behind else ""
            cells.append(_mean_std(values, fmt) + short)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    iw_k = evaluate_options(suite, size)["iw_k"]
    legend = [COLUMN_LEGEND[k].format(iw_k=iw_k) for k in columns if k in COLUMN_LEGEND]
    if "eval_kid_classifier" in columns and "eval_fd_classifier" not in columns:
        legend.append(COLUMN_LEGEND["eval_fd_classifier"])
    if any(k in columns for k in ("eval_dci_disentanglement", "eval_sap", "eval_factor_vae_score",
                                  "eval_beta_vae_score")) and "eval_mig" not in columns:
        legend.append(COLUMN_LEGEND["eval_mig"])
    if legend:
        lines += ["", "Columns: " + "; ".join(legend) + " (docs/diagnostics.md defines each)."]
    if baseline:
        stated = _mean_std(list(baseline.values()), "{:.3f}")
        lines += ["", f"Baseline for the cluster and k-means accuracies: k-means (k = the number of classes, "
                      f"`sklearn.cluster.KMeans(n_init=10)`) on the raw pixels of the same test split: {stated}."]
    notes = [f"- **{name}**: {claims[name]}" for name in run_names if claims.get(name)]
    if notes:
        lines += ["", *notes]

    lines.append("")
    if figures:
        lines += _report_figures(suite, size, run_names, specs, seeds, curves, embeddings, sample_sheets, report_dir)
    else:
        lines += [f"Figures are redrawn at most every {PROGRESS_FIGURE_INTERVAL_S:.0f} s while the suite runs; "
                  "the final report has them all."]
    lines.append("")

    path = report_dir / "report.md"
    write_text_atomic(path, "\n".join(lines))
    return path


def _report_figures(suite: Suite, size: str, run_names: list, specs: dict, seeds: list, curves: dict,
                    embeddings: dict | None, sample_sheets: dict | None, report_dir: Path) -> list[str]:
    """Draw the report's figures into ``report_dir`` (:func:`write_report`); returns their
    Markdown lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[str, list[str]] = {}
    for name in run_names:
        groups.setdefault(str(specs[name].get("group") or ""), []).append(name)
    lines = []
    for group, names in groups.items():
        fig, ax = plt.subplots(figsize=(8.0, 4.0))
        # one style per run: tab20's ten dark colours solid, then its ten light ones dashed (a dark
        # and a light of one hue never side by side), then dotted; one line per seed, in the run's style
        palette = plt.get_cmap("tab20")
        for k, name in enumerate(names):
            style = {"color": palette(2 * (k % 10) + (k // 10) % 2), "linestyle": ("-", "--", ":")[k // 10 % 3]}
            for i, curve in enumerate(c for c in curves.get(name, []) if c):
                ax.step(curve[0], curve[1], where="post", lw=1.2, alpha=0.8, label=name if i == 0 else None, **style)
        ax.set_xscale("log")
        ax.set_xlabel("ε (nats)")
        ax.set_ylabel("fraction of (ε, 0.01)-collapsed dims")
        ax.set_title(f"Collapse curves: {suite.name} ({size})" + (f", {group}" if group else "")
                     + (f"; a line per seed ({len(seeds)})" if len(seeds) > 1 else ""), fontsize=10)
        if ax.get_legend_handles_labels()[0]:  # none while no run of the group has finished
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)  # off the curves
        fig.tight_layout()
        file = f"collapse_curves{'_' + group if group else ''}.png"
        fig.savefig(report_dir / file, dpi=90)
        plt.close(fig)
        lines.append(f"![collapse curves{': ' + group if group else ''}]({file})")

    shown = [n for n in run_names if (embeddings or {}).get(n)]
    if shown:
        cols = min(4, len(shown))
        rows_n = math.ceil(len(shown) / cols)
        # at least 7.5 inches wide: the caption's two lines fit above one or two panels
        fig, axes = plt.subplots(rows_n, cols, figsize=(max(7.5, 3.0 * cols), 3.0 * rows_n), squeeze=False)
        for ax in axes.flat:
            ax.set_axis_off()
        # labels as the data give them (class indices, or the names of a data set of one's own)
        classes = np.unique(np.concatenate([np.asarray(embeddings[n]["labels"]).ravel() for n in shown
                                            if embeddings[n].get("labels") is not None] or [np.empty(0)])).tolist()
        palette = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
        colour = {c: palette(i % palette.N) for i, c in enumerate(classes)}
        for ax, name in zip(axes.flat, shown):
            points = np.asarray(embeddings[name]["points"])
            labels = embeddings[name].get("labels")
            ax.scatter(points[:, 0], points[:, 1], s=3,
                       c=[colour[c] for c in np.asarray(labels).ravel().tolist()] if labels is not None else "C0")
            ax.set_title(name, fontsize=8)
        if 0 < len(classes) <= 20:  # one legend for every panel: the same label has the same colour
            from matplotlib.lines import Line2D

            handles = [Line2D([], [], marker="o", linestyle="", color=colour[c], label=str(c)) for c in classes]
            fig.legend(handles=handles, title="label", fontsize=7, title_fontsize=7, loc="center right", frameon=False)
        fig.suptitle(f"t-SNE of the test embeddings (seed {seeds[0]})" + (", coloured by label" if classes else "")
                     + "\nt-SNE keeps neighbours, not scale: a code of little information can look clustered "
                       "(read it with the MI column)", fontsize=9)
        fig.tight_layout(rect=(0, 0, 0.92 if 0 < len(classes) <= 20 else 1, 1))
        fig.savefig(report_dir / "tsne.png", dpi=90)
        plt.close(fig)
        lines.append("![t-SNE of the embeddings](tsne.png)")

    sheets = [(n, (sample_sheets or {}).get(n)) for n in run_names]
    sheets = [(n, image) for n, image in sheets if image is not None]
    if sheets:
        height = sum(image.shape[0] / image.shape[1] for _, image in sheets)
        fig, axes = plt.subplots(len(sheets), 1, figsize=(8.0, 8.0 * height + 0.3 * len(sheets)), squeeze=False)
        for ax, (name, image) in zip(axes[:, 0], sheets):
            ax.imshow(image)
            ax.set_axis_off()
            ax.set_title(name, fontsize=9, loc="left")
        fig.suptitle(f"Prior samples (seed {seeds[0]}): mean and ancestral decodes of the same z", fontsize=10)
        fig.tight_layout()
        fig.savefig(report_dir / "samples.png", dpi=90)
        plt.close(fig)
        lines.append("![prior samples, mean and ancestral decodes](samples.png)")
    return lines


if __name__ == "__main__":
    from vae_tf_cli import run_job

    sys.exit(run_job(_child_main, sys.argv[1:]))
