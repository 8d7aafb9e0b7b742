"""Sustained concurrent load on `vae-tf serve` with a hot swap in the middle (issue #8).

Question: under many concurrent clients, does the service keep answering correctly, with no
5xx, while a new model version is dropped in? And what latency do clients see meanwhile?

Setup: the tiny test model (``serving.testing.export_tiny_model``, MLP 16 on 8x8x1, latent 4;
versions differ only in their random weights) served by ``vae-tf serve`` in a **separate
process** on 127.0.0.1 (batching off, default limits: 128 in flight, 30 s REST deadline, base
path polled every 0.1 s). For each protocol in turn, ``--clients`` threads send ``--requests``
``encode`` requests each, back to back, with the project's clients (``RestClient``: JSON over one
keep-alive connection per thread; ``GrpcClient``: the official stubs). Inputs cycle through 8
fixed batches of 1-4 rows. When a quarter of the requests are done, the next version is
dropped in (copied to a hidden name, then renamed, as ``vae-tf train`` does), so the hot swap
happens under full load.

Every answer is compared with the answer of each version computed in this process
(``tf.saved_model.load(...).signatures["encode"]``; ``allclose`` with rtol 1e-5, atol 1e-6): it
must be one version's answer for that input, else it counts as wrong. A client that has seen
the new version and then gets the old one counts as a regression (the swap must be atomic).
Latency is per request, client side, end to end. Loopback only.

    python benchmarks/serving_load.py --clients 16 --requests 2000
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import command_line, machine_info, start_server  # noqa: E402
from serving.testing import drop_version  # noqa: E402


def _wait_for_version(rest_url: str, version: int, timeout: float = 120.0) -> None:
    from serving.client import RestClient

    client = RestClient(rest_url, "vae")
    deadline = time.monotonic() + timeout
    while client.metadata()["model_spec"]["version"] != str(version):
        if time.monotonic() > deadline:
            raise SystemExit(f"version {version} was not served within {timeout:g} s of being dropped in")
        time.sleep(0.05)
    client.close()


def run_phase(protocol: str, url: str, clients: int, requests: int, inputs, expected, old: int, new: int,
              swap) -> dict:
    from serving.client import GrpcClient, RestClient, ServingRequestError

    lock = threading.Lock()
    latencies: list[list[float]] = [[] for _ in range(clients)]
    counts = {"done": 0, "5xx": 0, "other_errors": 0, "wrong": 0, "regressions": 0, old: 0, new: 0}
    errors: list[str] = []
    swap_at: dict = {}

    def loop(index: int) -> None:
        client = RestClient(url, "vae") if protocol == "REST" else GrpcClient(url, "vae")
        latest = old
        for j in range(requests):
            i = (index + j) % len(inputs)
            start = time.perf_counter()
            try:
                z = client.encode(inputs[i])["z_mean"]
            except ServingRequestError as err:
                with lock:
                    is_5xx = (isinstance(err.code, int) and err.code >= 500) or err.code in (
                        "INTERNAL", "UNKNOWN", "DATA_LOSS", "UNIMPLEMENTED", "UNAVAILABLE", "DEADLINE_EXCEEDED")
                    counts["5xx" if is_5xx else "other_errors"] += 1
                    errors.append(str(err)[:200])
                continue
            latencies[index].append(time.perf_counter() - start)
            version = next((v for v in (old, new) if z.shape == expected[v][i].shape
                            and np.allclose(z, expected[v][i], rtol=1e-5, atol=1e-6)), None)
            with lock:
                counts["done"] += 1
                if version is None:
                    counts["wrong"] += 1
                    continue
                counts[version] += 1
                if version == new and "first_new" not in swap_at:
                    swap_at["first_new"] = time.perf_counter()
            if version < latest:
                with lock:
                    counts["regressions"] += 1
            latest = max(latest, version)
        client.close()

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    total = clients * requests
    while counts["done"] + counts["5xx"] + counts["other_errors"] < total // 4 and any(t.is_alive() for t in threads):
        time.sleep(0.005)
    swap_at["dropped"] = time.perf_counter()
    swap()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    ms = np.array([x for per_client in latencies for x in per_client]) * 1000
    return {"protocol": protocol, "clients": clients, "requests": total, "answered": counts["done"],
            "5xx": counts["5xx"], "other_errors": counts["other_errors"], "wrong_answers": counts["wrong"],
            "swap_regressions": counts["regressions"], f"answers_v{old}": counts[old], f"answers_v{new}": counts[new],
            "swap_visible_after_s": round(swap_at["first_new"] - swap_at["dropped"], 3) if "first_new" in swap_at
            else None,
            "p50_ms": round(float(np.percentile(ms, 50)), 2), "p99_ms": round(float(np.percentile(ms, 99)), 2),
            "max_ms": round(float(ms.max()), 2), "throughput_rps": round(counts["done"] / elapsed, 1),
            "seconds": round(elapsed, 1), "first_errors": errors[:3]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=16, help="concurrent client threads per protocol (16)")
    parser.add_argument("--requests", type=int, default=2000, help="requests per client (2000)")
    parser.add_argument("--protocols", default="REST,gRPC", help="comma-separated: REST, gRPC (both)")
    parser.add_argument("--json", action="store_true", help="print the results as one JSON document")
    args = parser.parse_args(argv)

    import tensorflow as tf

    from serving.testing import export_tiny_model

    protocols = [p.strip() for p in args.protocols.split(",") if p.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        exports, base = Path(tmp) / "exports", Path(tmp) / "base"
        for version in range(1, len(protocols) + 2):
            export_tiny_model(exports, "vae", version=version, seed=version - 1)
        (base / "vae").mkdir(parents=True)
        drop_version(exports / "vae", base, 1)
        rng = np.random.default_rng(0)
        inputs = [rng.random((1 + i % 4, 8, 8, 1)).astype(np.float32) for i in range(8)]
        expected = {}
        for version in range(1, len(protocols) + 2):
            encode = tf.saved_model.load(str(exports / "vae" / str(version))).signatures["encode"]
            expected[version] = [encode(x=tf.constant(x))["z_mean"].numpy() for x in inputs]
        process, rest_url, grpc_target = start_server(base / "vae", poll_seconds=0.1)
        results = []
        try:
            for k, protocol in enumerate(protocols):
                url = rest_url if protocol.upper() == "REST" else grpc_target
                name = "REST" if protocol.upper() == "REST" else "gRPC"
                old, new = k + 1, k + 2
                results.append(run_phase(name, url, args.clients, args.requests, inputs, expected, old, new,
                                         lambda new=new: drop_version(exports / "vae", base, new)))
                _wait_for_version(rest_url, new)  # the next phase starts from the new version
        finally:
            process.terminate()
            exit_code = process.wait(timeout=60)
    report = {"command": command_line(), "machine": machine_info(), "results": results,
              "server_exit_code_after_SIGTERM": exit_code}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    machine = report["machine"]
    print(f"# {report['command']}")
    print(f"# {machine['cpu']} ({machine['cpus_usable']} usable CPUs), Python {machine['python']}, "
          f"commit {machine['git_commit']}{' (dirty)' if machine['git_dirty'] else ''}")
    print("| protocol | clients x requests | answered | 5xx | other errors | wrong answers | swap regressions | "
          "answers old / new version | new version visible after | p50 | p99 | max | throughput |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        versions = [k for k in r if k.startswith("answers_v")]
        visible = f"{r['swap_visible_after_s']} s" if r["swap_visible_after_s"] is not None else "never"
        print(f"| {r['protocol']} | {r['clients']} x {r['requests'] // r['clients']} | {r['answered']} | {r['5xx']} | "
              f"{r['other_errors']} | {r['wrong_answers']} | {r['swap_regressions']} | "
              f"{r[versions[0]]} / {r[versions[1]]} | {visible} | {r['p50_ms']} ms | {r['p99_ms']} ms | "
              f"{r['max_ms']} ms | {r['throughput_rps']} req/s |")
        for line in r["first_errors"]:
            print(f"#   error: {line}")
    print(f"# server exit code after SIGTERM: {exit_code}")
    failed = any(r["5xx"] or r["wrong_answers"] or r["swap_regressions"] or r["other_errors"] for r in results)
    return 1 if failed or exit_code != 0 else 0


if __name__ == "__main__":
    from benchmarks.common import start_as_vae_tf_does

    start_as_vae_tf_does()
    sys.exit(main())
