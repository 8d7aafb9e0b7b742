"""Crash-safe training (issue #8): kill -9 and resume, NaN stops, MLflow faults.

The kill test runs real `vae-tf train` processes: an uninterrupted reference run, and a victim
killed with SIGKILL after it has checkpointed inside its second epoch, then resumed with
``--resume``. With deterministic ops the resumed run must reproduce the reference exactly: same
per-epoch metric history in MLflow (each epoch once), same controller state, same test metrics.
"""

from __future__ import annotations

import collections

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
import tensorflow as tf
import yaml
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from tests.conftest import assert_one_line, mlflow_store
from training.callbacks import TrainingProgress, checkpoint_for
from training.config import from_dict
from training.tracking import TrackedRun, sync_run

SMALL = {
    "data": {"name": "digits"},
    "model": {"latent": {"family": "gaussian", "latent_dim": 4}, "network": {"kind": "mlp", "hidden": [32]}},
    "mlflow": {"log_figures": False, "register": False},
}


def _env(tmp_path: Path) -> dict:
    # MLflow's setters (used by earlier tests in this process) export MLFLOW_* variables: drop them.
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    return {**env, "MLFLOW_TRACKING_URI": mlflow_store(tmp_path), "TF_CPP_MIN_LOG_LEVEL": "2",
            "PYTHONPATH": str(Path(__file__).resolve().parents[1])}


def start_training(tmp_path, *args, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "vae_tf_cli", "train", "-c", "cfg.yaml", *args], cwd=tmp_path,
                            env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


def _latest_checkpoint_number(run_root: Path) -> int | None:
    for index in run_root.glob("*/checkpoints/checkpoint"):
        line = index.read_text().splitlines()[0]  # model_checkpoint_path: "ckpt-56"
        return int(line.rsplit("-", 1)[1].rstrip('"'))
    return None


def kill_after_checkpoint(victim: subprocess.Popen, run_root: Path, after_step: int, timeout: float = 400,
                          mid_epoch_of: int | None = None) -> int:
    """SIGKILL ``victim`` (a `vae-tf train` process) as soon as a checkpoint past ``after_step``
    exists under ``run_root`` (with ``mid_epoch_of``, the epoch's steps: one inside an epoch, not
    at its end, however late the poll sees it); returns that checkpoint's step. Fails the test when
    the victim finished first."""
    deadline = time.monotonic() + timeout
    killed_at = None
    while time.monotonic() < deadline and victim.poll() is None:
        number = _latest_checkpoint_number(run_root)
        if number is not None and number > after_step and (mid_epoch_of is None or number % mid_epoch_of):
            victim.send_signal(signal.SIGKILL)
            killed_at = number
            break
        time.sleep(0.02)
    victim.wait()
    assert killed_at is not None, f"the victim finished before it could be killed:\n{victim.stdout.read()[-2000:]}"
    assert victim.returncode == -signal.SIGKILL
    return killed_at


def metric_history(client, run_id, key):
    return [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp))]


@pytest.mark.slow
def test_kill_9_mid_epoch_then_resume_continues_the_same_run_exactly(tmp_path):
    steps_per_epoch = 24  # 1437 training digits / 64 = 23 batches, rounded up to whole groups of 2
    config = {**SMALL, "name": "victim",
              "objective": {"name": "control_vae", "options": {"kl_set_point": 5.0, "kp": 0.01, "ki": 0.001}},
              "train": {"epochs": 4, "batch_size": 64, "steps_per_execution": 2, "checkpoint_every_steps": 4,
                        "deterministic": True, "verbose": 0}}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(config))

    # Two processes creating one new SQLite store race in MLflow's schema migration: create it first.
    MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}").search_experiments()
    reference = start_training(tmp_path, "--set", "name=reference", "--set", "train.run_dir=reference_runs")
    victim = start_training(tmp_path)
    killed_at = kill_after_checkpoint(victim, tmp_path / "runs", steps_per_epoch, mid_epoch_of=steps_per_epoch)
    assert killed_at % steps_per_epoch, killed_at  # inside an epoch: the resume starts mid-epoch
    reference_out = reference.communicate(timeout=300)[0]
    assert reference.returncode == 0, reference_out[-3000:]

    resumed = start_training(tmp_path, "--resume")
    out = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, out[-3000:]
    assert "resuming from" in out

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = {r.data.params["name"]: r for r in client.search_runs([client.get_experiment_by_name("vae-tf").experiment_id])}
    # The resume continued the victim's run, no third run (the outputs say why when not).
    assert set(runs) == {"reference", "victim"}, f"reference:\n{reference_out[-2000:]}\nresumed:\n{out[-2000:]}"
    ref, vic = runs["reference"], runs["victim"]
    assert vic.info.status == "FINISHED" and vic.data.tags["vae_tf.resumed_from"].endswith(f"ckpt-{killed_at}")
    for key in ("loss", "elbo", "kl", "beta", "kl_smoothed", "pi_integral", "val_elbo"):
        ours, theirs = metric_history(client, vic.info.run_id, key), metric_history(client, ref.info.run_id, key)
        assert [s for s, _ in ours] == [0, 1, 2, 3], f"{key}: lost or duplicated epochs {ours}"
        np.testing.assert_allclose([v for _, v in ours], [v for _, v in theirs], rtol=1e-6, atol=1e-7, err_msg=key)
    for key in ("test_elbo", "test_kl", "test_beta", "epochs_run"):
        assert vic.data.metrics[key] == pytest.approx(ref.data.metrics[key], rel=1e-6), key
    record = json.loads(next((tmp_path / "runs").glob("*/run.json")).read_text())
    assert record["status"] == "finished" and Path(record["export_dir"]).is_dir()


def _in_process_config(tmp_path, **train):
    return from_dict({**SMALL, "name": "inproc",
                      "train": {"epochs": 3, "verbose": 0, "run_dir": str(tmp_path / "runs"), **train},
                      "export": {"base_dir": str(tmp_path / "models")},
                      "mlflow": {**SMALL["mlflow"], "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}})


def test_a_nan_loss_stops_with_the_step_and_the_last_good_checkpoint(tmp_path, monkeypatch):
    from training.train import run_training
    from vae_tf.errors import TrainingDivergedError
    from vae_tf.models.vae import VAE

    honest = VAE.objective_loss

    def diverging(self, terms):  # the loss of step 31 on (train_steps counts from 0) is NaN
        return tf.where(self.train_steps >= 30, tf.constant(np.nan, tf.float32), honest(self, terms))

    monkeypatch.setattr(VAE, "objective_loss", diverging)
    config = _in_process_config(tmp_path, checkpoint_every_steps=8, steps_per_execution=1)
    with pytest.raises(TrainingDivergedError) as caught:
        run_training(config)
    message = str(caught.value)
    assert_one_line(message)
    assert "loss became nan at step 31 (epoch 2)" in message and "ckpt-24" in message and "--resume" in message

    client = MlflowClient(tracking_uri=config.mlflow.tracking_uri)
    run = client.search_runs([client.get_experiment_by_name("vae-tf").experiment_id])[0]
    assert run.info.status == "FAILED" and "TrainingDivergedError" in run.data.tags["error"]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [0]  # epoch 2 never finished
    assert not (tmp_path / "models").exists()  # no export of a diverged model

    # The last good checkpoint is the step-24 one, and it restores finite weights.
    checkpoint_dir = tmp_path / "runs" / run.info.run_id / "checkpoints"
    assert tf.train.latest_checkpoint(str(checkpoint_dir)).endswith("ckpt-24")
    monkeypatch.setattr(VAE, "objective_loss", honest)
    from training.train import build_model, prepare_data

    data = prepare_data(config)
    model = build_model(config, data.data_shape, 23)
    model.optimizer.build(model.trainable_variables)
    progress = TrainingProgress()
    checkpoint_for(model, progress=progress).restore(tf.train.latest_checkpoint(str(checkpoint_dir))).expect_partial()
    assert int(model.train_steps.numpy()) == 24 and (progress.epoch, progress.step_in_epoch) == (1, 1)
    assert all(np.isfinite(v.numpy()).all() for v in model.trainable_variables)
    record = json.loads((checkpoint_dir.parent / "run.json").read_text())
    assert record["status"] == "failed" and "nan" in record["error"]


def test_weights_that_diverge_end_in_the_nan_message_with_validation_data_too(tmp_path):
    """Real divergence (the weights themselves become NaN, not only a forced loss) with the
    default validation split: the epoch's collapse diagnostics encoded the validation data with
    NaN weights and the run ended in "error: means contains NaN or Inf; check the encoder
    outputs". Before any checkpoint the message says to train again, not to resume from "none"."""
    from training.train import run_training
    from vae_tf.errors import TrainingDivergedError

    config = _in_process_config(tmp_path, learning_rate=1e6, steps_per_execution=1)
    config = from_dict({**config.model_dump(), "model": {**config.model.model_dump(),
                                                         "likelihood": {"name": "gaussian_learned"}}})
    assert config.data.val_fraction > 0
    with pytest.raises(TrainingDivergedError) as caught:
        run_training(config)
    message = str(caught.value)
    assert_one_line(message)
    assert re.match(r"training stopped: the loss became (nan|inf|-inf) at step \d+ ", message), message
    assert ("(epoch 1), before the first checkpoint; train again with a lower --set train.learning_rate=... or with "
            "--set train.clip_norm=..., or see docs/reliability.md") in message
    assert "resume" not in message


@pytest.mark.slow
def test_a_resume_of_a_run_stopped_before_its_first_checkpoint_says_it_starts_again(tmp_path, capsys):
    """It started again from epoch 1 in the same MLflow run without a word."""
    from training.train import run_training
    from vae_tf.errors import TrainingDivergedError

    config = _in_process_config(tmp_path, learning_rate=1e6, steps_per_execution=1)
    config = from_dict({**config.model_dump(), "model": {**config.model.model_dump(),
                                                         "likelihood": {"name": "gaussian_learned"}}})
    with pytest.raises(TrainingDivergedError, match="before the first checkpoint"):
        run_training(config)
    capsys.readouterr()
    result = run_training(config, resume=True, overrides=("train.learning_rate=0.001",))  # a rate that trains
    err = capsys.readouterr().err
    assert (f"resuming run {result.run_id}: it stopped before its first checkpoint, so training starts again from "
            "epoch 1 (in the same MLflow run)") in err
    assert "resuming from" not in err and len(result.history["loss"]) == config.train.epochs


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


@pytest.mark.slow
def test_a_step_xla_cannot_compile_is_a_one_line_error_and_trains_without_xla(tmp_path, monkeypatch):
    """With XLA on, a training step XLA cannot compile (here a string op in the loss: XLA's CPU
    backend has no kernel for it; on an H200 it was the conv model under mixed precision) stops
    the run with one line naming TensorFlow's cause and `train.jit_compile=false`; with that
    setting the same model trains."""
    from training.train import run_training
    from vae_tf.errors import ConfigError
    from vae_tf.models.vae import VAE

    honest = VAE.objective_loss

    def with_a_string_op(self, terms):  # AsString: fine in TensorFlow, no XLA kernel
        return honest(self, terms) + 0.0 * tf.cast(tf.strings.length(tf.strings.as_string(self.train_steps)), tf.float32)

    monkeypatch.setattr(VAE, "objective_loss", with_a_string_op)
    config = _in_process_config(tmp_path, jit_compile=True, epochs=1)
    with pytest.raises(ConfigError) as caught:
        run_training(config)
    message = str(caught.value)
    assert_one_line(message)
    assert message.startswith("XLA could not compile the training step (train.jit_compile=true: "
                              "InvalidArgumentError: Detected unsupported operations when trying to compile graph")
    assert "AsString" in message and message.endswith("train without XLA with --set train.jit_compile=false")
    client = MlflowClient(tracking_uri=config.mlflow.tracking_uri)
    run = client.search_runs([client.get_experiment_by_name("vae-tf").experiment_id])[0]
    assert run.info.status == "FAILED" and "XLA could not compile" in run.data.tags["error"]

    result = run_training(config.replace(train={"jit_compile": False}))
    assert result.export_dir.exists()


def test_fit_xla_guarded_passes_other_failures_through():
    """Only a compiler's failure before the first step becomes the XLA message: the same error
    without XLA, or after a step ran, is TensorFlow's own."""
    from training.train import fit_xla_guarded
    from vae_tf.errors import tensorflow_root_error

    class Model:
        def __init__(self, jit_compile, steps_first):
            self.jit_compile, self.steps_first = jit_compile, steps_first
            self.optimizer = type("Optimizer", (), {"iterations": tf.Variable(0, dtype=tf.int64)})()

        def fit(self):
            self.optimizer.iterations.assign_add(self.steps_first)
            raise tf.errors.InternalError(None, None, "Graph execution error:\n\nDetected at node x\n"
                                                      "  (0) INTERNAL:  Failed to compute symbolic tile\n")

    for jit_compile, steps_first in ((False, 0), (True, 1)):
        with pytest.raises(tf.errors.InternalError) as caught:
            fit_xla_guarded(Model(jit_compile, steps_first), "auto")
        assert tensorflow_root_error(caught.value) == "(0) INTERNAL:  Failed to compute symbolic tile"


@pytest.mark.slow
def test_unreachable_mlflow_does_not_stop_training_and_the_journal_replays(tmp_path, monkeypatch, capsys, caplog):
    from training.train import run_training

    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):  # MLflow's setters export them: restore after
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")  # one retry: urllib3 warns of it
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    config = _in_process_config(tmp_path, epochs=2)
    config.mlflow.tracking_uri = f"http://127.0.0.1:{_closed_port()}"
    config.mlflow.retry_seconds = 0.5
    result = run_training(config)
    assert (result.export_dir / "saved_model.pb").is_file() and len(result.history["loss"]) == 2

    err = capsys.readouterr().err
    assert err.count("is unreachable") == 1  # told once
    # ... and only by vae-tf: urllib3's "Retrying (Retry(total=0, ...)) after connection broken by ..."
    # warnings reached the terminal at the end of a run
    assert [r.getMessage()[:80] for r in caplog.records if r.name.startswith(("urllib3", "mlflow"))] == []
    assert "is still unreachable" in err and "vae-tf sync-mlflow" in err
    run_dir = next((tmp_path / "runs").glob("offline-*"))
    ops = [json.loads(line)["op"] for line in (run_dir / "mlflow_journal.jsonl").read_text().splitlines()]
    assert ops[0] == "log_params" and ops[-1] == "end_run" and ops.count("log_model") == 1

    # The journal goes to another store once one is reachable; nothing is sent twice.
    store = f"sqlite:///{tmp_path / 'later.db'}"
    sent, uri = sync_run(run_dir, tracking_uri=store)
    assert sent == len(ops) and uri == store
    assert not (run_dir / "mlflow_journal.jsonl").exists()
    client = MlflowClient(tracking_uri=store)
    run = client.search_runs([client.get_experiment_by_name("vae-tf").experiment_id])[0]
    assert run.info.status == "FINISHED" and run.data.params["train.epochs"] == "2"
    history = metric_history(client, run.info.run_id, "loss")
    assert [s for s, _ in history] == [0, 1]
    np.testing.assert_allclose([v for _, v in history], result.history["loss"], rtol=1e-6)
    assert "test_elbo" in run.data.metrics
    # The export, made while the run had no MLflow id, now names the run the replay created (vae-tf
    # evaluate links its evaluation to it), and so does the model logged from it.
    from vae_tf.export import load_model_info

    assert load_model_info(result.export_dir)["mlflow_run_id"] == run.info.run_id


def test_a_flaky_store_is_buffered_then_replayed_in_order(tmp_path, monkeypatch):
    """A locked SQLite file (MLflow: TEMPORARILY_UNAVAILABLE) for three calls: the calls wait in
    the journal and reach MLflow in their order once it answers; each metric step exactly once."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    messages = []

    class Stream:
        def write(self, text):
            messages.append(text)

    run = TrackedRun(uri, run_root=tmp_path / "runs", experiment="flaky", retry_seconds=0, stream=Stream()).start()
    real = mlflow.log_metrics
    failures = {"left": 3}

    def locked(*args, **kwargs):
        if failures["left"]:
            failures["left"] -= 1
            raise MlflowException("(sqlite3.OperationalError) database is locked", error_code="TEMPORARILY_UNAVAILABLE")
        return real(*args, **kwargs)

    monkeypatch.setattr(mlflow, "log_metrics", locked)
    for step in range(6):
        run.log_metrics({"loss": float(step)}, step=step)
    run.finish()
    monkeypatch.setattr(mlflow, "log_metrics", real)

    client = MlflowClient(tracking_uri=uri)
    assert metric_history(client, run.run_id, "loss") == [(s, float(s)) for s in range(6)]
    assert client.get_run(run.run_id).info.status == "FINISHED"
    assert sum("is unreachable" in m for m in messages) == 1 and any("reachable again" in m for m in messages)
    assert run.pending() == 0


def test_a_run_that_ends_with_its_end_in_the_journal_is_left_to_the_journal_not_to_mlflows_exit_hook(tmp_path,
                                                                                                     monkeypatch):
    """A run whose last calls (its end among them) are still in the journal when it finishes is
    no longer MLflow's active run: MLflow's exit hook (``mlflow.end_run()`` at interpreter exit)
    ended it as FINISHED (a failed run looked finished until the journal was sent; with the
    server down it spent its retries at exit), and a library caller's next ``mlflow.start_run()``
    failed with "already active". The replay later ends it with the status it had."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"

    class Stream:
        def write(self, text):
            pass

    run = TrackedRun(uri, run_root=tmp_path / "runs", experiment="down", retry_seconds=0, stream=Stream()).start()
    assert mlflow.active_run().info.run_id == run.run_id
    try:
        _journal_holds_the_end(run, uri, monkeypatch)
    finally:  # a failure here must not leave the run active for the file's next tests
        while mlflow.active_run() is not None:
            mlflow.end_run()


def _journal_holds_the_end(run, uri, monkeypatch):
    real = mlflow.log_metrics

    def down(*args, **kwargs):
        raise MlflowException("(sqlite3.OperationalError) database is locked", error_code="TEMPORARILY_UNAVAILABLE")

    monkeypatch.setattr(mlflow, "log_metrics", down)
    run.log_metrics({"loss": 1.0}, step=0)
    run.finish("FAILED")
    assert run.pending() == 2  # the metric and the end
    client = MlflowClient(tracking_uri=uri)
    assert mlflow.active_run() is None and mlflow.last_active_run().info.run_id == run.run_id
    mlflow.tracking.fluent._safe_end_run()  # what MLflow runs at interpreter exit
    assert client.get_run(run.run_id).info.status == "RUNNING"
    with mlflow.start_run(run_name="the caller's next run") as other:  # raised "Run ... is already active"
        assert other.info.run_id != run.run_id

    monkeypatch.setattr(mlflow, "log_metrics", real)
    sent, _ = sync_run(run.run_dir)
    assert sent == 2 and client.get_run(run.run_id).info.status == "FAILED"
    assert metric_history(client, run.run_id, "loss") == [(0, 1.0)]
    assert mlflow.active_run() is None


def test_a_mistake_is_not_mistaken_for_an_outage(tmp_path):
    """Errors that retrying would repeat (here a changed param value) are raised, not buffered."""
    run = TrackedRun(f"sqlite:///{tmp_path / 'mlflow.db'}", run_root=tmp_path / "runs", experiment="x").start()
    run.log_params({"a": 1})
    with pytest.raises(MlflowException):
        run.log_params({"a": 2})
    assert run.pending() == 0
    run.finish()


def test_a_dataset_logged_by_two_runs_at_once_links_both(tmp_path, monkeypatch):
    """Two runs logging one data set at the same moment race in MLflow's look-up-then-insert of
    the dataset row (seen with two training processes on one SQLite store): the loser's insert
    breaks the unique constraint. Here the other run's insert lands between our look-up and our
    insert; our run still gets the input, on the one shared dataset row."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = TrackedRun(uri, run_root=tmp_path / "runs", experiment="x").start()
    first.log_dataset(name="digits-train", source="sklearn", digest="abc", context="train")
    first.finish()
    real = mlflow.log_input
    calls = []

    def racing(dataset, **kwargs):
        calls.append(dataset.name)
        if len(calls) == 1:
            from mlflow.protos.databricks_pb2 import BAD_REQUEST  # what MLflow's SQL store raises

            raise MlflowException("(sqlite3.IntegrityError) UNIQUE constraint failed: datasets.experiment_id, "
                                  "datasets.name, datasets.digest", error_code=BAD_REQUEST)
        return real(dataset, **kwargs)

    monkeypatch.setattr(mlflow, "log_input", racing)
    second = TrackedRun(uri, run_root=tmp_path / "runs", experiment="x").start()
    second.log_dataset(name="digits-train", source="sklearn", digest="abc", context="train")
    second.finish()
    client = MlflowClient(tracking_uri=uri)
    for run in (first, second):
        inputs = client.get_run(run.run_id).inputs.dataset_inputs
        assert [(i.dataset.name, i.dataset.digest) for i in inputs] == [("digits-train", "abc")]
    assert calls == ["digits-train", "digits-train"]

    def broken(dataset, **kwargs):  # any other MLflow error is not taken for the race
        from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

        raise MlflowException("dataset name too long", error_code=INVALID_PARAMETER_VALUE)

    monkeypatch.setattr(mlflow, "log_input", broken)
    third = TrackedRun(uri, run_root=tmp_path / "runs", experiment="x").start()
    with pytest.raises(MlflowException, match="too long"):
        third.log_dataset(name="digits-train", source="sklearn", digest="abc", context="train")
    third.finish()


def test_a_run_lands_in_its_experiment_when_another_process_creates_it_first(tmp_path, monkeypatch):
    """Two `vae-tf train` processes started at once on a new store race to create the experiment.
    MLflow's set_experiment catches the loser's RESOURCE_ALREADY_EXISTS but then returns without
    making the experiment active, and start_run() put the loser's run in the Default experiment
    (a CI run of the kill -9 test found the victim's run missing from "vae-tf"). Here the other
    process's create lands between our look-up and our create."""
    import mlflow
    from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS
    from mlflow.tracking._tracking_service.client import TrackingServiceClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)  # set_experiment exports it; restored after
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(experiment_id="0")  # what an earlier run in this process left active
    real = TrackingServiceClient.create_experiment

    def raced(self, name, *args, **kwargs):
        real(self, name, *args, **kwargs)  # the other process wins ...
        raise MlflowException(f"Experiment(name={name}) already exists.", error_code=RESOURCE_ALREADY_EXISTS)

    monkeypatch.setattr(TrackingServiceClient, "create_experiment", raced)
    run = TrackedRun(uri, run_root=tmp_path / "runs", experiment="raced").start()
    run.finish()
    client = MlflowClient(tracking_uri=uri)
    raced_id = client.get_experiment_by_name("raced").experiment_id
    assert raced_id != "0"
    assert run.experiment_id == raced_id
    assert [r.info.run_id for r in client.search_runs([raced_id])] == [run.run_id]
    assert client.search_runs(["0"]) == []


def _printed(main, argv) -> str:
    """What ``main(argv)`` prints on stdout (it must exit 0)."""
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(argv) == 0
    return out.getvalue()


def test_resume_refuses_to_change_the_model_and_names_what_may_change(tmp_path):
    from training.resume import find_run, resumed_config
    from vae_tf.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        find_run(tmp_path / "runs")
    assert_one_line(str(caught.value))
    assert "no unfinished run" in str(caught.value)
    # Only finished runs of the model: going on longer needs the run named, and the line names the latest
    # (README's `--resume --set train.epochs=80` without an id failed with "start one with vae-tf train")
    for folder, run_id, age in [("old", "0a1b", 100), ("new", "9f8e", 0)]:
        (tmp_path / "runs" / folder).mkdir(parents=True)
        (tmp_path / "runs" / folder / "run.json").write_text(json.dumps(
            {"name": "vae", "status": "finished", "mlflow_run_id": run_id, "config": {"name": "vae"}}))
        os.utime(tmp_path / "runs" / folder / "run.json", (time.time() - age, time.time() - age))
    with pytest.raises(ConfigError) as caught:
        find_run(tmp_path / "runs", name="vae")
    assert str(caught.value) == (f"no unfinished run of model 'vae' in {tmp_path / 'runs'}/ to resume; a finished run "
                                 "goes on only when named, e.g. the latest: vae-tf train --resume 9f8e "
                                 f"--set train.run_dir={tmp_path / 'runs'} --set train.epochs=N")
    assert find_run(tmp_path / "runs", key="0a1b")[0] == tmp_path / "runs" / "old"
    for folder in ("old", "new"):
        shutil.rmtree(tmp_path / "runs" / folder)
    # Unfinished runs of another model: the bare --resume looks for the --config's model; say whose they are
    (tmp_path / "runs" / "other").mkdir(parents=True)
    (tmp_path / "runs" / "other" / "run.json").write_text(json.dumps({"name": "control-vae", "status": "running"}))
    with pytest.raises(ConfigError) as caught:
        find_run(tmp_path / "runs", name="vae")
    assert str(caught.value) == (f"no unfinished run of model 'vae' in {tmp_path / 'runs'}/ to resume; the unfinished "
                                 "runs there are of model(s) 'control-vae': give the --config that started the run "
                                 "(or --set name=control-vae), or name it with --resume RUN_ID")
    assert find_run(tmp_path / "runs", name="control-vae")[0] == tmp_path / "runs" / "other"
    record = {"config": _in_process_config(tmp_path).to_dict()}
    # `vae-tf train --resume --set name=MODEL` takes that model's latest unfinished run (the name was ignored)
    from vae_tf_cli import main

    theirs = {**record["config"], "name": "control-vae"}
    (tmp_path / "runs" / "other" / "run.json").write_text(json.dumps({"name": "control-vae", "status": "running",
                                                                       "config": theirs}))
    printed = _printed(main, ["train", "--resume", "--set", f"train.run_dir={tmp_path / 'runs'}",
                                                  "--set", "name=control-vae", "--print-config"])
    assert yaml.safe_load(printed)["name"] == "control-vae"
    assert resumed_config(record, ["train.epochs=9"]).train.epochs == 9
    with pytest.raises(ConfigError, match="model.latent.latent_dim cannot change when resuming"):
        resumed_config(record, ["model.latent.latent_dim=9"])
    # the run's own value is no change (`--strategy none` of a run without a strategy); a typo of a
    # changeable key is named as one
    own_dim = record["config"]["model"]["latent"]["latent_dim"]
    assert resumed_config(record, ["train.strategy=none", f"model.latent.latent_dim={own_dim}"]).train.epochs == 3
    with pytest.raises(ConfigError, match=r"^--set train.epoch: no such setting; did you mean train.epochs\?$"):
        resumed_config(record, ["train.epoch=9"])


def test_an_unwritable_run_or_export_folder_is_one_line_before_any_run_exists(tmp_path, monkeypatch):
    """A folder through a plain file (or read-only) failed with a traceback after the MLflow run was
    created (run_dir) or after the whole training (export.base_dir)."""
    from training.train import run_training
    from vae_tf.errors import ConfigError

    (tmp_path / "afile").write_text("not a folder")
    for setting in ("run_dir", "base_dir"):
        config = _in_process_config(tmp_path, epochs=1)
        if setting == "run_dir":
            config.train.run_dir = str(tmp_path / "afile" / "runs")
        else:
            config.export.base_dir = str(tmp_path / "afile" / "models")
        section = "train" if setting == "run_dir" else "export"
        with pytest.raises(ConfigError) as caught:
            run_training(config)
        assert_one_line(str(caught.value))
        assert str(caught.value).startswith(f"{section}.{setting}={tmp_path / 'afile'}/")
        assert str(caught.value).endswith(f"set {section}.{setting} to a writable folder")
    assert not (tmp_path / "mlflow.db").exists()  # refused before an MLflow run (or its store) existed


def test_runs_without_a_run_name_are_named_by_model_and_start_time_not_by_the_seeded_random_module(
        tmp_path, monkeypatch):
    """MLflow draws its random run names from Python's random, which the run's seed had just
    seeded: every run of one seed was called the same (e.g. 'illustrious-mink-497')."""
    import random
    import time

    from training import train as train_module
    from training.train import default_run_name

    config = _in_process_config(tmp_path)
    clock = iter([time.struct_time((2026, 12, 5, 19, 45, 1, 5, 339, 0)), time.struct_time((2026, 12, 5, 19, 45, 9, 5, 339, 0))])
    real_localtime = time.localtime
    monkeypatch.setattr(time, "localtime", lambda *a: next(clock))
    random.seed(0)
    first = default_run_name(config)
    random.seed(0)
    assert (first, default_run_name(config)) == ("inproc-20261205-194501", "inproc-20261205-194509")
    monkeypatch.setattr(time, "localtime", real_localtime)
    seen = {}

    class Recorder:  # run_training's tracker, stopped before it starts
        def __init__(self, *args, run_name=None, **kwargs):
            seen["run_name"] = run_name
            raise SystemExit("stop before training")

    monkeypatch.setattr("training.tracking.TrackedRun", Recorder)
    with pytest.raises(SystemExit):
        train_module.run_training(config)
    assert seen["run_name"].startswith("inproc-") and len(seen["run_name"]) == len("inproc-20261205-194501")


def test_print_config_with_resume_prints_the_config_the_run_continues_with(tmp_path, capsys):
    """It printed the defaults; the resumed run trains with its own config and the allowed --set."""
    from vae_tf_cli import main

    own = _in_process_config(tmp_path, epochs=3).to_dict()
    own["model"]["latent"]["latent_dim"] = 5
    (tmp_path / "runs" / "abc").mkdir(parents=True)
    (tmp_path / "runs" / "abc" / "run.json").write_text(json.dumps({"config": own, "status": "running"}))
    assert main(["train", "--resume", "abc", "--set", f"train.run_dir={tmp_path / 'runs'}", "--set",
                 "train.epochs=7", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["train"]["epochs"] == 7 and printed["model"]["latent"]["latent_dim"] == 5
    assert printed["data"] == own["data"]


@pytest.mark.slow
def test_resuming_a_run_that_ran_all_its_epochs_is_refused_and_changes_nothing(tmp_path):
    """It crashed (restoring best weights of a fit that never ran) and marked the finished run
    FAILED; now one line says to raise train.epochs, and raising it trains on in the same run."""
    from training.train import run_training
    from vae_tf.errors import ConfigError

    config = _in_process_config(tmp_path, epochs=1, early_stopping_patience=2)
    first = run_training(config)
    record_path = tmp_path / "runs" / first.run_id / "run.json"
    before = record_path.read_text()
    for overrides in ((), ("train.epochs=1",)):
        with pytest.raises(ConfigError) as caught:
            run_training(config, resume=first.run_id, overrides=overrides)
        assert_one_line(str(caught.value))
        assert str(caught.value) == (f"run {first.run_id} already finished its 1 epoch(s) (train.epochs=1); to train "
                                     f"it on, raise train.epochs: --resume {first.run_id} --set train.epochs=2")
    assert record_path.read_text() == before
    client = MlflowClient(tracking_uri=config.mlflow.tracking_uri)
    run = client.get_run(first.run_id)
    assert run.info.status == "FINISHED" and "error" not in run.data.tags
    again = run_training(config, resume=first.run_id, overrides=("train.epochs=2",))
    assert again.run_id == first.run_id and len(again.history["loss"]) == 2
    assert again.name == "inproc"  # the resumed run's own model (the summary printed the --config's name)
    resumed = client.get_run(first.run_id)
    assert resumed.info.status == "FINISHED"
    # The run says what the resume changed: its params keep the first value (MLflow's cannot change),
    # config.yaml is the config it finished with, and a tag lists the change. They said 1 epoch.
    assert resumed.data.params["train.epochs"] == "1" and resumed.data.tags["vae_tf.resume.changed"] == \
        "train.epochs: 1 -> 2"
    logged = yaml.safe_load(Path(client.download_artifacts(first.run_id, "config.yaml", str(tmp_path))).read_text())
    assert logged["train"]["epochs"] == 2
    third = run_training(config, resume=first.run_id, overrides=("train.epochs=3", "train.learning_rate=0.0005"))
    assert len(third.history["loss"]) == 3
    assert client.get_run(first.run_id).data.tags["vae_tf.resume.changed"] == (
        "train.epochs: 1 -> 2 | train.epochs: 2 -> 3; train.learning_rate: 0.001 -> 0.0005")
    # The end-of-training numbers of each length, at its step (all three were at step 0)
    for key in ("epochs_run", "test_elbo", "test_active_units"):
        assert [m.step for m in client.get_metric_history(first.run_id, key)] == [1, 2, 3], key
    assert [m.value for m in client.get_metric_history(first.run_id, "epochs_run")] == [1.0, 2.0, 3.0]


@pytest.mark.slow
def test_library_training_inside_the_caller_s_own_run_is_a_child_of_it(tmp_path):
    """`with mlflow.start_run(): run_training(config)` raised MLflow's "Run ... is already active"
    after the data and model were prepared, and had switched the caller's active experiment to
    the config's. Now the run is a nested child in the caller's experiment, which stays active;
    a config logging to another store is refused in one line before any work."""
    from training.evaluate import evaluate
    from training.train import run_training
    from vae_tf.errors import ConfigError

    config = _in_process_config(tmp_path, epochs=1)
    uri = config.mlflow.tracking_uri
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        user_experiment = mlflow.set_experiment("user experiment").experiment_id
        with mlflow.start_run() as parent:
            result = run_training(config)
            assert mlflow.active_run().info.run_id == parent.info.run_id  # the caller's run is active again
            evaluated = evaluate(str(result.export_dir), iw_k=0, disentanglement="off", output=str(tmp_path / "e.json"))
            elsewhere = config.replace(mlflow={"tracking_uri": f"sqlite:///{tmp_path / 'other.db'}"})
            with pytest.raises(ConfigError) as caught:
                run_training(elsewhere)
        assert_one_line(str(caught.value))
        assert str(caught.value) == (f"this call is inside MLflow run {parent.info.run_id} of {uri}, but "
                                     f"mlflow.tracking_uri is sqlite:///{tmp_path / 'other.db'}; leave "
                                     "mlflow.tracking_uri unset to log a child run beside it, or end that run first")
        assert not (tmp_path / "other.db").exists()
        client = MlflowClient(tracking_uri=uri)
        for child in (result.run_id, evaluated.run_id):
            run = client.get_run(child)
            assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
            assert run.info.experiment_id == user_experiment and run.info.status == "FINISHED"
        with mlflow.start_run() as after:  # the caller's active experiment was left as it was
            assert after.info.experiment_id == user_experiment
    finally:
        mlflow.set_tracking_uri(previous)


@pytest.mark.slow
def test_a_run_interrupted_then_resumed_to_its_end_keeps_no_error_tag(tmp_path, monkeypatch):
    """Ctrl-C tagged the run `error: KeyboardInterrupt: ` (an empty message); after `--resume`
    finished it, the FINISHED run still carried the tag. Now the interrupt is said, and a resumed
    run that finishes drops the tag, keeping what stopped it as vae_tf.resumed_after."""
    import json

    from training.callbacks import MlflowMetrics
    from training.train import run_training

    config = _in_process_config(tmp_path, epochs=2)
    logged = MlflowMetrics.on_epoch_end

    def interrupted(self, epoch, logs=None):
        logged(self, epoch, logs)
        raise KeyboardInterrupt

    monkeypatch.setattr(MlflowMetrics, "on_epoch_end", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_training(config)
    monkeypatch.setattr(MlflowMetrics, "on_epoch_end", logged)
    (run_dir,) = (tmp_path / "runs").iterdir()
    client = MlflowClient(tracking_uri=config.mlflow.tracking_uri)
    said = "KeyboardInterrupt: interrupted (Ctrl-C or SIGINT)"
    run = client.get_run(run_dir.name)
    assert run.info.status == "KILLED" and run.data.tags["error"] == said
    record = json.loads((run_dir / "run.json").read_text())  # not "failed": nothing went wrong
    assert record["status"] == "interrupted" and record["error"] == said
    resumed = run_training(config, resume=run_dir.name)
    run = client.get_run(run_dir.name)
    assert resumed.run_id == run_dir.name and run.info.status == "FINISHED"
    assert "error" not in run.data.tags and run.data.tags["vae_tf.resumed_after"] == said
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "finished" and record["error"] is None


@pytest.mark.slow
def test_a_run_stopped_after_its_export_resumes_without_exporting_or_logging_again(tmp_path, capsys):
    """A suite child interrupted in its evaluation (which runs after the export) was resumed from
    its last checkpoint "at epoch 16 of 15", evaluated and exported again: a second model version
    and every test metric twice in one run. Now it runs only what came after the export."""
    from training.train import run_training

    config = _in_process_config(tmp_path, epochs=2)
    calls = []

    def evaluation(model, data, tracker):
        calls.append(tracker.run_id)
        if len(calls) == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_training(config, after_training=evaluation)
    (run_dir,) = (tmp_path / "runs").iterdir()
    capsys.readouterr()
    resumed = run_training(config, resume=run_dir.name, after_training=evaluation)
    err = capsys.readouterr().err
    assert "its 2 epoch(s) are trained" in err and "trained, tested and exported before" in err, err
    assert calls == [run_dir.name, run_dir.name]
    assert sorted(p.name for p in (tmp_path / "models" / "inproc").iterdir()) == ["1"]
    assert resumed.export_dir == tmp_path / "models" / "inproc" / "1"
    client = MlflowClient(tracking_uri=config.mlflow.tracking_uri)
    assert [m.value for m in client.get_metric_history(run_dir.name, "epochs_run")] == [2.0]
    assert len(client.get_metric_history(run_dir.name, "test_elbo")) == 1
    assert client.get_run(run_dir.name).info.status == "FINISHED"
    assert resumed.test_metrics["test_elbo"] == client.get_run(run_dir.name).data.metrics["test_elbo"]


@pytest.mark.slow
def test_a_run_early_stopping_stopped_says_so_and_a_resume_before_its_export_exports_the_best_epoch(tmp_path, capsys,
                                                                                                  monkeypatch):
    """Early stopping stops a run (digits, 300 examples, a high learning rate, patience 2): it says
    which epoch the model is and logs it; the same run killed in its export after the stop and
    resumed fits nothing, and exported the last epoch's weights (the callback had no model
    outside a fit); now the best epoch's, as the uninterrupted run does."""
    import h5py

    import vae_tf.export as export_module
    from training.train import run_training
    from vae_tf.export import WEIGHTS_NAME

    def config(where):
        c = _in_process_config(tmp_path / where, epochs=30, early_stopping_patience=2, learning_rate=0.01)
        c.data.max_samples = 300
        return c

    reference = run_training(config("reference"))
    err = capsys.readouterr().err
    epochs_run = len(reference.history["loss"])
    assert epochs_run < 30  # it stopped early (else the case below is not the one it checks)
    client = MlflowClient(tracking_uri=config("reference").mlflow.tracking_uri)
    val_elbo = [m.value for m in sorted(client.get_metric_history(reference.run_id, "val_elbo"), key=lambda m: m.step)]
    best = int(np.argmax(val_elbo)) + 1
    assert best == epochs_run - 2  # patience 2
    metrics = client.get_run(reference.run_id).data.metrics
    assert metrics["best_epoch"] == best and metrics["best_val_elbo"] == pytest.approx(max(val_elbo), rel=1e-6)
    assert (f"early stopping: no better val_elbo for 2 epoch(s) after epoch {best}; stopped after epoch {epochs_run} "
            f"of 30; the model is epoch {best}'s (val_elbo {max(val_elbo):.4f})") in err, err

    real_export, calls = export_module.export_model, []  # imported by the training run when it starts

    def killed_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise KeyboardInterrupt
        return real_export(*args, **kwargs)

    monkeypatch.setattr(export_module, "export_model", killed_once)
    with pytest.raises(KeyboardInterrupt):
        run_training(config("killed"))
    (run_dir,) = (tmp_path / "killed" / "runs").iterdir()
    capsys.readouterr()
    resumed = run_training(config("killed"), resume=run_dir.name)
    err = capsys.readouterr().err
    assert ("early stopping stops this run: no better val_elbo in its last 2 epoch(s) (train.early_stopping_patience=2)"
            ", so no epoch is trained") in err, err
    assert f"stopped after epoch {epochs_run} of 30; the model is epoch {best}'s" in err
    assert len(resumed.history["loss"]) == epochs_run

    def weights(export_dir):
        arrays = {}
        with h5py.File(export_dir / "assets" / WEIGHTS_NAME, "r") as f:
            f.visititems(lambda name, item: arrays.__setitem__(name, item[()]) if isinstance(item, h5py.Dataset)
                         else None)
        return arrays

    ours, theirs = weights(resumed.export_dir), weights(reference.export_dir)
    assert ours.keys() == theirs.keys() and len(ours) > 10
    for name in theirs:  # the model's weights and its optimizer's state: the best epoch's in both
        np.testing.assert_array_equal(ours[name], theirs[name], err_msg=name)
    assert resumed.test_metrics == pytest.approx(reference.test_metrics, rel=1e-6)


def test_resumable_pipeline_starts_anywhere_and_covers_each_pass(digits):
    per_pass = digits.steps_per_epoch("train", 64)
    full = [b.numpy() for b in digits.resumable_pipeline("train", 64, seed=3, epochs=2)]
    assert len(full) == 2 * per_pass
    tail = [b.numpy() for b in digits.resumable_pipeline("train", 64, seed=3, epochs=2, start_step=per_pass + 5)]
    assert len(tail) == per_pass - 5 and all(np.array_equal(a, b) for a, b in zip(full[per_pass + 5:], tail))
    flat = lambda batches: np.concatenate(batches).reshape(-1, np.prod(digits.data_shape))  # noqa: E731
    # Every example exactly once per pass, whole rows compared (a multiset of images: the same
    # image twice in a pass, or one missing, changes the counts), in a different order each pass.
    expected = collections.Counter(row.tobytes() for row in digits.x_train.reshape(len(digits.x_train), -1))
    for p in range(2):
        seen = collections.Counter(row.tobytes() for row in flat(full[p * per_pass:(p + 1) * per_pass]))
        assert seen == expected
    assert not np.array_equal(flat(full[:per_pass]), flat(full[per_pass:]))


def test_a_damaged_latest_checkpoint_gives_way_to_the_one_before_it(tmp_path, capsys):
    """A latest checkpoint cut short (a full disk, a crash while writing) made every resume fail
    with a 40-line ``IndexError: Read less bytes than requested``, though the checkpoint before
    it was intact. Now: a warning naming both, and the run goes on from the earlier one."""
    import keras

    from training.train import _restore
    from vae_tf.errors import ConfigError
    from vae_tf.models import build_vae

    def model_with(value: float):
        model = build_vae((4,), latent={"family": "gaussian", "latent_dim": 2},
                          network={"kind": "mlp", "hidden": [3]}, seed=0)
        model.compile(optimizer=keras.optimizers.Adam(1e-3))
        model.optimizer.build(model.trainable_variables)
        for variable in model.trainable_variables:
            variable.assign(np.full(variable.shape, value, variable.dtype))
        return model

    directory = tmp_path / "checkpoints"
    saved, progress = model_with(1.0), TrainingProgress()
    manager = tf.train.CheckpointManager(checkpoint_for(saved, progress=progress), str(directory), max_to_keep=3)
    for value, epoch in [(1.0, 1), (2.0, 2)]:  # two checkpoints, as training keeps them
        for variable in saved.trainable_variables:
            variable.assign(np.full(variable.shape, value, variable.dtype))
        progress.set(epoch, 0, [])
        manager.save()
    latest = tf.train.latest_checkpoint(str(directory))
    data = next(directory.glob(f"{Path(latest).name}.data-*"))
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])  # cut short

    fresh, progress = model_with(0.0), TrainingProgress()
    restored = _restore(fresh, directory, progress)
    assert restored != latest and restored.endswith("ckpt-1")
    assert all(np.all(v.numpy() == 1.0) for v in fresh.trainable_variables) and progress.epoch == 1
    err = capsys.readouterr().err
    assert_one_line(err.strip())
    assert err.startswith(f"warning: checkpoint {latest} could not be read (") and f"resumed from {restored}" in err
    # none readable: one line naming the latest
    earlier = next(directory.glob("ckpt-1.data-*"))
    earlier.write_bytes(earlier.read_bytes()[:10])
    with pytest.raises(ConfigError) as refused:
        _restore(model_with(0.0), directory, TrainingProgress())
    assert_one_line(str(refused.value))
    assert str(refused.value).startswith(f"checkpoint {latest} cannot be restored (")
    assert "nor any of the 1 kept before it" in str(refused.value)
