"""Peak memory (RSS) of training and of ``vae-tf embed`` as the data grows.

Question answered: how does peak resident memory scale with the number of rows? Training holds
its data set in memory (``load_dataset`` gathers every split as float32; ``resumable_pipeline``
keeps the training rows in one tensor), so it must grow about linearly; ``vae-tf embed`` opens
its data lazily (``vae_tf.data.open_dataset``: rows read and converted one chunk at a time) and
encodes and writes chunk by chunk (``serving/embed.py``), so its peak should be flat in the
number of rows for a ``.npy`` file and for an ``.npz`` that ``np.savez`` stored; an ``.npz``
compressed by ``np.savez_compressed`` cannot be read by row, so its data array is decompressed
into memory in its stored dtype (uint8 here: a quarter of the float32 size).

Method: for every size the script writes ``rows`` random 28x28x1 uint8 images to an ``.npy``
file (in chunks, through ``np.lib.format.open_memmap``; MNIST's layout) and, for the ``.npz``
workloads, the same array with ``np.savez`` / ``np.savez_compressed`` under key ``x``; then it
runs each workload in a **fresh child process** and reads that child's peak RSS from the kernel:
``VmHWM`` of ``/proc/self/status``, read by the child as it exits (stdlib only, no psutil). Not
``ru_maxrss`` of ``os.wait4``/``getrusage``: Linux carries the *parent's* high-water mark into a
child at ``exec``, so a child of a large process (pytest with TensorFlow loaded: ~1 GiB) reports
at least the parent's size. Every child starts as the ``vae-tf`` program starts
(``vae_tf_cli.prepare_job_process``: Keras' optional libraries scikit-learn, matplotlib and pandas
left out of ``import keras``, ~145 MiB of a bare ``import tensorflow``'s 694 MiB peak on 2 CPUs;
the collector's job thresholds), so its peak is a user's run's:

- ``train``: the vae-tf API as ``training/train.py`` uses it: ``load_dataset("npy", path=...)``,
  ``build_vae`` with the conv reference architecture (conv 32/64, dense 256, latent 16,
  Bernoulli), ``compile(FusedAdam, steps_per_execution=4)``, ``fit`` on
  ``splits.resumable_pipeline("train", 128, epochs=E + 1)`` with ``steps_per_epoch`` for ``E``
  epochs;
- ``embed``: the real command line, ``vae-tf embed --data FILE.npy --split all --model EXPORT
  -o OUT.npz`` (``vae_tf_cli.main``, what the ``vae-tf`` program runs, called in the child with
  those arguments; default chunk 4096 rows, batch 256) on the same
  conv architecture exported once (``vae_tf.export.export_model``, untrained weights: memory
  does not depend on them);
- ``embed-npz`` / ``embed-npz-compressed``: the same command on ``FILE.npz`` written by
  ``np.savez`` / ``np.savez_compressed``;
- ``baseline``: a child that imports TensorFlow and loads the exported model, nothing else (what
  any ``vae-tf`` process costs on this machine).

The parent never imports TensorFlow. Reported per size: peak RSS in MiB, the rows as float32
(the in-memory size of the data after loading), and the growth from the smallest size.

Usage::

    python benchmarks/memory.py                                   # 10k / 40k / 160k rows (~6 min)
    python benchmarks/memory.py --sizes 256 512 --epochs 1        # smoke run
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks import common  # noqa: E402

SHAPE = (28, 28, 1)
NETWORK = {"kind": "conv", "filters": [32, 64], "dense": 256}
LATENT = {"family": "gaussian", "latent_dim": 16}
MIB = 1024 * 1024
WORKLOADS = ("train", "embed", "embed-npz", "embed-npz-compressed")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- children -----------------------------------------------------------------------------------
def child_train(path: str, epochs: int, batch_size: int) -> dict:
    from vae_tf.data import load_dataset
    from vae_tf.models import build_vae
    from vae_tf.optimizers import FusedAdam

    splits = load_dataset("npy", path=path, seed=0)
    model = build_vae(splits.data_shape, latent=dict(LATENT), likelihood={"name": "bernoulli"},
                      network=dict(NETWORK), seed=0)
    model.compile(optimizer=FusedAdam(1e-3), steps_per_execution=4)
    steps = splits.steps_per_epoch("train", batch_size)
    ds = splits.resumable_pipeline("train", batch_size, seed=0, epochs=epochs + 1)  # as train.py: one stream
    history = model.fit(ds, epochs=epochs, steps_per_epoch=steps, verbose=0, shuffle=False)
    return {"train_rows": int(len(splits.x_train)), "final_loss": float(history.history["loss"][-1])}


def child_export(base: str) -> dict:
    import numpy as np

    from vae_tf.export import export_model
    from vae_tf.models import build_vae

    model = build_vae(SHAPE, latent=dict(LATENT), likelihood={"name": "bernoulli"}, network=dict(NETWORK), seed=0)
    model(np.zeros((1,) + SHAPE, np.float32))
    return {"export": str(export_model(model, base, "vae"))}


def child_cli(*argv: str) -> dict:
    from vae_tf_cli import main as vae_tf_main

    status = vae_tf_main(list(argv))
    if status:
        raise SystemExit(f"vae-tf {' '.join(argv)} exited with status {status}")
    return {}


def peak_rss_mib() -> float:
    """This process's high-water resident set (``VmHWM``), MiB."""
    with open("/proc/self/status") as f:
        return int(next(line.split()[1] for line in f if line.startswith("VmHWM:"))) / 1024


def child_baseline(model_dir: str) -> dict:
    from serving.embed import LocalEncoder

    encoder = LocalEncoder(model_dir)
    return {"outputs": encoder.outputs}


def run_child(kind: str, *child_args: str, log_path: Path) -> dict:
    """Run workload ``kind`` in a fresh process (this script with ``--child``); its peak RSS (MiB,
    measured by the child itself), wall seconds and what it returned."""
    start = time.perf_counter()
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": os.pathsep.join(
        p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)}
    result_path = log_path.with_suffix(".json")
    args = [sys.executable, str(Path(__file__).resolve()), "--child-result", str(result_path), "--child", kind,
            *child_args]
    with open(log_path, "w") as out:
        proc = subprocess.run(args, stdout=out, stderr=subprocess.STDOUT, cwd=REPO_ROOT, env=env)
    if proc.returncode != 0:
        tail = log_path.read_text()[-2000:]
        raise SystemExit(f"child {kind} {' '.join(child_args)[:200]} failed with status {proc.returncode}:\n{tail}")
    return {**json.loads(result_path.read_text()), "seconds": time.perf_counter() - start}


# --- data -----------------------------------------------------------------------------------------
def write_npy(path: Path, rows: int, seed: int, chunk: int = 8192) -> None:
    """``rows`` random uint8 images written chunk by chunk (the parent stays small)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(rows,) + SHAPE)
    for start in range(0, rows, chunk):
        stop = min(rows, start + chunk)
        out[start:stop] = rng.integers(0, 256, (stop - start,) + SHAPE, dtype=np.uint8)
    out.flush()
    del out


def write_npz(npy: Path, path: Path, compressed: bool) -> None:
    """The array of ``npy`` under key ``x`` of an ``.npz`` (``np.savez`` writes it in chunks)."""
    import numpy as np

    (np.savez_compressed if compressed else np.savez)(path, x=np.load(npy, mmap_mode="r"))


# --- report -----------------------------------------------------------------------------------------
def render(report: dict) -> str:
    m = report["machine"]
    base = report["baseline"]
    lines = [f"Command: `{report['command']}`", "",
             f"- Date: {report['date']}; commit {m['git_commit']}{' + uncommitted changes' if m['git_dirty'] else ''}",
             f"- Machine: {m['cpu']}, {m['cpu_count']} CPUs, {m['memory_gib']:.0f} GiB; Python {m['python']}",
             f"- Data: uint8 {'x'.join(map(str, SHAPE))} images in an .npy file (and in .npz files by np.savez / "
             f"np.savez_compressed); training {report['epochs']} epoch(s), batch {report['batch_size']}; embed "
             "`--split all`, chunk 4096, batch 256; peak RSS of a fresh process per cell (its `VmHWM`).",
             f"- Baseline (import TensorFlow, load the exported model): {base['peak_rss_mib']:,.0f} MiB.",
             "",
             "| rows | data as float32 MiB | workload | peak MiB | growth MiB | s |",
             "|---:|---:|---|---:|---:|---:|"]
    first = report["results"][0]
    for w in report["workloads"]:
        for r in report["results"]:
            lines.append(f"| {r['rows']:,} | {r['float32_mib']:,.1f} | {w} | {r[w]['peak_rss_mib']:,.0f} | "
                         f"{r[w]['peak_rss_mib'] - first[w]['peak_rss_mib']:+,.0f} | {r[w]['seconds']:.1f} |")
    for w in report["workloads"]:
        growth = report["results"][-1][w]["peak_rss_mib"] - first[w]["peak_rss_mib"]
        data = report["results"][-1]["float32_mib"] - first["float32_mib"]
        lines.append(f"\n{w}: {growth:+,.0f} MiB peak for +{data:,.0f} MiB of float32 data "
                     f"({growth / data if data else float('nan'):.2f} x the data).")
    return "\n".join(lines)


def memory_gib() -> float:
    with open("/proc/meminfo") as f:
        return int(next(line.split()[1] for line in f if line.startswith("MemTotal"))) / 1024 / 1024


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 40_000, 160_000], help="rows per data set")
    p.add_argument("--workloads", nargs="+", choices=WORKLOADS, default=list(WORKLOADS))
    p.add_argument("--epochs", type=int, default=2, help="training epochs per size")
    p.add_argument("--batch-size", type=int, default=128, help="training batch size")
    p.add_argument("--workdir", type=Path, default=None, help="where the .npy files go (default: a temp dir)")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)  # internal: one workload, then exit
    p.add_argument("--child-result", type=Path, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        # Each workload's process starts as the `vae-tf` program does (module docstring).
        from vae_tf_cli import prepare_job_process

        prepare_job_process()
        kind, *rest = args.child
        result = {"train": lambda: child_train(rest[0], int(rest[1]), int(rest[2])), "cli": lambda: child_cli(*rest),
                  "export": lambda: child_export(rest[0]), "baseline": lambda: child_baseline(rest[0])}[kind]()
        args.child_result.write_text(json.dumps({**result, "peak_rss_mib": peak_rss_mib()}))
        return 0

    with tempfile.TemporaryDirectory(prefix="vae-tf-memory-", dir=args.workdir) as tmp:
        tmp = Path(tmp)
        run_child("export", str(tmp / "models"), log_path=tmp / "export.log")
        model_dir = str(tmp / "models" / "vae")
        baseline = run_child("baseline", model_dir, log_path=tmp / "baseline.log")
        log(f"baseline: {baseline['peak_rss_mib']:,.0f} MiB")
        results = []
        for rows in args.sizes:
            data = tmp / f"data_{rows}.npy"
            write_npy(data, rows, seed=rows)
            row = {"rows": rows, "float32_mib": rows * 28 * 28 * 4 / MIB}
            for workload in args.workloads:
                if workload == "train":
                    cmd = ("train", str(data), str(args.epochs), str(args.batch_size))
                else:
                    source = data
                    if workload != "embed":
                        source = tmp / f"data_{rows}.npz"
                        write_npz(data, source, compressed=workload.endswith("compressed"))
                    cmd = ("cli", "embed", "--data", str(source), "--split", "all", "--model", model_dir,
                           "-o", str(tmp / f"{workload}_{rows}.npz"))
                row[workload] = run_child(*cmd, log_path=tmp / f"{workload}_{rows}.log")
                log(f"{rows:,} rows, {workload}: {row[workload]['peak_rss_mib']:,.0f} MiB, "
                    f"{row[workload]['seconds']:.1f} s")
                if workload != "train":
                    import numpy as np

                    with np.load(tmp / f"{workload}_{rows}.npz") as out:  # the output is complete
                        assert out["embedding"].shape == (rows, LATENT["latent_dim"]), out["embedding"].shape
                    (tmp / f"{workload}_{rows}.npz").unlink()
                    if workload != "embed":
                        (tmp / f"data_{rows}.npz").unlink()
            data.unlink()
            results.append(row)

    report = {"command": common.command_line(),
              "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
              "machine": {**common.machine_info(), "memory_gib": memory_gib()},
              "epochs": args.epochs, "batch_size": args.batch_size, "workloads": args.workloads,
              "baseline": baseline, "results": results}
    print(render(report))
    if args.json:
        common.write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
