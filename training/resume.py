"""Finding the run a ``vae-tf train --resume`` continues, and the config it continues with.

Every training run keeps ``<train.run_dir>/<key>/run.json`` (written atomically): its MLflow
tracking URI, experiment and run id, its status (``running``, ``finished``, ``failed``, or
``interrupted`` after Ctrl-C) and the resolved config it started with. ``key`` is the MLflow run
id (``offline-<hex>`` when MLflow was unreachable at the start). A resume takes the run's own config; only the settings below may be
changed with ``--set`` (anything else would make the checkpoint a different model or data).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

from training.config import Config, from_dict, parse_override, set_path
from training.tracking import RUN_RECORD_NAME
from vae_tf.errors import ConfigError

#: Settings a resumed run may change: how long and how it trains from here, not what it trains.
RESUMABLE_KEYS = frozenset({
    "train.epochs", "train.verbose", "train.learning_rate", "train.clip_norm", "train.checkpoint_every_steps",
    "train.checkpoints_to_keep", "train.early_stopping_patience", "mlflow.retry_seconds", "mlflow.log_figures",
})


def _records(run_root: Path) -> list[tuple[Path, dict]]:
    found = []
    for path in sorted(run_root.glob(f"*/{RUN_RECORD_NAME}")):
        try:
            found.append((path.parent, json.loads(path.read_text())))
        except (OSError, json.JSONDecodeError):
            continue  # not a run directory of ours
    return found


def find_run(run_root: str | Path, key: str | None = None, name: str | None = None,
             tracking_uri: str | None = None) -> tuple[Path, dict]:
    """``(run_dir, record)`` of the run to resume: the one named by ``key`` (its directory name
    or its MLflow run id), else the most recently active unfinished run (of model ``name``).
    ``tracking_uri`` (the config's, None for the default) is read only to say what a ``key`` not
    found here is, when it is an MLflow run of a local store."""
    from training.tracking import run_in_use

    run_root = Path(run_root)
    records = _records(run_root)
    if key:
        for run_dir, record in records:
            if key in (run_dir.name, record.get("mlflow_run_id")):
                if isinstance(record.get("config"), dict):
                    holder = run_in_use(run_dir)
                    if holder:  # said before the data loads and the model is built
                        raise ConfigError(f"run {key} is training now ({holder}); wait for it to end, or stop it, "
                                          "then resume it")
                    return run_dir, record
                # A run directory without a config: a suite's parent keeps its MLflow journal there.
                raise ConfigError(_not_resumable(key, run_root, tracking_uri) or (
                    f"run {key} in {run_dir} is not a training run (its run.json has no config: a suite's parent "
                    "run, or a run of an older vae-tf); there is nothing to resume"))
        raise ConfigError(_not_resumable(key, run_root, tracking_uri) or (
            f"no run {key!r} in {run_root}/ to resume; list them with `ls {run_root}` "
            "(or set train.run_dir to where the run was started)"))
    unfinished = [(d, r) for d, r in records if r.get("status") != "finished" and (name is None or r.get("name") == name)]
    # A run still training (its record, rewritten every epoch, is the newest) is no run to resume.
    live = {str(d): holder for d, _ in unfinished for holder in [run_in_use(d)] if holder}
    if live and len(live) == len(unfinished):
        shown = ", ".join(f"{Path(d).name} ({h})" for d, h in list(live.items())[:3])
        raise ConfigError(f"the unfinished run(s) in {run_root}/ are training now: {shown}; wait for one to end, or "
                          "name another with --resume RUN_ID")
    unfinished = [(d, r) for d, r in unfinished if str(d) not in live]
    if not unfinished:
        what = f" of model {name!r}" if name else ""
        others = sorted({str(r.get("name")) for d, r in records if r.get("status") != "finished" and r.get("name")})
        if others:  # the bare --resume looks for the --config's model: say whose runs are there
            raise ConfigError(f"no unfinished run{what} in {run_root}/ to resume; the unfinished runs there are of "
                              f"model(s) {', '.join(map(repr, others))}: give the --config that started the run (or "
                              f"--set name={others[0]}), or name it with --resume RUN_ID")
        finished = [(d, r) for d, r in records if r.get("status") == "finished" and isinstance(r.get("config"), dict)
                    and (name is None or r.get("name") == name)]
        if finished:  # going on longer: a finished run is resumed only when it is named
            run_dir, record = max(finished, key=lambda item: (item[0] / RUN_RECORD_NAME).stat().st_mtime)
            run_id = record.get("mlflow_run_id") or run_dir.name
            where = "" if run_root == Path("runs") else f" --set train.run_dir={run_root}"
            raise ConfigError(f"no unfinished run{what} in {run_root}/ to resume; a finished run goes on only when "
                              f"named, e.g. the latest: vae-tf train --resume {run_id}{where} --set train.epochs=N")
        raise ConfigError(f"no unfinished run{what} in {run_root}/ to resume; start one with `vae-tf train` "
                          "or name a run with --resume RUN_ID")
    return max(unfinished, key=lambda item: (item[0] / RUN_RECORD_NAME).stat().st_mtime)


def _not_resumable(key: str, run_root: Path, tracking_uri: str | None) -> str | None:
    """Why the MLflow run ``key`` cannot be resumed from ``run_root`` when it is a run of a local
    store that is no training run (a suite's parent, an evaluation) or one trained in another
    ``train.run_dir``; None when it is none of these or cannot be looked up."""
    run = _local_mlflow_run(key, tracking_uri)
    if run is None:
        return None
    tags, params = run.data.tags, run.data.params
    if tags.get("vae_tf.suite_parent") == "true":
        suite, size = tags.get("vae_tf.suite", "SUITE"), tags.get("vae_tf.suite_size", "quick")
        command = tags.get("vae_tf.suite_command") or (  # a suite of one's own is named by its file
            f"vae-tf compare --suite {suite}" + (" --quick" if size == "quick" else f" --size {size}"))
        return (f"run {key} is the parent run of suite {suite!r} ({size}), which has no checkpoint of its own; "
                f"resume the suite by running it again: `{command}` (finished children are reused, an "
                "interrupted one goes on from its checkpoint)")
    if tags.get("vae_tf.kind") == "evaluation":
        return f"run {key} is an evaluation (vae-tf evaluate), not a training run; there is nothing to resume"
    elsewhere = params.get("train.run_dir")
    if elsewhere and Path(elsewhere).resolve() != run_root.resolve():
        return (f"run {key} was trained with train.run_dir={elsewhere}, not in {run_root}/: resume it with "
                f"--set train.run_dir={elsewhere} (from the directory it was started in)")
    return None


def _local_mlflow_run(key: str, tracking_uri: str | None):
    """The MLflow run ``key`` of a local (SQLite or file) store that exists, else None: a remote
    server is not asked (an unreachable one would make an error message wait for its retries)."""
    import re

    from training.tracking import resolve_tracking_uri

    try:
        uri = resolve_tracking_uri(tracking_uri)
    except ConfigError:
        return None
    if not re.fullmatch(r"[0-9a-f]{32}", key):
        return None
    if uri.startswith("sqlite:///"):
        store = Path(uri[len("sqlite:///"):])
    elif uri.startswith("file:") or "://" not in uri:
        store = Path(uri[len("file:"):] if uri.startswith("file:") else uri)
    else:
        return None
    if not store.exists():  # MLflow would create an empty store
        return None
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        return MlflowClient(tracking_uri=uri).get_run(key)
    except MlflowException:
        return None


_MISSING = object()


def _value_at(tree: dict, keys: list[str]):
    """The value at a dotted path of a config tree, or ``_MISSING``."""
    for key in keys:
        if not isinstance(tree, dict) or key not in tree:
            return _MISSING
        tree = tree[key]
    return tree


def resumed_config(record: dict, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """The run's own config with ``overrides`` (``key=value``) applied, which must be among
    :data:`RESUMABLE_KEYS`."""
    if not isinstance(record.get("config"), dict):
        raise ConfigError("the run's run.json has no config (started by an older vae-tf?); it cannot be resumed")
    tree = copy.deepcopy(record["config"])  # the record stays the run's own
    for text in overrides:
        keys, value = parse_override(text)
        dotted = ".".join(keys)
        if dotted not in RESUMABLE_KEYS:
            if _value_at(tree, keys) == value:  # the run's own value (e.g. --strategy none): no change
                continue
            import difflib

            close = difflib.get_close_matches(dotted, sorted(RESUMABLE_KEYS), n=1, cutoff=0.8)
            if close and _value_at(tree, keys) is _MISSING:  # a typo of a key that may change
                raise ConfigError(f"--set {dotted}: no such setting; did you mean {close[0]}?")
            given = "--strategy (train.strategy)" if dotted == "train.strategy" else f"--set {dotted}"
            raise ConfigError(f"{given} cannot change when resuming (the run resumes as it ran: its own model, "
                              f"data and strategy); changeable: {', '.join(sorted(RESUMABLE_KEYS))}")
        set_path(tree, keys, value, text)
    config = from_dict(tree)
    ran = record.get("last_logged_epoch")
    if record.get("status") == "finished" and isinstance(ran, int) and ran + 1 >= config.train.epochs:
        run = record.get("mlflow_run_id") or "RUN_ID"
        raise ConfigError(f"run {run} already finished its {ran + 1} epoch(s) (train.epochs={config.train.epochs}); "
                          f"to train it on, raise train.epochs: --resume {run} --set train.epochs={ran + 2}")
    return config
