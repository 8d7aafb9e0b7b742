"""Training throughput with 1 vs 2 replicas (``mirrored``) and on a 2-worker ``multi_worker``
cluster on 127.0.0.1, against the single-device run (issue #10, "scaling").

Question answered: what does ``--strategy mirrored`` / ``multi_worker`` cost or gain on the
reference conv model (28x28x1, conv 32/64, dense 256, latent 16, Bernoulli, batch 128 global,
``FusedAdam``), compared with the single-device run? On a CPU-only machine the two mirrored
replicas are logical CPUs sharing one thread pool and the same cores, and the two workers are two
processes on the same cores, so this measures the price of the distribution machinery (per-replica
steps, gradient all-reduce, distributed input), not a speed-up; on a machine with GPUs
``mirrored`` uses every GPU.

Variants, each a fresh process (logical CPUs and ``TF_CONFIG`` must be set before TensorFlow
starts), built and fitted as ``training/train.py`` does (``training.distribute.make_strategy``,
the model compiled inside ``strategy.scope()``, ``DataSplits.resumable_pipeline`` with
``distribute_options``):

- ``single``: ``--strategy none`` with the default ``steps_per_execution`` 4;
- ``single_s1``: ``--strategy none`` with ``steps_per_execution`` 1, the baseline of the ratios
  (the training job falls back to 1 under any strategy: Keras 3.15 / TF 2.21 cannot run its
  multi-step loop under ``tf.distribute``);
- ``mirrored_1``: ``MirroredStrategy`` over one device (the strategy's own overhead);
- ``mirrored_2``: ``MirroredStrategy`` over two replicas (``train.cpu_replicas=2`` without GPUs);
- ``multi_worker_2``: ``MultiWorkerMirroredStrategy``, two worker processes on 127.0.0.1 (free
  loopback ports), each with TensorFlow's default thread pools; the chief's epochs are timed.

Each process builds the model, runs ``--warmup-epochs`` untimed epochs, then ``--epochs`` timed
ones of ``--examples`` images (global); it reports the median epoch's images/s and the seconds
from process start to the end of the warm-up (start-up cost: imports, strategy, cluster
handshake, tracing). ``--rounds`` rounds run every variant once, the order rotating. Reported:
median (min-max) images/s over rounds, the fastest round, and the median per-round ratio to
``single_s1``.

Usage::

    python benchmarks/scaling.py --rounds 5                      # all variants (~6 min on 2 CPUs)
    python benchmarks/scaling.py --rounds 1 --epochs 1 --examples 512 --variants single mirrored_2   # smoke
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import types  # noqa: E402
from pathlib import Path  # noqa: E402

_START = time.perf_counter()
REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks import common  # noqa: E402
from benchmarks.train_throughput import positive_int  # noqa: E402

#: variant -> (train.strategy, train.cpu_replicas, steps_per_execution, worker processes)
VARIANTS = {
    "single": ("none", None, 4, 1),
    "single_s1": ("none", None, 1, 1),
    "mirrored_1": ("mirrored", None, 1, 1),
    "mirrored_2": ("mirrored", 2, 1, 1),
    "multi_worker_2": ("multi_worker", None, 1, 2),
}
BASELINE = "single_s1"
TITLES = {
    "single": "none, steps_per_execution 4 (the default)",
    "single_s1": "none, steps_per_execution 1 (baseline)",
    "mirrored_1": "mirrored, 1 replica",
    "mirrored_2": "mirrored, 2 replicas",
    "multi_worker_2": "multi_worker, 2 workers on 127.0.0.1",
}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- one process of one variant ------------------------------------------------------------------
def child(args) -> None:
    """Train the variant ``args.child`` in this process; print one JSON line (chief only)."""
    from benchmarks import train_throughput as tt
    from training.distribute import distribute_options, is_chief, make_strategy

    strategy_name, cpu_replicas, steps_per_execution, _ = VARIANTS[args.child]
    # The first TensorFlow work: MultiWorkerMirroredStrategy and logical CPUs must come first.
    strategy = make_strategy(types.SimpleNamespace(strategy=strategy_name, cpu_replicas=cpu_replicas))
    import keras

    spec = tt.CONFIGS["conv"]
    splits = tt.make_splits("synthetic28", args.examples, args.seed)
    settings = types.SimpleNamespace(seed=args.seed, learning_rate=1e-3, steps_per_execution=steps_per_execution,
                                     jit_compile=False)
    with strategy.scope():
        keras.utils.set_random_seed(args.seed)
        model = tt.build_ours(spec, splits.data_shape, settings)
    ds, steps = tt.training_stream(splits, args.batch_size, args.seed)
    stream = (distribute_options(ds, strategy), steps)
    tt.timed_fit(model, stream, args.warmup_epochs)
    ready = time.perf_counter() - _START
    timer = tt.timed_fit(model, stream, args.epochs)
    if is_chief(strategy):
        import tensorflow as tf

        print(json.dumps({"variant": args.child, "replicas": strategy.num_replicas_in_sync,
                          "images_per_s": args.examples / statistics.median(timer.seconds),
                          "epoch_seconds": timer.seconds, "startup_seconds": ready,
                          "final_loss": timer.logs[-1].get("loss"), "tensorflow": tf.__version__,
                          "gpus": [g.name for g in tf.config.list_physical_devices("GPU")]}), flush=True)


# --- the driver -----------------------------------------------------------------------------------
def run_variant(variant: str, args) -> dict:
    """Start the variant's process(es), wait, return the chief's report."""
    workers = VARIANTS[variant][3]
    command = [sys.executable, str(Path(__file__).resolve()), "--child", variant, "--examples", str(args.examples),
               "--batch-size", str(args.batch_size), "--epochs", str(args.epochs),
               "--warmup-epochs", str(args.warmup_epochs), "--seed", str(args.seed)]
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    envs = [env]
    if workers > 1:
        cluster = {"worker": [f"127.0.0.1:{port}" for port in common.free_ports(workers)]}
        envs = [{**env, "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})}
                for i in range(workers)]
    procs = [subprocess.Popen(command, env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for e in envs]
    outputs = [p.communicate(timeout=args.timeout) for p in procs]
    for p, (_, err) in zip(procs, outputs):
        if p.returncode != 0:
            raise SystemExit(f"{variant}: a process exited with {p.returncode}: {err.strip()[-2000:]}")
    reports = [json.loads(line) for out, _ in outputs for line in out.splitlines() if line.startswith("{")]
    if len(reports) != 1:
        raise SystemExit(f"{variant}: expected one report (the chief's), got {len(reports)}")
    return reports[0]


def summarise(rounds: list[dict], variants: list[str]) -> list[dict]:
    rows = []
    for variant in variants:
        speeds = [r[variant]["images_per_s"] for r in rounds]
        startups = [r[variant]["startup_seconds"] for r in rounds]
        row = {"variant": variant, "replicas": rounds[0][variant]["replicas"],
               "images_per_s": {"median": statistics.median(speeds), "min": min(speeds), "max": max(speeds)},
               "startup_seconds": statistics.median(startups)}
        if BASELINE in variants:
            ratios = [r[variant]["images_per_s"] / r[BASELINE]["images_per_s"] for r in rounds]
            row["ratio"] = {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}
            row["best_ratio"] = max(speeds) / max(r[BASELINE]["images_per_s"] for r in rounds)
        rows.append(row)
    return rows


def render(report: dict) -> str:
    m, s = report["machine"], report["settings"]
    lines = [
        f"Command: `{report['command']}`",
        "",
        f"- Date: {report['date']}; commit {m['git_commit']}{' + uncommitted changes' if m['git_dirty'] else ''}",
        f"- Machine: {m['cpu']}, {m['cpu_count']} CPUs ({m['cpus_usable']} usable), GPU: "
        f"{', '.join(report['gpus']) or 'none'}; Python {m['python']}, TensorFlow {report['tensorflow']}",
        f"- conv reference, global batch {s['batch_size']}, {s['examples']:,} images per epoch, "
        f"{s['warmup_epochs']} warm-up + {s['epochs']} timed epochs per process (median epoch), "
        f"{s['rounds']} rounds, every variant a fresh process per round, order rotating",
        "",
        "| Variant | Replicas | img/s, median (min–max) | fastest round | per-round ratio to baseline, median "
        "(min–max) | fastest / baseline's fastest | start-up s (median) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report["results"]:
        speed, ratio = row["images_per_s"], row.get("ratio")
        ratio_text = f"{ratio['median']:.3f} ({ratio['min']:.3f}–{ratio['max']:.3f})" if ratio else ""
        best = f"{row['best_ratio']:.3f}" if "best_ratio" in row else ""
        lines.append(f"| {TITLES[row['variant']]} | {row['replicas']} | {speed['median']:,.0f} "
                     f"({speed['min']:,.0f}–{speed['max']:,.0f}) | {speed['max']:,.0f} | {ratio_text} | {best} "
                     f"| {row['startup_seconds']:.1f} |")
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    p.add_argument("--rounds", type=positive_int, default=5)
    p.add_argument("--epochs", type=positive_int, default=3, help="timed epochs per process")
    p.add_argument("--warmup-epochs", type=positive_int, default=1)
    p.add_argument("--examples", type=positive_int, default=8192,
                   help="images per epoch (global); rounded up to whole batches x 4 steps")
    p.add_argument("--batch-size", type=positive_int, default=128, help="global batch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=positive_int, default=600, help="seconds allowed for one variant's process")
    p.add_argument("--json", type=Path, default=None, help="also write every round here")
    p.add_argument("--child", choices=list(VARIANTS), default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    unit = args.batch_size * 4
    args.examples = -(-args.examples // unit) * unit
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        child(args)
        return 0
    variants = list(dict.fromkeys(args.variants))
    rounds = []
    for r in range(args.rounds):
        k = r % len(variants)
        order = variants[k:] + variants[:k]
        row = {}
        for variant in order:
            row[variant] = run_variant(variant, args)
        rounds.append(row)
        log(f"round {r + 1}/{args.rounds}: " + ", ".join(
            f"{v} {row[v]['images_per_s']:,.0f} img/s ({row[v]['startup_seconds']:.1f} s start-up)" for v in variants))
    first = rounds[0][variants[0]]  # TensorFlow as the children saw it: the driver never imports it
    report = {"command": common.command_line(),
              "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
              "machine": common.machine_info(), "tensorflow": first["tensorflow"], "gpus": first["gpus"],
              "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "child"},
              "results": summarise(rounds, variants), "rounds": rounds}
    print(render(report))
    if args.json:
        common.write_json(args.json, report)
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    from benchmarks.common import start_as_vae_tf_does

    start_as_vae_tf_does()
    sys.exit(main())
