"""Smoke runs of the issue #10 benchmarks (tiny configurations, seconds each) and the facts their
verdicts rest on: the FLOP formulas, the PyTorch reference being the same network with the same
loss, the peak-RSS measurement. No timing assertions: these machines are shared."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def run_script(name: str, *args: str, timeout: int = 240, path_first: str | None = None) -> subprocess.CompletedProcess:
    paths = (path_first, str(REPO_ROOT), os.environ.get("PYTHONPATH"))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / name), *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


# --- FLOPs ------------------------------------------------------------------------------------------
def test_dense_flops_match_the_formula_and_the_tf_profiler():
    import keras

    from benchmarks.flops import layer_macs, profiler_flops, training_flops_per_image

    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3)])
    assert layer_macs(model) == 5 * 3
    assert training_flops_per_image(model) == 3 * 2 * 5 * 3
    # The profiler counts the MatMul (2·5·3) and the bias add (3) of one example.
    assert profiler_flops(lambda x: model(x), __import__("tensorflow").TensorSpec((1, 5))) == 2 * 5 * 3 + 3


def test_conv_flops_formulas():
    import keras

    from benchmarks.flops import layer_macs

    conv = keras.Sequential([keras.Input((8, 8, 2)), keras.layers.Conv2D(4, 3, strides=2, padding="same")])
    assert layer_macs(conv) == 4 * 4 * 4 * 3 * 3 * 2  # out_h·out_w·out_c·k·k·in_c
    deconv = keras.Sequential([keras.Input((4, 4, 4)), keras.layers.Conv2DTranspose(2, 3, strides=2, padding="same")])
    assert layer_macs(deconv) == 4 * 4 * 4 * 3 * 3 * 2  # in_h·in_w·in_c·k·k·out_c: the mirror costs the same


def test_reference_network_flops_and_profiler_agree():
    from benchmarks.flops import REFERENCE, profiler_check, reference_networks, training_flops_per_image

    encoder, decoder = reference_networks()
    analytic = training_flops_per_image(encoder, decoder)
    assert analytic == 21_222_912  # 3 x 2 x 3,537,152 MACs (docs/performance.md)
    counted = profiler_check(encoder, decoder, REFERENCE["latent_dim"])
    # The profiler adds bias adds and element-wise ops (and skips the first layer's input gradient).
    assert 1.0 <= counted["forward"] / (analytic / 3) < 1.01
    assert 0.99 < counted["training_step"] / analytic < 1.01


def test_flops_script_smoke(tmp_path):
    out = tmp_path / "flops.json"
    proc = run_script("flops.py", "--sizes", "64", "--repeats", "1", "--no-torch", "--json", str(out))
    report = json.loads(out.read_text())
    assert report["analytic"]["training_flops"] == 21_222_912
    assert report["matmul"]["peak_gflops"] > 0 and "torch" not in report["matmul"]
    assert "| encoder | conv2d" in proc.stdout and "Matmul peak" in proc.stdout


# --- PyTorch reference -------------------------------------------------------------------------------
def test_torch_reference_is_the_same_network_with_the_same_loss():
    torch = pytest.importorskip("torch")
    import tensorflow as tf

    from benchmarks import torch_reference as ref
    from benchmarks.flops import reference_networks

    encoder, decoder = reference_networks()
    rng = np.random.default_rng(0)
    for v in encoder.trainable_weights + decoder.trainable_weights:
        v.assign(rng.normal(0.0, 0.05, tuple(v.shape)).astype(np.float32))
    keras_params = sum(int(np.prod(w.shape)) for w in encoder.trainable_weights + decoder.trainable_weights)
    for padding in ("idiomatic", "tf"):
        assert ref.parameter_count(ref.build_model(torch, padding=padding)) == keras_params == 1_659_169

    model = ref.build_model(torch, padding="tf")
    ref.copy_keras_weights(torch, model, encoder, decoder)
    x = rng.random((4, 28, 28, 1), dtype=np.float32)
    eps = rng.standard_normal((4, 16)).astype(np.float32)
    mean, log_var = tf.split(encoder(x), 2, axis=-1)
    logits = decoder(mean + tf.exp(0.5 * log_var) * eps)
    rec = -tf.reduce_sum(tf.nn.sigmoid_cross_entropy_with_logits(labels=x, logits=logits), axis=[1, 2, 3])
    kl = 0.5 * tf.reduce_sum(tf.square(mean) + tf.exp(log_var) - log_var - 1.0, axis=-1)
    keras_loss = float(-tf.reduce_mean(rec - kl))
    with torch.no_grad():
        torch_loss = float(model.loss(ref.nchw(torch, x, channels_last=True), torch.from_numpy(eps)))
    assert torch_loss == pytest.approx(keras_loss, rel=1e-5)


def test_torch_settings_comparison_smoke(capsys):
    pytest.importorskip("torch")
    from benchmarks import torch_reference as ref

    assert ref.main(["--rounds", "1", "--examples", "128"]) == 0
    table = capsys.readouterr().out
    assert "| channels_last | Adam |" in table and table.count("| True |") == 3 and table.count("| False |") == 3


def test_train_throughput_smoke(tmp_path):
    out = tmp_path / "throughput.json"
    proc = run_script("train_throughput.py", "--arch", "conv", "--rounds", "1", "--examples", "256",
                      "--steps-per-execution", "1", "--matmul-size", "64", "--matmul-repeats", "1",
                      "--json", str(out))
    result = json.loads(out.read_text())["results"][0]
    assert result["trainable_parameters"] == result["trainable_parameters_bare"] == 1_659_169
    assert result["training_flops_per_image"] == 21_222_912
    assert result["loss_check_relative_difference"] < 1e-4
    assert set(result["efficiency"]) >= {"bare", "vae_tf"} and result["matmul_gflops"]["median"] > 0
    assert "vae-tf efficiency" in proc.stdout
    try:
        import torch  # noqa: F401
    except ImportError:
        assert "PyTorch is not installed" in result["torch"]["skipped"]
        assert "PyTorch reference skipped" in proc.stderr
    else:
        assert result["torch"]["trainable_parameters"] == result["trainable_parameters"]
        assert result["torch"]["loss_check_relative_difference"] < 1e-4
        assert result["best_ratio_torch"] > 0 and "torch" in result["rounds"][0]


def test_train_throughput_without_torch_says_so_in_one_line_and_times_the_rest(tmp_path):
    (tmp_path / "torch.py").write_text("raise ImportError('No module named torch')\n")  # torch not installed
    out = tmp_path / "throughput.json"
    proc = run_script("train_throughput.py", "--arch", "conv", "--rounds", "1", "--examples", "128",
                      "--steps-per-execution", "1", "--matmul-size", "0", "--json", str(out), path_first=str(tmp_path))
    notices = [line for line in proc.stderr.splitlines() if line.startswith("PyTorch reference skipped")]
    assert len(notices) == 1 and "pip install -e '.[bench]'" in notices[0]
    result = json.loads(out.read_text())["results"][0]
    assert "torch" not in result["rounds"][0] and result["best_images_per_s"].keys() == {"bare", "vae_tf"}


def test_train_settings_smoke(tmp_path):
    out = tmp_path / "settings.json"
    proc = run_script("train_settings.py", "--steps", "1", "2", "--jit", "false", "--rounds", "1",
                      "--examples", "256", "--json", str(out))
    report = json.loads(out.read_text())
    assert [r["steps_per_execution"] for r in report["results"]] == [1, 2]
    assert report["results"][0]["best_over_baseline"] == 1.0
    assert report["images_per_epoch"] == 256
    assert "| steps_per_execution | XLA |" in proc.stdout


def test_scaling_smoke(tmp_path):
    """One round of the single-device baseline and 2 mirrored replicas (fresh processes)."""
    out = tmp_path / "scaling.json"
    proc = run_script("scaling.py", "--variants", "single_s1", "mirrored_2", "--rounds", "1", "--epochs", "1",
                      "--examples", "256", "--json", str(out), timeout=400)
    report = json.loads(out.read_text())
    assert report["settings"]["examples"] == 512  # rounded up to whole 4-step executions of 128
    rows = {r["variant"]: r for r in report["results"]}
    assert rows["single_s1"]["replicas"] == 1 and rows["mirrored_2"]["replicas"] == 2
    assert rows["single_s1"]["ratio"]["median"] == 1.0 and rows["mirrored_2"]["images_per_s"]["median"] > 0
    assert all(np.isfinite(r[v]["final_loss"]) for r in report["rounds"] for v in rows)
    assert "| mirrored, 2 replicas | 2 |" in proc.stdout


def test_profile_step_smoke(tmp_path):
    """The profiler's op table is read, split into the parts of a step, and the fused update is
    one kernel (ResourceApplyAdam) where Keras' Adam has its element-wise ops."""
    out = tmp_path / "profile.json"
    proc = run_script("profile_step.py", "--examples", "512", "--json", str(out))
    results = {r["optimizer"]: r for r in json.loads(out.read_text())["results"]}
    for r in results.values():
        assert sum(r["parts"].values()) == pytest.approx(1.0)
        assert {"forward", "gradients", "optimizer"} <= set(r["parts"]) and r["op_ms_per_step"] > 0
    assert results["fused"]["optimizer_class"] == "FusedAdam" and "ResourceApplyAdam" in results["fused"]["op_types"]
    assert "ResourceApplyAdam" not in results["keras"]["op_types"]
    assert "| FusedAdam |" in proc.stdout


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
