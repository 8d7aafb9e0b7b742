"""MLflow tracking for training runs: URI resolution, params, metrics, figures, model logging.

Embedded default: MLflow's own ``sqlite:///mlflow.db`` in the working directory;
``MLFLOW_TRACKING_URI`` (or ``mlflow.tracking_uri`` in the config) points anywhere else.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import warnings
from pathlib import Path
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException
import numpy as np

MAX_PARAM_LENGTH = 6000  # MLflow 3 rejects longer param values


def resolve_tracking_uri(configured: str | None) -> str:
    """Config value, else the store of the run a library caller has open (:func:`caller_run`),
    else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<cwd>/mlflow.db``."""
    from training.config import env_tracking_uri, tracking_uri_problem
    from vae_tf.errors import ConfigError

    if configured:
        problem = tracking_uri_problem(configured, opening=True)
        if problem:
            raise ConfigError(f"mlflow.tracking_uri {problem}")
        return configured
    if caller_run() is not None:
        return mlflow.get_tracking_uri()
    return env_tracking_uri() or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


#: Every registry URI :func:`use_tracking` has set in this process that was not the user's own.
_registry_uris_we_set: set[str] = set()


def resolve_registry_uri(tracking_uri: str) -> str:
    """``$MLFLOW_REGISTRY_URI`` when the user set it, else the tracking URI.

    MLflow's ``set_registry_uri`` writes that variable itself, so a value this process put there
    for any earlier run is not taken as the user's choice (not only the latest: something that
    restores the environment, e.g. a test's monkeypatch, can bring back an older one).
    """
    from_env = os.environ.get("MLFLOW_REGISTRY_URI")
    return from_env if from_env and from_env not in _registry_uris_we_set else tracking_uri


def use_tracking(tracking_uri: str) -> str:
    """Point MLflow's fluent API at ``tracking_uri`` and the matching registry; returns the registry URI."""
    registry_uri = resolve_registry_uri(tracking_uri)
    mlflow.set_tracking_uri(tracking_uri)
    if registry_uri != os.environ.get("MLFLOW_REGISTRY_URI"):  # not the user's own choice: ours, remember it
        _registry_uris_we_set.add(registry_uri)
    mlflow.set_registry_uri(registry_uri)
    return registry_uri


def caller_run():
    """The MLflow run a library caller has open around a vae-tf call (``with mlflow.start_run():
    run_training(config)``), or None. vae-tf's own run is then a child of it (:func:`start_run`)."""
    return mlflow.active_run()


def check_caller_store(tracking_uri: str) -> None:
    """Refuse, in one line and before any work, a run that would log to another store than the
    caller's open run (its child there would point at a parent that store does not have)."""
    parent = caller_run()
    if parent is not None and mlflow.get_tracking_uri() != tracking_uri:
        from vae_tf.errors import ConfigError

        raise ConfigError(f"this call is inside MLflow run {parent.info.run_id} of {mlflow.get_tracking_uri()}, but "
                          f"mlflow.tracking_uri is {tracking_uri}; leave mlflow.tracking_uri unset to log a child run "
                          "beside it, or end that run first")


def leave_active_run(run_id: str) -> None:
    """Take ``run_id`` off MLflow's active-run stack without telling the server, as
    ``mlflow.end_run()`` does but for its call to the server, which has the end in the journal.

    Left active, the run was ended by MLflow's exit hook (``mlflow.end_run()`` at interpreter exit)
    with status FINISHED: a failed run looked finished until the journal was sent, and while the
    server was down the hook spent its HTTP retries at exit, printing urllib3's warnings after
    the run's summary. A library caller's next ``mlflow.start_run()`` also failed ("Run ... is
    already active"). MLflow has no public call for this; its stack is read as in MLflow 3.17
    (pinned), and the run is left alone if it is not the top of the stack."""
    from mlflow.environment_variables import MLFLOW_RUN_ID
    from mlflow.tracking import fluent

    # Called on the way out of failed runs too: a change of MLflow's internals must not replace
    # the run's own error (then the exit hook ends the run, as before).
    with contextlib.suppress(AttributeError, LookupError, TypeError):
        stack = fluent._active_run_stack.get()
        if stack and stack[-1].info.run_id == run_id:
            stack.pop()
            MLFLOW_RUN_ID.unset()
            fluent._last_active_run_id.set(run_id)
            # the system-metrics thread MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING starts, as end_run stops it
            monitor = fluent.run_id_to_system_metrics_monitor.pop(run_id, None)
            if monitor is not None:
                monitor.finish()


def start_run(experiment: str, **kwargs):
    """``mlflow.start_run(**kwargs)`` in ``experiment`` (made active, created if needed); inside a
    library caller's own run (:func:`caller_run`) a nested child of it in the caller's experiment
    instead, leaving the caller's active experiment as it was (a plain start_run raised "Run ...
    is already active" there, after set_experiment had switched the caller's experiment)."""
    parent = caller_run()
    if parent is None:
        if kwargs.get("run_id") is None:  # a run of its own id keeps its experiment
            activate_experiment(experiment)
        return mlflow.start_run(**kwargs)
    if kwargs.get("run_id") is None:
        kwargs["experiment_id"] = parent.info.experiment_id
    return mlflow.start_run(nested=True, **kwargs)


def activate_experiment(name: str) -> str:
    """Make experiment ``name`` MLflow's active experiment, creating it if needed; returns its id.

    MLflow 3.17's ``mlflow.set_experiment`` has a race: when another process creates the
    experiment between its lookup and its create, it returns the experiment *without* making it
    active, so the next ``mlflow.start_run()`` lands in the Default experiment (two `vae-tf train`
    processes started at once on a new store did exactly that). Setting it again by id, which
    only reads, activates it in every case.
    """
    experiment_id = mlflow.set_experiment(name).experiment_id
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


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


def _record_run_id(export_dir: Path, run) -> None:
    """Write ``run``'s id into an export that was made without one (its run was offline: the
    journal's replay created the run), so that ``vae-tf evaluate`` of the export links its
    evaluation to the run (``vae_tf.evaluates_run_id``) and the logged model carries it too."""
    from training.atomic import write_json_atomic
    from vae_tf.export import ASSET_NAME

    path = export_dir / "assets" / ASSET_NAME
    if run is None or not path.is_file():
        return
    info = json.loads(path.read_text())
    if info.get("mlflow_run_id") is None:
        write_json_atomic(path, {**info, "mlflow_run_id": run.info.run_id})


#: The logged model's tag naming the export directory it was logged from.
EXPORT_TAG = "vae_tf.export_dir"


def logged_before(export_dir: Path, registered_name: str | None):
    """``(model_uri, version)`` of the export ``export_dir`` if the active run logged it already
    (a READY logged model with its :data:`EXPORT_TAG`), registering the version an earlier try
    did not get to; None if it did not. A replayed ``log_model`` whose first try failed after
    MLflow had taken the model (a server error after the version was created) registered a
    second version of one training."""
    run = mlflow.active_run()
    if run is None:
        return None
    wanted = str(Path(export_dir).resolve())
    models = [m for m in mlflow.search_logged_models(experiment_ids=[run.info.experiment_id],
                                                      filter_string=f"source_run_id = '{run.info.run_id}'",
                                                      output_format="list")
              if (m.tags or {}).get(EXPORT_TAG) == wanted and str(m.status).upper().endswith("READY")]
    if not models:
        return None
    model = models[-1]
    if not registered_name:
        return model.model_uri, None
    versions = [v for v in mlflow.MlflowClient().search_model_versions(f"name = '{registered_name}'")
                if getattr(v, "model_id", None) == model.model_id or v.source == model.model_uri]
    if versions:
        return model.model_uri, max(versions, key=lambda v: int(v.version)).version
    return model.model_uri, mlflow.register_model(model.model_uri, registered_name).version


def log_saved_model(export_dir: Path, data_shape, registered_name: str | None):
    """Log the SavedModel as an MLflow pyfunc model (the SavedModel is its artifact) and, if
    ``registered_name`` is given, register a new model version. Returns ``(model_uri, version)``.

    The ``signature`` param picks encode / decode / reconstruct / sample
    (``training/pyfunc_model.py``). Their inputs differ (``x``, ``z``, ``seed``), so the MLflow
    signature declares the param only and no input schema (one would reject three of the four
    signatures); the pyfunc checks and casts inputs itself, and the model metadata records each
    signature's input."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ParamSchema, ParamSpec

    from vae_tf.export import load_model_info

    signature = ModelSignature(params=ParamSchema([ParamSpec("signature", "string", "encode")]))
    info = load_model_info(export_dir)
    x = ("x: string[-1] (raw sentences)" if info.get("modality") == "text"
         else f"x: float32[-1, {', '.join(map(str, data_shape))}]")
    code = (info.get("latent") or {}).get("code_size", "code_size")  # a joint code: its Gaussian and one-hot parts
    inputs = {"encode": x, "decode": f"z: float32[-1, {code}]", "reconstruct": x, "sample": "seed: int32[-1, 2]"}
    with warnings.catch_warnings():
        # The schema is explicit, so MLflow's advice about input examples (for schema inference)
        # does not apply; its advice about type hints is dropped by pyfunc_model.py itself.
        warnings.filterwarnings("ignore", message=".*input example was not provided.*")
        info = _log_pyfunc(signature, export_dir, registered_name, inputs)
    version = getattr(info, "registered_model_version", None)
    return info.model_uri, version


@contextlib.contextmanager
def artifact_progress_bars_off():
    """MLflow's "Downloading artifacts: 100%|..." bars off inside the block, unless the user set
    ``MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR`` (their setting wins): logging a run's model copies its
    local SavedModel through MLflow's download code, and a library caller of ``run_training`` or
    ``run_suite`` saw a bar under every run (the ``vae-tf`` program turns them off for its whole
    process, ``vae_tf_cli.prepare_job_process``)."""
    from mlflow.environment_variables import MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR

    name = MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.name
    if name in os.environ:
        yield
        return
    os.environ[name] = "false"
    try:
        yield
    finally:
        os.environ.pop(name, None)


def _log_pyfunc(signature, export_dir: Path, registered_name: str | None, inputs: dict | None = None):
    import tensorflow as tf

    import vae_tf

    with artifact_progress_bars_off():
        return mlflow.pyfunc.log_model(
            name="model",
            # which export this is: a replay of a buffered log_model finds what an earlier try logged
            tags={EXPORT_TAG: str(Path(export_dir).resolve())},
            python_model=str(Path(__file__).with_name("pyfunc_model.py")),
            artifacts={"saved_model": str(export_dir)},
            signature=signature,
            # Inference of requirements is wrong for this stack (stack-notes §5): name them.
            pip_requirements=[f"tensorflow=={tf.__version__}", f"numpy=={np.__version__}",
                              f"mlflow=={mlflow.__version__}"],
            registered_model_name=registered_name,
            metadata={"vae_tf_version": vae_tf.__version__, "signature_param": "encode | decode | reconstruct | sample",
                      "signature_inputs": inputs or {}},
        )


# --- a run that survives an unreachable tracking server ----------------------------------------

#: MLflow error codes that mean "try again later" (a locked SQLite file is TEMPORARILY_UNAVAILABLE,
#: an unreachable server INTERNAL_ERROR after MLflow's own HTTP retries).
TRANSIENT_ERROR_CODES = {"TEMPORARILY_UNAVAILABLE", "INTERNAL_ERROR", "REQUEST_LIMIT_EXCEEDED", "DEADLINE_EXCEEDED",
                         "UNAVAILABLE", "IO_ERROR", "ABORTED"}

#: HTTP retry settings for a tracking server, unless the user set them: MLflow's defaults (7 retries,
#: backoff factor 2) block a call for minutes when the server is down; the journal makes waiting
#: pointless.
HTTP_RETRY_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                       "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}

#: HTTP statuses of a page that is not MLflow's (a proxy's, a gateway's) that mean "try again
#: later": not found while a server is redeployed, timeouts, rate limits, server errors.
OUTAGE_HTTP_STATUSES = {404, 408, 429, 500, 502, 503, 504}

JOURNAL_NAME = "mlflow_journal.jsonl"
#: How many of the journal's first entries a replay has sent (written after each one).
JOURNAL_SENT_NAME = "mlflow_journal.sent"
RUN_RECORD_NAME = "run.json"


def is_transient(err: BaseException) -> bool:
    """Whether a failed MLflow call is worth retrying later (connection refused, timeout, locked
    database, server error) rather than a mistake that retrying would repeat (a bad param).

    Also transient: an HTTP answer that is not MLflow's (a proxy's or gateway's error page, not
    MLflow's JSON error: MLflow says "API request to endpoint ... failed with error code 404"), and
    an error MLflow raised while handling a transient one (``set_logged_model_tags`` turns a
    server error of its look-up into INVALID_PARAMETER_VALUE, ``raise ... from``). Not transient:
    a local file that is missing (a moved export or figure), which waiting does not bring back."""
    from mlflow.exceptions import MlflowException

    if isinstance(err, FileNotFoundError):
        return False
    if isinstance(err, MlflowException):
        if err.error_code in TRANSIENT_ERROR_CODES:
            return True
        page = re.match(r"API request to endpoint \S+ failed with error code (\d+) ", str(err.message))
        if page:  # not MLflow's JSON: a proxy's or gateway's page. 401/403 (a login refused) are no outage
            return int(page.group(1)) in OUTAGE_HTTP_STATUSES
        cause = err.__cause__  # a server or connection error behind it (not a database constraint)
        return cause is not None and (isinstance(cause, (MlflowException, ConnectionError, TimeoutError))
                                      or type(cause).__module__.startswith(("requests", "urllib3"))) \
            and is_transient(cause)
    return isinstance(err, (OSError, TimeoutError)) or type(err).__module__.startswith(("requests", "urllib3", "sqlalchemy"))


#: A run directory's lock file: held by the process that trains the run (or replays its journal).
RUN_LOCK_NAME = ".lock"
_HELD_RUN_LOCKS: dict[str, Any] = {}


def hold_run_lock(run_dir: Path, busy: str):
    """Hold an exclusive lock on ``run_dir/.lock`` for this process (:func:`training.locks.
    hold_exclusive`; counted: a process that holds it gets it again, and each hold is released
    once), or raise ConfigError ``busy`` (``{holder}``: the process that holds it). None where
    there is no lock to take (no ``flock``, a file system that refuses it)."""
    from training.locks import hold_exclusive

    key = str(Path(run_dir).resolve())
    if key in _HELD_RUN_LOCKS:
        _HELD_RUN_LOCKS[key][1] += 1
        return _HELD_RUN_LOCKS[key][0]
    handle = hold_exclusive(Path(run_dir) / RUN_LOCK_NAME, lambda holder: busy.replace("{holder}", holder))
    if handle is not None:
        _HELD_RUN_LOCKS[key] = [handle, 1]
    return handle


def run_in_use(run_dir: Path) -> str | None:
    """Who holds ``run_dir``'s lock in another process (``"process N"``), or None: free, held by
    this process, or no lock to ask about."""
    from training.locks import held_by_another

    if str(Path(run_dir).resolve()) in _HELD_RUN_LOCKS or not (Path(run_dir) / RUN_LOCK_NAME).is_file():
        return None
    return held_by_another(Path(run_dir) / RUN_LOCK_NAME)


def release_run_lock(run_dir: Path | None) -> None:
    """Give back one hold of :func:`hold_run_lock` (the lock goes with the last)."""
    if run_dir is None:
        return
    key = str(Path(run_dir).resolve())
    held = _HELD_RUN_LOCKS.get(key)
    if held is not None:
        held[1] -= 1
        if held[1] <= 0:
            del _HELD_RUN_LOCKS[key]
            held[0].close()


def require_reachable(tracking_uri: str, why: str) -> None:
    """For an HTTP tracking server: one quick request (no retries, a few seconds' timeout) and,
    when it cannot be reached, one line saying so and why ``why`` needs it. MLflow's own client
    retries each request with backoff for minutes before it fails with a traceback."""
    if not tracking_uri.startswith(("http://", "https://")):
        return
    from vae_tf.data.validation import exception_cause
    from vae_tf.errors import ConfigError

    try:
        _probe(tracking_uri, timeout=5)
    except Exception as err:  # noqa: BLE001 - what matters is that it cannot be reached
        if not is_transient(err):
            raise
        text = str(err).lower()
        cause = next((words for key, words in (("refused", "connection refused"), ("timed out", "timed out"),
                                                ("name or service not known", "unknown host"),
                                                ("nodename nor servname", "unknown host"))
                      if key in text), None) or exception_cause(err, 160)
        raise ConfigError(f"MLflow at {tracking_uri} cannot be reached ({cause}); {why}: start the server, or use a "
                          "local store (MLFLOW_TRACKING_URI=sqlite:///mlflow.db)") from None


def _probe(tracking_uri: str, timeout: int) -> None:
    """One quick request to an HTTP tracking server (no retries, ``timeout`` seconds); raises what
    MLflow raises. MLflow reads its retry settings from the environment at each request: the two
    variables are set around it and put back as they were (only they: ``unittest.mock.patch.dict``
    cleared and refilled the whole environment, under TensorFlow's running threads)."""
    values = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": str(timeout)}
    before = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        with _mlflow_quiet():
            mlflow.MlflowClient(tracking_uri).search_experiments(max_results=1)
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def _mlflow_quiet():
    """MLflow logs a full traceback for every failed database call, and urllib3 a warning for every
    retry of an unreachable server; the one-line warning of :class:`TrackedRun` says what matters."""
    loggers = [logging.getLogger(name) for name in ("mlflow", "urllib3")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _first_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:200]}"


def meta_dataset(name: str, source: str, digest: str):
    """An MLflow dataset without its data (``MetaDataset``): a file or URL source where ``source``
    is one, else a code source naming the loader."""
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    resolved = None
    if source.startswith(("http://", "https://", "s3://", "gs://")) or Path(source).exists():
        try:
            with warnings.catch_warnings():
                # MLflow 3.17 registers its local-file source twice and warns on every local path that
                # it "can be interpreted in multiple ways: LocalArtifactDatasetSource,
                # LocalArtifactDatasetSource" (the same class): noise on every run of a user's file.
                warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted in multiple ways")
                resolved = resolve_dataset_source(source)
        except Exception:  # noqa: BLE001 - an unusual path: name it in a code source instead
            resolved = None
    return MetaDataset(resolved or CodeDatasetSource({"vae_tf.source": source}), name=name, digest=digest)


class TrackedRun:
    """The MLflow run of one training job, resilient to MLflow faults.

    Every logging call goes through this object. While MLflow answers, calls go straight to it
    (the run is MLflow's active run, so ``mlflow.*`` calls of callers work too). When a call fails
    with a transient error (unreachable server, locked SQLite file, server error), the user is
    told once on ``stream``, training goes on, and this and every later call are appended to a
    journal, ``<run_dir>/mlflow_journal.jsonl`` (one JSON object per line, flushed and fsynced, so
    a crash keeps it). Every ``retry_seconds`` the next call first tries to replay the journal;
    once that succeeds, logging is live again. What is still buffered when training ends stays in
    the journal; ``vae-tf sync-mlflow RUN_DIR`` replays it later (into the same or another
    tracking URI). Each replayed entry is counted as sent as soon as MLflow takes it
    (``mlflow_journal.sent``, with the store it went to), so a replay that fails or is killed
    half-way resends at most the entry it was sending, and a replayed ``log_model`` first looks
    for the model an earlier try logged. The process that trains the run holds its directory
    (``.lock``) until :meth:`finish`.

    ``run_dir`` is ``<run_root>/<key>``: the MLflow run id when the run could be created at start,
    ``offline-<hex>`` when MLflow was unreachable from the start (the run is created on the first
    successful replay). ``run.json`` there records the tracking URI, the experiment and the MLflow
    run id.
    """

    def __init__(self, tracking_uri: str, *, run_root: str | Path, experiment: str, run_name: str | None = None,
                 tags: dict | None = None, run_id: str | None = None, run_dir: str | Path | None = None,
                 retry_seconds: float = 60.0, stream=None):
        import sys

        self.tracking_uri = tracking_uri
        self.run_root = Path(run_root)
        self.experiment, self.run_name, self.tags = experiment, run_name, dict(tags or {})
        self.run_id = run_id
        self.experiment_id: str | None = None
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.retry_seconds = float(retry_seconds)
        self.stream = stream if stream is not None else sys.stderr
        self.online = False
        self.warned = False
        self._pending: int | None = None  # journal entries; read from the file once, then counted
        self._locked = False  # whether this run holds its directory (_hold_lock)
        self._next_retry = 0.0
        if tracking_uri.startswith(("http://", "https://")):
            for key, value in HTTP_RETRY_DEFAULTS.items():
                os.environ.setdefault(key, value)

    # --- life cycle ---------------------------------------------------------------------------
    def start(self) -> TrackedRun:
        """Create (or reopen, with ``run_id``) the MLflow run; on a transient failure go on offline."""
        import uuid

        from vae_tf.errors import ConfigError

        failure = None
        if self.run_dir is not None and self.run_dir.is_dir():  # an existing run: refused before MLflow is asked
            self._hold_lock()
        try:
            try:
                with _mlflow_quiet():
                    self._open()
            except MlflowException as err:
                if not is_transient(err):  # a login refused, a run deleted, a path that is no MLflow server
                    raise ConfigError(f"MLflow at {self.tracking_uri} refused the run ({_first_line(err)}); check "
                                      "mlflow.tracking_uri and its credentials") from None
                failure = err
            except Exception as err:
                if not is_transient(err):
                    raise
                failure = err
            if self.run_dir is None:
                self.run_dir = self.run_root / (self.run_id or f"offline-{uuid.uuid4().hex[:12]}")
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._hold_lock()
            self._pending = None  # a resumed run's journal may hold calls
            if failure is not None:
                self._go_offline(failure)
            self.save_record()
            if self.pending() and self.online:
                self.flush()  # a resumed run whose journal still holds calls
        except BaseException:
            self.release_lock()  # a process that goes on (a notebook) must not keep the run locked
            raise
        return self

    def _hold_lock(self) -> None:
        """Hold the run directory (:func:`hold_run_lock`) until :meth:`release_lock` (once)."""
        if not self._locked:
            hold_run_lock(self.run_dir, f"run {self.run_dir} is in use by {{holder}} (a training of the same run, or "
                                        "vae-tf sync-mlflow replaying its logging); wait for it to end, then run this "
                                        "again")
            self._locked = True

    def release_lock(self) -> None:
        if self._locked:
            self._locked = False
            release_run_lock(self.run_dir)

    def _open(self) -> None:
        if mlflow.active_run() is not None and mlflow.active_run().info.run_id == self.run_id:
            self.online = True
            return
        check_caller_store(self.tracking_uri)
        use_tracking(self.tracking_uri)
        if self.run_id is None and os.environ.get("MLFLOW_RUN_ID") and caller_run() is None:
            run = mlflow.start_run(run_name=self.run_name, tags=self.tags or None)  # the run `mlflow run` made
        elif self.run_id is None:
            run = start_run(self.experiment, run_name=self.run_name, tags=self.tags or None)
        else:
            run = start_run(self.experiment, run_id=self.run_id)
        self.run_id, self.experiment_id = run.info.run_id, run.info.experiment_id
        self.online = True

    def finish(self, status: str = "FINISHED") -> None:
        """End the run with ``status``; if MLflow is still unreachable, keep the end in the journal
        and say how to send it."""
        try:
            self._call("end_run", {"status": status})
            if self.pending():
                if self.run_id is not None:  # the end is in the journal: MLflow's exit hook must not end it
                    leave_active_run(self.run_id)
                print(f"warning: MLflow at {self.tracking_uri} is still unreachable: {self.pending()} logging calls "
                      f"are kept in {self.journal_path}; send them with `vae-tf sync-mlflow {self.run_dir}`",
                      file=self.stream)
        finally:
            self.release_lock()

    def save_record(self, **extra) -> None:
        from training.atomic import write_json_atomic

        record = self.record()
        record.update({"tracking_uri": self.tracking_uri, "experiment": self.experiment, "run_name": self.run_name,
                       "tags": self.tags, "mlflow_run_id": self.run_id, **extra})
        write_json_atomic(self.run_dir / RUN_RECORD_NAME, record, private=True)  # the tracking URI may hold a password

    def record(self) -> dict:
        path = self.run_dir / RUN_RECORD_NAME
        return json.loads(path.read_text()) if path.exists() else {}

    # --- logging API (mirrors mlflow's) ----------------------------------------------------------
    def log_params(self, params: dict) -> None:
        self._call("log_params", {"params": {k: str(v) for k, v in params.items()}})

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        if metrics:
            import time

            self._call("log_metrics", {"metrics": {k: float(v) for k, v in metrics.items()}, "step": step,
                                       "timestamp": int(time.time() * 1000)})

    def set_tags(self, tags: dict) -> None:
        self._call("set_tags", {"tags": {k: str(v) for k, v in tags.items()}})

    def delete_tag(self, key: str) -> None:
        """Remove tag ``key`` from the run (nothing happens when it has none)."""
        self._call("delete_tag", {"key": key})

    def log_dict(self, dictionary: dict, artifact_file: str) -> None:
        self._call("log_dict", {"dictionary": dictionary, "artifact_file": artifact_file})

    def log_text(self, text: str, artifact_file: str) -> None:
        """A text artefact (Markdown tables of a text model: MLflow's artefact view renders them)."""
        self._call("log_text", {"text": text, "artifact_file": artifact_file})

    def log_figures(self, figures: dict, artifact_dir: str = "figures") -> None:
        """Figures are saved under ``<run_dir>/figures`` first, so a buffered call has its file.
        As they are drawn (``vae_tf.plots``: laid out by ``tight_layout``), as ``mlflow.log_figure``
        saves them for ``vae-tf evaluate``: ``bbox_inches="tight"`` drew each figure once more to
        trim a few pixels (six figures 0.40-0.45 s -> 0.30-0.32 s, docs/performance.md)."""
        import matplotlib.pyplot as plt

        folder = self.run_dir / artifact_dir
        folder.mkdir(parents=True, exist_ok=True)
        for name, fig in figures.items():
            path = folder / name
            fig.savefig(path, dpi=100)
            plt.close(fig)
            self._call("log_artifact", {"local_path": str(path.resolve()), "artifact_path": artifact_dir})

    def log_artifacts(self, local_dir: str | Path, artifact_path: str) -> None:
        """Every file under ``local_dir`` (kept on disk: a buffered call still has them)."""
        self._call("log_artifacts", {"local_dir": str(Path(local_dir).resolve()), "artifact_path": artifact_path})

    def log_dataset(self, *, name: str, source: str, digest: str, context: str, tags: dict | None = None) -> None:
        """A dataset input of the run (``mlflow.log_input`` of a ``MetaDataset``: name, source,
        digest; ``context`` and ``tags`` on the input), shown in the run page's Datasets panel."""
        self._call("log_input", {"name": name, "source": source, "digest": digest, "context": context,
                                 "tags": {k: str(v) for k, v in (tags or {}).items()}})

    def log_model(self, export_dir: Path, data_shape, registered_name: str | None):
        """The SavedModel as a pyfunc (and a registered version); ``(None, None)`` when buffered."""
        result = self._call("log_model", {"export_dir": str(Path(export_dir).resolve()),
                                          "data_shape": [int(d) for d in data_shape],
                                          "registered_name": registered_name})
        return result if isinstance(result, tuple) else (None, None)

    # --- machinery ------------------------------------------------------------------------------
    @property
    def journal_path(self) -> Path:
        return self.run_dir / JOURNAL_NAME

    def pending(self) -> int:
        """Calls waiting in the journal (counted in memory: every logging call asks)."""
        if self._pending is None:
            self._pending = len(self.journal())
        return self._pending

    @property
    def sent_path(self) -> Path:
        return self.run_dir / JOURNAL_SENT_NAME

    def _sent(self) -> int:
        """How many of the journal's first entries an earlier replay sent to this store (0: none,
        no count, or a count of a replay into another store: this one has not had them)."""
        try:
            count = json.loads(self.sent_path.read_text())
            return max(0, int(count["sent"])) if count.get("uri") == self.tracking_uri else 0
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            return 0

    def journal(self) -> list[dict]:
        """The calls still to send: the journal's entries after those a replay has sent."""
        return self._unsent()[1]

    def _unsent(self) -> tuple[int, list[dict]]:
        """``(entries already sent to this store, the entries after them)``."""
        if self.run_dir is None or not self.journal_path.exists():
            return 0, []
        sent = self._sent()
        lines = [line for line in self.journal_path.read_text().splitlines() if line.strip()]
        return sent, [json.loads(line) for line in lines[sent:]]

    def logged_steps(self, key: str) -> set[int]:
        """Steps at which metric ``key`` is logged or buffered: MLflow's history when it answers,
        else the last epoch recorded in run.json; plus what the journal holds."""
        steps = {e["args"]["step"] for e in self.journal() if e["op"] == "log_metrics" and key in e["args"]["metrics"]}
        if self.online:
            try:
                history = mlflow.MlflowClient().get_metric_history(self.run_id, key)
                return steps | {m.step for m in history}
            except Exception as err:
                if not is_transient(err):
                    raise
        return steps | set(range(int(self.record().get("last_logged_epoch", -1)) + 1))

    def _apply(self, op: str, args: dict):
        if op == "log_params":
            mlflow.log_params(args["params"])
        elif op == "log_metrics":
            mlflow.log_metrics(args["metrics"], step=args["step"], timestamp=args["timestamp"])
        elif op == "set_tags":
            mlflow.set_tags(args["tags"])
        elif op == "delete_tag":
            run = mlflow.active_run()
            if run is not None and args["key"] in mlflow.get_run(run.info.run_id).data.tags:
                mlflow.delete_tag(args["key"])
        elif op == "log_dict":
            mlflow.log_dict(args["dictionary"], args["artifact_file"])
        elif op == "log_artifact":
            mlflow.log_artifact(args["local_path"], args["artifact_path"])
        elif op == "log_text":
            mlflow.log_text(args["text"], args["artifact_file"])
        elif op == "log_artifacts":
            mlflow.log_artifacts(args["local_dir"], args["artifact_path"])
        elif op == "log_input":
            dataset = meta_dataset(args["name"], args["source"], args["digest"])
            try:
                mlflow.log_input(dataset, context=args["context"], tags=args.get("tags") or None)
            except MlflowException as err:
                # Two runs logging the same data set at once (`compare --jobs`, parallel runs on
                # one SQLite store) race in MLflow's look-up-then-insert of the dataset row; the
                # loser hits the unique constraint. The row now exists: linking again finds it.
                if "UNIQUE constraint failed: datasets" not in str(err):
                    raise
                mlflow.log_input(dataset, context=args["context"], tags=args.get("tags") or None)
        elif op == "log_model":
            _record_run_id(Path(args["export_dir"]), mlflow.active_run())
            return log_saved_model(Path(args["export_dir"]), args["data_shape"], args["registered_name"])
        elif op == "end_run":
            mlflow.end_run(status=args["status"])
            self.online = False
        else:  # a journal written by another version
            raise ValueError(f"unknown journal operation {op!r}")
        return True

    def _call(self, op: str, args: dict):
        import time

        if self.online and not self.pending():
            try:
                with _mlflow_quiet():
                    return self._apply(op, args)
            except Exception as err:
                if not is_transient(err):
                    raise
                self._go_offline(err)
        self._append(op, args)
        if (op == "end_run" or time.monotonic() >= self._next_retry) and self._answers():
            self.flush()
        return None

    def _answers(self) -> bool:
        """Before a replay to an HTTP server: one quick request (no retries, 3 s). A server that
        hangs instead of refusing connections held every replay for MLflow's whole timeout and
        retries (20 s x 3 by default) on the training thread: ~60 s of every minute of training.
        False (and the next retry scheduled) when it does not answer; True for other stores."""
        import time

        if not self.tracking_uri.startswith(("http://", "https://")):
            return True
        try:
            _probe(self.tracking_uri, timeout=3)
        except Exception as err:  # noqa: BLE001
            if not is_transient(err):
                return True  # it answers: the replay reports what is wrong
            self._next_retry = time.monotonic() + self.retry_seconds
            return False
        return True

    def _go_offline(self, err: BaseException) -> None:
        import time

        self.online = False
        self._next_retry = time.monotonic() + self.retry_seconds
        if not self.warned:
            self.warned = True
            print(f"warning: MLflow at {self.tracking_uri} is unreachable ({_first_line(err)}); training goes on, "
                  f"logging to {self.journal_path} and retrying every {self.retry_seconds:g} s "
                  f"(`vae-tf sync-mlflow {self.run_dir}` sends it later)", file=self.stream)

    def _append(self, op: str, args: dict) -> None:
        before = self.pending()  # counted before the line is written (read from the file the first time)
        if not self.journal_path.exists():  # a count left by a replay killed between its two removals
            with contextlib.suppress(FileNotFoundError):
                self.sent_path.unlink()
        # private, as the run record: logged params may hold what the tracking URI holds
        with open(os.open(self.journal_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600), "a", encoding="utf-8") as f:
            with contextlib.suppress(OSError, AttributeError):  # a journal of an older vae-tf was 0644
                os.fchmod(f.fileno(), 0o600)
            f.write(json.dumps({"op": op, "args": args}) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self._pending = before + 1

    def flush(self) -> bool:
        """Replay the journal; True when it is empty afterwards (logging is live again)."""
        import time

        from training.atomic import write_text_atomic

        sent, entries = self._unsent()
        done = 0
        quiet = _mlflow_quiet()
        quiet.__enter__()
        try:
            if not self.online:
                self._open()
                if self.run_dir is not None:
                    self.save_record()
            for entry in entries:
                args = entry["args"]
                if entry["op"] != "log_model" or \
                        logged_before(Path(args["export_dir"]), args["registered_name"]) is None:
                    self._apply(entry["op"], args)
                done += 1
                # Counted as sent at once: a replay killed after this entry (SIGKILL, a power cut)
                # starts from the next one, so a model is not logged and registered twice.
                write_text_atomic(self.sent_path, json.dumps({"uri": self.tracking_uri, "sent": sent + done}) + "\n",
                                  private=True)
        except Exception as err:
            if not is_transient(err):
                raise
            self.online = False
            self._next_retry = time.monotonic() + self.retry_seconds
        finally:
            quiet.__exit__(None, None, None)
            self._pending = len(entries) - done
        if done == len(entries) and (self.online or entries and entries[-1]["op"] == "end_run"):
            # The journal first: a count left alone is removed by the next append (_append).
            for path in (self.journal_path, self.sent_path):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            self._pending = 0
            if self.warned and entries:
                print(f"MLflow at {self.tracking_uri} is reachable again: sent {len(entries)} buffered logging calls",
                      file=self.stream)
            return True
        return False


def sync_run(run_dir: str | Path, tracking_uri: str | None = None) -> tuple[int, str]:
    """Replay a run's journal (``vae-tf sync-mlflow``); returns ``(calls sent, tracking URI)``.
    Into another tracking URI, the run is created there (the run id in run.json is the old
    store's)."""
    import sys

    from training.atomic import write_json_atomic
    from vae_tf.errors import ConfigError

    run_dir = Path(run_dir)
    record_path = run_dir / RUN_RECORD_NAME
    if not record_path.is_file():
        raise ConfigError(f"{run_dir} is not a training run directory (no {RUN_RECORD_NAME}); pass runs/<run id>")
    record = json.loads(record_path.read_text())
    uri = tracking_uri or record["tracking_uri"]
    same_store = uri == record["tracking_uri"]
    hold_run_lock(run_dir, f"run {run_dir} is still in use by {{holder}}: a training sends its buffered logging "
                           "itself when MLflow answers again and when it ends; run vae-tf sync-mlflow after it has ended")
    try:
        # Into another store: the run made there by an earlier try of this command, if any (a
        # failed or killed try made another empty run on every retry).
        elsewhere = (record.get("synced_to") or {}).get(uri)
        tracker = TrackedRun(uri, run_root=run_dir.parent, experiment=record["experiment"],
                             run_name=record.get("run_name"), tags=record.get("tags"),
                             run_id=record.get("mlflow_run_id") if same_store else elsewhere,
                             run_dir=run_dir, retry_seconds=0)
        count = tracker.pending()
        if count == 0:
            return 0, uri
        try:
            tracker._open()
        except Exception as err:  # noqa: BLE001
            if is_transient(err):
                raise ConfigError(f"MLflow at {uri} is still unreachable ({_first_line(err)}); try again later") from None
            if elsewhere:  # the run an earlier try made there is gone (deleted, the store reset)
                kept = {k: v for k, v in (record.get("synced_to") or {}).items() if k != uri}
                write_json_atomic(record_path, {**record, "synced_to": kept}, private=True)
                raise ConfigError(f"MLflow at {uri} no longer has run {elsewhere}, which an earlier sync made there "
                                  f"({_first_line(err)}); run the command again to send the journal into a new run "
                                  "there") from None
            raise ConfigError(f"MLflow at {uri} refused the replay ({_first_line(err)}); check the tracking URI and "
                              "its credentials") from None
        if same_store:
            tracker.save_record()
        else:
            write_json_atomic(record_path, {**record, "synced_to": {**(record.get("synced_to") or {}),
                                                                    uri: tracker.run_id}}, private=True)
            if record.get("mlflow_run_id"):  # the run was created there: it went offline later
                print(f"note: the journal holds only what {record['tracking_uri']} missed (the run's earlier logging "
                      f"is there, run {record['mlflow_run_id']}); run {tracker.run_id} at {uri} gets that part only",
                      file=sys.stderr)
        if not tracker.flush():
            raise ConfigError(f"MLflow at {uri} failed during the replay; {tracker.pending()} calls are still kept in "
                              f"{tracker.journal_path}; run the command again later")
        if mlflow.active_run() is not None:
            mlflow.end_run()
        return count, uri
    finally:
        release_run_lock(run_dir)


class WorkerRun:
    """What a non-chief worker of a multi-worker cluster logs through: nothing (the chief logs
    the run). It has a temporary ``run_dir`` for the checkpoints every worker must write
    (``training.distribute``), removed by :meth:`finish`."""

    online = False
    run_id = None
    experiment_id = None

    def __init__(self, description: str):
        import tempfile

        self.tracking_uri = "(the chief's)"
        self.run_dir = Path(tempfile.mkdtemp(prefix="vae-tf-worker-"))
        self.description = description

    def start(self) -> WorkerRun:
        return self

    def finish(self, status: str = "FINISHED") -> None:
        import shutil

        shutil.rmtree(self.run_dir, ignore_errors=True)

    def logged_steps(self, key: str) -> set[int]:
        return set()

    def log_model(self, export_dir, data_shape, registered_name):
        return None, None

    def _ignore(self, *args, **kwargs) -> None:
        return None

    log_params = log_metrics = set_tags = log_dict = log_figures = save_record = log_dataset = log_artifacts = log_text = _ignore
