"""`vae-tf evaluate` end to end: train a tiny model with the CLI, evaluate its export, its
registered model and its run; the report, the MLflow run and the figures exist; bad model
references are one-line errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import assert_one_line
from vae_tf.errors import ConfigError
from vae_tf_cli import main

FAST = ["train.epochs=2", "train.verbose=0", "model.network.hidden=[32]", "model.latent.latent_dim=4",
        "mlflow.log_figures=false"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("evaluate")
    mp = pytest.MonkeyPatch()
    mp.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mp.setenv("MLFLOW_TRACKING_URI", uri)
    args = ["train", *[a for o in FAST for a in ("--set", o)]]
    assert main(args) == 0
    yield tmp_path, uri
    mp.undo()


@pytest.fixture
def here(trained, monkeypatch):
    tmp_path, uri = trained
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return tmp_path, uri


@pytest.mark.slow
def test_evaluate_an_export_directory(here, capsys):
    tmp_path, uri = here
    assert main(["evaluate", "models/vae", "--iw-k", "100", "--output", "eval.json"]) == 0
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "eval.json").read_text())
    metrics = report["metrics"]
    for key in ("elbo", "kl", "active_units", "mi_full", "mi_minibatch", "collapsed_frac_eps_0.01",
                "linear_probe_accuracy"):
        assert key in metrics and np.isfinite(metrics[key]), key
    assert 0 <= metrics["active_units"] <= 4
    assert metrics["linear_probe_accuracy"] > 0.2  # 10 digit classes: chance is 0.1
    assert report["model"]["name"] == "vae" and report["model"]["version"] == 1
    assert "iw_nll" in report["info"]["skipped"]  # Bernoulli on grey levels is not a density
    assert "--allow-unnormalised-nll" in report["info"]["skipped"]["iw_nll"]  # what the CLI user can pass
    assert "active_units" in out and "report:" in out
    # the summary says what it is of (it began with the first metric)
    n = report["info"]["num_examples"]
    assert out.lstrip().splitlines()[0] == f"evaluated:     vae/1, on the {n:,} examples in the test split of digits"

    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("vae-tf").experiment_id],
                              filter_string="tags.`vae_tf.kind` = 'evaluation'")
    assert len(runs) == 1
    run = runs[0]
    assert run.data.metrics["active_units"] == metrics["active_units"]
    # The tag names the training run that exported models/vae/1: the experiment's one other run,
    # which the registry (a second source) also names as the source of version 1.
    trained = [r for r in client.search_runs([run.info.experiment_id]) if r.info.run_id != run.info.run_id]
    assert len(trained) == 1 and trained[0].data.tags.get("vae_tf.kind") != "evaluation"
    assert run.data.tags["vae_tf.evaluates_run_id"] == trained[0].info.run_id
    assert client.get_model_version("vae", "1").run_id == trained[0].info.run_id
    names = {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")}
    assert {"evaluation/report.json", "evaluation/kl_per_dim.png", "evaluation/collapse_curve.png"} <= names
    # The file on disk is the run's report.json (it lacked the collapse block), and the run says how
    # it was evaluated (it had no params).
    (tmp_path / "downloaded").mkdir()
    logged = json.loads(Path(client.download_artifacts(run.info.run_id, "evaluation/report.json",
                                                       str(tmp_path / "downloaded"))).read_text())
    assert logged == report and report["collapse"]["status"] in {"healthy", "partially collapsed", "collapsed"}
    assert report["collapse"]["verdict"] in out
    assert {k: run.data.params[k] for k in ("source", "split", "iw_k", "max_examples")} == {
        "source": "models/vae", "split": "test", "iw_k": "100", "max_examples": "all"}
    # The evaluation run itself, given to evaluate: said as such (it advised "evaluate its registered model")
    capsys.readouterr()
    assert main(["evaluate", f"runs:/{run.info.run_id}", "--no-mlflow"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: run {run.info.run_id} is an evaluation (of vae/1), not a training run; evaluate the model itself: "
        f"runs:/{trained[0].info.run_id}")
    # ... and to `vae-tf train --resume` (it said "no run ... in runs/", as for a mistyped id)
    assert main(["train", "--resume", run.info.run_id]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: run {run.info.run_id} is an evaluation (vae-tf evaluate), not a training run; there is nothing to resume")


@pytest.mark.slow
def test_evaluate_the_registered_model_and_the_run(here, capsys, monkeypatch):
    import tempfile

    tmp_path, uri = here
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where the registered model is downloaded
    assert main(["evaluate", "models:/vae/1", "--iw-k", "0", "--no-mlflow", "--output", "reg.json"]) == 0
    assert main(["evaluate", "models:/no-such-model/1", "--no-mlflow"]) == 2
    assert list(scratch.iterdir()) == []  # each call left a copy of the model (or an empty folder) in /tmp
    document = json.loads((tmp_path / "reg.json").read_text())
    assert document["model"]["source"] == "models:/vae/1" and document["model"]["version_dir"] is None
    by_registry = document["metrics"]
    client = MlflowClient(tracking_uri=uri)
    run_id = client.get_model_version("vae", "1").run_id
    assert main(["evaluate", f"runs:/{run_id}", "--iw-k", "0", "--no-mlflow", "--output", "run.json"]) == 0
    by_run = json.loads((tmp_path / "run.json").read_text())["metrics"]
    # the run registered version 1: its report names it, as models:/vae/1's does (it said null)
    assert json.loads((tmp_path / "run.json").read_text())["model"]["registered"] == "vae/1"
    assert by_registry["active_units"] == by_run["active_units"]
    assert by_registry["kl"] == pytest.approx(by_run["kl"], rel=1e-6)
    # a subsample's report has a name of its own: it overwrote the whole split's
    capsys.readouterr()
    assert main(["evaluate", f"runs:/{run_id}", "--iw-k", "0", "--no-mlflow", "--max-examples", "20",
                 "--disentanglement", "off"]) == 0
    assert json.loads((tmp_path / "evaluation" / "vae-v1-test-max20.json").read_text())["info"]["num_examples"] == 20
    assert re.search(r"^evaluated: +vae/1, on a random 20 of the [0-9,]+ examples in the test split of digits$",
                     capsys.readouterr().out, re.M)
    # the fewest examples --max-examples takes (2: a variance) evaluate; t-SNE, which needs 3, is skipped, said
    assert main(["evaluate", f"runs:/{run_id}", "--iw-k", "0", "--no-mlflow", "--max-examples", "2",
                 "--disentanglement", "off", "-o", "two.json"]) == 0
    assert json.loads((tmp_path / "two.json").read_text())["info"]["skipped"]["tsne"] == (
        "t-SNE needs at least 3 examples, got 2")


@pytest.mark.slow
def test_a_registered_model_is_named_by_its_registry_version_and_a_run_needs_no_local_export(tmp_path, capsys,
                                                                                             monkeypatch):
    """A run with mlflow.register=false exports vae/1 and registers nothing, so the next run's
    export vae/2 is registered as version 1: evaluating models:/vae/1 was labelled "vae v2", and its
    tag vae/2 read like models:/vae/2. A run whose export is gone was refused ("has no local
    export"), and the logged-model URI train prints was refused as "names no version"."""
    import shutil

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    fast = [a for o in FAST for a in ("--set", o)]
    assert main(["train", *fast, "--set", "mlflow.register=false"]) == 0
    assert main(["train", *fast]) == 0
    logged = re.findall(r"logged model (models:/m-[0-9a-f]+)", capsys.readouterr().out)
    assert len(logged) == 1
    client = MlflowClient(tracking_uri=uri)
    assert client.get_model_version("vae", "1").run_id  # the second run's export, models/vae/2
    client.set_registered_model_alias("vae", "champion", "1")
    for source in ("models:/vae/1", "models:/vae@champion", "models:/vae/latest"):
        assert main(["evaluate", source, "--iw-k", "0", "--disentanglement", "off", "--output", "e.json"]) == 0
        document = json.loads((tmp_path / "e.json").read_text())
        assert document["model"]["registered"] == "vae/1" and document["model"]["version"] == 2, source
    assert main(["evaluate", "models:/vae/1", "--iw-k", "0", "--disentanglement", "off"]) == 0
    assert "evaluation/vae-registered-v1-test.json" in capsys.readouterr().out
    runs = client.search_runs([client.get_experiment_by_name("vae-tf").experiment_id],
                              filter_string="tags.`vae_tf.kind` = 'evaluation'")
    assert {r.data.tags["vae_tf.model"] for r in runs} == {"models:/vae/1"}
    assert {r.data.tags["mlflow.runName"] for r in runs} == {"evaluate models:/vae/1 (test)"}
    # models/vae/1, the first run's export, is another model than models:/vae/1 (the second run's
    # models/vae/2): its report and run are named apart (both were vae-v1-test.json, "evaluate vae v1")
    assert main(["evaluate", "models/vae/1", "--iw-k", "0", "--disentanglement", "off"]) == 0
    assert "evaluation/vae-v1-test.json" in capsys.readouterr().out
    reports = {p.name: json.loads(p.read_text())["model"] for p in (tmp_path / "evaluation").glob("*-test.json")}
    assert reports["vae-registered-v1-test.json"]["version"] == 2 and reports["vae-v1-test.json"]["version"] == 1
    runs = client.search_runs([client.get_experiment_by_name("vae-tf").experiment_id],
                              filter_string="tags.`vae_tf.kind` = 'evaluation'")
    assert sorted(r.data.tags["vae_tf.model"] for r in runs) == ["models:/vae/1"] * len(runs[:-1]) + ["vae/1"]

    # The logged model train printed, and a run whose export has gone: read from MLflow.
    assert main(["evaluate", logged[0], "--iw-k", "0", "--disentanglement", "off", "--no-mlflow", "-o", "m.json"]) == 0
    assert json.loads((tmp_path / "m.json").read_text())["model"]["version"] == 2
    first = min((r for r in client.search_runs([client.get_experiment_by_name("vae-tf").experiment_id])
                 if r.data.tags.get("vae_tf.kind") != "evaluation"), key=lambda r: r.info.start_time)
    shutil.move(tmp_path / "models", tmp_path / "moved")
    assert main(["evaluate", f"runs:/{first.info.run_id}", "--iw-k", "0", "--disentanglement", "off", "--no-mlflow",
                 "-o", "r.json"]) == 0
    document = json.loads((tmp_path / "r.json").read_text())
    assert document["model"]["version"] == 1 and document["model"]["version_dir"] is None
    assert document["model"]["trained_in_run"] == first.info.run_id


@pytest.mark.parametrize("ref, match", [
    ("models/nothing", "does not exist"),
    ("runs:/0123456789abcdef", "not found"),
    ("models:/no-such-model/1", "not found in the MLflow registry"),
    ("models:/vae", "models:/vae names no version: give models:/vae/VERSION or models:/vae@ALIAS"),
    ("runs:/", "runs:/ names no run: give runs:/RUN_ID"),
])
def test_bad_model_references_are_one_line_errors(here, capsys, ref, match):
    assert main(["evaluate", ref, "--no-mlflow"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert_one_line(err)
    assert err.startswith("error: ") and match in err


@pytest.mark.parametrize("flag, value, said", [
    ("--iw-k", "150", "argument --iw-k: must be 0 (no IW-NLL), at most 100, or a multiple of 100 (more samples "
                      "are drawn 100 at a time), got 150; use e.g. 200"),
    ("--max-examples", "1", "argument --max-examples: must be at least 2 (active units are a variance over "
                            "examples), got 1"),
])
def test_evaluate_options_the_metrics_cannot_take_are_refused_before_anything_loads(capsys, flag, value, said):
    """--iw-k 150 failed after the data and model loaded (~20 s), naming k= and chunk=, arguments
    the user never gave; on a model without IW-NLL it was accepted silently. --max-examples 1 failed
    as "means has 1 rows"."""
    from training import evaluate
    from vae_tf.metrics import likelihood

    assert evaluate.IW_CHUNK == likelihood.IW_CHUNK
    with pytest.raises(SystemExit) as stopped:
        main(["evaluate", "models/nothing-is-loaded", flag, value])
    assert stopped.value.code == 2
    # one line: argparse's usage block is not printed above it
    assert capsys.readouterr().err.strip().splitlines() == [f"vae-tf evaluate: error: {said} (see vae-tf evaluate --help)"]


@pytest.mark.parametrize("override", ["model.latent.categories=5", "train.epochs=3", "objective.kl_weight=2",
                                      "export.base_dir=x", "name=other"])
def test_a_set_that_would_change_the_model_is_refused_before_the_model_loads(tmp_path, capsys, override, monkeypatch):
    """`vae-tf evaluate models/gc --set model.latent.categories=5` exited 0 with the unchanged
    model's numbers, overwrote its report and logged the override as a param of the run."""
    import vae_tf.export
    from serving.testing import export_tiny_model
    from training.config import load_config
    from training.evaluate import _refuse_model_overrides

    path = export_tiny_model(tmp_path, "configured")
    info_path = path / "assets" / "vae_tf_model.json"
    info = json.loads(info_path.read_text())
    info_path.write_text(json.dumps({**info, "config": load_config(None, []).to_dict()}))
    monkeypatch.setattr(vae_tf.export, "load_vae", lambda *a, **k: pytest.fail("the model was loaded"))
    assert main(["evaluate", str(path), "--set", "data.name=digits", "--set", override]) == 2
    key = override.split("=")[0]
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: --set {key}: an evaluation takes the model as it was exported and reads only data.*, mlflow.*, seed "
        "from --set; to change the model, train one with vae-tf train --set ..."]
    _refuse_model_overrides(["data.name=digits", "mlflow.tracking_uri=sqlite:///m.db", "seed=3", "data.options={a: 1}"])


def test_evaluate_refuses_iw_k_before_anything_loads_when_called_from_python():
    """The MLflow project's evaluate entry (and a notebook) call training.evaluate.evaluate: the same
    rule, before the model is even looked for."""
    from training.evaluate import evaluate

    with pytest.raises(ConfigError, match=r"^iw_k must be 0 \(no IW-NLL\), at most 100, or a multiple of 100 .* got 150; "
                                          r"use e.g. 200$"):
        evaluate("models/nothing-is-loaded", iw_k=150)


def test_one_k_is_drawn_in_one_way_by_evaluate_and_the_suites():
    """K up to 100 in one pass, larger K (multiples of 100) 100 at a time, for `vae-tf evaluate`
    and the suites' children alike; a K evaluate refuses (150: it was drawn in chunks of
    gcd(150, 100) = 50 by a suite) is refused by a suite too, and a negative K by both (it
    reached the metrics after the model had loaded)."""
    from training.compare import Suite, evaluate_options
    from training.evaluate import iw_chunk_for, iw_k_problem

    assert [iw_chunk_for(k) for k in (1, 10, 30, 100, 500)] == [1, 10, 30, 100, 100]
    assert iw_k_problem(0) is None and iw_k_problem(30) is None and iw_k_problem(700) is None
    assert iw_k_problem(-5) == "must be 0 (no IW-NLL) or a number of samples, got -5"
    assert iw_k_problem(150).startswith("must be 0 (no IW-NLL), at most 100, or a multiple of 100")
    suite = Suite(name="s", claim="", base={}, sizes={"quick": {"evaluate": {"iw_k": 150}}}, runs=[], path=Path("s.yaml"))
    with pytest.raises(ConfigError, match=r"^suite 's' size 'quick': evaluate iw_k must be 0 \(no IW-NLL\), at most "
                                          r"100, or a multiple of 100 .* got 150; use e.g. 200$"):
        evaluate_options(suite, "quick")


@pytest.mark.slow
def test_data_of_the_other_kind_is_refused_naming_the_model(here, tmp_path, capsys):
    """The image model of the fixture on sentences: one line saying what the data holds and what
    the model reads (was: the likelihood's support check, advising to 'configure a text model')."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(f"sentence {i} of a few words\n" for i in range(40)))
    assert main(["evaluate", "models/vae", "--no-mlflow", "--set", "data.name=text_file", "--set",
                 f"data.path={corpus}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert_one_line(err)
    assert "holds sentences but models/vae/1 is an image model and reads images/arrays" in err


def test_allow_unnormalised_nll_computes_the_importance_weighted_bound_the_message_offers(here):
    """What the skipped IW-NLL's message offers a CLI user: the importance-weighted bound, which is
    at least the ELBO (Burda et al.: log p(x) >= IW bound >= ELBO), so its NLL is at most -ELBO.
    K = 10, as the quick suites evaluate with (it was refused: "a multiple of 100"), in one pass."""
    assert main(["evaluate", "models/vae", "--no-mlflow", "--allow-unnormalised-nll", "--iw-k", "10",
                 "--max-examples", "64", "--disentanglement", "off", "--output", "allowed.json"]) == 0
    report = json.loads(Path("allowed.json").read_text())
    metrics = report["metrics"]
    assert "iw_nll" not in report["info"]["skipped"] and np.isfinite(metrics["iw_nll"])
    assert metrics["iw_nll"] <= -metrics["elbo"] + 1e-3
    assert "K=10 in chunks of 10," in report["info"]["estimators"]["iw_nll"]


def test_data_of_another_shape_is_refused_naming_both_shapes(here, tmp_path, capsys):
    """The fixture's 8x8 digits model on 4x4 arrays (`--set data.name=npy`): one line naming the
    data's shape and the model's, before any metric runs (was: Keras' shape error, a traceback)."""
    np.save(tmp_path / "small.npy", np.random.default_rng(0).random((40, 4, 4, 1), dtype=np.float32))
    assert main(["evaluate", "models/vae", "--no-mlflow", "--set", "data.name=npy", "--set",
                 f"data.path={tmp_path / 'small.npy'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert_one_line(err)
    assert "has examples of shape (4, 4, 1) but models/vae/1 reads (8, 8, 1)" in err


@pytest.mark.slow
def test_a_model_trained_on_data_not_loadable_here_is_evaluated_on_the_data_set_named_by_set(here, tmp_path, capsys):
    """The saved config names a data set this process does not have (one a training script
    registered, say): without --set that is a one-line error naming it; with `--set
    data.name=digits` the overrides apply before the saved config is validated, so the model is
    evaluated on digits."""
    import json
    import shutil

    from vae_tf.export import ASSET_NAME

    source, _ = here
    copy = tmp_path / "elsewhere" / "vae"
    shutil.copytree(source / "models" / "vae", copy)
    version = sorted(p for p in copy.iterdir() if p.name.isdigit())[-1]
    asset = version / "assets" / ASSET_NAME
    info = json.loads(asset.read_text())
    info["config"]["data"]["name"] = "set_registered_by_a_training_script"
    asset.write_text(json.dumps(info))
    assert main(["evaluate", str(copy), "--no-mlflow", "--iw-k", "0", "--disentanglement", "off"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert_one_line(err)
    assert "unknown data set 'set_registered_by_a_training_script'" in err
    assert main(["evaluate", str(copy), "--no-mlflow", "--iw-k", "0", "--disentanglement", "off",
                 "--set", "data.name=digits"]) == 0


@pytest.mark.slow
def test_a_text_model_evaluated_on_longer_sentences_says_how_many_it_cut(tmp_path, monkeypatch, capsys):
    """A model trained with max_length 4 and long_sentences=truncate: its data loader cuts the
    long sentences, and evaluated on the data read with max_length 12 the model cuts them itself.
    Either way it scores an <eos> after each cut; the perplexity of those cut sentences was
    reported without a word. Counted over the examples evaluated (--max-examples)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    rng = np.random.default_rng(0)
    lengths = [3] * 60 + [6] * 60  # half the sentences longer than the model's 4 words
    (tmp_path / "corpus.txt").write_text("".join(" ".join(f"w{k}" for k in rng.integers(0, 8, n)) + "\n"
                                                 for n in lengths))
    assert main(["train", "--set", "name=short", "--set", "data.name=text_file", "--set", "data.path=corpus.txt",
                 "--set", "data.options={max_length: 4, long_sentences: truncate}", "--set", "train.epochs=1",
                 "--set", "train.verbose=0", "--set", "model.likelihood.name=categorical", "--set",
                 "model.network={kind: gru, embedding: 8, hidden: [8]}", "--set", "model.latent.latent_dim=2",
                 "--set", "mlflow.log_figures=false"]) == 0
    capsys.readouterr()
    from training.config import load_config
    from training.train import prepare_data

    config = load_config(None, ["data.name=text_file", "data.path=corpus.txt",
                                "data.options={max_length: 12, long_sentences: truncate}",
                                "model.likelihood.name=categorical"])
    test = np.asarray(prepare_data(config).split("test")[0][:], dtype=object)
    longer = [len(s.split()) > 4 for s in test]  # the corpus' words are w0..w7: one token each
    assert 0 < sum(longer) < len(test)
    assert main(["evaluate", "models/short", "--iw-k", "0", "--no-mlflow", "-o", "long.json", "--set",
                 "data.options={max_length: 12, long_sentences: truncate}"]) == 0
    out = capsys.readouterr().out
    report = json.loads(Path("long.json").read_text())
    assert report["info"]["truncated_sentences"] == {"by_data": 0, "by_model": sum(longer)}
    assert (f"warning: {sum(longer)} of the {len(test)} sentences evaluated have more than the model's 4 words and "
            "are read to their first 4; the model scores an <eos> after each cut") in out
    # A subsample (--max-examples): counted over the sentences evaluated, not the whole split
    assert main(["evaluate", "models/short", "--iw-k", "0", "--no-mlflow", "-o", "sub.json", "--max-examples", "3",
                 "--disentanglement", "off", "--set", "data.options={max_length: 12, long_sentences: truncate}"]) == 0
    sub = json.loads(Path("sub.json").read_text())["info"]
    from vae_tf.metrics.evaluate import _subsample

    picked = _subsample(len(test), 3, config.seed)  # the examples evaluate_model evaluates
    assert sub["num_examples"] == 3 and sub["truncated_sentences"]["by_model"] == sum(longer[i] for i in picked)
    capsys.readouterr()
    # Its own data, as trained: the loader truncated the long test sentences to 4 words itself
    assert main(["evaluate", "models/short", "--iw-k", "0", "--no-mlflow", "-o", "own.json"]) == 0
    assert "sentences were truncated by the data loader to max_length=4" in capsys.readouterr().out
    assert json.loads(Path("own.json").read_text())["info"]["truncated_sentences"] == {"by_data": sum(longer),
                                                                                       "by_model": 0}
    # Logged to MLflow, a text model's evaluation holds the tables its training run holds, of the split evaluated
    from mlflow.tracking import MlflowClient

    capsys.readouterr()
    assert main(["evaluate", "models/short", "--iw-k", "0", "-o", "logged.json", "--disentanglement", "off"]) == 0
    run_id = next(line.split()[-1] for line in capsys.readouterr().out.splitlines() if line.startswith("MLflow run:"))
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    logged = {Path(a.path).name for a in client.list_artifacts(run_id, "evaluation")}
    assert {"reconstructions.md", "samples.md", "interpolation.md"} <= logged, logged
    table = Path(client.download_artifacts(run_id, "evaluation/reconstructions.md", str(tmp_path))).read_text()
    assert table.startswith("# Reconstructions") and "| w" in table  # the corpus' words


@pytest.mark.slow
def test_an_export_without_a_training_config_is_evaluated_on_the_default_data_with_a_warning(tmp_path, capsys,
                                                                                             monkeypatch):
    """An export made by export_model without a config (a fine-tuned model exported from Python,
    before it kept its origin's) was evaluated on digits without a word."""
    from serving.testing import export_tiny_model

    monkeypatch.chdir(tmp_path)
    path = export_tiny_model(tmp_path / "models", "bare")
    args = ["evaluate", str(path), "--no-mlflow", "--iw-k", "0", "--disentanglement", "off", "--max-examples", "60",
            "-o", "bare.json"]
    assert main(args) == 0
    assert (f"warning: {path} records no training config (exported by export_model without one): evaluating it on "
            "the default data set, digits; name its data with --set data.name=...") in capsys.readouterr().err
    assert main([*args, "--set", "data.name=digits"]) == 0
    assert "records no training config" not in capsys.readouterr().err
    # without a config of its own, model.* says how to read its data (the likelihood's support)
    assert main([*args, "--set", "data.name=digits", "--set", "model.likelihood.name=bernoulli"]) == 0
