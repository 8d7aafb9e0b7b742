"""The MLflow project: MLproject parses, `mlflow run ... --env-manager local` runs a tiny train
entry into the run MLflow created, and bad parameters fail with one-line errors."""

from __future__ import annotations

import os
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
    assert train["epochs"]["type"] == "int" and train["objective"]["default"] == ""  # "": the config's slots


def _mlflow_run(tmp_path, *params):
    # MLflow's setters (used by earlier tests in this process) export MLFLOW_* variables: drop them.
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env = {**inherited, "MLFLOW_TRACKING_URI": mlflow_store(tmp_path),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    args = [sys.executable, "-m", "mlflow", "run", str(ROOT / "mlflow_project"), "-e", "train",
            "--env-manager", "local", "--experiment-name", "project-test"]
    for p in params:
        args += ["-P", p]
    return subprocess.run(args, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_mlflow_run_trains_into_the_run_it_created(tmp_path):
    done = _mlflow_run(tmp_path, "epochs=1", "latent_dim=3", "objective=control_vae", "options={kl_set_point: 5}",
                       f"overrides=train.verbose=0 export.base_dir={tmp_path / 'models'} train.run_dir={tmp_path / 'runs'}")
    assert done.returncode == 0, done.stderr[-2000:]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("project-test").experiment_id])
    assert len(runs) == 1  # the training job attached to MLflow's run instead of making its own
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["objective.kl_weight.kind"] == "control"  # the preset, as slots
    assert run.data.params["objective.kl_weight.set_point"] == "5.0" and "kl_set_point" in run.data.metrics
    assert (tmp_path / "models" / "vae" / "1" / "saved_model.pb").is_file()


@pytest.mark.slow
def test_bad_parameters_fail_with_one_line_errors(tmp_path):
    done = _mlflow_run(tmp_path, "epochs=notint")
    assert done.returncode != 0
    assert "error: parameter epochs must be an integer >= 1, got 'notint'" in done.stderr
    done = _mlflow_run(tmp_path, "objective=magic")
    assert "error: parameter objective must be one of" in done.stderr


@pytest.mark.parametrize("params, message", [
    (["--epochs", "notint"], "error: parameter epochs must be an integer >= 1, got 'notint'"),
    (["--latent-dim", "0"], "error: parameter latent_dim must be an integer >= 1, got '0'"),
    (["--objective", "control_vae", "--options", "[1, 2]"], "error: parameter options must be a YAML mapping"),
    (["--beta", "much"], "error: parameter beta must be a number, got 'much'"),
])
def test_a_bad_number_or_options_parameter_fails_before_tensorflow_is_imported(params, message):
    """The parameters entry.py can check without the package fail at once (exit 2, one line), not
    after the seconds `import tensorflow` takes."""
    code = ("import sys; sys.argv[0] = 'entry.py'; sys.path.insert(0, 'mlflow_project'); import entry\n"
            f"code = entry.main(['train', *{params!r}])\n"
            "print(code, 'tensorflow' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["2", "False"], done.stdout + done.stderr[-2000:]
    assert message in done.stderr and done.stderr.count("\n") == 1, done.stderr
