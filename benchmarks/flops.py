"""Training FLOPs per image of the conv VAE, and the machine's measured fp32 matmul peak.

Question answered: how close does training come to what this CPU can do? Efficiency =
achieved training FLOP/s (images/s x FLOPs per image) / the best fp32 matmul FLOP/s measured on
the same machine with the same number of threads. ``benchmarks/train_throughput.py`` measures
the achieved side (interleaved with the matmul peak, so both see the same load); this script
says what the FLOPs per image are and what the peak is.

**FLOP convention** (the usual one, e.g. Kaplan et al. 2020, "Scaling laws", §2.1):

- forward FLOPs = 2 x multiply-accumulates (MACs) of the layers with weights: ``Dense``
  ``in x out``; ``Conv2D`` ``out_h x out_w x out_c x k_h x k_w x in_c``; ``Conv2DTranspose``
  ``in_h x in_w x in_c x k_h x k_w x out_c`` (each input pixel scatters one kernel);
- training FLOPs = 3 x forward (the backward pass computes the gradient w.r.t. the inputs and
  w.r.t. the weights, each as many MACs as the forward);
- not counted: bias adds, activations, the loss, the sampling, the optimizer update (all
  O(parameters + activations), < 1 % here). The convention counts the input gradient of the
  first layer, which nobody computes (0.8 % of the conv VAE's backward pass).

Cross-check: TensorFlow's graph profiler (``tf.compat.v1.profiler`` with
``ProfileOptionBuilder.float_operation()``) counts the ops of the traced forward pass and of the
traced training step (forward + ``GradientTape.gradient``) from the kernels' registered FLOP
statistics (MatMul, Conv2D, Conv2DBackpropInput/Filter, BiasAdd and a few element-wise ops);
it includes bias adds and element-wise work, so it must come out slightly *above* the analytic
count, and it does not know what a kernel really executes (it counts the input gradient of the
first layer if the graph has it; ``GradientTape`` prunes it).

**Matmul peak**: ``tf.matmul`` of two n x n float32 matrices (2 n³ FLOPs) inside a
``tf.function``, best of ``--repeats`` per size; also ``torch.mm`` when PyTorch is installed
(the optional ``bench`` extra; MKL). The peak is the best over sizes and libraries.

Usage::

    python benchmarks/flops.py                              # analytic + profiler + peak (~30 s)
    python benchmarks/flops.py --sizes 256 --repeats 2      # smoke run
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse  # noqa: E402
import datetime  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks import common  # noqa: E402

#: The reference conv architecture of issue #10.
REFERENCE = {"data_shape": (28, 28, 1), "filters": [32, 64], "dense": 256, "latent_dim": 16}
#: Backward = 2 x forward, so training = 3 x forward (module docstring).
TRAINING_OVER_FORWARD = 3


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- analytic count -------------------------------------------------------------------------------
def layer_macs(layer) -> int:
    """Multiply-accumulates of one example through ``layer`` (0 for layers without weights)."""
    import keras

    if isinstance(layer, keras.Model):
        return sum(layer_macs(inner) for inner in layer.layers)
    if isinstance(layer, keras.layers.Dense):
        in_shape = tuple(layer.input.shape[1:])
        return int(math.prod(in_shape[:-1]) * in_shape[-1] * layer.units)
    if isinstance(layer, keras.layers.Conv2DTranspose):
        _, in_h, in_w, in_c = layer.input.shape
        k_h, k_w = layer.kernel_size
        return int(in_h * in_w * in_c * k_h * k_w * layer.filters)
    if isinstance(layer, keras.layers.Conv2D):
        _, out_h, out_w, out_c = layer.output.shape
        k_h, k_w = layer.kernel_size
        in_c = layer.input.shape[-1]
        return int(out_h * out_w * out_c * k_h * k_w * in_c // layer.groups)
    if layer.weights:
        raise NotImplementedError(f"no MAC formula for {type(layer).__name__} {layer.name!r}")
    return 0


def layer_table(*models) -> list[dict]:
    rows = []
    for model in models:
        for layer in model.layers:
            macs = layer_macs(layer)
            if macs:
                rows.append({"model": model.name, "layer": layer.name, "kind": type(layer).__name__,
                             "output": list(layer.output.shape[1:]), "macs": macs})
    return rows


def training_flops_per_image(*models) -> int:
    """``3 x 2 x MACs`` of one example through ``models`` (the convention of the module docstring)."""
    return TRAINING_OVER_FORWARD * 2 * sum(layer_macs(m) for m in models)


def reference_networks(spec: dict = REFERENCE):
    from vae_tf.networks import build_decoder, build_encoder

    shape = tuple(spec["data_shape"])
    encoder = build_encoder("conv", shape, 2 * spec["latent_dim"], filters=spec["filters"], dense=spec["dense"])
    decoder = build_decoder("conv", spec["latent_dim"], shape, shape[-1], filters=spec["filters"], dense=spec["dense"])
    return encoder, decoder


# --- profiler cross-check -------------------------------------------------------------------------
def profiler_flops(fn, *specs) -> int:
    """FLOPs TensorFlow's graph profiler counts in ``tf.function(fn)`` traced at ``specs``."""
    import tensorflow as tf

    graph = tf.function(fn).get_concrete_function(*specs).graph
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    level = tf.get_logger().level
    tf.get_logger().setLevel("ERROR")  # the v1 profiler warns that it is v1
    try:
        return int(tf.compat.v1.profiler.profile(graph=graph, options=options, cmd="op").total_float_ops)
    finally:
        tf.get_logger().setLevel(level)


def profiler_check(encoder, decoder, latent_dim: int) -> dict:
    """Profiler counts for one example: forward (encoder + decoder) and a training step's
    forward + gradient (the vae-tf ELBO written in plain ops, as the bare benchmark variant)."""
    import tensorflow as tf

    shape = (1,) + tuple(encoder.inputs[0].shape[1:])
    variables = encoder.trainable_variables + decoder.trainable_variables

    def forward(x, eps):
        mean, log_var = tf.split(encoder(x), 2, axis=-1)
        return decoder(mean + tf.exp(0.5 * log_var) * eps)

    def step(x, eps):
        with tf.GradientTape() as tape:
            mean, log_var = tf.split(encoder(x, training=True), 2, axis=-1)
            logits = decoder(mean + tf.exp(0.5 * log_var) * eps, training=True)
            rec = -tf.reduce_sum(tf.nn.sigmoid_cross_entropy_with_logits(labels=x, logits=logits), axis=[1, 2, 3])
            kl = 0.5 * tf.reduce_sum(tf.square(mean) + tf.exp(log_var) - log_var - 1.0, axis=-1)
            loss = -tf.reduce_mean(rec - kl)
        return tape.gradient(loss, variables)

    specs = (tf.TensorSpec(shape, tf.float32), tf.TensorSpec((1, latent_dim), tf.float32))
    return {"forward": profiler_flops(forward, *specs), "training_step": profiler_flops(step, *specs)}


# --- matmul peak ----------------------------------------------------------------------------------
def tf_matmul_gflops(n: int, repeats: int) -> float:
    """Best GFLOP/s of an n x n float32 ``tf.matmul`` over ``repeats`` timed calls (one warm-up)."""
    import tensorflow as tf

    a = tf.random.stateless_normal((n, n), seed=[1, 2])
    b = tf.random.stateless_normal((n, n), seed=[3, 4])
    product = tf.function(lambda a, b: tf.matmul(a, b)[0, 0])  # reading one entry waits for the product
    product(a, b).numpy()
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        product(a, b).numpy()
        best = min(best, time.perf_counter() - start)
    return 2.0 * n ** 3 / best / 1e9


def torch_matmul_gflops(torch, n: int, repeats: int) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)  # synchronous on the CPU
        best = min(best, time.perf_counter() - start)
    return 2.0 * n ** 3 / best / 1e9


def matmul_peak(sizes=(2048, 4096), repeats: int = 5, torch=None) -> dict:
    """``{"tensorflow": {n: GFLOP/s}, "torch": {...}, "peak_gflops": best, "peak_from": "..."}``."""
    result = {"tensorflow": {int(n): tf_matmul_gflops(int(n), repeats) for n in sizes}}
    if torch is not None:
        result["torch"] = {int(n): torch_matmul_gflops(torch, int(n), repeats) for n in sizes}
    best = max(((lib, n, v) for lib in ("tensorflow", "torch") for n, v in result.get(lib, {}).items()),
               key=lambda t: t[2])
    result["peak_gflops"] = best[2]
    result["peak_from"] = f"{best[0]} {best[1]}x{best[1]}"
    return result


# --- report -----------------------------------------------------------------------------------------
def render(report: dict) -> str:
    m = report["machine"]
    lines = [f"Command: `{report['command']}`", "",
             f"- Date: {report['date']}; commit {m['git_commit']}{' + uncommitted changes' if m['git_dirty'] else ''}",
             f"- Machine: {m['cpu']}, {m['cpu_count']} CPUs ({m['cpus_usable']} usable); {m['platform']}",
             f"- Threads: TensorFlow intra {m['tf_intra_op_threads']} / inter {m['tf_inter_op_threads']}"
             + (f", PyTorch {m['torch_threads']}" if m.get("torch_threads") else "")
             + f"; TensorFlow {m['tensorflow']}" + (f", PyTorch {m['torch']}" if m.get("torch") else ""), "",
             "| Network | Layer | Kind | Output | MACs / image |", "|---|---|---|---|---:|"]
    for row in report["layers"]:
        lines.append(f"| {row['model']} | {row['layer']} | {row['kind']} | {'x'.join(map(str, row['output']))} "
                     f"| {row['macs']:,} |")
    a, p = report["analytic"], report["profiler"]
    lines += [
        "",
        f"- Forward: {a['forward_macs']:,} MACs = {a['forward_flops']:,} FLOPs per image; training (3 x forward): "
        f"**{a['training_flops']:,} FLOPs per image** ({a['training_flops'] / 1e6:.2f} MFLOP).",
        f"- TensorFlow profiler, one image: forward {p['forward']:,} FLOPs "
        f"({p['forward'] / a['forward_flops'] - 1:+.2%} vs analytic), training step {p['training_step']:,} "
        f"({p['training_step'] / a['training_flops'] - 1:+.2%}); the excess is bias adds and element-wise ops.",
        "",
        "| n (n x n fp32 matmul) | " + " | ".join(f"{lib} GFLOP/s" for lib in ("tensorflow", "torch")
                                              if lib in report["matmul"]) + " |",
        "|---:|" + "---:|" * sum(lib in report["matmul"] for lib in ("tensorflow", "torch")),
    ]
    for n in report["matmul"]["tensorflow"]:
        cells = [f"{report['matmul'][lib][n]:,.1f}" for lib in ("tensorflow", "torch") if lib in report["matmul"]]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    lines += ["", f"Matmul peak: **{report['matmul']['peak_gflops']:,.1f} GFLOP/s** ({report['matmul']['peak_from']}); "
              f"at that peak the training would run at {report['images_per_s_at_peak']:,.0f} images/s."]
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 3072, 4096], help="matmul sizes n")
    p.add_argument("--repeats", type=int, default=7, help="timed matmuls per size (best counts)")
    p.add_argument("--threads", type=int, default=None,
                   help="TF intra/inter-op threads and torch.set_num_threads (None: one per usable CPU)")
    p.add_argument("--no-torch", action="store_true", help="skip the torch.mm peak even when PyTorch is installed")
    p.add_argument("--json", type=Path, default=None, help="also write the report as JSON here")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import tensorflow as tf

    threads = args.threads or len(os.sched_getaffinity(0))
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    torch = None
    if not args.no_torch:
        from benchmarks.torch_reference import import_torch, set_threads

        torch, why = import_torch()
        if torch is None:
            log(f"PyTorch not installed ({why}): torch.mm peak skipped; pip install -e '.[bench]' to add it")
        else:
            set_threads(torch, threads)

    encoder, decoder = reference_networks()
    forward_macs = layer_macs(encoder) + layer_macs(decoder)
    analytic = {"forward_macs": forward_macs, "forward_flops": 2 * forward_macs,
                "training_flops": training_flops_per_image(encoder, decoder)}
    log(f"analytic: {analytic}")
    profiler = profiler_check(encoder, decoder, REFERENCE["latent_dim"])
    log(f"profiler: {profiler}")
    peak = matmul_peak(args.sizes, args.repeats, torch)
    log(f"matmul: {peak}")
    machine = {**common.machine_info(), "tensorflow": tf.__version__,
               "tf_intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
               "tf_inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads()}
    if torch is not None:
        machine.update(torch=torch.__version__, torch_threads=torch.get_num_threads())
    report = {"command": common.command_line(),
              "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
              "machine": machine, "reference": REFERENCE, "layers": layer_table(encoder, decoder),
              "analytic": analytic, "profiler": profiler, "matmul": peak,
              "images_per_s_at_peak": peak["peak_gflops"] * 1e9 / analytic["training_flops"]}
    print(render(report))
    if args.json:
        common.write_json(args.json, report)
    return 0


if __name__ == "__main__":
    from benchmarks.common import start_as_vae_tf_does

    start_as_vae_tf_does()
    sys.exit(main())
