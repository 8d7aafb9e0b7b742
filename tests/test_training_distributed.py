"""`vae-tf train --strategy` end to end (issue #10): a 2-replica mirrored run on 2 logical CPUs
against the single-device run, 2-worker multi_worker clusters on 127.0.0.1 for a representative
set of objectives (only the chief logs and exports, both workers hold the same model and state;
scripts/multi_worker_matrix.py runs every objective and family), and mixed precision through
the CLI.

The library side (every objective under MirroredStrategy, noise and state across replicas) is
tests/test_distributed.py; these tests check what the training application adds.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.conftest import mlflow_store

# The small digits MLP config every cluster case of the matrix starts from.
from scripts.multi_worker_matrix import CONFIG


def _env(tmp_path: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_") and k != "TF_CONFIG"}
    return {**env, "MLFLOW_TRACKING_URI": mlflow_store(tmp_path), "TF_CPP_MIN_LOG_LEVEL": "2",
            "PYTHONPATH": str(Path(__file__).resolve().parents[1]), **extra}


def _start(tmp_path, *args, **env):
    return subprocess.Popen([sys.executable, "-m", "vae_tf_cli", "train", "-c", "cfg.yaml", *args], cwd=tmp_path,
                            env=_env(tmp_path, **env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc) -> str:
    out = proc.communicate(timeout=400)[0]
    assert proc.returncode == 0, out[-3000:]
    return out


def _runs(tmp_path) -> dict:
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("vae-tf").experiment_id])
    return client, {r.data.params["name"]: r for r in runs}


def _loss_history(client, run):
    return [m.value for m in sorted(client.get_metric_history(run.info.run_id, "loss"), key=lambda m: m.step)]


@pytest.mark.slow
def test_two_mirrored_replicas_follow_the_single_device_run(tmp_path):
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(CONFIG))
    procs = [_start(tmp_path, "--set", "name=single", "--set", "train.run_dir=runs_single"),
             _start(tmp_path, "--strategy", "mirrored", "--set", "train.cpu_replicas=2", "--set", "name=mirrored")]
    for proc in procs:
        _finish(proc)
    client, runs = _runs(tmp_path)
    assert runs["mirrored"].data.params["train.strategy"] == "mirrored"
    single, mirrored = (_loss_history(client, runs[n]) for n in ("single", "mirrored"))
    assert len(single) == len(mirrored) == 2
    # Same global batches, same noise per example, gradients all-reduced: the same run up to
    # the order of floating-point sums.
    np.testing.assert_allclose(mirrored, single, rtol=1e-4)
    for key in ("test_elbo", "test_kl"):
        assert runs["mirrored"].data.metrics[key] == pytest.approx(runs["single"].data.metrics[key], rel=1e-3, abs=1e-3)

    # A mirrored run resumes (it raised "float() argument must be ... not 'MirroredVariable'").
    run_id = runs["mirrored"].info.run_id
    out = _finish(_start(tmp_path, "--resume", run_id, "--set", "train.epochs=3"))
    assert "resuming from" in out and "Traceback" not in out
    client, runs = _runs(tmp_path)
    assert runs["mirrored"].info.status == "FINISHED" and len(_loss_history(client, runs["mirrored"])) == 3
    # A global batch the replicas cannot share evenly is refused before any run exists (Keras
    # failed in its first step, "Inputs to operation AddN ... must have the same size and shape").
    proc = _start(tmp_path, "--strategy", "mirrored", "--set", "train.cpu_replicas=2", "--set", "train.batch_size=33",
                  "--set", "name=odd")
    out = proc.communicate(timeout=400)[0]
    assert proc.returncode == 2 and out.strip().splitlines()[-1] == (
        "error: train.batch_size=33 does not split over the 2 replicas of train.strategy=mirrored (each takes an "
        "equal share of a batch); use a multiple of 2, e.g. 32 or 34")
    assert "odd" not in _runs(tmp_path)[1]


#: What the 2-worker test trains, one cluster start per distinct code path (the rest is covered by
#: `python -m scripts.multi_worker_matrix`, every remedy and family): the plain ELBO; and every slot
#: composed on a non-Gaussian family: the ControlVAE controller (state set from an all-reduced KL
#: every step), MI with a Q network on the categorical part of a Gaussian + categorical code (two
#: optimizers in one step, the global-batch category entropy), FGSM inputs, the aggressive schedule
#: (an inner loop of encoder updates in cross-replica context, an epoch-end phase decision on every
#: worker), a Skip decoder and encoder pretraining (a second Keras model trained in the strategy's
#: scope before the VAE). Each cluster is two TensorFlow processes on the machine's cores, so the
#: composed case replaces separate MI and composed clusters.
MULTI_WORKER_CASES = ["elbo", "composed_categorical"]


@pytest.mark.slow
@pytest.mark.parametrize("case", MULTI_WORKER_CASES)
def test_a_two_worker_cluster_trains_once_and_only_the_chief_logs_and_exports(tmp_path, case):
    from scripts.multi_worker_matrix import case_config, run_cluster

    mlflow_store(tmp_path)  # the store the chief logs into (run_cluster points the workers at it)
    cluster = run_cluster(tmp_path, case_config(case, name="cluster"))
    assert cluster.ok, "\n".join(out[-3000:] for out in cluster.outputs)

    client, runs = _runs(tmp_path)
    assert list(runs) == ["cluster"]  # one MLflow run: the chief's
    run = runs["cluster"]
    assert run.info.status == "FINISHED" and run.data.params["train.strategy"] == "multi_worker"
    assert sorted(p.name for p in (tmp_path / "models" / "cluster").iterdir()) == ["1"]  # one export
    assert f"run id:        {run.info.run_id}" in cluster.outputs[0]
    # The chief's own work after the other worker left (verdict, export, registry) ran no
    # collective op: one would wait for the gone worker until TensorFlow aborted it.
    assert "Collective ops is aborted" not in cluster.outputs[0] and "tasks have crashed" not in cluster.outputs[0]
    assert len(list((tmp_path / "runs").iterdir())) == 1  # the worker's checkpoints were temporary
    # The non-chief trained the same model: its final loss is the chief's (Keras all-reduces the
    # logs, so this says both ran the same steps), and every variable, weights, optimizer slots
    # and the objective's state, is equal on both workers (what the all-reduced logs cannot show).
    losses = _loss_history(client, run)
    assert len(losses) == 2 and np.all(np.isfinite(losses))
    assert cluster.worker_final_loss() == pytest.approx(losses[-1], rel=1e-5)
    assert cluster.state_differences() == {}
    state = cluster.states[1]
    assert int(state["cluster/train_steps"]) == 2 * math.ceil(int(run.data.params["data.n_train"]) / 64)
    metrics = run.data.metrics
    # The state the chief logged is the one both workers hold.
    assert metrics["beta"] == pytest.approx(float(state["cluster/beta"]), rel=1e-6)
    if case == "composed_categorical":
        assert int(state["q_optimizer/iteration"]) == int(state["cluster/train_steps"])  # one Q step per step
        assert metrics["q_loss"] > 0 and metrics["category_entropy"] > 0
        assert run.data.tags["vae_tf.objective"] == "control + mi_q + fgsm + aggressive"
        assert float(state["cluster/beta"]) != 1.0  # the controller moved β
        assert metrics["pi_integral"] == pytest.approx(float(state["pi_controller/integral"]), rel=1e-5, abs=1e-7)
        assert metrics["aggressive_inner_steps"] >= 1 and "aggressive_mi" in metrics
        assert metrics["perturbation_linf"] == pytest.approx(0.05, rel=1e-5)
        assert len(client.get_metric_history(run.info.run_id, "pretrain_accuracy")) == 2


@pytest.mark.parametrize("tf_config, said", [
    ('{"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}}',
     "TF_CONFIG has no task saying which member of its cluster this process is"),
    ('{"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}, "task": {"type": "worker", "index": 5}}',
     "TF_CONFIG's task index must be an integer from 0 to 1 (the 2 worker addresses of its cluster), got 5"),
    ('{"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}, "task": {"type": "worker", "index": "zero"}}',
     "TF_CONFIG's task index must be an integer from 0 to 1 (the 2 worker addresses of its cluster), got 'zero'"),
    ('{"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "ps", "index": 0}}',
     "TF_CONFIG's task type 'ps' is not a job of its cluster ('worker')"),
    ('{"cluster": {"worker": "127.0.0.1:1"}, "task": {"type": "worker", "index": 0}}',
     "TF_CONFIG's cluster must map job names to lists of host:port addresses"),
])
def test_a_tf_config_tensorflow_would_refuse_with_a_traceback_is_one_line(tf_config, said):
    """TensorFlow raised ValueErrors from deep in the cluster resolver for these (a missing task,
    an index out of range or not a number, a job the cluster lacks)."""
    from training.distribute import cluster_task
    from vae_tf.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        cluster_task(tf_config)
    assert str(err.value).startswith(said) and "\n" not in str(err.value)


def test_the_members_a_worker_waits_for_are_named():
    from training.distribute import cluster_task

    spec = '{"cluster": {"chief": ["h0:1"], "worker": ["h1:2", "h2:3"]}, "task": {"type": "worker", "index": 1}}'
    assert cluster_task(spec) == ("h2:3", ["h0:1", "h1:2"])
    assert cluster_task('{"cluster": {}}') == ("local", [])


def test_resuming_a_multi_worker_run_is_refused_by_every_worker_before_the_cluster_forms(tmp_path, monkeypatch,
                                                                                         capsys):
    """Only the non-chief workers refused; the chief went on to restore and crashed (or waited for
    a worker that had left)."""
    import json

    from vae_tf_cli import main

    run = tmp_path / "runs" / "abc123"
    run.mkdir(parents=True)
    config = yaml.safe_load(yaml.safe_dump(CONFIG))
    config["train"] = {**config.get("train", {}), "strategy": "multi_worker", "run_dir": str(tmp_path / "runs")}
    from training.config import from_dict

    (run / "run.json").write_text(json.dumps({"status": "failed", "mlflow_run_id": "abc123", "name": "vae",
                                              "config": from_dict(config).to_dict(), "error": "UnavailableError: x",
                                              "tracking_uri": mlflow_store(tmp_path)}))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}, '
                                    '"task": {"type": "worker", "index": 0}}')

    def forms_the_cluster(train_cfg):  # it would wait for 127.0.0.1:2 for ever
        raise AssertionError("the resume must be refused before the cluster forms")

    monkeypatch.setattr("training.distribute.make_strategy", forms_the_cluster)
    assert main(["train", "--resume", "abc123", "--set", f"train.run_dir={tmp_path / 'runs'}"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (  # after the store's own start-up lines
        "error: --resume is for single-process and mirrored runs; a multi_worker run cannot be resumed: restart "
        "the cluster from scratch (without --resume)")


def test_multi_worker_without_tf_config_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    from vae_tf_cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert main(["train", "--strategy", "multi_worker", "--set", "train.epochs=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: train.strategy=multi_worker needs TF_CONFIG") and "\n" not in err


@pytest.mark.slow
def test_mixed_precision_trains_with_finite_metrics_and_exports_float32(tmp_path, monkeypatch):
    import tensorflow as tf

    from training.config import from_dict
    from training.train import run_training

    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.delenv(key, raising=False)
    config = from_dict({**CONFIG, "name": "bf16",
                        "train": {**CONFIG["train"], "precision": "mixed_bfloat16", "deterministic": False,
                                  "run_dir": str(tmp_path / "runs")},
                        "export": {"base_dir": str(tmp_path / "models")},
                        "mlflow": {**CONFIG["mlflow"], "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}})
    result = run_training(config)
    assert all(np.isfinite(v).all() for v in result.history.values())
    assert np.isfinite(result.test_metrics["test_elbo"]) and result.test_metrics["test_kl"] > 0
    encode = tf.saved_model.load(str(result.export_dir)).signatures["encode"]
    assert all(spec.dtype == tf.float32 for spec in encode.structured_outputs.values())


@pytest.mark.slow
def test_a_worker_whose_port_is_taken_says_so_in_one_line(tmp_path):
    """TensorFlow's "Could not start gRPC server" traceback (and the other workers waited for
    ever): a one-member cluster, so nobody else is waited for."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(CONFIG))
        tf_config = f'{{"cluster": {{"worker": ["127.0.0.1:{port}"]}}, "task": {{"type": "worker", "index": 0}}}}'
        proc = _start(tmp_path, "--strategy", "multi_worker", TF_CONFIG=tf_config)
        out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 2, out[-2000:]
    assert out.strip().splitlines()[-1] == (
        f"error: cannot listen on port {port} (127.0.0.1:{port}, this worker's address in TF_CONFIG): is it in use? "
        "Free it or give this worker another port in every worker's TF_CONFIG")
    assert "Traceback" not in out


def test_only_errors_of_the_cluster_become_the_cluster_failure_line():
    """The review: every InternalError (an XLA or cuDNN fault too) was said to be a worker that left."""
    from unittest import mock

    import tensorflow as tf

    from training.train import cluster_failure

    cluster = mock.Mock(spec=tf.distribute.MultiWorkerMirroredStrategy)
    left = tf.errors.UnavailableError(None, None, "Collective ops is aborted by: recvmsg:Connection reset by peer")
    disagree = tf.errors.InternalError(None, None, "Collective instance 577 expected type 0 and data_type 1")
    device = tf.errors.InternalError(None, None, "cuDNN launch failure : input shape ([1,8,8,1])")
    said = str(cluster_failure(left, cluster))
    assert said.startswith("the training cluster failed, most likely a worker stopped or became unreachable") and (
        "Collective ops is aborted" in said and "\n" not in said)
    assert cluster_failure(disagree, cluster) is not None
    assert cluster_failure(device, cluster) is None
    assert cluster_failure(left, tf.distribute.get_strategy()) is None  # one process: TensorFlow's own error
