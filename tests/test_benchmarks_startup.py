"""Start-up (issue #20): what a training process imports before its first step, and one
round of benchmarks/startup.py (vae-tf's library script, `vae-tf train` and pythae, each in a
process of its own). A file of its own, so that pytest-xdist can run it beside the other
benchmark smoke tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.benchmark_helpers import REPO_ROOT, run_script


# --- start-up -------------------------------------------------------------------------------------
@pytest.mark.slow
def test_training_the_default_model_does_not_import_tensorflow_probability():
    """TFP (about a second of start-up, with tf_keras) loads at the first TFP distribution a
    model builds, not at ``import vae_tf.models``: building and fitting the Gaussian / Bernoulli
    model never needs it; its posterior does, and gets it."""
    code = """
import sys
import numpy as np
from vae_tf.models import build_vae
from vae_tf.optimizers import FusedAdam
model = build_vae((28, 28, 1), latent={"family": "gaussian", "latent_dim": 4}, network={"kind": "conv", "filters": [4], "dense": 8})
model.compile(optimizer=FusedAdam(1e-3), steps_per_execution=2)
model.fit(np.random.default_rng(0).random((16, 28, 28, 1), dtype=np.float32), batch_size=8, epochs=1, verbose=0)
print("after fit", "tensorflow_probability" in sys.modules)
posterior = model.latent.posterior(model.encoder(np.zeros((1, 28, 28, 1), np.float32)))
print("posterior", type(posterior).__module__.split(".")[0], "tensorflow_probability" in sys.modules)
"""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines()[-2:] == ["after fit False", "posterior tensorflow_probability True"]


@pytest.mark.slow
def test_startup_smoke(tmp_path):
    """One round of each variant in its own process: every mark recorded in order, the ratios are
    those of the listed rounds, and all three trained the same loss on the same data."""
    import pythae  # noqa: F401  (the `test` extra installs it: a broken install fails here, not skips)
    out = tmp_path / "startup.json"
    proc = run_script("startup.py", "--rounds", "1", "--warmup-rounds", "0", "--images", "256", "--epochs", "1",
                      "--importtime", "--json", str(out), timeout=600)
    report = json.loads(out.read_text())
    row = report["rounds"][0]
    assert set(row["order"]) == {"vae_tf_library", "vae_tf_train", "pythae"}
    for variant in row["order"]:
        seconds = [row[variant]["seconds"][mark] for mark in ("python", "imports", "fit", "first_step", "trained", "exit")]
        assert seconds == sorted(seconds) and seconds[0] > 0, (variant, seconds)
        assert 0 < row[variant]["cpu_seconds"]["first_step"] <= row[variant]["cpu_seconds"]["exit"]
        # Uniform [0, 1] images: the per-image Bernoulli cross-entropy is about 784 log 2 at the start.
        assert 500 < row[variant]["final_loss"] < 560
    ratio = report["pythae_over_vae_tf"]["vae_tf_library"]["exit"]["median"]
    assert ratio == pytest.approx(row["pythae"]["seconds"]["exit"] / row["vae_tf_library"]["seconds"]["exit"], rel=1e-12)
    imports = report["imports_before_first_step"]
    assert imports["pythae"]["packages"]["torch"] > 0 and "tensorflow" not in imports["pythae"]["packages"]
    library = imports["vae_tf_library"]["packages"]
    assert library["tensorflow"] > 0 and "mlflow" not in library and "tensorflow_probability" not in library
    assert "mlflow" in imports["vae_tf_train"]["packages"]  # the CLI creates its MLflow run before training
    assert "| `vae-tf train` (CLI) |" in proc.stdout
    # The CLI run's stages outside `fit`, each timed inside the run (so all of them together take
    # less than the process did), and no such stages for the other two.
    from benchmarks.startup import CLI_PHASES

    phases = report["results"]["vae_tf_train"]["phases"]
    assert set(phases) == {name for _, _, name in CLI_PHASES}
    assert all(p["min"] > 0 for p in phases.values()), phases
    assert sum(p["median"] for p in phases.values()) < report["results"]["vae_tf_train"]["exit"]["median"]
    assert "phases" not in report["results"]["vae_tf_library"] and "phases" not in report["results"]["pythae"]
    assert "Where `vae-tf train` spends its time outside `fit`" in proc.stdout
