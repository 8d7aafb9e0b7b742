"""What the benchmark smoke tests share (tests/test_benchmarks*.py): running a script of
benchmarks/ in its own process, and the reference conv VAE's sizes worked out by hand."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def run_script(name: str, *args: str, timeout: int = 240, path_first: str | None = None) -> subprocess.CompletedProcess:
    paths = (path_first, str(REPO_ROOT), os.environ.get("PYTHONPATH"))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / name), *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


# --- FLOPs ------------------------------------------------------------------------------------------
def reference_architecture_counts() -> dict:
    """MACs of one image and parameter counts of the reference conv VAE (benchmarks/flops.py
    REFERENCE: 28x28x1 images, 3x3 stride-2 'same' convolutions with 32 and 64 filters, a 256-unit
    dense layer, latent 16; the decoder mirrors the encoder), worked out here from that description
    alone, layer by layer. A stride-2 'same' convolution halves the side, rounding up; each output
    value of a convolution costs k*k*in_c MACs; each *input* value of a transposed convolution is
    spread over k*k*out_c outputs; a dense layer costs in*out."""
    k, (h, w, c), (f1, f2), dense, latent = 3, (28, 28, 1), (32, 64), 256, 16
    h1, w1 = -(-h // 2), -(-w // 2)  # 14 x 14
    h2, w2 = -(-h1 // 2), -(-w1 // 2)  # 7 x 7
    flat = h2 * w2 * f2
    layers = {  # name: (MACs, parameters = weights + biases, kernel shape as Keras stores it)
        "encoder conv 1": (h1 * w1 * f1 * k * k * c, k * k * c * f1 + f1, (k, k, c, f1)),
        "encoder conv 2": (h2 * w2 * f2 * k * k * f1, k * k * f1 * f2 + f2, (k, k, f1, f2)),
        "encoder dense": (flat * dense, flat * dense + dense, (flat, dense)),
        "encoder params": (dense * 2 * latent, dense * 2 * latent + 2 * latent, (dense, 2 * latent)),
        "decoder dense 1": (latent * dense, latent * dense + dense, (latent, dense)),
        "decoder dense 2": (dense * flat, dense * flat + flat, (dense, flat)),
        "decoder deconv": (h2 * w2 * f2 * k * k * f1, k * k * f2 * f1 + f1, (k, k, f1, f2)),
        "decoder params": (h1 * w1 * f1 * k * k * c, k * k * f1 * c + c, (k, k, c, f1)),
    }
    macs = sum(m for m, _, _ in layers.values())
    return {"layers": layers, "macs": macs, "training_flops": 3 * 2 * macs,  # backward = 2 x forward
            "parameters": sum(p for _, p, _ in layers.values())}
