"""What a run was trained on and whether its code collapsed, where a user looks first: dataset
inputs in MLflow (name, source, digest, context, size) for training and evaluation runs, a one-line
collapse verdict in the console and as tags, and readable logs when standard output is a file."""

from __future__ import annotations

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from vae_tf_cli import main
from training.lineage import dataset_digest, mlflow_digest, model_verdict
from vae_tf.metrics import CollapseVerdict, collapse_verdict

FAST = ["train.epochs=2", "model.network.hidden=[32]", "model.latent.latent_dim=4", "train.pretrain.fraction=0.1",
        "train.pretrain.epochs=1"]


def _args(*overrides):
    return ["train", *[a for o in overrides for a in ("--set", o)]]


@pytest.fixture
def trained(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert main(_args(*FAST)) == 0
    out = capsys.readouterr()
    client = MlflowClient(tracking_uri=uri)
    run = client.search_runs([client.get_experiment_by_name("vae-tf").experiment_id])[0]
    return client, run, out


@pytest.mark.slow
def test_a_training_run_logs_every_split_it_read_as_a_dataset_input(trained, digits):
    client, run, _ = trained
    inputs = {next(t.value for t in i.tags if t.key == "mlflow.data.context"): i for i in run.inputs.dataset_inputs}
    assert set(inputs) == {"training", "validation", "test", "pretraining"}
    sizes = {context: int(next(t.value for t in i.tags if t.key == "n_examples")) for context, i in inputs.items()}
    assert sizes["validation"] == len(digits.x_val) and sizes["test"] == len(digits.x_test)
    assert sizes["training"] + sizes["pretraining"] == len(digits.x_train)  # pretraining's part is held out
    assert inputs["validation"].dataset.name == "digits-val"
    content = dataset_digest(digits.x_val, digits.y_val)
    assert {t.key: t.value for t in inputs["validation"].tags}["content_digest"] == content
    assert inputs["validation"].dataset.digest == mlflow_digest("sklearn.datasets.load_digits", content)
    assert "sklearn.datasets.load_digits" in inputs["test"].dataset.source


@pytest.mark.slow
def test_each_run_names_the_file_it_read_and_evaluate_says_when_the_file_changed_since(tmp_path, monkeypatch,
                                                                                      capsys, digits):
    """MLflow keeps one dataset per (name, digest) in an experiment: a run that read the same
    content from another file showed the first run's file in its Datasets panel. And `vae-tf
    evaluate` split a file reshuffled since training anew, without a word, so its "test" split
    held examples the model trained on."""
    import json

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    x = np.concatenate([digits.x_train, digits.x_val, digits.x_test])
    for name in ("first.npz", "second.npz"):
        np.savez(tmp_path / name, x=x)
    for name in ("first", "second"):
        assert main(_args("train.epochs=1", "model.network.hidden=[16]", "model.latent.latent_dim=2", "data.name=npz",
                          f"data.path={tmp_path / name}.npz", f"name={name}")) == 0
    capsys.readouterr()
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("vae-tf").experiment_id])
    sources = {r.data.params["name"]: {json.loads(i.dataset.source)["uri"] for i in r.inputs.dataset_inputs} for r in runs}
    assert sources == {"first": {str(tmp_path / "first.npz")}, "second": {str(tmp_path / "second.npz")}}
    assert main(["evaluate", "models/second", "--iw-k", "0", "--no-mlflow", "--disentanglement", "off"]) == 0
    assert "split read now is not the one" not in capsys.readouterr().err  # the same file: the same split
    np.savez(tmp_path / "second.npz", x=x[np.random.default_rng(1).permutation(len(x))])  # reshuffled since
    assert main(["evaluate", "models/second", "--iw-k", "0", "--no-mlflow", "--disentanglement", "off",
                 "--output", "changed.json"]) == 0
    err = capsys.readouterr().err
    warning = next(line for line in err.splitlines() if "split read now" in line)
    assert warning.startswith("warning: the test split read now is not the one second/1 was trained without (content "
                              "digest ") and f"{tmp_path / 'second.npz'} changed since" in warning
    changed = json.loads((tmp_path / "changed.json").read_text())["info"]["split_changed_since_training"]
    assert changed["source"] == str(tmp_path / "second.npz") and changed["digest_now"] != changed["digest_at_training"]
    # another seed splits the data otherwise on purpose: no claim that the file changed
    assert main(["evaluate", "models/second", "--iw-k", "0", "--no-mlflow", "--disentanglement", "off",
                 "--output", "seeded.json", "--set", "seed=7"]) == 0
    assert "split read now" not in capsys.readouterr().err


def test_digest_changes_with_the_content_and_not_otherwise(digits):
    x, y = digits.x_val, digits.y_val
    assert dataset_digest(x, y) == dataset_digest(x.copy(), y.copy())
    changed = x.copy()
    changed[3, 2, 1, 0] += 1e-3
    assert dataset_digest(changed, y) != dataset_digest(x, y)
    assert dataset_digest(x[:-1], y[:-1]) != dataset_digest(x, y)
    assert dataset_digest(x, (y + 1) % 10) != dataset_digest(x, y)
    text = np.array(["a cat", "a dog"], dtype=object)
    assert dataset_digest(text) != dataset_digest(text[::-1].copy())


def test_a_user_file_is_a_local_dataset_source_without_mlflow_s_duplicate_registration_warning(tmp_path):
    """A user's file resolves to MLflow's local-file source; MLflow 3.17 registers that source
    twice and warned "can be interpreted in multiple ways" on every run of a file."""
    import warnings

    from training.tracking import meta_dataset

    path = tmp_path / "corpus.txt"
    path.write_text("a cat\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dataset = meta_dataset("corpus-train", str(path), "abc")
    assert type(dataset.source).__name__ == "LocalArtifactDatasetSource" and dataset.source.uri == str(path)
    named = meta_dataset("digits-train", "sklearn.datasets.load_digits", "abc")  # not a path: a code source
    assert type(named.source).__name__ == "CodeDatasetSource"


@pytest.mark.slow
def test_every_training_run_ends_with_a_collapse_verdict_in_the_console_and_the_tags(trained):
    _, run, out = trained
    line = next(l for l in out.err.splitlines() if l.startswith("collapse:"))
    verdict = line.split("collapse:", 1)[1].strip()
    assert run.data.tags["vae_tf.collapse"] == verdict
    assert verdict.split(":")[0] == run.data.tags["vae_tf.collapse.status"]
    assert "dims active" in verdict and "Burda" in run.data.tags["vae_tf.collapse.thresholds"]
    active = int(run.data.metrics["test_active_units"])
    assert verdict.startswith(("healthy", "partially collapsed", "collapsed")) and f"{active}/4 dims active" in verdict


@pytest.mark.slow
def test_logs_off_a_terminal_are_one_line_per_epoch(trained):
    _, _, out = trained
    epochs = [line for line in out.out.splitlines() if line.startswith("Epoch ")]
    assert epochs == ["Epoch 1/2", "Epoch 2/2"]
    assert "\r" not in out.out and "\x08" not in out.out and "\x1b" not in out.out  # no progress-bar codes


@pytest.mark.parametrize("active, dims, status", [(0, 16, "collapsed"), (3, 16, "partially collapsed"),
                                                  (8, 16, "healthy"), (16, 16, "healthy")])
def test_verdict_thresholds(active, dims, status):
    verdict = collapse_verdict(active, dims, kl=2.0, mi=1.5, collapsed_fraction=1 - active / dims)
    assert verdict.status == status
    assert verdict.line.startswith(f"{status}: {active}/{dims} dims active, MI 1.50 nats, KL 2.00 nats")


def test_a_negative_mi_estimate_is_called_noise_not_printed_as_a_value():
    """I_q(x; z) >= 0; its estimate on a few examples can fall below (seen: -0.886 on 6 test
    sentences), and the one-line verdict must not present that as an information content."""
    line = collapse_verdict(0, 2, kl=0.0004, mi=-0.886).line
    assert line == "collapsed: 0/2 dims active, MI ~0 nats (estimate -0.886, below 0 by sampling noise), KL 0.000400 nats"
    assert "MI 0.00 nats" in collapse_verdict(2, 2, kl=1.0, mi=0.0).line


def test_an_mi_estimate_above_the_kl_is_called_noise():
    """I_q(x; z) = E_x KL(q(z|x) || q(z)) <= E_x KL(q(z|x) || p(z)) (the aggregate posterior is the
    KL-minimising marginal), so an estimate above the KL (seen: 0.357 against 0.302 on 40 test
    images) is the estimator's noise, and the line says so; at or below the KL it is a value."""
    line = collapse_verdict(8, 8, kl=0.302, mi=0.357).line
    assert "MI 0.357 nats (above the KL, which bounds it: sampling noise" in line and line.endswith("KL 0.302 nats")
    assert ", MI 0.302 nats, KL 0.302 nats" in collapse_verdict(8, 8, kl=0.302, mi=0.302).line
    # a collapsed code: MI and KL both ~0, the estimate a hair above: no note
    assert collapse_verdict(0, 8, kl=0.0, mi=1e-9).line == "collapsed: 0/8 dims active, MI 1.00e-09 nats, KL 0.00 nats"


def test_kl_and_mi_keep_three_significant_digits():
    """A KL of 2 nats printed as "KL 2" reads like a count; trailing zeros stay, and no unit is left out."""
    assert collapse_verdict(16, 16, kl=15.0, mi=2.0).line.endswith("MI 2.00 nats, KL 15.0 nats")
    assert collapse_verdict(16, 16, kl=3416.4, mi=100.0).line.endswith("MI 100 nats, KL 3416 nats")
    assert collapse_verdict(16, 16, kl=999.7, mi=999.4).line.endswith("MI 999 nats, KL 1000 nats")


def test_a_collapsed_code_is_called_collapsed(digits):
    """An encoder whose output does not depend on x (zero weights into its last layer) has no
    active unit whatever its bias: the verdict must say so."""
    from vae_tf.models import build_vae

    model = build_vae(digits.data_shape, latent={"family": "gaussian", "latent_dim": 4},
                      network={"kind": "mlp", "hidden": [16]}, seed=0)
    last = model.encoder.layers[-1]
    last.kernel.assign(np.zeros(last.kernel.shape, np.float32))
    verdict = model_verdict(model, digits.x_test)
    assert verdict.verdict.status == "collapsed" and verdict.metrics["active_units"] == 0
    assert verdict.line.startswith("collapsed: 0/4 dims active")
    assert "Lucas" in CollapseVerdict.thresholds()
