"""Experiment suites: parent/child MLflow runs, evaluation of every child, the report, and
resuming without retraining."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.conftest import mlflow_store
from training.compare import child_configs, list_suites, load_suite, run_suite
from vae_tf.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[1]

TINY = {
    "name": "tiny",
    "claim": "two configs run side by side.",
    "base": {"data": {"name": "digits"}, "model": {"latent": {"family": "gaussian", "latent_dim": 3},
                                                    "network": {"kind": "mlp", "hidden": [16]}},
             "train": {"verbose": 0, "early_stopping_patience": None}, "mlflow": {"log_figures": False}},
    "sizes": {"quick": {"seeds": [0], "config": {"train": {"epochs": 1}},
                        "evaluate": {"iw_k": 0, "disentanglement": False}}},
    "runs": [{"name": "vae", "config": {"objective": {"kl_weight": {"kind": "constant"}}}},
             {"name": "beta4", "claim": "more collapse.",
              "config": {"objective": {"kl_weight": {"kind": "constant", "beta": 4.0}}}}],
}


@pytest.fixture
def suite_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


@pytest.mark.slow
def test_suite_runs_children_under_a_parent_and_resumes(suite_file, tmp_path, capsys):
    report = run_suite(str(suite_file), size="quick", output_dir=str(tmp_path / "report"))
    text = report.read_text()
    assert "| run | ELBO | KL | AU | dims KL>0.01 | MI |" in text and "| vae |" in text and "| beta4 |" in text
    assert "**Claim tested.** two configs run side by side." in text and "- **beta4**: more collapse." in text
    assert (tmp_path / "report" / "collapse_curves.png").is_file()
    # every image run's prior samples (first seed), one panel per run, from the runs' own figures
    import matplotlib.image

    sheet = matplotlib.image.imread(tmp_path / "report" / "samples.png")
    assert "(samples.png)" in text and sheet.shape[0] > sheet.shape[1] / 2  # two panels stacked

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("vae-tf-suite-tiny")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("vae_tf.suite_parent") == "true"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(parents) == 1 and len(children) == 2
    assert {c.data.tags["vae_tf.suite_child"] for c in children} == {"vae/0", "beta4/0"}
    assert all("eval_active_units" in c.data.metrics and c.info.status == "FINISHED" for c in children)
    assert any(a.path == "report" for a in client.list_artifacts(parents[0].info.run_id))

    capsys.readouterr()
    run_suite(str(suite_file), size="quick", output_dir=str(tmp_path / "report2"))
    out = capsys.readouterr().out
    assert out.count("finished earlier") == 2 and "training" not in out
    assert len(client.search_runs([exp.experiment_id])) == 3  # nothing retrained
    assert (tmp_path / "report2" / "report.md").read_text().splitlines()[6:] == text.splitlines()[6:]
    assert (tmp_path / "report2" / "samples.png").is_file()  # rebuilt from the finished runs' artifacts

    # The suite edited (beta4's beta): that child is trained again, the other reused; each child
    # run records the digest of the config it trained
    edited = yaml.safe_load(suite_file.read_text())
    edited["runs"][1]["config"]["objective"]["kl_weight"]["beta"] = 8.0
    suite_file.write_text(yaml.safe_dump(edited))
    run_suite(str(suite_file), size="quick", output_dir=str(tmp_path / "report3"))
    out = capsys.readouterr().out
    assert "suite child beta4/0: its config or evaluation changed since run" in out
    assert out.count("finished earlier") == 1 and "beta4/0: training" in out
    runs = client.search_runs([exp.experiment_id])
    retrained = [r for r in runs if r.data.tags.get("vae_tf.suite_child") == "beta4/0"]
    assert len(runs) == 4 and len(retrained) == 2
    assert len({r.data.tags["vae_tf.suite_child_config"] for r in retrained}) == 2
    assert sorted(r.data.params["objective.kl_weight.beta"] for r in retrained) == ["4.0", "8.0"]
    # A part of the suite (--runs, --seeds) writes its own report, named by the part and logged to
    # the parent beside the whole's: it overwrote the whole suite's report (2 rows -> 1) and its
    # Command line left --runs out, so "the same command resumes the suite" named another command.
    part = run_suite(str(suite_file), size="quick", only=["beta4"])
    assert part.resolve() == tmp_path / "reports" / "tiny-quick-runs-beta4" / "report.md"
    text = part.read_text()
    # a suite of one's own is named by its file (`--suite tiny` finds only the shipped ones)
    assert f"Command: `vae-tf compare --suite {suite_file} --quick --runs beta4`" in text and "| vae |" not in text
    assert not (tmp_path / "reports" / "tiny-quick").exists()
    parent = parents[0].info.run_id
    assert [a.path for a in client.list_artifacts(parent, "report/tiny-quick-runs-beta4")
            if a.path.endswith("report.md")] == ["report/tiny-quick-runs-beta4/report.md"]
    whole = client.download_artifacts(parent, "report/report.md", str(tmp_path))
    assert "| vae |" in open(whole).read() and "| beta4 |" in open(whole).read()

    # `vae-tf train --resume` of a suite's run ids: the parent has no run directory (it said "no
    # run ... in runs/"); a child is found in the directory it was trained in, and named there.
    from training.resume import find_run

    with pytest.raises(ConfigError) as said:
        find_run("runs", parent)
    assert str(said.value) == (f"run {parent} is the parent run of suite 'tiny' (quick), which has no checkpoint "
                               f"of its own; resume the suite by running it again: `vae-tf compare --suite {suite_file} "
                               "--quick` (finished children are reused, an interrupted one goes on from its checkpoint)")
    with pytest.raises(ConfigError, match=rf"^run {parent} in runs/{parent} is not a training run \(its run.json has "
                                          r"no config: a suite's parent run, or a run of an older vae-tf\); there is"):
        find_run("runs", parent, tracking_uri=f"sqlite:///{tmp_path / 'no-such.db'}")  # MLflow not asked
    assert not (tmp_path / "no-such.db").exists()
    child = children[0].info.run_id
    assert find_run("runs", child)[1]["mlflow_run_id"] == child
    with pytest.raises(ConfigError, match=rf"^run {child} was trained with train.run_dir=runs, not in elsewhere/: "
                                          r"resume it with --set train.run_dir=runs \(from the directory it was"):
        find_run("elsewhere", child)
    with pytest.raises(ConfigError, match=r"^no run '0{32}' in runs/ to resume; list them with `ls runs`"):
        find_run("runs", "0" * 32)


def test_a_part_of_a_suite_is_named_by_its_runs_and_seeds(suite_file):
    from training.compare import _command, report_name

    suite = load_suite(str(suite_file))
    whole, part = child_configs(suite, "quick"), child_configs(suite, "quick", seeds=[0, 2], only=["beta4"])
    assert (report_name(suite, "quick", whole), _command(suite, "quick", whole)) == (
        "tiny-quick", f"vae-tf compare --suite {suite_file} --quick")
    assert (report_name(suite, "quick", part), _command(suite, "quick", part)) == (
        "tiny-quick-runs-beta4-seeds-0,2", f"vae-tf compare --suite {suite_file} --quick --runs beta4 --seeds 0,2")
    shipped = load_suite("collapse")  # a shipped suite by its name
    assert _command(shipped, "quick") == "vae-tf compare --suite collapse --quick"
    # the size's own seeds, or every run, given explicitly: the whole suite
    assert report_name(suite, "quick", child_configs(suite, "quick", seeds=[0], only=["vae", "beta4"])) == "tiny-quick"


def test_shipped_suites_resolve_to_valid_configs():
    assert {"collapse", "selective_collapse", "decoder_variance", "remedy_matrix"} <= set(list_suites())
    for name in list_suites():
        suite = load_suite(name)
        for size in suite.sizes:
            children = child_configs(suite, size)
            assert children and all(config.train.epochs > 0 for _, _, config, _ in children)


def test_a_size_adjusts_single_runs_after_their_own_config(suite_file):
    """``sizes.<size>.runs.<run>`` is merged last: the text suite's WordNet size gives the runs
    that bring their own network (Skip, word dropout) its own width, not the synthetic one's."""
    suite = load_suite("text_collapse")
    networks = {name: config.model.network for name, _, config, _ in child_configs(suite, "full_wordnet", seeds=[0])}
    assert networks["vae"]["hidden"] == [128] and networks["vae"]["embedding"] == 64
    assert networks["skip_vae"]["hidden"] == [128, 128] and networks["skip_vae"]["skip"] is True
    assert networks["annealing+word_dropout"]["word_dropout"] == 0.3
    assert networks["annealing+word_dropout"]["hidden"] == [128]
    quick = {name: config.model.network for name, _, config, _ in child_configs(suite, "quick")}
    assert quick["skip_vae"]["hidden"] == [50, 50]
    tree = yaml.safe_load(suite_file.read_text())
    tree["sizes"]["quick"]["runs"] = {"ghost": {"train": {"epochs": 2}}}
    suite_file.write_text(yaml.safe_dump(tree))
    with pytest.raises(ConfigError, match=r"size 'quick' adjusts unknown run\(s\) \['ghost'\]; runs: vae, beta4"):
        child_configs(load_suite(str(suite_file)), "quick")


def test_an_unknown_evaluate_option_is_a_one_line_error_before_training(suite_file):
    tree = yaml.safe_load(suite_file.read_text())
    tree["sizes"]["quick"]["evaluate"] = {"iw_k": 10, "tsne_points": 300}
    suite_file.write_text(yaml.safe_dump(tree))
    with pytest.raises(ConfigError, match=r"suite 'tiny' size 'quick': unknown evaluate option\(s\) \['tsne_points'\]; "
                                          r"options: iw_k, disentanglement, fd, tsne, tsne_max_points"):
        run_suite(str(suite_file), size="quick")
    assert not (suite_file.parent / "reports").exists()


@pytest.mark.parametrize("evaluate, message", [
    ({"iw_k": -5}, "evaluate iw_k must be an integer >= 0, got -5"),  # it failed after the child had trained
    ({"tsne": "no"}, "evaluate tsne must be true or false, got 'no'"),  # read as true: t-SNE ran
    ({"tsne_max_points": 0}, "evaluate tsne_max_points must be an integer >= 2, got 0"),
    ({"disentanglement_sizes": {"num_train": -1}}, "evaluate disentanglement_sizes must map num_train, num_eval"),
])
def test_a_suite_s_evaluate_values_are_checked_before_anything_runs(suite_file, evaluate, message):
    tree = yaml.safe_load(suite_file.read_text())
    tree["sizes"]["quick"]["evaluate"] = evaluate
    suite_file.write_text(yaml.safe_dump(tree))
    with pytest.raises(ConfigError, match="^suite 'tiny' size 'quick': " + re.escape(message)):
        child_configs(load_suite(str(suite_file)), "quick")


@pytest.mark.slow
def test_a_run_that_cannot_build_is_named_before_any_child_trains(suite_file, capsys):
    """A likelihood's `sigma: -1` or an MI target the family lacks was found when that run's turn
    came, after the runs before it had trained, and the error did not say which run it was."""
    tree = yaml.safe_load(suite_file.read_text())
    tree["runs"][1]["config"]["model"] = {"likelihood": {"name": "gaussian", "sigma": -1}}
    suite_file.write_text(yaml.safe_dump(tree))
    with pytest.raises(ConfigError) as caught:
        run_suite(str(suite_file), size="quick")
    assert str(caught.value) == "suite 'tiny' run 'beta4': model.likelihood.sigma must be > 0, got -1"
    assert ": training" not in capsys.readouterr().out and not (suite_file.parent / "runs").exists()
    tree["runs"][1]["config"]["model"] = {"likelihood": {"name": "bernouli"}}  # found by the config's own check
    suite_file.write_text(yaml.safe_dump(tree))
    with pytest.raises(ConfigError, match=r"^suite 'tiny' run 'beta4': .*bernouli"):
        child_configs(load_suite(str(suite_file)), "quick")


def test_compare_cli_errors_are_one_line(suite_file, capsys):
    from vae_tf_cli import main

    assert main(["compare", "--suite", "nope", "--quick"]) == 2
    assert capsys.readouterr().err.strip().startswith("error: unknown suite 'nope'")
    assert main(["compare", "--suite", str(suite_file), "--quick", "--seeds", "a,b"]) == 2
    assert "--seeds must be comma-separated integers" in capsys.readouterr().err
    for argv, message in ((["--seeds", ","], "--seeds must name at least one seed"),
                          (["--seeds", "5,5"], "--seeds must name at least one seed, each once"),
                          (["--runs", "vae,vae"], "--runs must name at least one run, each once"),
                          (["--size", "full"], "--quick is --size quick; drop it or --size full")):
        assert main(["compare", "--suite", str(suite_file), "--quick", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
    assert not (suite_file.parent / "reports").exists()  # nothing written by a refused request
    (suite_file.parent / "afile").write_text("not a folder")
    assert main(["compare", "--suite", str(suite_file), "--quick", "--output-dir",
                 str(suite_file.parent / "afile" / "rep")]) == 2
    err = capsys.readouterr()
    assert err.err.strip().endswith("set --output-dir to a writable folder") and "training" not in err.out


def test_bad_suite_requests_are_one_line_errors(suite_file):
    with pytest.raises(ConfigError, match="unknown suite 'nope'; choose one of"):
        load_suite("nope")
    # a path: said as a missing file (it was "unknown suite '/tmp/none.yaml'", as for a misspelt name)
    missing = str(suite_file.parent / "none.yaml")
    with pytest.raises(ConfigError, match=f"^suite file '{missing}' does not exist; give a suite YAML or one of the "
                                          "shipped suites: .*collapse"):
        load_suite(missing)
    with pytest.raises(ConfigError, match="has no size 'huge'"):
        child_configs(load_suite(str(suite_file)), "huge")
    with pytest.raises(ConfigError, match="has no run\\(s\\) \\['ghost'\\]; runs: vae, beta4"):
        child_configs(load_suite(str(suite_file)), "quick", only=["ghost"])



def test_a_suite_is_refused_inside_the_caller_s_own_mlflow_run(suite_file, tmp_path, monkeypatch):
    """Inside `with mlflow.start_run():` its children nested under the caller's run, in the caller's
    experiment, where the next call could not find them (it retrained all of them)."""
    import mlflow

    from training.compare import run_suite

    monkeypatch.chdir(tmp_path)
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        mlflow.set_experiment("caller")
        with mlflow.start_run() as caller:
            with pytest.raises(ConfigError) as caught:
                run_suite(str(suite_file))
        assert str(caught.value) == (
            "vae-tf compare makes its own parent run (experiment vae-tf-suite-NAME) and finds its finished children "
            f"under it; call it outside the MLflow run {caller.info.run_id} that is active here")
        assert sorted(e.name for e in mlflow.search_experiments()) == ["Default", "caller"]  # no suite's made
    finally:
        mlflow.set_tracking_uri(previous)


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.update(bsae=t.pop("base")), "unknown key 'bsae'; did you mean 'base'?"),
    (lambda t: t["sizes"]["quick"].update(cofig=t["sizes"]["quick"].pop("config")), "size 'quick' has an unknown key 'cofig'; did you mean 'config'?"),
    (lambda t: t["runs"][1].update(clam=t["runs"][1].pop("claim")), "run 'beta4' has an unknown key 'clam'; did you mean 'claim'?"),
    (lambda t: t["sizes"]["quick"].update(seeds="zero"), "seeds must be a non-empty list of distinct integers"),
    (lambda t: t["sizes"]["quick"].update(seeds=[1, 1]), "seeds must be a non-empty list of distinct integers"),
    (lambda t: t["runs"].append("beta2"), "run 3 must be a mapping"),
    (lambda t: t.update(runs=5), "'runs' must be a list of runs, found int"),
    # it wrote an empty report; a "/" in a group crashed the report after every child had trained
    (lambda t: t.update(runs=[]), "has no runs; list at least one under 'runs' (name, config)"),
    (lambda t: t["runs"][0].update(group="kl/beta"), "run 'vae': group must be a name of letters, digits, spaces "
                                                     "and _ . + -, got 'kl/beta'"),
    (lambda t: t["runs"][0].update(group=["ctl"]), "run 'vae': group must be a name"),
])
def test_a_suite_yaml_with_a_mistake_is_a_one_line_error_naming_it(suite_file, edit, message):
    """A misspelt key was silently ignored (a misspelt base trained every child on the defaults);
    a wrong shape was a traceback."""
    tree = yaml.safe_load(suite_file.read_text())
    edit(tree)
    suite_file.write_text(yaml.safe_dump(tree))
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_suite(str(suite_file))
    suite_file.write_text("name: tiny\nruns: [\n")
    with pytest.raises(ConfigError, match=r"is not valid YAML at line 3"):
        load_suite(str(suite_file))


def _suite_process(suite_file, tmp_path, *extra):
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(MLFLOW_TRACKING_URI=mlflow_store(tmp_path), TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    return subprocess.Popen([sys.executable, "-m", "vae_tf_cli", "compare", "--suite", str(suite_file), "--quick",
                             "--output-dir", str(tmp_path / "report"), *extra], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_a_killed_suite_resumes_its_interrupted_child_from_its_checkpoint(suite_file, tmp_path):
    """kill -9 while the first child trains (after its first checkpoint), then run the same
    command: the child goes on in its own MLflow run from its checkpoint; nothing is trained twice."""
    import signal
    import time

    tree = yaml.safe_load(suite_file.read_text())
    tree["sizes"]["quick"]["config"]["train"] = {"epochs": 4, "checkpoint_every_steps": 4, "steps_per_execution": 2}
    suite_file.write_text(yaml.safe_dump(tree))
    victim = _suite_process(suite_file, tmp_path)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and victim.poll() is None:
        if list((tmp_path / "runs").glob("*/checkpoints/checkpoint")):
            victim.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL, victim.stdout.read()[-2000:]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("vae-tf-suite-tiny")
    killed = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("vae_tf.suite_child") == "vae/0"]
    assert len(killed) == 1 and killed[0].info.status == "RUNNING"

    resumed = _suite_process(suite_file, tmp_path)
    out = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0, out[-3000:]
    assert f"vae/0: resuming the interrupted run {killed[0].info.run_id}" in out
    children = [r for r in client.search_runs([exp.experiment_id]) if "vae_tf.suite_child" in r.data.tags]
    assert sorted(r.data.tags["vae_tf.suite_child"] for r in children) == ["beta4/0", "vae/0"]  # no third run
    assert all(r.info.status == "FINISHED" for r in children)
    history = client.get_metric_history(killed[0].info.run_id, "loss")
    assert sorted(m.step for m in history) == [0, 1, 2, 3]  # every epoch logged once


@pytest.mark.slow
def test_jobs_trains_children_in_processes_of_their_own(suite_file, tmp_path):
    done = _suite_process(suite_file, tmp_path, "--jobs", "2")
    out = done.communicate(timeout=600)[0]
    assert done.returncode == 0, out[-3000:]
    assert out.count("in a process of its own") == 2
    # the children this call trained are not reported as "finished earlier, reusing run ..."
    assert out.count("trained in its own process, run") == 2 and "finished earlier" not in out, out[-3000:]
    # the report of what had finished, written when the first child process exits (the other may
    # have finished its MLflow run by the time the store is read)
    assert re.search(r"\[tiny\] [12] of 2 children finished: ", out), out[-3000:]
    text = (tmp_path / "report" / "report.md").read_text()
    assert "| vae |" in text and "| beta4 |" in text
    assert sorted(p.name for p in (tmp_path / "report" / "logs").iterdir()) == ["beta4-0.log", "vae-0.log"]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("vae-tf-suite-tiny")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("vae_tf.suite_parent") == "true"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(children) == 2 and all("eval_active_units" in c.data.metrics for c in children)
    import json

    kept = json.loads((tmp_path / "report" / "children.json").read_text())
    assert kept["pending"] == [] and {k: v["run_id"] for k, v in kept["children"].items()} == {
        c.data.tags["vae_tf.suite_child"]: c.info.run_id for c in children}


def test_a_report_reads_its_childrens_artifacts_without_leaving_copies_behind(tmp_path, monkeypatch):
    """The report reads three small artifacts per child (curve, t-SNE, prior samples). MLflow's
    ``download_artifacts`` without a destination puts each in a new folder under the system's
    temporary directory and never removes it: a suite left hundreds behind in /tmp."""
    import json
    import tempfile

    import matplotlib.image
    import numpy as np

    from training.compare import _load_curve, _load_image, _load_json

    uri = mlflow_store(tmp_path)
    client = MlflowClient(tracking_uri=uri)
    run_id = client.create_run(client.create_experiment("leak")).info.run_id
    written = tmp_path / "written"
    written.mkdir()
    curve = {"eps": [0.01, 0.1], "fraction": [1.0, 0.5]}
    (written / "collapse_curve.json").write_text(json.dumps(curve))
    (written / "tsne.json").write_text(json.dumps({"x": [[1.5, -2.0]]}))
    pixels = np.random.default_rng(0).random((4, 5, 3))
    matplotlib.image.imsave(written / "samples.png", pixels)
    client.log_artifacts(run_id, str(written), "evaluation")
    scratch = tmp_path / "system-tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)

    assert _load_curve(client, run_id) == [curve["eps"], curve["fraction"]]
    assert _load_json(client, run_id, "evaluation/tsne.json") == {"x": [[1.5, -2.0]]}
    image = _load_image(client, run_id, "evaluation/samples.png")
    np.testing.assert_allclose(image[..., :3], pixels, atol=1 / 255)
    assert _load_json(client, run_id, "evaluation/missing.json") is None  # a missing panel
    assert list(scratch.iterdir()) == []


def test_raw_pixel_kmeans_baseline_is_kmeans_on_each_seeds_test_split():
    """The baseline under a report's cluster accuracies, computed here independently: k-means on
    the raw test pixels of each seed's split, clusters matched to labels by the Hungarian method."""
    import numpy as np
    from scipy.optimize import linear_sum_assignment
    from sklearn.cluster import KMeans

    from training.compare import raw_kmeans_baseline
    from training.train import prepare_data

    children = child_configs(load_suite("mi_categorical"), "quick", seeds=[0, 1])
    baseline = raw_kmeans_baseline(children)
    assert set(baseline) == {0, 1}
    for seed in (0, 1):
        config = next(c for _, s, c, _ in children if s == seed)
        x, y = prepare_data(config).split("test")
        predicted = KMeans(n_clusters=10, n_init=10, random_state=seed).fit_predict(x.reshape(len(x), -1))
        counts = np.zeros((10, 10))
        np.add.at(counts, (predicted, y), 1)
        rows, cols = linear_sum_assignment(-counts)
        assert baseline[seed] == pytest.approx(counts[rows, cols].sum() / len(y), abs=1e-12)
        assert 0.5 < baseline[seed] < 1.0  # 8x8 digits cluster well above chance (0.1) on raw pixels
    # Sentences have no pixels: no baseline.
    assert raw_kmeans_baseline(child_configs(load_suite("text_collapse"), "quick")[:1]) is None


def test_a_report_of_a_suite_still_running_says_so_and_counts_the_seeds(suite_file, tmp_path):
    """The report and children.json written between children: finished rows with the number of
    seeds behind them, the unfinished run as a dash, the pending children named."""
    import json

    from training.compare import write_children_json, write_report

    tree = yaml.safe_load(suite_file.read_text())
    tree["sizes"]["quick"]["seeds"] = [0, 1]
    suite_file.write_text(yaml.safe_dump(tree))
    suite = load_suite(str(suite_file))
    children = child_configs(suite, "quick")
    rows = {("vae", 0): {"eval_kl": 1.0, "eval_active_units": 2.0},
            ("vae", 1): {"eval_kl": 3.0, "eval_active_units": 4.0, "eval_mi_full": float("nan")},
            ("beta4", 1): {"eval_kl": 0.25, "eval_active_units": 1.0}}
    report = write_report(suite, "quick", children, rows, {}, tmp_path / "r").read_text().splitlines()
    assert report[2].startswith("**In progress: 3 of 4 children finished**") and report[2].endswith(
        "still to train: beta4/0. The same command resumes the suite and rewrites this report.")
    assert "| run | seeds | KL | AU | MI |" in report
    # mean ± sample std of (1, 3) = 2.00 ± 1.41; one seed: the value alone; NaN left out
    assert "| vae | 2 | 2.00 ± 1.41 | 3.0 ± 1.4 | — |" in report
    assert "| beta4 | 1 | 0.25 | 1.0 | — |" in report

    path = write_children_json(suite, "quick", children, rows, {"vae/0": "abc"}, tmp_path / "r")
    doc = json.loads(path.read_text())  # strict JSON: a NaN metric is null
    assert (doc["finished"], doc["total"], doc["pending"]) == (3, 4, ["beta4/0"])
    assert doc["children"]["vae/0"] == {"run_id": "abc", "metrics": {"eval_active_units": 2.0, "eval_kl": 1.0}}
    assert doc["children"]["vae/1"]["metrics"]["eval_mi_full"] is None
    assert doc["command"] == f"vae-tf compare --suite {suite_file} --quick"

    done = write_report(suite, "quick", children, {**rows, ("beta4", 0): {"eval_kl": 0.75}}, {}, tmp_path / "r")
    text = done.read_text()
    assert "In progress" not in text and "| run | KL | AU | MI |" in text
    # AU of beta4 from seed 1 alone (seed 0 has none): said, not shown as the mean over seeds 0, 1
    assert "| beta4 | 0.50 ± 0.35 | 1.0 (1 of 2 seeds) | — |" in text
    assert "| vae | 2.00 ± 1.41 | 3.0 ± 1.4 | — |" in text
    assert "(seeds 0, 1; mean ± std over seeds; test split)" in text
    # the columns' units and definitions under the table, for the columns shown only
    legend = next(line for line in text.splitlines() if line.startswith("Columns: "))
    assert "KL: nats, summed over latent dims" in legend and "AU: active units, Var_x E[z_u | x] ≥ 0.01" in legend
    assert "MI: I_q(x; z) in nats" in legend and "IW-NLL" not in legend and "probe" not in legend


def test_a_one_seed_report_says_it_has_no_std_and_the_k_of_its_iw_nll(suite_file, tmp_path):
    """A quick suite is one seed: its header said "mean ± std over seeds" over plain values, and
    its IW-NLL column did not say K (10 at quick sizes against 100 at full ones)."""
    from training.compare import write_report

    tree = yaml.safe_load(suite_file.read_text())
    tree["sizes"]["quick"]["evaluate"] = {**tree["sizes"]["quick"].get("evaluate", {}), "iw_k": 10}
    suite_file.write_text(yaml.safe_dump(tree))
    suite = load_suite(str(suite_file))
    children = child_configs(suite, "quick")
    rows = {(name, seed): {"eval_iw_nll": 30.5, "eval_kid_classifier": 0.01} for name, seed, *_ in children}
    text = write_report(suite, "quick", children, rows, {}, tmp_path / "r", figures=False).read_text()
    assert "(seeds 0; one seed, so no std; test split)" in text
    legend = next(line for line in text.splitlines() if line.startswith("Columns: "))
    assert "K = 10 samples" in legend and "not FID / KID" in legend


def test_a_progress_report_redraws_its_figures_at_most_once_per_interval(suite_file, tmp_path, monkeypatch, capsys):
    """Children of a quick suite finish seconds apart: the progress report after each one has the
    table, and the figures only when the last drawing is older than the interval."""
    import training.compare as compare

    suite = load_suite(str(suite_file))
    children = child_configs(suite, "quick")
    rows, curves = {("vae", 0): {"eval_kl": 1.0}}, {"vae": [[[0.01, 0.1, 1.0], [0.0, 0.5, 1.0]]]}
    progress = compare._ProgressReport(suite, "quick", children, tmp_path / "r", sys.stdout)
    progress.write(rows, {}, curves)
    first = (tmp_path / "r" / "report.md").read_text()
    assert "](collapse_curves.png)" in first and (tmp_path / "r" / "collapse_curves.png").is_file()
    (tmp_path / "r" / "collapse_curves.png").unlink()
    progress.write(rows, {}, curves)  # seconds later: the table again, no drawing
    second = (tmp_path / "r" / "report.md").read_text()
    assert "| vae | 1 | 1.00 |" in second and "collapse_curves.png" not in second
    assert "Figures are redrawn at most every 60 s while the suite runs" in second
    assert not (tmp_path / "r" / "collapse_curves.png").exists()
    monkeypatch.setattr(compare, "PROGRESS_FIGURE_INTERVAL_S", 0.0)
    progress.write(rows, {}, curves)
    assert "](collapse_curves.png)" in (tmp_path / "r" / "report.md").read_text()
    assert (tmp_path / "r" / "collapse_curves.png").is_file()
    assert capsys.readouterr().out.count("[tiny] 1 of 2 children finished") == 3


@pytest.mark.slow
def test_a_suite_that_dies_leaves_the_report_of_what_finished(suite_file, tmp_path, monkeypatch, capsys):
    """beta4/0 finished in an earlier call; this call trains vae/0, then dies on vae/1: the report
    directory already holds both finished children (also the one after the dead one in the
    suite's order), with their metrics exactly as MLflow logged them."""
    import json

    import training.train

    tree = yaml.safe_load(suite_file.read_text())
    tree["sizes"]["quick"]["seeds"] = [0, 1]
    suite_file.write_text(yaml.safe_dump(tree))
    run_suite(str(suite_file), size="quick", seeds=[0], only=["beta4"], output_dir=str(tmp_path / "first"))
    real, calls = training.train.run_training, []

    def dies_on_the_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(training.train, "run_training", dies_on_the_second)
    capsys.readouterr()
    with pytest.raises(KeyboardInterrupt):
        run_suite(str(suite_file), size="quick", output_dir=str(tmp_path / "report"))
    doc = json.loads((tmp_path / "report" / "children.json").read_text())
    assert (doc["finished"], doc["total"], doc["pending"]) == (2, 4, ["vae/1", "beta4/1"])
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    logged = {key: client.get_run(doc["children"][key]["run_id"]) for key in ("vae/0", "beta4/0")}
    for key, run in logged.items():
        assert run.data.tags["vae_tf.suite_child"] == key
        kept = doc["children"][key]["metrics"]
        assert kept["eval_kl"] == pytest.approx(run.data.metrics["eval_kl"])
        assert kept["eval_active_units"] == run.data.metrics["eval_active_units"]
    text = (tmp_path / "report" / "report.md").read_text()
    assert "**In progress: 2 of 4 children finished**" in text
    for name in ("vae", "beta4"):
        assert f"| {name} | 1 | {logged[name + '/0'].data.metrics['eval_elbo']:.2f} |" in text
    assert f"[tiny] 2 of 4 children finished: {tmp_path / 'report' / 'report.md'}" in capsys.readouterr().out

def test_an_unreachable_tracking_server_is_one_line_within_seconds(suite_file, monkeypatch, capsys):
    """vae-tf compare needs MLflow (finished children are found there): MLflow's client retried
    for minutes and then failed with a traceback; now one quick request decides (loopback, a port
    nothing listens on)."""
    import socket

    from vae_tf_cli import main

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the block ends
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    assert main(["compare", "--suite", str(suite_file), "--quick"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"error: MLflow at http://127.0.0.1:{port} cannot be reached (connection refused); vae-tf compare "
                   "finds a suite's finished children there: start the server, or use a local store "
                   "(MLFLOW_TRACKING_URI=sqlite:///mlflow.db)")
    import os

    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ  # the probe's settings were put back


def test_the_keras_step_retracing_filter_drops_that_warning_only():
    """Only TensorFlow's retracing warning about Keras' step functions is dropped, and only while
    the context is on; the same warning about any other function, and other records, pass."""
    import logging

    from training.compare import keras_step_traces_counted_per_child

    def record(message: str) -> logging.LogRecord:
        return logging.LogRecord("tensorflow", logging.WARNING, __file__, 1, message, None, None)

    keras_step = ("5 out of the last 11 calls to <function TensorFlowTrainer._make_function.<locals>."
                  "multi_step_on_iterator at 0x7f> triggered tf.function retracing. Tracing is expensive")
    other = "5 out of the last 5 calls to <function my_step at 0x7f> triggered tf.function retracing."
    logger = logging.getLogger("tensorflow")
    with keras_step_traces_counted_per_child():
        assert not logger.filter(record(keras_step))
        assert logger.filter(record(other))
        predict = keras_step.replace("_make_function.<locals>.multi_step_on_iterator",
                                     "make_predict_function.<locals>.one_step_on_data_distributed")
        assert not logger.filter(record(predict))
        assert logger.filter(record("TensorFlowTrainer._make_function.<locals>.multi_step_on_iterator is slow"))
    assert logger.filter(record(keras_step))  # removed afterwards


@pytest.mark.slow
@pytest.mark.parametrize("filtered", [False, True])
def test_models_trained_one_after_another_warn_of_retracing_only_without_the_filter(filtered):
    """What the filter is for, in a fresh process: four small models trained one after another, each
    tracing its train and test functions once (the suite's case), make TensorFlow warn that Keras'
    step function retraces; inside keras_step_traces_counted_per_child() nothing is printed. (If a
    Keras release stops warning without the filter, the filter can go.)"""
    import os
    import subprocess
    from pathlib import Path

    code = f"""
import contextlib
import vae_tf_cli
vae_tf_cli.keep_optional_libraries_out_of_keras()  # as a vae-tf process starts (~1 s less)
import numpy as np
import keras
from training.compare import keras_step_traces_counted_per_child
from vae_tf.models import build_vae
x = np.random.default_rng(0).random((96, 8, 8, 1)).astype(np.float32)
for seed in range(4):
    with keras_step_traces_counted_per_child() if {filtered} else contextlib.nullcontext():
        model = build_vae((8, 8, 1), latent={{"family": "gaussian", "latent_dim": 2}},
                          network={{"kind": "mlp", "hidden": [8]}}, seed=seed)
        model.compile(optimizer=keras.optimizers.Adam(1e-3), steps_per_execution=4)
        model.fit(x[:64], epochs=1, batch_size=16, validation_data=(x[64:],), verbose=0)
        model.evaluate(x[64:], batch_size=16, verbose=0)
print("trained 4 models")
"""
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(root)})
    assert proc.returncode == 0 and "trained 4 models" in proc.stdout, proc.stderr[-3000:]
    warnings = [line for line in proc.stderr.splitlines() if "triggered tf.function retracing" in line]
    if filtered:
        assert warnings == []
    else:
        assert warnings and all("multi_step_on_iterator" in line for line in warnings), proc.stderr[-3000:]


def test_a_second_compare_of_the_same_suite_is_refused_while_the_first_runs(suite_file, tmp_path):
    """Two compares of one suite at once: the second resumed the first's running child beside it
    (epochs logged twice) and trained every other child a second time. The lock is the operating
    system's (flock): it goes with the process that holds it, however that process ends."""
    import mlflow

    from training.compare import _suite_lock

    uri = mlflow_store(tmp_path)
    held = _suite_lock(uri, "vae-tf-suite-tiny", load_suite(str(suite_file)), "quick")
    try:
        with pytest.raises(ConfigError) as refused:
            run_suite(str(suite_file), size="quick", output_dir=str(tmp_path / "report"))
        assert str(refused.value) == (
            f"another vae-tf compare of suite tiny (quick, experiment vae-tf-suite-tiny) is running on this machine "
            f"(process {__import__('os').getpid()}) with the same MLflow runs; wait for it to end or stop it, then "
            "run this again (it resumes)")
        assert MlflowClient(tracking_uri=uri).get_experiment_by_name("vae-tf-suite-tiny") is None  # nothing made
        # another size, or another store, is another suite run: not refused
        _suite_lock(uri, "vae-tf-suite-tiny", load_suite(str(suite_file)), "full").close()
        _suite_lock(f"sqlite:///{tmp_path / 'other.db'}", "vae-tf-suite-tiny", load_suite(str(suite_file)),
                    "quick").close()
        # the same relative URI from another folder is another store (pytest-xdist workers, projects)
        (tmp_path / "elsewhere").mkdir()
        with pytest.MonkeyPatch.context() as patch:
            patch.chdir(tmp_path)
            here = _suite_lock("sqlite:///mlflow.db", "e", load_suite(str(suite_file)), "quick")
            patch.chdir(tmp_path / "elsewhere")
            _suite_lock("sqlite:///mlflow.db", "e", load_suite(str(suite_file)), "quick").close()
            here.close()
    finally:
        held.close()
    _suite_lock(uri, "vae-tf-suite-tiny", load_suite(str(suite_file)), "quick").close()  # released with its holder
    mlflow.set_tracking_uri(None)


def test_a_jobs_child_ends_when_the_suite_process_is_killed(tmp_path):
    """`kill -9` of `vae-tf compare --jobs 2` left its children training; the rerun then resumed
    their runs beside them, logging every metric twice. A child asks Linux for SIGTERM when its
    parent ends (PR_SET_PDEATHSIG), and refuses to start if the suite's process is gone already."""
    import os
    import signal
    import subprocess
    import time

    if not sys.platform.startswith("linux"):
        pytest.skip("the parent-death signal is Linux's")
    # a stand-in for the suite's process: starts a child as _run_parallel does, then waits
    suite = subprocess.Popen([sys.executable, "-c", (
        "import os, subprocess, sys, time\n"
        "env = {**os.environ, 'VAE_TF_SUITE_PID': str(os.getpid())}\n"
        "code = 'import time; from training.compare import _stop_with_the_suite; _stop_with_the_suite(); "
        "print(\"child ready\", flush=True); time.sleep(120)'\n"
        "child = subprocess.Popen([sys.executable, '-c', code], env=env)\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(120)\n")], stdout=subprocess.PIPE, text=True, cwd=str(REPO_ROOT))
    child_pid = int(suite.stdout.readline())
    assert suite.stdout.readline().strip() == "child ready"
    suite.kill()  # SIGKILL: the suite's process runs no cleanup of its own
    suite.wait()
    def alive(pid: int) -> bool:  # a dead child not yet reaped by its new parent is a zombie ("Z")
        try:
            with open(f"/proc/{pid}/stat") as stat:
                return not stat.read().rsplit(") ", 1)[-1].startswith("Z")
        except FileNotFoundError:
            return False

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if not alive(child_pid):
            break
        time.sleep(0.2)
    else:
        os.kill(child_pid, signal.SIGKILL)
        pytest.fail("the child outlived the suite's process by 30 s")
    # a child started after the suite's process ended refuses to train
    env = {**os.environ, "VAE_TF_SUITE_PID": "1"}  # not its parent
    late = subprocess.run([sys.executable, "-c", "from training.compare import _stop_with_the_suite; "
                           "_stop_with_the_suite()"], env=env, capture_output=True, text=True, cwd=str(REPO_ROOT))
    assert late.returncode == 1
    assert late.stderr.strip() == ("error: the vae-tf compare that started this child has ended; run it again to "
                                   "resume")


def test_an_interrupted_child_that_cannot_be_resumed_is_said_to_start_over(tmp_path):
    """A rerun from another folder (train.run_dir is relative: runs/) or after the checkpoints
    were removed marked the interrupted run KILLED and trained the child from epoch 0, saying only
    "training"; and a changed config restarted it without the "changed" line."""
    import io

    from training.compare import DIGEST_TAG, _interrupted_children

    client = MlflowClient(tracking_uri=mlflow_store(tmp_path))
    exp = client.create_experiment("suite")
    parent = client.create_run(exp).info.run_id
    children = {}
    for key, digest in [("vae/0", "d0"), ("beta4/0", "old")]:
        run = client.create_run(exp, tags={"mlflow.parentRunId": parent, "vae_tf.suite_child": key, DIGEST_TAG: digest})
        client.log_param(run.info.run_id, "train.run_dir", str(tmp_path / "runs"))
        children[key] = run.info.run_id
    checkpoints = tmp_path / "runs" / children["beta4/0"] / "checkpoints"  # beta4/0 has one, of another config
    checkpoints.mkdir(parents=True)
    (checkpoints / "checkpoint").write_text("")
    out = io.StringIO()
    assert _interrupted_children(client, exp, parent, {"vae/0": "d0", "beta4/0": "new"}, out) == {}
    assert out.getvalue().splitlines() == [
        f"suite child vae/0: its interrupted run {children['vae/0']} has no checkpoint in "
        f"{(tmp_path / 'runs' / children['vae/0']).resolve()} (run the call from the folder that started it to "
        "resume it); training it again from the start",
        f"suite child beta4/0: its config or evaluation changed since its interrupted run {children['beta4/0']}; "
        "training it again from the start"]
    assert {client.get_run(r).info.status for r in children.values()} == {"KILLED"}
    # a second look says nothing more: those runs were dealt with
    out = io.StringIO()
    assert _interrupted_children(client, exp, parent, {"vae/0": "d0", "beta4/0": "new"}, out) == {} and not out.getvalue()


def test_a_progress_report_that_cannot_be_written_does_not_stop_the_suite(suite_file, tmp_path, monkeypatch):
    """A full disk under the report folder ended the suite with a 63-line traceback after one
    child; the children still to train never did. The final report still fails the call."""
    import errno
    import io

    import training.compare as compare

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(compare, "write_children_json", full)
    suite = load_suite(str(suite_file))
    out = io.StringIO()
    progress = compare._ProgressReport(suite, "quick", child_configs(suite, "quick"), tmp_path / "report", out)
    progress.write({}, {})
    progress.write({}, {})
    assert out.getvalue() == (f"warning: the report of the children finished so far cannot be written in "
                              f"{tmp_path / 'report'} (No space left on device); the suite goes on and writes it at "
                              "the end\n")  # once


def test_a_copy_of_a_suite_that_kept_its_name_is_told_it_shares_the_parent(suite_file, tmp_path):
    """Two files with one `name:` share the parent run, its finished children and
    reports/<name>-<size>/; the second overwrote the first's report without a word."""
    import io

    from training.compare import _find_or_create_parent

    client = MlflowClient(tracking_uri=mlflow_store(tmp_path))
    exp = client.create_experiment("suite")
    copy = tmp_path / "copy" / "tiny.yaml"
    copy.parent.mkdir()
    copy.write_text(suite_file.read_text())
    out = io.StringIO()
    parent = _find_or_create_parent(client, exp, load_suite(str(suite_file)), "quick", out)
    assert _find_or_create_parent(client, exp, load_suite(str(suite_file)), "quick", out) == parent
    assert out.getvalue() == ""  # the same file: nothing to say
    assert _find_or_create_parent(client, exp, load_suite(str(copy)), "quick", out) == parent
    assert out.getvalue() == (f"warning: suite tiny (quick) was run from {suite_file.resolve()} before; this file, "
                              f"{copy.resolve()}, shares its parent run, finished children and report folder (give "
                              "your copy another name: to keep them apart)\n")


def test_a_rerun_childs_log_goes_after_the_failed_attempts(suite_file, tmp_path, monkeypatch):
    """`--jobs` wrote a child's log with "w": the rerun overwrote the log of the attempt that failed,
    which the failure line had pointed to."""
    import io
    import subprocess

    from training.compare import _run_parallel

    class Failing:  # a child process that writes a line and fails
        def __init__(self, command, stdout, **kwargs):
            stdout.write(f"attempt of {command[-3]}\n")
            stdout.flush()
            self.returncode = None

        def poll(self):
            self.returncode = 1
            return 1

        def terminate(self):
            pass

        def wait(self):
            return 1

    monkeypatch.setattr(subprocess, "Popen", Failing)
    suite = load_suite(str(suite_file))
    for _ in range(2):
        with pytest.raises(ConfigError, match="1 child run\\(s\\) failed: vae/0"):
            _run_parallel(suite, "quick", [("vae", 0)], "e", 2, tmp_path / "report", io.StringIO())
    text = (tmp_path / "report" / "logs" / "vae-0.log").read_text()
    assert text.startswith("attempt of vae\n\n=== ") and text.endswith(": this child again ===\nattempt of vae\n")
