"""Rows per second of embedding extraction: ``vae-tf embed`` in one process against the same job
as an Apache Beam pipeline (``vae-tf embed --runner beam``) with 1 and 2 local worker processes.

Question answered: what does the Beam pipeline cost or gain over the single-process command on
the same machine, and how does it scale from one worker process to two?

Method: the conv reference architecture of ``benchmarks/memory.py`` (conv 32/64, dense 256,
latent 16, Bernoulli) exported once (untrained weights: speed does not depend on them); ``rows``
random uint8 28x28x1 images in an ``.npy`` file (MNIST's layout), read lazily by every variant.
Each variant is the real command line in a fresh process, timed from start to exit, so start-up
counts (importing TensorFlow; for Beam also starting the worker processes, each of which imports
TensorFlow and loads the model):

- ``embed``: ``python -m vae_tf_cli embed --data FILE.npy --split all --model EXPORT -o OUT.parquet
  --chunk-size C --batch-size B``;
- ``beam-1`` / ``beam-2``: the same plus ``--runner beam --workers 1`` / ``2`` (the local
  FnApiRunner, worker subprocesses), ``-o DIR``.

Every round runs each variant at a small and then at a large size, back to back, the variants
in an order rotated from round to round. Reported per variant: the median wall time at both
sizes, end-to-end rows/s at the large size, and the median over rounds of the marginal rows/s,
``(large - small rows) / (large - small seconds)`` of one round's pair: the throughput once
started (start-up cancels out; pairing within a round keeps other tenants' load, which drifts
over minutes, out of the difference as far as it can). Ratios are against ``embed`` in the same
run. Before any number is reported, every Beam output (sorted on ``index``) is checked equal to
``embed``'s Parquet file.

Usage::

    python benchmarks/embed_beam.py                                  # 4k and 64k rows, 3 rounds
    python benchmarks/embed_beam.py --sizes 256 1024 --rounds 1      # smoke run
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.common import command_line, machine_info, write_json  # noqa: E402
from benchmarks.memory import SHAPE, run_child, write_npy  # noqa: E402

VARIANTS = {"embed": [], "beam-1": ["--runner", "beam", "--workers", "1"],
            "beam-2": ["--runner", "beam", "--workers", "2"]}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_variant(variant: str, data: Path, model: Path, out: Path, chunk: int, batch: int) -> float:
    """Wall seconds of one ``vae-tf embed`` process (``variant``'s options) from start to exit."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": os.pathsep.join(
        p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)}
    cmd = [sys.executable, "-m", "vae_tf_cli", "embed", "--data", str(data), "--split", "all", "--model", str(model),
           "-o", str(out), "--chunk-size", str(chunk), "--batch-size", str(batch), "--overwrite", *VARIANTS[variant]]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{variant} failed with status {proc.returncode}:\n{proc.stderr[-2000:]}")
    return seconds


def output_path(workdir: Path, variant: str, rows: int) -> Path:
    return workdir / (f"{variant}-{rows}.parquet" if variant == "embed" else f"{variant}-{rows}")


def check_equal(workdir: Path, variants: list[str], sizes: list[int]) -> None:
    """Every Beam output, sorted on ``index``, equals ``embed``'s file (same rows, same float32 bits)."""
    import pyarrow.parquet as pq

    for rows in sizes:
        reference = pq.read_table(output_path(workdir, "embed", rows))
        for variant in variants:
            if variant != "embed" and not pq.read_table(output_path(workdir, variant, rows)).sort_by("index").equals(
                    reference):
                raise SystemExit(f"{variant} at {rows} rows differs from vae-tf embed's output")


def summarise(times: dict, sizes: list[int]) -> dict:
    """Medians per variant; ``times[variant]`` holds one ``(small s, large s)`` pair per round."""
    small, large = sizes
    out = {}
    for variant, pairs in times.items():
        t_small = statistics.median(a for a, _ in pairs)
        t_large = statistics.median(b for _, b in pairs)
        marginal = [(large - small) / (b - a) for a, b in pairs if b > a]
        out[variant] = {"seconds_small": t_small, "seconds_large": t_large, "rows_per_s": large / t_large,
                        "marginal_rows_per_s": statistics.median(marginal) if marginal else None}
    return out


def render(report: dict) -> str:
    m = report["machine"]
    small, large = report["sizes"][0], report["sizes"][-1]
    lines = [f"Command: `{report['command']}`", "",
             f"- Date: {report['date']}; commit {m['git_commit']}{' + uncommitted changes' if m['git_dirty'] else ''}",
             f"- Machine: {m['cpu']}, {m['cpu_count']} CPUs ({m['cpus_usable']} usable); Python {m['python']}; "
             f"apache-beam {report['beam_version']}",
             f"- Data: random uint8 {'x'.join(map(str, SHAPE))} images in an .npy file, `--split all`; conv reference "
             f"export; chunk {report['chunk_size']}, batch {report['batch_size']}; output Parquet; median of "
             f"{report['rounds']} interleaved round(s); every Beam output checked equal to `embed`'s.",
             f"- Load average (1 min) before / after: {report['load'][0]:.1f} / {report['load'][1]:.1f} "
             "(other tenants of the machine).",
             "",
             f"| variant | s at {small:,} rows | s at {large:,} rows | rows/s end to end | x embed | "
             "rows/s once started | x embed |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    ref = report["results"]["embed"]
    for variant, r in report["results"].items():
        marginal = r["marginal_rows_per_s"]
        ref_marginal = ref["marginal_rows_per_s"]
        lines.append(f"| {variant} | {r['seconds_small']:.1f} | {r['seconds_large']:.1f} | {r['rows_per_s']:,.0f} | "
                     f"{r['rows_per_s'] / ref['rows_per_s']:.2f} | "
                     f"{'n/a' if marginal is None else f'{marginal:,.0f}'} | "
                     f"{'n/a' if not (marginal and ref_marginal) else f'{marginal / ref_marginal:.2f}'} |")
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--sizes", type=int, nargs=2, default=[4096, 65536], metavar=("SMALL", "LARGE"),
                   help="rows of the small and the large data set")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (medians are reported)")
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    p.add_argument("--chunk-size", type=int, default=4096, help="rows per chunk (vae-tf embed's default)")
    p.add_argument("--batch-size", type=int, default=256, help="rows per model call (vae-tf embed's default)")
    p.add_argument("--workdir", type=Path, default=None, help="where data, export and outputs go (default: temp)")
    p.add_argument("--json", type=Path, default=None, help="also write the report as JSON here")
    args = p.parse_args(argv)
    if "embed" not in args.variants:
        p.error("--variants must include embed (the reference of the ratios and of the equality check)")
    if not 0 < args.sizes[0] < args.sizes[1]:
        p.error("--sizes needs 0 < SMALL < LARGE")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    import apache_beam

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        workdir = Path(tmp)
        run_child("export", str(workdir / "models"), log_path=workdir / "export.log")
        model = workdir / "models" / "vae"
        data = {}
        for rows in args.sizes:
            data[rows] = workdir / f"rows-{rows}.npy"
            write_npy(data[rows], rows, seed=rows)
        times = {v: [] for v in args.variants}
        for r in range(args.rounds):
            order = args.variants[r % len(args.variants):] + args.variants[:r % len(args.variants)]
            for variant in order:
                pair = []
                for rows in args.sizes:
                    pair.append(run_variant(variant, data[rows], model, output_path(workdir, variant, rows),
                                            args.chunk_size, args.batch_size))
                    log(f"round {r + 1}: {variant} {rows} rows {pair[-1]:.1f} s")
                times[variant].append(tuple(pair))
        check_equal(workdir, args.variants, args.sizes)
    report = {"command": command_line(), "date": datetime.date.today().isoformat(), "machine": machine_info(),
              "beam_version": apache_beam.__version__, "sizes": args.sizes, "rounds": args.rounds,
              "chunk_size": args.chunk_size, "batch_size": args.batch_size, "times": times,
              "results": summarise(times, args.sizes), "load": (load_before, os.getloadavg()[0])}
    if args.json:
        write_json(args.json, report)
    print(render(report))
    return 0


if __name__ == "__main__":
    from benchmarks.common import start_as_vae_tf_does

    start_as_vae_tf_does()
    sys.exit(main())
