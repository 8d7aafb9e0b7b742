"""The text_collapse suite at its smoke size, end to end.

Its own file (not tests/test_compare.py) so that pytest-xdist's `--dist loadfile` can run it on one
worker while the other works through the rest of the suite tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from training.compare import run_suite


@pytest.mark.slow
def test_text_collapse_quick_runs_every_remedy_on_sentences(tmp_path, monkeypatch):
    """The text suite at its smoke size: the plain sentence VAE and four remedies trained,
    exported and evaluated on the synthetic corpus, with per-word NLL, perplexity and k-means
    accuracy in the report."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    report = run_suite("text_collapse", size="quick", output_dir=str(tmp_path / "report"))
    text = report.read_text()
    for name in ("vae", "annealing+word_dropout", "skip_vae", "aggressive", "controlvae"):
        assert f"| {name} |" in text, name
    for header in ("NLL/word", "PPL", "k-means acc.", "MI", "AU"):
        assert f" {header} |" in text, header
    rows = [line.split("|") for line in text.splitlines() if line.startswith("| vae |")]
    header = next(line.split("|") for line in text.splitlines() if line.startswith("| run |"))
    ppl = float(rows[0][[h.strip() for h in header].index("PPL")])
    assert "samples.png" not in text  # sentences have Markdown sample tables, not image samples
    # A perplexity over ~1,000 words: an untrained (uniform) decoder scores ~1,000; the quick size's
    # two epochs reached 145-162 (2026-12-05), so half the vocabulary tells learning from none.
    assert 1.0 < ppl < 500.0
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("vae-tf-suite-text_collapse")
    child = next(r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("vae_tf.suite_child") == "vae/0")
    artifacts = {a.path for a in client.list_artifacts(child.info.run_id, "figures")}
    assert {"figures/reconstructions.md", "figures/samples.md", "figures/interpolation.md",
            "figures/latent_vs_true_z.png"} <= artifacts
    # The quick size's evaluate options reach the evaluation: its t-SNE embeds 100 of the 120 test codes.
    import json

    tsne = json.loads((Path(client.download_artifacts(child.info.run_id, "evaluation/tsne.json", str(tmp_path))))
                      .read_text())  # into tmp_path: without a destination MLflow leaves a folder in /tmp
    assert len(tsne["points"]) == 100
