"""Smoke runs of the benchmarks that measure whole processes (peak memory, start-up, the GPU
script run here on the CPU), split from test_benchmarks.py so that pytest-xdist (``--dist
loadfile``) runs them next to it, on another worker. No timing assertions."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from test_benchmarks import REPO_ROOT, run_script


# --- memory -------------------------------------------------------------------------------------------
def test_peak_rss_is_the_childs_own_not_the_parents():
    """A child of this (large) pytest process reports its own high-water mark (ru_maxrss would
    report at least the parent's: Linux carries it across exec)."""
    code = ("import sys; sys.path.insert(0, {root!r}); from benchmarks.memory import peak_rss_mib; {alloc}"
            "print(peak_rss_mib())")
    small, big = (float(subprocess.run([sys.executable, "-c", code.format(root=str(REPO_ROOT), alloc=alloc)],
                                       capture_output=True, text=True, check=True).stdout)
                  for alloc in ("", "b = bytearray(200 * 1024 * 1024); b[::4096] = bytes(len(b[::4096])); "))
    assert small < 150  # a bare Python, whatever the parent holds
    assert big - small >= 190


@pytest.mark.slow
def test_memory_script_smoke(tmp_path):
    out = tmp_path / "memory.json"
    proc = run_script("memory.py", "--sizes", "128", "--epochs", "1", "--workdir", str(tmp_path),
                      "--json", str(out), timeout=300)
    report = json.loads(out.read_text())
    row = report["results"][0]
    assert row["rows"] == 128
    for workload in ("train", "embed"):
        assert row[workload]["peak_rss_mib"] > report["baseline"]["peak_rss_mib"] * 0.5
    assert "| rows | data as float32 MiB |" in proc.stdout


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
    pytest.importorskip("pythae")
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


@pytest.mark.slow
def test_gpu_check_script_runs_end_to_end_without_a_gpu(tmp_path):
    """benchmarks/gpu_check.sh is prepared for a GPU machine that may be lent later: here every
    step runs at smoke size on the CPU (ALLOW_CPU=1) and leaves its results in $OUT."""
    out = tmp_path / "gpu-check"
    env = {**os.environ, "OUT": str(out), "ALLOW_CPU": "1", "PYTHON": sys.executable,
           "THROUGHPUT_ARGS": "--rounds 1 --examples 128 --steps-per-execution 1 --matmul-size 64 --matmul-repeats 1 "
                              "--torch-compile-backend aot_eager",
           "SETTINGS_ARGS": "--steps 1 --jit false --precision float32 mixed_bfloat16 --rounds 1 --examples 128",
           "TEXT_ARGS": "--rounds 1 --sentences 128 --batch-size 32 --steps-per-execution 1 --hidden 16 "
                        "--embedding 8"}
    proc = subprocess.run(["bash", str(REPO_ROOT / "benchmarks" / "gpu_check.sh")], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = (out / "log.txt").read_text()
    for step in ("throughput", "settings"):
        assert f"=== {step}: exit 0" in log, log[-3000:]
    throughput = json.loads((out / "throughput.json").read_text())["results"][0]
    assert {"torch", "torch_compile"} <= set(throughput["peers"])
    assert "| PyTorch eager |" in (out / "throughput.md").read_text()
    settings = json.loads((out / "settings.json").read_text())
    assert [r["precision"] for r in settings["results"]] == ["float32", "mixed_bfloat16"]
    assert "precision" in (out / "settings.md").read_text()
    assert "tensorflow 2." in (out / "env.txt").read_text()
    if (REPO_ROOT / "benchmarks" / "text_throughput.py").exists():
        assert "=== text: exit 0" in log and (out / "text.json").is_file()
