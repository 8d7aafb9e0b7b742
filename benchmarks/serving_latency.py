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

``--text`` measures a sentence VAE instead (by default the architecture of
``training/configs/text_synthetic.yaml``: LSTM 50, embedding 50, latent 2, a 1,000-word vocabulary,
sentences of up to 10 words; random weights; or ``--model`` a trained text export): requests carry
raw sentences (JSON strings over REST, ``string_val`` over gRPC), so the server's sentence checks
(``serving/text.py``) are part of what is measured.

    python benchmarks/serving_latency.py --text --requests 400 --rounds 4

``--check-cost`` answers a second question instead: what does refusing NaN/Inf inputs (the
default; ``--allow-non-finite`` turns the check off) cost per request at batch 1? Two servers run
side by side, one with the check and one without; rounds alternate between the four
protocol/server paths; the table gives p50 and mean latency and their on/off ratios (goal: the
check adds < 2 %), and the cost of the check itself (``first_non_finite`` on the request's
array) timed in-process.

    python benchmarks/serving_latency.py --check-cost --requests 1000 --rounds 8
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
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

from benchmarks.common import default_serving_model, start_server  # noqa: E402



class _CallContext:
    """What ``PredictionService.Predict`` asks of a live gRPC call, for in-process calls."""

    def is_active(self):
        return True

    def time_remaining(self):
        return None


def _default_text_model(base: Path) -> Path:
    """The text_synthetic config's network (He et al. 2019's synthetic model) with random weights."""
    import keras

    from vae_tf.export import export_model
    from vae_tf.models import build_vae

    keras.utils.set_random_seed(0)
    model = build_vae((), latent={"family": "gaussian", "latent_dim": 2}, likelihood={"name": "categorical"},
                      network={"kind": "lstm", "embedding": 50, "hidden": [50], "z_injection": "both"},
                      text={"vocabulary": [f"w{i}" for i in range(1000)], "max_length": 10}, seed=0)
    model.reconstruct(np.array(["w1 w2"], dtype=object))
    rng = np.random.default_rng(0)
    for variable in model.weights:
        if variable.trainable:
            variable.assign(rng.normal(0, 0.1, tuple(variable.shape)).astype(np.float32))
    return export_model(model, base, "text").parent


def _sentences(batch: int, seed: int) -> np.ndarray:
    """``batch`` sentences of 10 words drawn from the default text model's vocabulary."""
    rng = np.random.default_rng(seed)
    out = np.empty(batch, dtype=object)
    out[:] = [" ".join(f"w{i}" for i in rng.integers(0, 1000, 10)) for _ in range(batch)]
    return out


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
    parser.add_argument("--text", action="store_true",
                        help="a sentence VAE: requests carry sentences (default model: text_synthetic's network)")
    parser.add_argument("--check-cost", action="store_true",
                        help="measure the non-finite input check instead: servers with and without it, batch 1")
    args = parser.parse_args(argv)
    if args.check_cost:
        return check_cost(args, argv)

    import tensorflow as tf

    from serving.client import GrpcClient, RestClient

    with tempfile.TemporaryDirectory() as tmp:
        default = _default_text_model if args.text else default_serving_model
        model_dir = Path(args.model) if args.model else default(Path(tmp))
        version_dir = max((p for p in model_dir.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
        loaded = tf.saved_model.load(str(version_dir))
        encode = loaded.signatures["encode"]
        x_spec = encode.structured_input_signature[1]["x"]
        data_shape = tuple(x_spec.shape[1:])
        text = x_spec.dtype == tf.string
        process, rest_url, grpc_target = start_server(model_dir)
        try:
            rest = RestClient(rest_url, model_dir.name)
            grpc_client = GrpcClient(grpc_target, model_dir.name)
            gc.collect()
            gc.freeze()  # as `vae-tf serve` does: full collections would walk TensorFlow's objects
            results = {}
            for batch in [int(b) for b in args.batches.split(",")]:
                x = _sentences(batch, batch) if text else \
                    np.random.default_rng(batch).random((batch,) + data_shape).astype(np.float32)
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
        handler_costs = io.StringIO()  # measured while the (temporary) export still exists
        if text:
            with contextlib.redirect_stdout(handler_costs):
                _print_handler_costs(model_dir, args.requests, args.rounds)

    command = "python benchmarks/serving_latency.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print(f"Command: `{command.strip()}`\n")
    print(f"{time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
          f"Python {platform.python_version()}, TensorFlow {tf.__version__}; server in a separate process on "
          f"127.0.0.1, batching off; {args.rounds} x {args.requests} requests per cell"
          + ("; a text model, requests of 10-word sentences" if text else "") + ".\n")
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
    print(handler_costs.getvalue(), end="")
    return 0


def _print_handler_costs(model_dir: Path, requests: int, rounds: int) -> None:
    """The server's own work per text request at batch 1, without network or a second process:
    the REST handler (JSON in, sentence checks, model, JSON out) and the gRPC handler (TensorProto
    in and out) against the signature call they contain, in alternating rounds in this process."""
    import json

    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    from serving.grpc_server import PredictionService
    from serving.model_store import ModelStore
    from serving.rest import RestApi

    store = ModelStore(model_dir.parent, model_dir.name, poll_seconds=0).start()
    signature = store.servable(model_dir.name).signatures["encode"]
    x = _sentences(1, 1)
    body = json.dumps({"signature_name": "encode", "instances": x.tolist()}).encode()
    request = predict_pb2.PredictRequest()
    request.model_spec.name, request.model_spec.signature_name = model_dir.name, "encode"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto([s.encode() for s in x]))
    rest, grpc_service, context = RestApi(store), PredictionService(store), _CallContext()
    path = f"/v1/models/{model_dir.name}:predict"
    raw = np.array([s.encode() for s in x], dtype=object)
    calls = {"signature call": lambda: signature.run({"x": raw}), "sentence checks": lambda: signature.prepare({"x": raw}),
             "REST handler": lambda: rest.handle("POST", path, body), "gRPC handler": lambda: grpc_service.Predict(
                 request, context)}
    assert calls["REST handler"]()[0] == 200
    for call in calls.values():  # warm-up
        for _ in range(50):
            call()
    times = {name: [] for name in calls}
    for round_index in range(rounds):
        for name in calls if round_index % 2 == 0 else list(calls)[::-1]:
            times[name] += _time(calls[name], requests)
    store.stop()
    base = float(np.percentile(times["signature call"], 50)) * 1e6
    print(f"\nThe server's own work per request at batch 1 (in this process, no network; {rounds} x {requests} calls "
          "each, alternating):\n")
    print("| step | p50 us | p99 us | added to the signature call at p50 us |")
    print("|---|---:|---:|---:|")
    for name, values in times.items():
        us = np.array(values) * 1e6
        p50 = float(np.percentile(us, 50))
        added = "" if name in ("signature call", "sentence checks") else f"{p50 - base:+.1f}"
        print(f"| {name} | {p50:.1f} | {float(np.percentile(us, 99)):.1f} | {added} |")


def check_cost(args, argv) -> int:
    """REST and gRPC at batch 1 against a server that refuses non-finite inputs (the default) and
    one started with ``--allow-non-finite``, side by side in alternating rounds."""
    import timeit

    import tensorflow as tf

    from serving.client import GrpcClient, RestClient
    from serving.model_store import first_non_finite

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(args.model) if args.model else default_serving_model(Path(tmp))
        version_dir = max((p for p in model_dir.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
        encode = tf.saved_model.load(str(version_dir)).signatures["encode"]
        data_shape = tuple(encode.structured_input_signature[1]["x"].shape[1:])
        x = np.random.default_rng(1).random((1,) + data_shape).astype(np.float32)
        servers = {"on": start_server(model_dir), "off": start_server(model_dir, extra_args=["--allow-non-finite"])}
        try:
            paths = {}
            for check, (_, rest_url, grpc_target) in servers.items():
                rest, grpc_client = RestClient(rest_url, model_dir.name), GrpcClient(grpc_target, model_dir.name)
                paths[("REST", check)] = lambda client=rest: client.encode(x)
                paths[("gRPC", check)] = lambda client=grpc_client: client.encode(x)
            gc.collect()
            gc.freeze()
            want = {k: v.numpy() for k, v in encode(x=tf.constant(x)).items()}["embedding"]
            for fn in paths.values():  # warm-up and a correctness check
                for _ in range(50):
                    got = fn()
                np.testing.assert_allclose(got["embedding"], want, rtol=1e-5, atol=1e-6)
            times = {key: [] for key in paths}
            keys = list(paths)
            for round_index in range(args.rounds):
                for key in keys if round_index % 2 == 0 else keys[::-1]:
                    times[key] += _time(paths[key], args.requests)
        finally:
            for process, *_ in servers.values():
                process.terminate()
                process.wait(timeout=30)
        handler = _handler_ab(model_dir, x, args.requests * args.rounds)
    repeats = 20000
    check_us = min(timeit.repeat(lambda: first_non_finite(x), number=repeats, repeat=7)) / repeats * 1e6

    command = "python benchmarks/serving_latency.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print(f"Command: `{command.strip()}`\n")
    print(f"{time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
          f"Python {platform.python_version()}, TensorFlow {tf.__version__}; two servers in separate processes on "
          f"127.0.0.1 (non-finite check on / off), batch 1 of {list(x.shape)}; {args.rounds} x {args.requests} "
          "requests per cell, alternating.\n")
    print("| protocol | p50 ms, check on | p50 ms, check off | on / off (p50) | mean ms, on | mean ms, off | "
          "on / off (mean) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    worst = 0.0
    for protocol in ("REST", "gRPC"):
        on, off = np.array(times[(protocol, "on")]) * 1e3, np.array(times[(protocol, "off")]) * 1e3
        p50_on, p50_off = float(np.percentile(on, 50)), float(np.percentile(off, 50))
        worst = max(worst, p50_on / p50_off)
        print(f"| {protocol} | {p50_on:.3f} | {p50_off:.3f} | {p50_on / p50_off:.3f} | {on.mean():.3f} | "
              f"{off.mean():.3f} | {on.mean() / off.mean():.3f} |")
    print("\nThe server's request handler alone (JSON or TensorProto in, model run, JSON or TensorProto out; no "
          f"network), one handler object with the check switched on and off for alternate requests, "
          f"{args.requests * args.rounds} pairs:\n")
    print("| handler, arms | p50 us, arm 1 | p50 us, arm 2 | arm 1 / arm 2 (p50) | median paired difference us | "
          "as % of arm 2's p50 |")
    print("|---|---:|---:|---:|---:|---:|")
    handler_worst = 0.0
    for row, (on, off) in handler.items():
        on, off = np.array(on) * 1e6, np.array(off) * 1e6
        p50_on, p50_off = float(np.percentile(on, 50)), float(np.percentile(off, 50))
        # Each pair ran back to back, so its difference carries the check's cost with little of
        # the machine's drift: the median difference is the robust estimate of the added time.
        added = float(np.median(on - off))
        if "A/A" not in row:
            handler_worst = max(handler_worst, added / p50_off)
        print(f"| {row} | {p50_on:.1f} | {p50_off:.1f} | {p50_on / p50_off:.3f} | {added:+.1f} | "
              f"{100 * added / p50_off:+.2f} % |")
    handler_p50 = min(float(np.percentile(np.array(off) * 1e6, 50)) for off in (t[1] for t in handler.values()))
    share = check_us / handler_p50
    print(f"\nThe check alone (`first_non_finite` on the request array, in-process, best of 7 x {repeats}): "
          f"{check_us:.2f} us per request = {100 * share:.2f} % of the fastest handler p50 ({handler_p50:.1f} us).")
    print(f"Goal: the check adds < 2 % at batch 1: {'yes' if share < 0.02 else 'no'} by its own time; the paired "
          f"handler difference reads at most {100 * handler_worst:+.2f} % (the A/A rows, where nothing "
          "differs, show this machine's noise in that estimate); end to end the p50 ratio is at most "
          f"{worst:.3f} (two server processes: their difference is mostly not the check).")
    return 0


def _handler_ab(model_dir: Path, x: np.ndarray, pairs: int) -> dict[str, tuple[list[float], list[float]]]:
    """Per-request times of the REST and gRPC handlers with the check on and off, interleaved
    (on/off, then off/on, ...) so that drift on a shared machine hits both alike."""
    import json

    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    from serving.grpc_server import PredictionService
    from serving.model_store import ModelStore
    from serving.rest import RestApi

    store = ModelStore(model_dir.parent, model_dir.name, poll_seconds=0).start()
    rest, grpc_service, context = RestApi(store), PredictionService(store), _CallContext()
    body = json.dumps({"signature_name": "encode", "instances": x.tolist()}).encode()
    path = f"/v1/models/{model_dir.name}:predict"
    request = predict_pb2.PredictRequest()
    request.model_spec.name, request.model_spec.signature_name = model_dir.name, "encode"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(x))
    calls = {"REST": (rest, lambda: rest.handle("POST", path, body)),
             "gRPC": (grpc_service, lambda: grpc_service.Predict(request, context))}
    out = {}
    # "A/A": both arms without the check, the same loop: what the estimate reads when nothing differs.
    for label, arms in (("on / off", (True, False)), ("A/A: off / off", (False, False))):
        for protocol, (service, call) in calls.items():
            times: tuple[list[float], list[float]] = ([], [])
            for i in range(pairs + 100):
                for arm in ((0, 1) if i % 2 == 0 else (1, 0)):
                    service.allow_non_finite = not arms[arm]
                    start = time.perf_counter()
                    call()
                    if i >= 100:  # the first 100 pairs warm up
                        times[arm].append(time.perf_counter() - start)
            out[f"{protocol}, {label}"] = times
    assert rest.handle("POST", path, body)[0] == 200
    store.stop()
    return out


if __name__ == "__main__":
    from benchmarks.common import start_as_vae_tf_does

    start_as_vae_tf_does()
    sys.exit(main())
