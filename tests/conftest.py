"""Shared fixtures. TensorFlow's start-up logging is silenced before anything imports it.

Under pytest-xdist (``make test-fast`` runs ``-n auto --dist loadfile``) every file runs on one
worker, so a module-scoped fixture is built once; session fixtures that are dear to build
(:func:`text_exports`) are built once per run by whichever worker needs them first
(:func:`built_once`), the others wait for it and reuse them. (``--dist loadgroup`` would split
files finer, but pytest-xdist 3.8 cannot group under pytest 9.2: it tags ``item._nodeid``, which
pytest 9.2 no longer reads.)
"""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import sys  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

#: MLflow's process-wide state: (module, global) pairs its setters write, besides the MLFLOW_*
#: variables they export so that subprocesses inherit them.
_MLFLOW_GLOBALS = (("mlflow.tracking._tracking_service.utils", "_tracking_uri"),
                   ("mlflow.tracking._model_registry.utils", "_registry_uri"),
                   ("mlflow.tracking.fluent", "_active_experiment_id"))


#: Seconds each test file took in a measured run (its tests' setup + call + teardown), split into
#: the tests ``make test-fast`` runs ("fast") and those marked ``slow``, written by
#: ``make test PYTEST_ARGS=--record-file-seconds`` (a run of some files, or of one tier, updates
#: those only). Only the order of files under pytest-xdist reads it: a file missing from it counts
#: as the median.
FILE_SECONDS = Path(__file__).with_name("file_seconds.json")
TIERS = ("fast", "slow")


def pytest_addoption(parser):
    parser.addoption("--record-file-seconds", action="store_true",
                     help=f"after a run that passed, write each test file's seconds to {FILE_SECONDS.name} "
                          "(the order pytest-xdist hands files out in)")


def _tier(marked_slow: bool) -> str:
    return "slow" if marked_slow else "fast"


@pytest.hookimpl(trylast=True)  # after `-m` / `-k` deselected: only the tests that run count
def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (``--dist loadfile --no-loadscope-reorder``, as the Makefile runs it) the
    workers take whole files in collection order, so the longest files go first: the end of the
    run is then short files that fill both workers, not one minute-long suite file that started
    last while the other worker idles (longest-processing-time-first scheduling). A file's length
    is that of the tiers this run has of it (``make test-fast`` skips the ``slow`` tests, which
    are most of some files). The order within a file is kept; a run without xdist keeps pytest's
    order."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return
    recorded = json.loads(FILE_SECONDS.read_text()) if FILE_SECONDS.is_file() else {}
    tiers: dict[str, set[str]] = {}
    for item in items:
        tiers.setdefault(item.nodeid.split("::")[0], set()).add(_tier(item.get_closest_marker("slow") is not None))
    seconds = {path: sum(recorded[path].get(tier, 0.0) for tier in run) for path, run in tiers.items()
               if path in recorded}
    default = statistics.median(seconds.values()) if seconds else 0.0
    items.sort(key=lambda item: -seconds.get(item.nodeid.split("::")[0], default))  # stable: files stay whole


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """With --record-file-seconds, each report says its test's tier (from the marker, in the
    process that ran it: a report's keywords also hold parametrize ids, which could read "slow")."""
    outcome = yield
    if item.config.getoption("--record-file-seconds"):
        outcome.get_result().user_properties.append(("tier", _tier(item.get_closest_marker("slow") is not None)))


def _tiers_selected(config) -> set[str] | None:
    """The tiers a run selects as a whole (``-m "not slow"``: fast; ``-m slow``: slow; no -m:
    both), or None where a ``-k`` or another ``-m`` picks tests within them."""
    if getattr(config.option, "keyword", ""):
        return None
    return {"": set(TIERS), "not slow": {"fast"}, "slow": {"slow"}}.get(
        (getattr(config.option, "markexpr", "") or "").strip())


class _FileSeconds:
    """Sums each file's test phases, per tier, as the reports reach this (controlling) process."""

    def __init__(self):
        self.seconds: dict[str, dict[str, float]] = {}

    def pytest_runtest_logreport(self, report):
        tiers = self.seconds.setdefault(report.nodeid.split("::")[0], {})
        tier = dict(report.user_properties).get("tier", "fast")
        tiers[tier] = tiers.get(tier, 0.0) + report.duration

    def pytest_sessionfinish(self, session, exitstatus):
        if exitstatus != 0 or not self.seconds:
            return
        # Merged into what is recorded: a run of some files (or with -k / -m) updates those only;
        # a tier the run selected that a file it ran no longer has (its tests unmarked, moved or
        # removed) is dropped, or the file would keep being handed out as long as it was.
        merged = json.loads(FILE_SECONDS.read_text()) if FILE_SECONDS.is_file() else {}
        selected = _tiers_selected(session.config) or set()
        for path, tiers in self.seconds.items():
            recorded = merged.setdefault(path, {})
            for gone in selected - set(tiers):
                recorded.pop(gone, None)
            recorded.update({tier: round(v, 1) for tier, v in tiers.items()})
        partial = FILE_SECONDS.with_suffix(".partial")
        ordered = {path: {tier: merged[path][tier] for tier in TIERS if tier in merged[path]}
                   for path in sorted(merged, key=lambda path: -sum(merged[path].values()))}
        partial.write_text(json.dumps(ordered, indent=1) + "\n")
        partial.replace(FILE_SECONDS)


def pytest_configure(config):
    # The tests call `vae-tf`'s commands in-process (`main`), so they run with the collector's
    # thresholds of the program (`vae_tf_cli.run`), set before the test files import TensorFlow:
    # a test process then walks its ~10^6 long-lived objects in far fewer full collections
    # (tests/test_text_models.py: 5.1 s of garbage collection → 2.6 s).
    from vae_tf_cli import collect_less_often

    collect_less_often()
    if config.getoption("--record-file-seconds") and not hasattr(config, "workerinput"):
        config.pluginmanager.register(_FileSeconds(), "file-seconds")


@pytest.fixture(scope="module", autouse=True)
def mlflow_state_per_file():
    """Every test file starts from the MLflow state the one before it found: ``mlflow.set_*`` (a
    test's own calls, and the CLI's for a run) leave the tracking and registry URIs and the active
    experiment in process globals and ``MLFLOW_*`` variables, which a later file's in-process
    `vae-tf train` would otherwise read as the user's choice (under pytest-xdist's file order, a
    registry URI left by another file sent a training run's model version to that file's store).
    Within a file, tests share the state their module fixtures made, as before."""
    env = {k: v for k, v in os.environ.items() if k.startswith("MLFLOW_")}
    saved = {(m, g): getattr(sys.modules[m], g) for m, g in _MLFLOW_GLOBALS if m in sys.modules}
    yield
    for key in [k for k in os.environ if k.startswith("MLFLOW_") and k not in env]:
        del os.environ[key]
    os.environ.update(env)
    for module, name in _MLFLOW_GLOBALS:
        if module in sys.modules:  # imported during the file: back to its import-time None
            setattr(sys.modules[module], name, saved.get((module, name)))


@pytest.fixture(scope="session", autouse=True)
def mlflow_schema_from_a_template(tmp_path_factory):
    """A new SQLite MLflow store gets its tables by copying an empty store at MLflow's current
    schema, made once per test process by MLflow's own migrations, instead of running the ~60
    migrations again (1-2 s each time, and the tests make dozens of stores). In this process only:
    stores that `vae-tf` subprocesses create still migrate as MLflow does. The Default experiment
    is not in the template, so each store creates its own with its own artifact root."""
    import sqlite3

    import mlflow.store.db.utils as db_utils

    migrate = db_utils._initialize_tables
    template = tmp_path_factory.mktemp("mlflow-schema") / "empty.db"

    def initialize_tables(engine):
        path = engine.url.database if engine.url.get_backend_name() == "sqlite" else None
        if not path or path == ":memory:":
            return migrate(engine)
        if not template.exists():
            import sqlalchemy

            made = sqlalchemy.create_engine(f"sqlite:///{template}")
            migrate(made)
            made.dispose()
        source, target = sqlite3.connect(template), sqlite3.connect(path)
        try:
            source.backup(target)
        finally:
            source.close()
            target.close()

    db_utils._initialize_tables = initialize_tables
    yield
    db_utils._initialize_tables = migrate


def mlflow_store(directory) -> str:
    """The URI of the SQLite MLflow store ``directory/mlflow.db``, created now, in this process, so
    from the schema template (:func:`mlflow_schema_from_a_template`): a `vae-tf` or `mlflow run`
    subprocess handed the URI finds its tables made instead of running MLflow's migrations (~1.5 s
    of each such process), and processes started together do not race in them."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{Path(directory) / 'mlflow.db'}"
    MlflowClient(tracking_uri=uri).search_experiments()
    return uri


def built_once(tmp_path_factory, name: str, build) -> Path:
    """``build(path)`` run once per test run: by this process without pytest-xdist, else by the
    first worker that asks (a file lock in the run's shared temporary directory; the others wait
    for it and reuse the result). ``build`` writes into a temporary folder renamed when complete."""
    if "PYTEST_XDIST_WORKER" not in os.environ:  # no xdist: this process's own temporary directory
        path = tmp_path_factory.mktemp(name)
        build(path)
        return path
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp().parent  # the run's directory, parent of every worker's
    path = shared / name
    with FileLock(str(shared / f"{name}.lock")):
        if not path.is_dir():
            partial = shared / f"{name}.partial"
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir()
            build(partial)
            partial.rename(path)
    return path


@pytest.fixture(scope="session")
def digits():
    """The embedded default data set, split with seed 0."""
    from vae_tf.data import load_dataset

    return load_dataset("digits", seed=0)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def assert_one_line(message: str) -> None:
    assert message and "\n" not in message, f"not a one-line message: {message!r}"


#: A line of TensorFlow's Abseil logging (``I0000 00:00:17.9 123 file.cc:45] ...``) or Abseil's note
#: that it is not set up: what a `vae-tf` process keeps off stderr at its default level
#: (vae_tf_cli.tensorflow_start). Search with ``ABSEIL_RECORD.search(stderr)``.
ABSEIL_RECORD = re.compile(r"^[IWEF]\d{4} \S+ +\d+ \S+:\d+\] |^WARNING: All log messages before absl", re.M)


def integer_transposes(function) -> list[str]:
    """The ``Transpose`` nodes of a concrete function's graph (its loops' and conditions' bodies
    included) that transpose an integer tensor: TensorFlow 2.21's oneDNN build logs "oneDNN
    supports DT_INT32 only on platforms with AVX-512" as an error the first time a process runs
    one, on every CPU (vae_tf.networks.recurrent._transpose_ids)."""
    import tensorflow as tf

    graph = function.graph.as_graph_def()
    nodes = [*graph.node, *(node for f in graph.library.function for node in f.node_def)]
    return [node.name for node in nodes if node.op in ("Transpose", "ConjugateTranspose")
            and tf.dtypes.as_dtype(node.attr["T"].type).is_integer]


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """Two versions of the tiny serving model with different weights, exported once per module;
    tests copy them into fresh base paths (``serving.testing.drop_version``)."""
    from serving.testing import export_tiny_model

    src = tmp_path_factory.mktemp("exports")
    export_tiny_model(src, "vae", version=1, seed=0)
    export_tiny_model(src, "vae", version=2, seed=1)
    return src / "vae"


@pytest.fixture(scope="session")
def text_exports(tmp_path_factory):
    """Two versions of the tiny sentence VAE (random weights, seeds 0 and 1), exported once per
    run (tracing a text model's decoding loop takes tens of seconds); tests copy them into fresh
    base paths (``serving.testing.drop_version(..., name="text")``)."""
    from serving.testing import export_tiny_text_model

    def build(src):
        export_tiny_text_model(src, "text", version=1, seed=0)
        export_tiny_text_model(src, "text", version=2, seed=1)

    return built_once(tmp_path_factory, "text_exports", build) / "text"


def announced(process) -> dict[str, str]:
    """The start-up lines of a ``vae-tf serve`` subprocess (``key: value``), up to its ``gRPC:`` line."""
    lines = {}
    while "gRPC" not in lines:
        line = process.stdout.readline()
        assert line, "vae-tf serve exited before announcing its ports"
        key, _, value = line.partition(":")
        lines[key] = value.strip()
    return lines


def interrupted_after(encoder, calls: int):
    """``(flaky encoder, exception type)``: ``encoder`` that raises on its ``calls``-th call (an
    embedding run killed midway), with the encoder's ``outputs`` and ``identity``."""
    count = {"n": 0}

    class Interrupted(Exception):
        pass

    def flaky(x):
        count["n"] += 1
        if count["n"] == calls:
            raise Interrupted
        return encoder(x)

    flaky.outputs, flaky.identity = encoder.outputs, encoder.identity
    return flaky, Interrupted
