"""The MLflow project: MLproject parses, `mlflow run ... --env-manager local` runs a tiny train
entry into the run MLflow created, and bad parameters fail with one-line errors."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.conftest import mlflow_store

ROOT = Path(__file__).resolve().parents[1]


def test_mlproject_declares_typed_entry_points():
    project = yaml.safe_load((ROOT / "mlflow_project" / "MLproject").read_text())
    assert project["python_env"] == "python_env.yaml"
    assert {"train", "evaluate", "compare", "embed"} <= set(project["entry_points"])
    train = project["entry_points"]["train"]["parameters"]
    assert train["objective"]["default"] == ""  # "": the config's slots
    # "": the config's own numbers (defaults of 8 and 40 overrode every config's); the seed is always
    # set, as MLflow logs it under the config's own key `seed` (so a seed in overrides is refused)
    assert all(train[k] == {"type": "string", "default": ""} for k in ("latent_dim", "epochs", "beta"))
    assert train["seed"] == {"type": "int", "default": 0}


def test_the_project_environment_installs_what_the_package_needs():
    """`mlflow run --env-manager virtualenv/uv` installs python_env.yaml's dependencies from a
    temporary folder: its `-e ..` named /tmp there (pip: "does not appear to be a Python project").
    They are pyproject.toml's own dependencies; the code comes from the checkout (entry.py)."""
    import tomllib

    from mlflow.utils.environment import _PythonEnv

    env = _PythonEnv.from_yaml(str(ROOT / "mlflow_project" / "python_env.yaml"))
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert env.dependencies == project["dependencies"]
    assert env.python == project["requires-python"].removeprefix(">=")
    assert not any(d.startswith(("-e", ".", "/")) for d in env.dependencies)


@pytest.fixture
def entry_module(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "mlflow_project"))
    import entry

    return entry


def test_the_train_entry_keeps_the_config_s_numbers_unless_given_and_reads_overrides_with_spaces(
        entry_module, monkeypatch, capsys):
    """latent_dim and epochs defaulted to 8 and 40 and overrode the config (the text
    config's latent_dim 2 trained with 8); `overrides` was split at every space, so the slot form
    the MLproject header showed failed."""
    import training.train

    seen = []
    monkeypatch.setattr(training.train, "run_training", lambda config: seen.append(config) or (_ for _ in ()).throw(
        SystemExit(0)))
    config = str(ROOT / "training" / "configs" / "text_synthetic.yaml")
    with pytest.raises(SystemExit):
        entry_module.main(["train", "--config", config, "--overrides",
                           "objective.kl_weight={kind: control, set_point: 10} train.verbose=0"])
    from training.config import load_config

    own = load_config(Path(config), [])
    got = seen[-1]
    assert (got.model.latent["latent_dim"], got.train.epochs, got.seed) == (
        own.model.latent["latent_dim"], own.train.epochs, 0)
    assert got.objective.kl_weight["kind"] == "control" and got.objective.kl_weight["set_point"] == 10
    with pytest.raises(SystemExit):
        entry_module.main(["train", "--config", config, "--latent-dim", "3", "--epochs", "2", "--seed", "7"])
    assert (seen[-1].model.latent["latent_dim"], seen[-1].train.epochs, seen[-1].seed) == (3, 2, 7)
    assert entry_module.split_overrides(" a=1  b={x: 1, y: [1, 2]} c='p q' ") == ["a=1", "b={x: 1, y: [1, 2]}",
                                                                                 "c='p q'"]
    # an apostrophe inside a value is a character (it opened a quote that swallowed the rest)
    assert entry_module.split_overrides("mlflow.experiment=bob's train.epochs=3") == ["mlflow.experiment=bob's",
                                                                                    "train.epochs=3"]
    from vae_tf.errors import ConfigError

    for bad, said in (("a={x: 1 b=2", "unclosed { or ["), ("a='x b=2", "unclosed '"), ("a=1} b=2", "unmatched '}'")):
        with pytest.raises(ConfigError, match=f"^parameter overrides has an {re.escape(said)}"):
            entry_module.split_overrides(bad)
    # the seed in overrides: MLflow logged the parameter seed already, and training's param was refused mid-run
    assert entry_module.main(["train", "--overrides", "seed=3"]) == 2
    assert capsys.readouterr().err.strip().endswith("give the seed as the project parameter (-P seed=N), not in "
                                                    "overrides: MLflow logs it as the run's param seed before training "
                                                    "starts")


def test_a_failure_under_mlflow_run_is_said_on_its_run_and_another_store_is_refused(entry_module, tmp_path,
                                                                                    monkeypatch, capsys):
    """A mistake found before training left the FAILED run `mlflow run` made without a reason (only
    on the terminal); mlflow.tracking_uri set to another store ended in MLflow's "Run ... not found"
    traceback, after leaving that store's file behind."""
    uri = mlflow_store(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = MlflowClient(tracking_uri=uri)
    run = client.create_run(client.create_experiment("project-test")).info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", run)
    other = tmp_path / "other.db"
    assert entry_module.main(["train", "--overrides", f"mlflow.tracking_uri=sqlite:///{other}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # (MLflow's own log lines of creating the store above)
    assert err == (f"error: mlflow.tracking_uri=sqlite:///{other} names another store than the one `mlflow run` made "
                   "this run in; drop it, and give the store to mlflow run itself (MLFLOW_TRACKING_URI)")
    assert not other.exists()
    assert client.get_run(run).data.tags["error"] == "ConfigError: " + err.removeprefix("error: ")
    assert entry_module.main(["train", "--epochs", "0"]) == 2
    assert client.get_run(run).data.tags["error"] == "ConfigError: parameter epochs must be an integer >= 1, got '0'"


def _mlflow_run(tmp_path, *params, entry="train"):
    # MLflow's setters (used by earlier tests in this process) export MLFLOW_* variables: drop them.
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env = {**inherited, "MLFLOW_TRACKING_URI": mlflow_store(tmp_path),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    args = [sys.executable, "-m", "mlflow", "run", str(ROOT / "mlflow_project"), "-e", entry,
            "--env-manager", "local", "--experiment-name", "project-test"]
    for p in params:
        args += ["-P", p]
    return subprocess.run(args, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_mlflow_run_trains_into_the_run_it_created(tmp_path):
    done = _mlflow_run(tmp_path, "epochs=1", "latent_dim=3", "objective=control_vae", "options={kl_set_point: 5}",
                       f"overrides=train.verbose=0 export.base_dir={tmp_path / 'models'} train.run_dir={tmp_path / 'runs'}")
    assert done.returncode == 0, done.stderr[-2000:]
    # The entry script starts TensorFlow as the `vae-tf` program does: no start-up chatter at
    # TF_CPP_MIN_LOG_LEVEL=2 (Abseil's note, oneDNN's and CUDA's lines, the no-driver "error").
    for chatter in ("absl::InitializeLog", "port.cc", "cudart_stub.cc", "cuda_platform.cc"):
        assert chatter not in done.stderr, done.stderr[-3000:]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("project-test").experiment_id])
    assert len(runs) == 1  # the training job attached to MLflow's run instead of making its own
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["objective.kl_weight.kind"] == "control"  # the preset, as slots
    assert run.data.params["objective.kl_weight.set_point"] == "5.0" and "kl_set_point" in run.data.metrics
    assert (tmp_path / "models" / "vae" / "1" / "saved_model.pb").is_file()

    # The README's evaluate entry on that export: it logs into the run MLflow made for it, in the
    # project's experiment (the model's config names another experiment; MLflow refused that).
    report = tmp_path / "evaluation.json"
    done = _mlflow_run(tmp_path, f"model={tmp_path / 'models' / 'vae'}", "iw_k=0", "disentanglement=off",
                       f"output={report}", entry="evaluate")
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(report.read_text())["model"]["trained_in_run"] == run.info.run_id
    runs = client.search_runs([client.get_experiment_by_name("project-test").experiment_id])
    evaluation = [r for r in runs if r.info.run_id != run.info.run_id]
    assert len(runs) == 2 and len(evaluation) == 1
    evaluation = evaluation[0]
    assert evaluation.info.status == "FINISHED" and evaluation.info.run_name == "evaluate vae v1 (test)"
    assert evaluation.data.tags["vae_tf.evaluates_run_id"] == run.info.run_id
    assert 0 <= evaluation.data.metrics["active_units"] <= 3  # latent_dim=3
    assert any(a.path == "evaluation" for a in client.list_artifacts(evaluation.info.run_id))


@pytest.mark.slow
def test_the_compare_entry_runs_the_suite_in_runs_of_its_own_and_reports_into_the_project_run(tmp_path, monkeypatch,
                                                                                             capsys):
    """Under `mlflow run` (MLFLOW_RUN_ID set) a suite's parent and children are runs of their own in
    the suite's experiment, where resuming looks for them, and the project's run gets the report.
    (MLflow's start_run takes the variable's run for the first child and refuses it, the suite's
    experiment being another; that refusal, an MLflow error like an outage's, sent the child
    offline with a false "MLflow is unreachable" warning.)"""
    from tests.test_compare import TINY

    monkeypatch.chdir(tmp_path)
    uri = mlflow_store(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = MlflowClient(tracking_uri=uri)
    project_experiment = client.create_experiment("project-test")
    project = client.create_run(project_experiment).info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", project)
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump({**TINY, "runs": TINY["runs"][:1]}))
    monkeypatch.syspath_prepend(str(ROOT / "mlflow_project"))
    import entry

    assert entry.main(["compare", "--suite", str(tmp_path / "tiny.yaml"), "--size", "quick"]) == 0
    printed = capsys.readouterr()
    assert "unreachable" not in printed.out + printed.err and "offline" not in printed.out + printed.err
    suite_runs = client.search_runs([client.get_experiment_by_name("vae-tf-suite-tiny").experiment_id])
    parent = [r for r in suite_runs if r.data.tags.get("vae_tf.suite_parent") == "true"]
    assert len(suite_runs) == 2 and len(parent) == 1
    child = next(r for r in suite_runs if r is not parent[0])
    assert child.data.tags["mlflow.parentRunId"] == parent[0].info.run_id and child.info.status == "FINISHED"
    assert [r.info.run_id for r in client.search_runs([project_experiment])] == [project]
    tags = client.get_run(project).data.tags
    assert tags["vae_tf.suite"] == "tiny" and tags["vae_tf.suite_size"] == "quick"
    assert "report/report.md" in {a.path for a in client.list_artifacts(project, "report")}


@pytest.mark.slow
def test_bad_parameters_fail_with_one_line_errors(tmp_path):
    done = _mlflow_run(tmp_path, "epochs=notint")
    assert done.returncode != 0
    assert "error: parameter epochs must be an integer >= 1, got 'notint'" in done.stderr
    done = _mlflow_run(tmp_path, "objective=magic")
    assert "error: parameter objective must be one of" in done.stderr


@pytest.mark.parametrize("argv, message", [
    (["train", "--epochs", "notint"], "error: parameter epochs must be an integer >= 1, got 'notint'"),
    (["train", "--latent-dim", "0"], "error: parameter latent_dim must be an integer >= 1, got '0'"),
    (["train", "--objective", "control_vae", "--options", "[1, 2]"], "error: parameter options must be a YAML mapping"),
    (["train", "--beta", "much"], "error: parameter beta must be a number, got 'much'"),
    # the evaluate entry's choices were refused by the CLI's check, naming its flag
    # (--disentanglement) rather than the -P parameter, after the model and data had loaded
    (["evaluate", "--model", "models/none", "--disentanglement", "lots"],
     "error: parameter disentanglement must be one of off, quick, full, got 'lots'"),
    (["evaluate", "--model", "models/none", "--split", "validation"],
     "error: parameter split must be one of train, val, test, got 'validation'"),
])
def test_a_bad_parameter_fails_before_tensorflow_is_imported(argv, message):
    """The parameters entry.py can check without the package fail at once (exit 2, one line naming
    the parameter), not after the seconds `import tensorflow` takes."""
    code = ("import sys; sys.argv[0] = 'entry.py'; sys.path.insert(0, 'mlflow_project'); import entry\n"
            f"code = entry.main({argv!r})\n"
            "print(code, 'tensorflow' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["2", "False"], done.stdout + done.stderr[-2000:]
    assert message in done.stderr and done.stderr.count("\n") == 1, done.stderr
