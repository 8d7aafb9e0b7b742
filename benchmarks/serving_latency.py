"""Latency and throughput of `encode` through `vae-tf serve` (REST and gRPC) vs the in-process call.

Question: what does the network path cost on top of running the signature in the caller's own
process? Target (serving issue): at batch 1, gRPC adds at most 1 ms and REST at most 2 ms at p50.

Setup: one model (by default the default training architecture, MLP 256/128 with latent 8 on
8x8x1 digits-shaped inputs, random weights; or ``--model models/NAME``), served by
``vae-tf serve`` in a **separate process** on 127.0.0.1 (batching off). One client thread sends
requests back to back with the project's clients (``RestClient``: JSON over a keep-alive
connection; ``GrpcClient``: the official stubs with ``tf.make_tensor_proto``); the in-process
column calls ``signatures["encode"](x=...)`` and converts the outputs to NumPy, which is the
work a client needs at the end too. Like the server, the client process freezes the objects that
exist after start-up (``gc.freeze``), so full garbage collections do not walk TensorFlow's
million Python objects in the middle of a request. Rounds alternate between the three paths so that noise from
other tenants of the machine spreads over all of them. Latency is per request (client side,
end to end); throughput is rows per second of that single sequential client.

    python benchmarks/serving_latency.py --requests 400 --rounds 4
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import start_server  # noqa: E402


def _default_model(base: Path) -> Path:
    import keras

    from vae_tf.export import export_model
    from vae_tf.models import build_vae

    keras.utils.set_random_seed(0)
    model = build_vae((8, 8, 1), latent={"family": "gaussian", "latent_dim": 8},
                      network={"kind": "mlp", "hidden": [256, 128]}, seed=0)
    model(np.zeros((1, 8, 8, 1), np.float32))
    rng = np.random.default_rng(0)
    for variable in model.weights:
        if variable.trainable:
            variable.assign(rng.normal(0, 0.1, tuple(variable.shape)).astype(np.float32))
    return export_model(model, base, "vae").parent


def _time(fn, n: int) -> list[float]:
    out = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="export directory models/NAME (default: a random-weight default model)")
    parser.add_argument("--requests", type=int, default=400, help="requests per path, batch size and round")
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds")
    parser.add_argument("--batches", default="1,64", help="batch sizes")
    args = parser.parse_args(argv)

    import tensorflow as tf

    from serving.client import GrpcClient, RestClient

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(args.model) if args.model else _default_model(Path(tmp))
        version_dir = max((p for p in model_dir.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
        loaded = tf.saved_model.load(str(version_dir))
        encode = loaded.signatures["encode"]
        data_shape = tuple(encode.structured_input_signature[1]["x"].shape[1:])
        process, rest_url, grpc_target = start_server(model_dir)
        try:
            rest = RestClient(rest_url, model_dir.name)
            grpc_client = GrpcClient(grpc_target, model_dir.name)
            gc.collect()
            gc.freeze()  # as `vae-tf serve` does: full collections would walk TensorFlow's objects
            results = {}
            for batch in [int(b) for b in args.batches.split(",")]:
                x = np.random.default_rng(batch).random((batch,) + data_shape).astype(np.float32)
                paths = {
                    "in-process": lambda: {k: v.numpy() for k, v in encode(x=tf.constant(x)).items()},
                    "gRPC": lambda: grpc_client.encode(x),
                    "REST": lambda: rest.encode(x),
                }
                want = paths["in-process"]()["embedding"]
                for name, fn in paths.items():  # warm-up and a correctness check
                    for _ in range(20):
                        got = fn()
                    np.testing.assert_allclose(got["embedding"], want, rtol=1e-5, atol=1e-6)
                times = {name: [] for name in paths}
                for round_index in range(args.rounds):
                    order = list(paths) if round_index % 2 == 0 else list(reversed(list(paths)))
                    for name in order:
                        times[name] += _time(paths[name], args.requests)
                results[batch] = {name: np.array(t) * 1e3 for name, t in times.items()}
        finally:
            process.terminate()
            process.wait(timeout=30)

    command = "python benchmarks/serving_latency.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print(f"Command: `{command.strip()}`\n")
    print(f"{time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
          f"Python {platform.python_version()}, TensorFlow {tf.__version__}; server in a separate process on "
          f"127.0.0.1, batching off; {args.rounds} x {args.requests} requests per cell.\n")
    print("| batch | path | p50 ms | p99 ms | added at p50 ms | requests/s | rows/s |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for batch, by_path in results.items():
        base = float(np.percentile(by_path["in-process"], 50))
        for name, ms in by_path.items():
            p50, p99 = float(np.percentile(ms, 50)), float(np.percentile(ms, 99))
            added = "" if name == "in-process" else f"{p50 - base:+.3f}"
            rps = 1e3 / float(np.mean(ms))
            print(f"| {batch} | {name} | {p50:.3f} | {p99:.3f} | {added} | {rps:,.0f} | {rps * batch:,.0f} |")
    if 1 in results:
        base = float(np.percentile(results[1]["in-process"], 50))
        grpc_added = float(np.percentile(results[1]["gRPC"], 50)) - base
        rest_added = float(np.percentile(results[1]["REST"], 50)) - base
        print(f"\nTarget at batch 1: gRPC adds {grpc_added:.3f} ms (<= 1 ms: {'yes' if grpc_added <= 1 else 'no'}), "
              f"REST adds {rest_added:.3f} ms (<= 2 ms: {'yes' if rest_added <= 2 else 'no'}).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
