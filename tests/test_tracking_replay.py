"""The MLflow journal's replay (`vae-tf sync-mlflow`, a training's own retries) against what a
walk through outages found: a sync run beside the training, a replay killed half-way, a retry into
another store, MLflow errors that are outages in disguise, and a missing local file."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from training.tracking import TrackedRun, hold_run_lock, is_transient, release_run_lock, sync_run
from vae_tf.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def _offline_run(tmp_path, steps: int = 5) -> Path:
    """A run whose every call went to its journal (its store was unreachable all along)."""
    run = TrackedRun("http://127.0.0.1:9/", run_root=tmp_path / "runs", experiment="x", retry_seconds=1e9,
                     stream=open(os.devnull, "w"))
    run.online = False
    run.run_dir = tmp_path / "runs" / "offline-test"
    run.run_dir.mkdir(parents=True)
    run.save_record()
    for step in range(steps):
        run._append("log_metrics", {"metrics": {"loss": float(step)}, "step": step, "timestamp": 1000 + step})
    release_run_lock(run.run_dir)
    return run.run_dir


@contextlib.contextmanager
def _held_elsewhere(run_dir: Path):
    """Another process holding ``run_dir``'s lock, as a training does; yields that process."""
    holder = subprocess.Popen([sys.executable, "-c", (
        "import time; from pathlib import Path; from training.tracking import hold_run_lock; "
        f"hold_run_lock(Path({str(run_dir)!r}), 'busy'); print('held', flush=True); time.sleep(60)")],
        cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        yield holder
    finally:
        holder.kill()
        holder.wait()


def test_outages_in_disguise_are_transient_and_a_missing_file_is_not():
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    from vae_tf.errors import ModelNotFoundError

    server = MlflowException("server down", error_code="TEMPORARILY_UNAVAILABLE")
    try:  # MLflow's set_logged_model_tags: a failed look-up raised again as a bad parameter
        try:
            raise server
        except MlflowException as e:
            raise MlflowException.invalid_parameter_value("Failed to get logged model with ID m-1.") from e
    except MlflowException as rewrapped:
        assert is_transient(rewrapped)
    assert not is_transient(MlflowException("Failed to get logged model", error_code=INVALID_PARAMETER_VALUE))
    # a proxy's page, not MLflow's JSON error
    proxy = MlflowException("API request to endpoint /api/2.0/mlflow/runs/get failed with error code 404 != 200. "
                            "Response body: '<html>Not Found</html>'", error_code=INVALID_PARAMETER_VALUE)
    assert is_transient(proxy)
    # a database constraint behind a bad parameter is the caller's mistake, not an outage
    try:
        try:
            raise type("IntegrityError", (Exception,), {"__module__": "sqlalchemy.exc"})("UNIQUE constraint failed")
        except Exception as e:
            raise MlflowException("Changing param values is not allowed", error_code=INVALID_PARAMETER_VALUE) from e
    except MlflowException as mistake:
        assert not is_transient(mistake)
    assert not is_transient(ModelNotFoundError("no SavedModel at /gone/1"))
    assert not is_transient(FileNotFoundError("figures/kl.png"))
    assert is_transient(ConnectionRefusedError("refused"))


def test_sync_is_refused_while_another_process_trains_the_run(tmp_path):
    """`vae-tf sync-mlflow` beside the training replayed the journal, rewrote it without the lines
    the training appended meanwhile (134 of 300 epochs lost) and ended the run as FINISHED."""
    run_dir = _offline_run(tmp_path)
    with _held_elsewhere(run_dir) as holder:
        with pytest.raises(ConfigError, match=rf"^run {run_dir} is still in use by process {holder.pid}: a training "
                                              "sends its buffered logging itself .*run vae-tf sync-mlflow after"):
            sync_run(run_dir, tracking_uri=f"sqlite:///{tmp_path / 'm.db'}")
        # and a second training (a --resume) of the same run is refused likewise
        with pytest.raises(ConfigError, match=rf"^run {run_dir} is in use by process {holder.pid}"):
            TrackedRun(f"sqlite:///{tmp_path / 'm.db'}", run_root=run_dir.parent, experiment="x",
                       run_dir=run_dir).start()
    assert (run_dir / "mlflow_journal.jsonl").exists()  # nothing was sent, nothing rewritten
    assert sync_run(run_dir, tracking_uri=f"sqlite:///{tmp_path / 'm.db'}")[0] == 5  # the lock died with it


@pytest.mark.slow
def test_a_replay_killed_half_way_resends_nothing_it_had_sent(tmp_path):
    """The journal was rewritten only once the replay loop ended: a replay killed (SIGKILL) after a
    model version was created sent the whole journal again, and the model was registered twice."""
    run_dir = _offline_run(tmp_path, steps=6)
    store = tmp_path / "m.db"
    script = (
        "import os, signal; from pathlib import Path; from training import tracking\n"
        "real = tracking.TrackedRun._apply\n"
        "count = [0]\n"
        "def apply(self, op, args):\n"
        "    count[0] += 1\n"
        "    if count[0] == 4: os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return real(self, op, args)\n"
        "tracking.TrackedRun._apply = apply\n"
        f"tracking.sync_run(Path({str(run_dir)!r}), tracking_uri='sqlite:///{store}')\n")
    killed = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert json.loads((run_dir / "mlflow_journal.sent").read_text()) == {"uri": f"sqlite:///{store}", "sent": 3}
    applied = []
    real = TrackedRun._apply

    def counting(self, op, args):
        applied.append(args.get("step"))
        return real(self, op, args)

    TrackedRun._apply = counting
    try:
        sent, _ = sync_run(run_dir, tracking_uri=f"sqlite:///{store}")
    finally:
        TrackedRun._apply = real
    assert sent == 3 and applied == [3, 4, 5]
    assert not (run_dir / "mlflow_journal.jsonl").exists() and not (run_dir / "mlflow_journal.sent").exists()
    # the killed try's run is the one the retry finished: one run in the other store, every step once
    client = MlflowClient(tracking_uri=f"sqlite:///{store}")
    runs = client.search_runs([client.get_experiment_by_name("x").experiment_id])
    assert len(runs) == 1
    assert [m.step for m in client.get_metric_history(runs[0].info.run_id, "loss")] == list(range(6))
    assert json.loads((run_dir / "run.json").read_text())["synced_to"] == {f"sqlite:///{store}": runs[0].info.run_id}


def test_a_count_left_by_a_killed_removal_does_not_skip_a_new_journal(tmp_path):
    run_dir = _offline_run(tmp_path, steps=2)
    (run_dir / "mlflow_journal.jsonl").unlink()  # killed between removing the journal and the count
    (run_dir / "mlflow_journal.sent").write_text(json.dumps({"uri": "http://127.0.0.1:9/", "sent": 2}))
    run = TrackedRun("http://127.0.0.1:9/", run_root=run_dir.parent, experiment="x", run_dir=run_dir)
    run._append("log_metrics", {"metrics": {"loss": 7.0}, "step": 7, "timestamp": 1})
    assert [e["args"]["step"] for e in run.journal()] == [7]


def test_a_replayed_model_that_mlflow_took_before_the_outage_is_registered_once(tmp_path, monkeypatch):
    """A server error after `log_model` had created the version (MLflow then failed a look-up of
    the logged model) buffered the whole call; its replay logged the model again and registered
    a second version of one training."""
    from serving.testing import export_tiny_model

    monkeypatch.chdir(tmp_path)
    export = export_tiny_model(tmp_path / "models", "vae")
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    run = TrackedRun(uri, run_root=tmp_path / "runs", experiment="x", retry_seconds=0).start()
    model_uri, version = run.log_model(export, (8, 8, 1), "vae")
    assert version is not None
    # the same call, buffered as if the server had failed after taking it, then replayed
    run._append("log_model", {"export_dir": str(export.resolve()), "data_shape": [8, 8, 1], "registered_name": "vae"})
    run.online = False
    assert run.flush()
    client = MlflowClient(tracking_uri=uri)
    assert [v.version for v in client.search_model_versions("name = 'vae'")] == [version]
    # taken but not registered: the replay registers it, once, from the model already logged
    other = export_tiny_model(tmp_path / "models", "vae", seed=1)
    assert mlflow.active_run().info.run_id == run.run_id  # the model lands in the run, unregistered
    from training.tracking import _log_pyfunc, logged_before

    taken = _log_pyfunc(None, other, None)
    run._append("log_model", {"export_dir": str(other.resolve()), "data_shape": [8, 8, 1], "registered_name": "vae"})
    run.online = False
    assert run.flush()
    versions = client.search_model_versions("name = 'vae'")
    assert sorted(int(v.version) for v in versions) == [1, 2]
    second = {int(v.version): v for v in versions}[2]
    assert second.model_id == taken.model_id or second.source == taken.model_uri
    run._append("log_model", {"export_dir": str(other.resolve()), "data_shape": [8, 8, 1], "registered_name": "vae"})
    run.online = False
    assert run.flush() and len(client.search_model_versions("name = 'vae'")) == 2  # found by its source now
    assert logged_before(tmp_path / "models" / "vae" / "9", "vae") is None  # an export never logged
    run.finish()


@pytest.mark.slow
def test_a_server_that_hangs_holds_a_retry_for_one_quick_request_not_mlflows_timeouts(tmp_path, monkeypatch):
    """A tracking server that accepted connections and never answered held every replay for
    MLflow's timeout and retries on the training thread (~9 s of every 11 s with a 2 s timeout)."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)  # connections complete in the backlog; no request is ever answered
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    uri = f"http://127.0.0.1:{listener.getsockname()[1]}"
    run = TrackedRun(uri, run_root=tmp_path / "runs", experiment="x", retry_seconds=0, stream=open(os.devnull, "w"))
    run.run_dir = tmp_path / "runs" / "offline-hang"
    run.run_dir.mkdir(parents=True)
    replays = []
    monkeypatch.setattr(TrackedRun, "flush", lambda self: replays.append(1) or False)
    try:
        started = time.monotonic()
        run.log_metrics({"loss": 1.0}, step=0)
        waited = time.monotonic() - started
    finally:
        listener.close()
        release_run_lock(run.run_dir)
    assert replays == [] and run.pending() == 1  # no replay against a server that does not answer
    assert waited < 30  # the probe's 3 s, not MLflow's 30 s timeout x 3 tries (a bound, not a timing)


def test_a_count_of_a_replay_into_another_store_does_not_skip_entries_for_this_one(tmp_path):
    """The count said how many entries were sent, not where: after a sync into store B failed
    half-way, a sync into the run's own store skipped what only B had received."""
    run_dir = _offline_run(tmp_path, steps=4)
    (run_dir / "mlflow_journal.sent").write_text(json.dumps({"uri": "sqlite:///elsewhere.db", "sent": 3}))
    mine = TrackedRun("http://127.0.0.1:9/", run_root=run_dir.parent, experiment="x", run_dir=run_dir)
    assert [e["args"]["step"] for e in mine.journal()] == [0, 1, 2, 3]
    there = TrackedRun("sqlite:///elsewhere.db", run_root=run_dir.parent, experiment="x", run_dir=run_dir)
    assert [e["args"]["step"] for e in there.journal()] == [3]


def test_a_login_refused_is_a_one_line_error_not_an_outage(tmp_path, monkeypatch):
    """401/403 pages (MLflow's basic-auth server answers in plain text) were taken for an outage
    once proxy pages counted as one: a wrong password trained for hours offline."""
    from mlflow.protos.databricks_pb2 import PERMISSION_DENIED, UNAUTHENTICATED

    for status, code in ((401, UNAUTHENTICATED), (403, PERMISSION_DENIED)):
        assert not is_transient(MlflowException(
            f"API request to endpoint /api/2.0/mlflow/experiments/get-by-name failed with error code {status} != 200. "
            "Response body: 'You are not authenticated.'", error_code=code))

    def refused(*args, **kwargs):
        raise MlflowException("API request to endpoint /api/2.0/mlflow/experiments/get-by-name failed with error "
                              "code 401 != 200. Response body: 'You are not authenticated.'", error_code=UNAUTHENTICATED)

    monkeypatch.setattr("training.tracking.start_run", refused)
    run = TrackedRun(f"sqlite:///{tmp_path / 'm.db'}", run_root=tmp_path / "runs", experiment="x")
    with pytest.raises(ConfigError, match=r"^MLflow at sqlite:///.* refused the run \(MlflowException: API request "
                                          r".*error code 401 .*\); check mlflow.tracking_uri and its credentials$"):
        run.start()


def test_a_start_that_fails_leaves_the_run_directory_unlocked(tmp_path, monkeypatch):
    """A notebook whose run_training(resume=...) failed at start kept the run locked until the
    kernel restarted."""
    run_dir = _offline_run(tmp_path)

    from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST

    def deleted(*args, **kwargs):
        raise MlflowException("Run 'abc' not found", error_code=RESOURCE_DOES_NOT_EXIST)

    monkeypatch.setattr("training.tracking.start_run", deleted)
    run = TrackedRun(f"sqlite:///{tmp_path / 'm.db'}", run_root=run_dir.parent, experiment="x", run_id="abc",
                     run_dir=run_dir)
    with pytest.raises(ConfigError, match="refused the run"):
        run.start()
    holder = subprocess.run([sys.executable, "-c", (
        "from pathlib import Path; from training.tracking import hold_run_lock; "
        f"hold_run_lock(Path({str(run_dir)!r}), 'busy {{holder}}'); print('free')")], cwd=REPO, capture_output=True,
        text=True, timeout=120)
    assert holder.stdout.strip() == "free", holder.stderr[-2000:]


def test_a_bare_resume_passes_over_a_run_that_is_training_now(tmp_path):
    """The newest unfinished run is the one still training (its record is rewritten every epoch):
    a bare --resume picked it, loaded the data, built the model, then was refused."""
    from training.resume import find_run

    root = tmp_path / "runs"
    for name in ("crashed", "live"):
        (root / name).mkdir(parents=True)
        (root / name / "run.json").write_text(json.dumps({"status": "running", "name": "vae", "config": {}}))
        time.sleep(0.05)  # "live" is the newer record
    with _held_elsewhere(root / "live") as holder:
        assert find_run(root, name="vae")[0].name == "crashed"
        with pytest.raises(ConfigError, match=rf"^run live is training now \(process {holder.pid}\); wait for it"):
            find_run(root, "live")
        (root / "crashed" / "run.json").write_text(json.dumps({"status": "finished", "name": "vae", "config": {}}))
        with pytest.raises(ConfigError, match=rf"^the unfinished run\(s\) in {root}/ are training now: live "
                                              rf"\(process {holder.pid}\); wait for one to end"):
            find_run(root, name="vae")
    assert find_run(root, name="vae")[0].name == "live"  # free again once its process is gone


def test_a_sync_whose_earlier_run_elsewhere_is_gone_says_so_and_makes_a_new_one_next_time(tmp_path):
    """A `synced_to` run deleted from the other store (or the store reset) made every retry say
    "still unreachable; try again later"."""
    run_dir = _offline_run(tmp_path, steps=2)
    store = f"sqlite:///{tmp_path / 'other.db'}"
    record = json.loads((run_dir / "run.json").read_text())
    (run_dir / "run.json").write_text(json.dumps({**record, "synced_to": {store: "0123456789abcdef0123456789abcdef"}}))
    with pytest.raises(ConfigError, match=rf"^MLflow at {store} no longer has run 0123456789abcdef0123456789abcdef, "
                                          r"which an earlier sync made there .*; run the command again"):
        sync_run(run_dir, tracking_uri=store)
    assert "synced_to" not in json.loads((run_dir / "run.json").read_text()) or \
        store not in json.loads((run_dir / "run.json").read_text())["synced_to"]
    assert sync_run(run_dir, tracking_uri=store)[0] == 2
