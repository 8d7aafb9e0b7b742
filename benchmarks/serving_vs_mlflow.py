"""`vae-tf serve` against `mlflow models serve`, the same exported model, side by side (issue 20).

Question: a user who has the model in MLflow can serve it with ``mlflow models serve``; how much
more does ``vae-tf serve`` answer, and how fast, under concurrent clients?

Setup, all on 127.0.0.1, every server in its own process, all started before the first round:

- the model: the default training architecture (MLP 256/128, Gaussian latent 8, 8x8x1 inputs,
  fixed random weights; :func:`benchmarks.common.default_serving_model`) exported once;
- ``vae-tf serve`` on that export (REST and gRPC), batching off, and a second one with
  ``--enable-batching`` (its defaults: up to 32 rows, 1 ms);
- ``mlflow models serve -m <model uri> --env-manager local`` of the pyfunc a training run logs
  (``training.tracking.log_saved_model``: the same SavedModel as its artifact), logged into a
  temporary SQLite tracking store; MLflow's defaults otherwise (one uvicorn worker).

Every answer path is first checked against the signature called in this process (``allclose``,
rtol 1e-5, atol 1e-6) on batches of 1 and 32, so all servers compute the same thing. Then each
round runs every cell (clients x batch x server path) for ``--seconds``, with the order of the
server paths rotated from round to round so that each path runs early and late; load from other
tenants of the machine thus spreads over all of them. Requests are ``encode`` on fixed random
inputs, sent back to back by each client:

- REST: ``wrk`` (C, one thread, one keep-alive connection per client, ``--timeout 30s``):
  TF Serving's JSON ``{"signature_name": "encode", "instances": [...]}`` for vae-tf, MLflow's
  ``{"inputs": [...], "params": {"signature": "encode"}}`` for MLflow (the pyfunc picks the
  signature from the param);
- gRPC: a Python ``grpc.aio`` client in its own process, one channel (connection) per client,
  sending a ``PredictRequest`` serialised once and receiving the response as bytes, so the
  client does no protobuf work per call.

Per cell: requests/s, latency p50 and p99 per request (client side, end to end), errors
(non-2xx answers, socket errors and timeouts for wrk; non-OK status codes for gRPC), the CPU time
per request of the server process tree and of the load generator (so a reader can see that the
client was not the bottleneck), and the 1-minute load average when the cell started. The report
gives each cell's median over the rounds with the range, and the ratio vae-tf / MLflow per
round (median and range).

``--baseline DIR`` adds ``vae-tf serve`` running an older checkout (REST and gRPC, batching off)
as two more paths of the same rounds, for a before/after ratio.

    apt-get install -y wrk    # the REST load generator
    python benchmarks/serving_vs_mlflow.py --rounds 3 --seconds 5
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import command_line, default_serving_model, free_ports, machine_info, start_server, write_json  # noqa: E402

PREDICT_METHOD = "/tensorflow.serving.PredictionService/Predict"
WRK_SCRIPT = """wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = assert(io.open(os.getenv("VAE_TF_BENCH_BODY"), "rb"))
wrk.body = f:read("*a")
f:close()
"""
VAE_TF, VAE_TF_BATCHING, MLFLOW = "vae-tf serve", "vae-tf serve --enable-batching", "mlflow models serve"
BASELINE = "vae-tf serve, baseline checkout"


# -- processes --------------------------------------------------------------------------------


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and every process below it (``mlflow models serve``
    runs uvicorn as a child), from ``/proc``."""
    tick = os.sysconf("SC_CLK_TCK")
    stats = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            stats[int(entry)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)  # ppid, utime+stime
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        total += stats.get(current, (0, 0.0))[1]
        todo.extend(child for child, (parent, _) in stats.items() if parent == current)
    return total


def log_pyfunc(version_dir: Path, tracking_uri: str) -> str:
    """Log the export as the pyfunc a training run logs; its model URI."""
    import mlflow

    from training.tracking import log_saved_model, use_tracking

    use_tracking(tracking_uri)
    mlflow.set_experiment("serving_vs_mlflow")
    with mlflow.start_run():
        uri, _ = log_saved_model(version_dir, (8, 8, 1), None)
    return uri


def start_mlflow(model_uri: str, tracking_uri: str, port: int, timeout: float = 300.0) -> subprocess.Popen:
    """``mlflow models serve`` on 127.0.0.1:``port``, once ``/ping`` answers."""
    bin_dir = str(Path(sys.executable).parent)  # MLflow starts `uvicorn` by name
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
    process = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager",
                                "local", "-h", "127.0.0.1", "-p", str(port)],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=5):
                return process
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"mlflow models serve did not answer /ping within {timeout:g} s") from None
            time.sleep(0.5)


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# -- requests ---------------------------------------------------------------------------------


def request_bodies(x: np.ndarray, folder: Path) -> dict:
    """The same batch as each protocol carries it: REST bodies in files (for wrk), the gRPC
    request serialised once."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    rows = x.tolist()
    vae_tf_body = folder / f"vae_tf_{len(x)}.json"
    vae_tf_body.write_text(json.dumps({"signature_name": "encode", "instances": rows}))
    mlflow_body = folder / f"mlflow_{len(x)}.json"
    mlflow_body.write_text(json.dumps({"inputs": rows, "params": {"signature": "encode"}}))
    request = predict_pb2.PredictRequest()
    request.model_spec.name, request.model_spec.signature_name = "vae", "encode"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(x))
    grpc_body = folder / f"grpc_{len(x)}.bin"
    grpc_body.write_bytes(request.SerializeToString())
    return {"REST": vae_tf_body, "MLflow": mlflow_body, "gRPC": grpc_body}


def check_answers(paths: dict, bodies: dict, expected: np.ndarray, batch: int) -> None:
    """One request per path; its z_mean must be the in-process answer."""
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    for (server, protocol), address in paths.items():
        if protocol == "gRPC":
            with grpc.insecure_channel(address) as channel:
                raw = channel.unary_unary(PREDICT_METHOD)(bodies["gRPC"].read_bytes(), timeout=60)
            got = tf.make_ndarray(predict_pb2.PredictResponse.FromString(raw).outputs["z_mean"])
        else:
            body = bodies["MLflow" if server == MLFLOW else "REST"].read_bytes()
            request = urllib.request.Request(address, data=body, headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=60) as response:
                answer = json.loads(response.read())
            predictions = answer["predictions"]
            got = np.array(predictions["z_mean"] if server == MLFLOW else [row["z_mean"] for row in predictions])
        if got.shape != expected.shape or not np.allclose(got, expected, rtol=1e-5, atol=1e-6):
            raise SystemExit(f"{server} {protocol} answered a different z_mean at batch {batch}; the comparison "
                             "would not be of the same work")


_WRK_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}


def _wrk_ms(text: str) -> float:
    value, unit = re.fullmatch(r"([0-9.]+)([a-z]+)", text).groups()
    return float(value) * _WRK_UNITS[unit]


def wrk_cell(url: str, body: Path, clients: int, seconds: float, script: Path) -> dict:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(["wrk", "-t1", f"-c{clients}", f"-d{seconds:g}s", "--timeout", "30s", "--latency",
                           "-s", str(script), url], env={**os.environ, "VAE_TF_BENCH_BODY": str(body)},
                          capture_output=True, text=True, check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = proc.stdout
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors += int(non_2xx.group(1)) if non_2xx else 0
    return {"requests": requests, "rps": float(re.search(r"Requests/sec:\s*([0-9.]+)", out).group(1)),
            "p50_ms": _wrk_ms(re.search(r"\s50%\s+(\S+)", out).group(1)),
            "p99_ms": _wrk_ms(re.search(r"\s99%\s+(\S+)", out).group(1)), "errors": errors,
            "client_cpu_s": (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)}


def grpc_cell(target: str, body: Path, clients: int, seconds: float) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--grpc-load", target, str(body), str(clients), str(seconds)],
                          capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def grpc_load(target: str, body: Path, clients: int, seconds: float) -> dict:
    """The gRPC load generator (run in its own process): ``clients`` channels, each sending the
    serialised request back to back for ``seconds``."""
    import grpc

    request = body.read_bytes()
    options = [("grpc.use_local_subchannel_pool", 1),  # one connection per channel, not one shared
               ("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]

    async def run() -> dict:
        channels = [grpc.aio.insecure_channel(target, options=options) for _ in range(clients)]
        calls = [channel.unary_unary(PREDICT_METHOD) for channel in channels]
        await asyncio.gather(*(call(request, timeout=60) for call in calls))  # connect and warm up
        latencies: list[float] = []
        errors: dict[str, int] = {}
        end = time.perf_counter() + seconds

        async def client(call) -> None:
            while (start := time.perf_counter()) < end:
                try:
                    await call(request, timeout=30)
                except grpc.aio.AioRpcError as err:
                    errors[err.code().name] = errors.get(err.code().name, 0) + 1
                    continue
                latencies.append(time.perf_counter() - start)

        cpu, started = time.process_time(), time.perf_counter()
        await asyncio.gather(*(client(call) for call in calls))
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        for channel in channels:
            await channel.close()
        ms = np.array(latencies) * 1000
        return {"requests": len(latencies), "rps": len(latencies) / elapsed,
                "p50_ms": float(np.percentile(ms, 50)) if len(ms) else None,
                "p99_ms": float(np.percentile(ms, 99)) if len(ms) else None,
                "errors": sum(errors.values()), "error_codes": errors, "client_cpu_s": cpu}

    return asyncio.run(run())


# -- the run ----------------------------------------------------------------------------------


def run(args) -> dict:
    import tensorflow as tf

    clients_list = [int(c) for c in args.clients.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir = default_serving_model(tmp / "models")
        version_dir = model_dir / "1"
        encode = tf.saved_model.load(str(version_dir)).signatures["encode"]
        rng = np.random.default_rng(0)
        inputs = {b: rng.random((b, 8, 8, 1)).astype(np.float32) for b in batches}
        expected = {b: encode(x=tf.constant(x))["z_mean"].numpy() for b, x in inputs.items()}
        bodies = {b: request_bodies(x, tmp) for b, x in inputs.items()}
        script = tmp / "post.lua"
        script.write_text(WRK_SCRIPT)

        tracking_uri = f"sqlite:///{tmp / 'mlflow.db'}"
        model_uri = log_pyfunc(version_dir, tracking_uri)
        processes = {}
        try:
            processes[VAE_TF], plain_rest, plain_grpc = start_server(model_dir)
            processes[VAE_TF_BATCHING], batching_rest, batching_grpc = start_server(
                model_dir, extra_args=["--enable-batching"])
            baseline = {}
            if args.baseline:
                processes[BASELINE], baseline_rest, baseline_grpc = start_server(model_dir, code=Path(args.baseline))
                baseline = {(BASELINE, "REST"): baseline_rest + "/v1/models/vae:predict",
                            (BASELINE, "gRPC"): baseline_grpc}
            mlflow_port = free_ports(1)[0]
            processes[MLFLOW] = start_mlflow(model_uri, tracking_uri, mlflow_port)
            predict = "/v1/models/vae:predict"
            paths = {(VAE_TF, "REST"): plain_rest + predict, (VAE_TF, "gRPC"): plain_grpc,
                     (VAE_TF_BATCHING, "REST"): batching_rest + predict, (VAE_TF_BATCHING, "gRPC"): batching_grpc,
                     (MLFLOW, "REST"): f"http://127.0.0.1:{mlflow_port}/invocations", **baseline}
            for b in batches:
                check_answers(paths, bodies[b], expected[b], b)
            cells = []
            order = list(paths)
            for round_ in range(args.rounds):
                for clients, batch in itertools.product(clients_list, batches):
                    k = round_ % len(order)
                    for server, protocol in order[k:] + order[:k]:
                        address = paths[(server, protocol)]
                        load = os.getloadavg()[0]
                        cpu = tree_cpu_seconds(processes[server].pid)
                        if protocol == "gRPC":
                            result = grpc_cell(address, bodies[batch]["gRPC"], clients, args.seconds)
                        else:
                            body = bodies[batch]["MLflow" if server == MLFLOW else "REST"]
                            result = wrk_cell(address, body, clients, args.seconds, script)
                        server_cpu = tree_cpu_seconds(processes[server].pid) - cpu
                        requests = max(result["requests"], 1)
                        cells.append({"round": round_, "server": server, "protocol": protocol, "clients": clients,
                                      "batch": batch, **result,
                                      "server_cpu_ms_per_request": 1000 * server_cpu / requests,
                                      "client_cpu_ms_per_request": 1000 * result["client_cpu_s"] / requests,
                                      "load_average": load})
                        print(f"round {round_ + 1}/{args.rounds}: {server} {protocol} clients={clients} batch={batch}: "
                              f"{result['rps']:.0f} req/s, p99 {result['p99_ms']} ms, {result['errors']} errors, "
                              f"load {load:.2f}", file=sys.stderr, flush=True)
        finally:
            for process in processes.values():
                stop(process)
    import grpc
    import mlflow
    import uvicorn

    versions = {"tensorflow": tf.__version__, "mlflow": mlflow.__version__, "uvicorn": uvicorn.__version__,
                "grpcio": grpc.__version__, "wrk": _wrk_version()}
    for name in ("httptools", "uvloop"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            versions[name] = None
    if args.baseline:
        versions["baseline"] = subprocess.run(["git", "-C", args.baseline, "log", "-1", "--format=%h %s"],
                                              capture_output=True, text=True).stdout.strip()[:100] or args.baseline
    return {"command": command_line(), "machine": machine_info(), "versions": versions,
            "date": time.strftime("%Y-%m-%d"), "rounds": args.rounds, "seconds": args.seconds, "cells": cells}


def _wrk_version() -> str:
    proc = subprocess.run(["wrk", "-v"], capture_output=True, text=True)
    return (proc.stdout + proc.stderr).split("\n")[0].strip()


# -- report -----------------------------------------------------------------------------------


def _spread(values: list[float], digits: int = 0) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    fmt = f"{{:,.{digits}f}}"
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(statistics.median(values))} ({fmt.format(min(values))}–{fmt.format(max(values))})"


def report(result: dict) -> tuple[str, bool]:
    """Markdown tables; and whether every request was answered without error."""
    cells = result["cells"]
    machine, versions = result["machine"], result["versions"]
    loads = [c["load_average"] for c in cells]
    lines = [f"{result['date']}, {machine['cpu']} ({machine['cpus_usable']} usable CPUs, shared), Python "
             f"{machine['python']}, TensorFlow {versions['tensorflow']}, MLflow {versions['mlflow']}, uvicorn "
             f"{versions['uvicorn']} (httptools {versions['httptools']}, uvloop {versions['uvloop']}), grpcio "
             f"{versions['grpcio']}, {versions['wrk']}; commit {machine['git_commit']}"
             f"{' (dirty)' if machine['git_dirty'] else ''}; {result['rounds']} rounds x {result['seconds']:g} s per "
             f"cell; 1-minute load average at the cells' starts {min(loads):.2f}–{max(loads):.2f} "
             f"(median {statistics.median(loads):.2f}).", "",
             "Median over the rounds (min–max):", "",
             "| protocol | server | clients | batch | requests/s | p50 ms | p99 ms | errors | server CPU ms/request "
             "| load generator CPU ms/request |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    groups: dict[tuple, list[dict]] = {}
    for c in cells:
        groups.setdefault((c["protocol"], c["server"], c["clients"], c["batch"]), []).append(c)
    for (protocol, server, clients, batch), group in sorted(groups.items(), key=lambda kv: (kv[0][2], kv[0][3],
                                                                                          kv[0][0], kv[0][1])):
        lines.append(f"| {protocol} | {server} | {clients} | {batch} | {_spread([g['rps'] for g in group])} | "
                     f"{_spread([g['p50_ms'] for g in group], 1)} | {_spread([g['p99_ms'] for g in group], 1)} | "
                     f"{sum(g['errors'] for g in group)} | "
                     f"{_spread([g['server_cpu_ms_per_request'] for g in group], 3)} | "
                     f"{_spread([g['client_cpu_ms_per_request'] for g in group], 3)} |")
    lines += ["", "Requests/s of each vae-tf path / MLflow's REST, per round, same clients and batch (median, "
                  "min–max):", "", "| clients | batch | " + " | ".join(f"{s} {p}" for s, p in _VAE_TF_PATHS) + " |",
              "|---:|---:|" + "---:|" * len(_VAE_TF_PATHS)]
    by_round = {(c["round"], c["server"], c["protocol"], c["clients"], c["batch"]): c for c in cells}
    ratio_cells = {}
    for clients, batch in sorted({(c["clients"], c["batch"]) for c in cells}):
        row = []
        for server, protocol in _VAE_TF_PATHS:
            ratios = [by_round[(r, server, protocol, clients, batch)]["rps"] / mlflow["rps"]
                      for r in range(result["rounds"])
                      if (mlflow := by_round.get((r, MLFLOW, "REST", clients, batch))) and mlflow["rps"]
                      and (r, server, protocol, clients, batch) in by_round]
            ratio_cells[(server, protocol, clients, batch)] = ratios
            row.append(_spread(ratios, 2) + "x" if ratios else "-")
        lines.append(f"| {clients} | {batch} | " + " | ".join(row) + " |")
    goal = ratio_cells.get((VAE_TF, "REST", 16, 1))
    p99 = groups.get(("REST", VAE_TF, 16, 1))
    if goal and p99:
        median_ratio, median_p99 = statistics.median(goal), statistics.median(g["p99_ms"] for g in p99)
        lines += ["", f"Goals at 16 clients, batch 1, vae-tf REST (batching off): requests/s {median_ratio:.2f}x "
                      f"MLflow's (goal >= 3x: {'met' if median_ratio >= 3 else 'missed'}; worst round "
                      f"{min(goal):.2f}x); p99 {median_p99:.1f} ms (goal < 20 ms: "
                      f"{'met' if median_p99 < 20 else 'missed'}; worst round {max(g['p99_ms'] for g in p99):.1f} ms)."]
    if any(c["server"] == BASELINE for c in cells):
        lines += ["", f"Baseline: {versions.get('baseline')}. Requests/s of vae-tf serve / the baseline checkout, per "
                      "round (median, min–max):", "", "| clients | batch | REST | gRPC |", "|---:|---:|---:|---:|"]
        for clients, batch in sorted({(c["clients"], c["batch"]) for c in cells}):
            row = []
            for protocol in ("REST", "gRPC"):
                ratios = [by_round[(r, VAE_TF, protocol, clients, batch)]["rps"] / old["rps"]
                          for r in range(result["rounds"])
                          if (old := by_round.get((r, BASELINE, protocol, clients, batch))) and old["rps"]
                          and (r, VAE_TF, protocol, clients, batch) in by_round]
                row.append(_spread(ratios, 2) + "x" if ratios else "-")
            lines.append(f"| {clients} | {batch} | " + " | ".join(row) + " |")
    errors = sum(c["errors"] for c in cells)
    lines += ["", f"Errors over all {len(cells)} cells: {errors}."]
    return "\n".join(lines), errors == 0


_VAE_TF_PATHS = [(VAE_TF, "REST"), (VAE_TF, "gRPC"), (VAE_TF_BATCHING, "REST"), (VAE_TF_BATCHING, "gRPC")]


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--grpc-load"]:  # the gRPC load generator's own process
        target, body, clients, seconds = argv[1:5]
        print(json.dumps(grpc_load(target, Path(body), int(clients), float(seconds))))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds over every cell (3)")
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of one cell (5)")
    parser.add_argument("--clients", default="1,16,64", help="concurrent clients, comma-separated (1,16,64)")
    parser.add_argument("--batches", default="1,32", help="rows per request, comma-separated (1,32)")
    parser.add_argument("--baseline", metavar="DIR", help="also serve with the code of this checkout (e.g. `git "
                        "worktree add /tmp/before <commit>`), REST and gRPC, batching off")
    parser.add_argument("--json", help="also write every cell to this JSON file")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the servers on the way out
    if shutil.which("wrk") is None:
        raise SystemExit("wrk (the REST load generator) is not installed; install it (apt-get install -y wrk) and "
                         "rerun")
    result = run(args)
    if args.json:
        write_json(args.json, result)
    text, clean = report(result)
    print(f"```bash\n{result['command']}\n```\n\n{text}")
    return 0 if clean else 1


if __name__ == "__main__":
    from benchmarks.common import start_as_vae_tf_does

    start_as_vae_tf_does()
    sys.exit(main())
