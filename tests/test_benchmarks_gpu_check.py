"""benchmarks/gpu_check.sh, prepared for a GPU machine, run once at smoke size on the CPU, and
the three benchmarks it runs (training throughput against the peers, precision and
steps-per-execution settings, the sentence VAE): a file of its own, so that pytest-xdist can run
this minute-long fixture beside the other benchmark smoke tests."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from tests.benchmark_helpers import REPO_ROOT, reference_architecture_counts


# --- benchmarks/gpu_check.sh and the three benchmarks it runs ----------------------------------------
# One run of the GPU script at smoke size on the CPU (ALLOW_CPU=1) gives the outputs of
# train_throughput.py, train_settings.py and text_throughput.py, each checked by a test of its own
# below: the three scripts start (and import TensorFlow and PyTorch) once per test session, not twice.
GPU_CHECK_ENV = {
    # aot_eager: torch.compile's graph capture without the C++ code generation (seconds, not a minute)
    "THROUGHPUT_ARGS": "--rounds 1 --examples 256 --steps-per-execution 1 --matmul-size 64 "
                       "--matmul-repeats 1 --torch-compile-backend aot_eager",
    "SETTINGS_ARGS": "--steps 1 2 --jit false --precision float32 mixed_bfloat16 --torch --rounds 1 --examples 256",
    "TEXT_ARGS": "--rounds 1 --sentences 160 --batch-size 32 --steps-per-execution 2 --hidden 16 --embedding 8 "
                 "--latent 4 --tf-threads 1,2",
}


@pytest.fixture(scope="module")
def gpu_check(tmp_path_factory):
    """benchmarks/gpu_check.sh is prepared for a GPU machine: here every step runs at smoke size
    on the CPU and leaves its results in $OUT. Returns (OUT, the script's log)."""
    out = tmp_path_factory.mktemp("gpu-check")
    env = {**os.environ, "OUT": str(out), "ALLOW_CPU": "1", "PYTHON": sys.executable, **GPU_CHECK_ENV}
    proc = subprocess.run(["bash", str(REPO_ROOT / "benchmarks" / "gpu_check.sh")], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, (out / "log.txt").read_text()


@pytest.mark.slow
def test_gpu_check_script_runs_every_step_and_writes_its_tables(gpu_check):
    out, log = gpu_check
    for step in ("throughput", "settings", "text"):
        assert f"=== {step}: exit 0" in log, log[-3000:]
    assert "| PyTorch eager |" in (out / "throughput.md").read_text()
    assert "precision" in (out / "settings.md").read_text()
    env = (out / "env.txt").read_text()
    assert "tensorflow 2." in env
    assert re.search(r"^pythae \d+\.\d+", env, re.M), env  # from its distribution: the module has no __version__


@pytest.mark.slow
def test_train_throughput_smoke(gpu_check):
    out, log = gpu_check
    result = json.loads((out / "throughput.json").read_text())["results"][0]
    counts = reference_architecture_counts()
    assert result["trainable_parameters"] == result["trainable_parameters_bare"] == counts["parameters"]
    assert result["training_flops_per_image"] == counts["training_flops"]
    assert result["loss_check_relative_difference"] < 1e-4
    assert set(result["efficiency"]) >= {"bare", "vae_tf"} and result["matmul_gflops"]["median"] > 0
    assert "vae-tf efficiency" in log
    try:
        import torch  # noqa: F401
    except ImportError:
        assert "PyTorch is not installed" in result["torch"]["skipped"]
        assert "PyTorch reference skipped" in log
    else:
        assert result["torch"]["trainable_parameters"] == result["trainable_parameters"]
        assert result["torch"]["loss_check_relative_difference"] < 1e-4
        assert result["best_ratio_torch"] > 0 and "torch" in result["rounds"][0]
        # The peers of issue #20: the same network (parameter count), the same loss, and ratios
        # that are those of the per-round throughputs the report lists.
        try:
            import pythae  # noqa: F401
        except ImportError:
            peers = ("torch", "torch_compile")
            assert "pythae is not installed" in result["peers"]["pythae"]["skipped"]
        else:
            peers = ("torch", "torch_compile", "pythae")
        row = result["rounds"][0]
        for peer in peers:
            p = result["peers"][peer]
            assert p["info"]["trainable_parameters"] == counts["parameters"]
            assert p["info"]["loss_check_relative_difference"] < 1e-4
            assert p["best_ratio"] == pytest.approx(row["vae_tf"]["images_per_s"] / row[peer]["images_per_s"], rel=1e-12)
            assert np.isfinite(p["final_loss"]) and abs(p["final_loss"] - result["vae_tf_final_loss"]) < 0.05 * result["vae_tf_final_loss"]
        assert result["peers"]["torch_compile"]["info"]["compile"] == {"backend": "aot_eager", "mode": None}
        assert "| PyTorch torch.compile |" in (out / "throughput.md").read_text()


@pytest.mark.slow
def test_train_settings_smoke(gpu_check):
    out, log = gpu_check
    report = json.loads((out / "settings.json").read_text())
    results = report["results"]
    assert [r["trainer"] for r in results] == ["vae-tf"] * 4 + ["pytorch_eager"] * 2
    assert [r["steps_per_execution"] for r in results] == [1, 2, 1, 2, None, None]
    assert [r["precision"] for r in results] == ["float32"] * 2 + ["mixed_bfloat16"] * 2 + ["float32", "mixed_bfloat16"]
    # The ratios are those of the raw per-round throughputs the report also lists.
    rounds, base = report["per_round"], report["baseline"]
    for row in results:
        speeds = [r[row["variant"]] for r in rounds]
        assert row["best"] == max(speeds)
        assert row["best_over_baseline"] == pytest.approx(max(speeds) / max(r[base] for r in rounds), rel=1e-12)
        assert row["per_round_over_baseline"]["median"] == pytest.approx(
            float(np.median([r[row["variant"]] / r[base] for r in rounds])), rel=1e-12)
    # Each vae-tf row against PyTorch at its own precision; PyTorch's mixed row ran under autocast.
    torch_rows = {r["precision"]: r for r in results if r["trainer"] == "pytorch_eager"}
    for row in results[:4]:
        peer = torch_rows[row["precision"]]
        assert row["over_torch"]["variant"] == peer["variant"]
        assert row["over_torch"]["best"] == pytest.approx(row["best"] / peer["best"], rel=1e-12)
        assert row["over_torch"]["per_round"]["median"] == pytest.approx(
            float(np.median([r[row["variant"]] / r[peer["variant"]] for r in rounds])), rel=1e-12)
    assert report["torch"]["device"] == "cpu" and report["torch"]["intra_op_threads"] >= 1
    # Same model, same starting weights, same uniform [0, 1] images: the same loss scale, about
    # 784 log 2 nats per image at the start, at either precision.
    losses = [r["final_loss"] for r in results]
    assert all(500 < loss < 560 for loss in losses), losses
    assert max(losses) - min(losses) < 0.01 * min(losses), losses
    assert report["images_per_epoch"] == 256
    text = (out / "settings.md").read_text()
    assert "| trainer | steps_per_execution | XLA |" in text and "| PyTorch eager (autocast bfloat16) |" in text


@pytest.mark.slow
def test_text_throughput_smoke(gpu_check):
    """One round of the sentence-VAE benchmark: both variants trained the same sentences, the
    token count is the scored positions (words + <eos>: 11 per 10-word sentence), the two models
    have the same parameters (the script refuses otherwise) and the ratio is that of the rates."""
    out, log = gpu_check
    report = json.loads((out / "text.json").read_text())
    assert report["sentences"] == 128  # whole groups of batch x steps_per_execution = 64
    assert report["tokens_per_epoch"] == 11 * 128
    rates = report["tokens_per_second"]
    assert set(rates) == {"vae-tf", "pytorch_eager"} and all(v["median"] > 0 for v in rates.values())
    assert report["ratio_of_bests"] == pytest.approx(rates["vae-tf"]["best"] / rates["pytorch_eager"]["best"])
    assert "| vae-tf |" in log and "vae-tf ÷ PyTorch eager" in log
    # On this CPU: Keras' `auto` leaves XLA off, no LSTM is set up for cuDNN and both (the encoder's
    # and the decoder's) train through vae-tf's unrolled path; on a GPU the report says which path
    # vae-tf took.
    assert report["vae_tf_paths"] == {"jit_compile": False, "lstm_layers": 2, "cudnn_lstm_layers": 0,
                                      "unrolled_lstm_layers": 2}
    assert "vae-tf: XLA off, 0 of 2 LSTM layers set up for cuDNN, 2 trained through the unrolled path." in log
    # --tf-threads 1,2: TensorFlow ran with the pools asked for, and the report says so.
    assert report["tf_threads"] == {"intra_op": 1, "inter_op": 2}
    assert "TensorFlow's thread pools: intra-op 1, inter-op 2" in log
