"""The remedy_matrix suite at its smoke size, end to end.

Its own file (not tests/test_compare.py) so that pytest-xdist's `--dist loadfile` can run it on one
worker while the other works through the rest of the suite tests."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from training.compare import child_configs, load_suite, run_suite


@pytest.mark.slow
def test_remedy_matrix_quick_runs_every_combination_end_to_end(tmp_path, monkeypatch):
    """The remedies study as designed, at its smoke size: {plain VAE, ControlVAE} × {none, Skip,
    aggressive, pretraining, FGSM, all four}: 12 children trained, exported and evaluated, one
    collapse-curve figure per model row and a t-SNE grid in the report."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    suite = load_suite("remedy_matrix")
    children = child_configs(suite, "quick")
    assert len(children) == 12
    composed = {name: config.objective.summary() for name, _, config, _ in children}
    assert composed["controlvae+all"] == "control + fgsm + aggressive"
    assert composed["vae+fgsm"] == "constant + fgsm" and composed["controlvae"] == "control"
    by_name = {name: config for name, _, config, _ in children}
    assert by_name["vae+all"].model.network["skip"] and by_name["vae+all"].train.pretrain.fraction == 0.1
    report = run_suite("remedy_matrix", size="quick", output_dir=str(tmp_path / "report"))
    text = report.read_text()
    for name in composed:
        assert f"| {name} |" in text, name
    for header in ("ELBO", "KL", "AU", "MI", "collapsed @ε=0.01", "probe acc.", "IW-NLL"):
        assert f" {header} |" in text, header
    for figure in ("collapse_curves_plain_vae.png", "collapse_curves_control_vae.png", "tsne.png"):
        assert (tmp_path / "report" / figure).is_file() and f"({figure})" in text
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("vae-tf-suite-remedy_matrix")
    finished = [r for r in client.search_runs([exp.experiment_id]) if "vae_tf.suite_child" in r.data.tags]
    assert len(finished) == 12 and all(r.info.status == "FINISHED" for r in finished)
    tags = {r.data.tags["vae_tf.suite_child"]: r.data.tags for r in finished}
    assert tags["controlvae+all/0"]["vae_tf.inference"] == "aggressive"
    assert tags["controlvae+all/0"]["vae_tf.pretraining"] == "true" and tags["vae/0"]["vae_tf.pretraining"] == "false"
    assert all(t["vae_tf.collapse"].split(":")[0] in ("healthy", "partially collapsed", "collapsed")
               for t in tags.values())
