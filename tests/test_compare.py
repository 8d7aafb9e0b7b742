"""Experiment suites: parent/child MLflow runs, evaluation of every child, the report, and
resuming without retraining."""

from __future__ import annotations

import pytest
import yaml
from mlflow.tracking import MlflowClient

from training.compare import child_configs, list_suites, load_suite, run_suite
from vae_tf.errors import ConfigError

TINY = {
    "name": "tiny",
    "claim": "two configs run side by side.",
    "base": {"data": {"name": "digits"}, "model": {"latent": {"family": "gaussian", "latent_dim": 3},
                                                    "network": {"kind": "mlp", "hidden": [16]}},
             "train": {"verbose": 0, "early_stopping_patience": None}, "mlflow": {"log_figures": False}},
    "sizes": {"quick": {"seeds": [0], "config": {"train": {"epochs": 1}},
                        "evaluate": {"iw_k": 0, "disentanglement": False}}},
    "runs": [{"name": "vae", "config": {"objective": {"name": "elbo"}}},
             {"name": "beta4", "claim": "more collapse.", "config": {"objective": {"name": "elbo", "beta": 4.0}}}],
}


@pytest.fixture
def suite_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


def test_suite_runs_children_under_a_parent_and_resumes(suite_file, tmp_path, capsys):
    report = run_suite(str(suite_file), size="quick", output_dir=str(tmp_path / "report"))
    text = report.read_text()
    assert "| run | ELBO | KL | AU | dims KL>0.01 | MI |" in text and "| vae |" in text and "| beta4 |" in text
    assert "**Claim tested.** two configs run side by side." in text and "- **beta4**: more collapse." in text
    assert (tmp_path / "report" / "collapse_curves.png").is_file()

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


def test_shipped_suites_resolve_to_valid_configs():
    assert {"collapse", "selective_collapse", "decoder_variance"} <= set(list_suites())
    for name in list_suites():
        suite = load_suite(name)
        for size in suite.sizes:
            children = child_configs(suite, size)
            assert children and all(config.train.epochs > 0 for _, _, config, _ in children)


def test_compare_cli_errors_are_one_line(suite_file, capsys):
    from training.cli import main

    assert main(["compare", "--suite", "nope", "--quick"]) == 2
    assert capsys.readouterr().err.strip().startswith("error: unknown suite 'nope'")
    assert main(["compare", "--suite", str(suite_file), "--quick", "--seeds", "a,b"]) == 2
    assert "--seeds must be comma-separated integers" in capsys.readouterr().err


def test_bad_suite_requests_are_one_line_errors(suite_file):
    with pytest.raises(ConfigError, match="unknown suite 'nope'; choose one of"):
        load_suite("nope")
    with pytest.raises(ConfigError, match="has no size 'huge'"):
        child_configs(load_suite(str(suite_file)), "huge")
    with pytest.raises(ConfigError, match="has no run"):
        child_configs(load_suite(str(suite_file)), "quick", only=["ghost"])
