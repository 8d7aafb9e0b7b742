"""Training throughput of vae-tf under ``steps_per_execution``, ``jit_compile`` and precision settings.

Question answered: which ``compile(steps_per_execution=S, jit_compile=J)`` should be the default
for the reference conv model (issue #10: "steps_per_execution configurable (a sensible
default)"; "XLA stays optional, document when it helps")?

Every variant is the same vae-tf model (``build_vae``, the conv reference architecture of
``benchmarks/train_throughput.py``: 28x28x1, conv 32/64, dense 256, latent 16, Bernoulli,
batch 128, Adam), with the same starting weights, fitted on the same ``tf.data`` pipeline
(``DataSplits.resumable_pipeline``, what ``training/train.py`` fits on), in one process. The data set is a
multiple of ``batch x max(S)`` images so that every variant runs full executions. After an
untimed warm-up epoch each (tracing, XLA compilation), ``--rounds`` rounds time one epoch of
every variant, interleaved, the order rotating and reversing between rounds. Reported: median
images/s (min-max) over rounds, the fastest round, and the fastest round's ratio to the
baseline variant (the first of each list: ``S = 1``, XLA off, float32).

``--precision`` adds the networks' dtype policy (``build_vae(precision=...)``: ``float32``,
``mixed_bfloat16``, ``mixed_float16`` with dynamic loss scaling) as a third axis; the latent
family, likelihood and loss stay float32. Mixed precision pays on GPUs with bf16/fp16 matrix
units (benchmarks/gpu_check.sh); on a CPU without them it is slower.

Usage::

    python benchmarks/train_settings.py                                   # S 1/4/16/64 x XLA off/on (~3 min)
    python benchmarks/train_settings.py --steps 1 4 --jit false --rounds 1 --examples 512   # smoke run
    python benchmarks/train_settings.py --steps 4 16 --jit false true --precision float32 mixed_bfloat16   # GPU
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import types  # noqa: E402
from pathlib import Path  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks import common  # noqa: E402
from benchmarks import train_throughput as tt  # noqa: E402


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--arch", choices=list(tt.CONFIGS), default="conv")
    p.add_argument("--steps", type=tt.positive_int, nargs="+", default=[1, 4, 16, 64], help="steps_per_execution values")
    p.add_argument("--jit", choices=["false", "true"], nargs="+", default=["false", "true"], help="jit_compile values")
    p.add_argument("--precision", choices=["float32", "mixed_bfloat16", "mixed_float16"], nargs="+",
                   default=["float32"], help="build_vae(precision=...) values")
    p.add_argument("--batch-size", type=tt.positive_int, default=128)
    p.add_argument("--rounds", type=tt.positive_int, default=5)
    p.add_argument("--examples", type=tt.positive_int, default=16384,
                   help="images per epoch (rounded up to batch x max(steps))")
    p.add_argument("--threads", type=int, default=None, help="TF intra- and inter-op threads (None: one per usable CPU)")
    p.add_argument("--learning-rate", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None)
    return p.parse_args(argv)


def summary(values):
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main(argv=None) -> int:
    args = parse_args(argv)
    import keras
    import tensorflow as tf

    threads = args.threads or len(os.sched_getaffinity(0))
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    spec = tt.CONFIGS[args.arch]
    data = spec["data"]
    unit = args.batch_size * max(args.steps)
    n_examples = max(unit, math.ceil(args.examples / unit) * unit)
    splits = tt.make_splits(data, n_examples, args.seed)
    ds = tt.training_stream(splits, args.batch_size, args.seed)

    variants = {}
    for precision in args.precision:
        for jit in args.jit:
            for steps in args.steps:
                keras.utils.set_random_seed(args.seed)  # the same starting weights for every variant
                settings = types.SimpleNamespace(steps_per_execution=steps, jit_compile=jit == "true", seed=args.seed,
                                                 learning_rate=args.learning_rate, precision=precision)
                label = f"S={steps} XLA {'on' if jit == 'true' else 'off'}" + (
                    "" if precision == "float32" else f" {precision}")
                variants[label] = {"steps_per_execution": steps, "jit_compile": jit == "true", "precision": precision,
                                   "model": tt.build_ours(spec, splits.data_shape, settings)}
    for label, v in variants.items():
        warm = tt.timed_fit(v["model"], ds, 1)
        log(f"warm-up {label}: {warm.seconds[0]:.2f} s")

    labels = list(variants)
    rows = []
    for r in range(args.rounds):
        k = r % len(labels)
        order = labels[k:] + labels[:k]
        order = order if (r // len(labels)) % 2 == 0 else order[::-1]
        row = {}
        for label in order:
            timer = tt.timed_fit(variants[label]["model"], ds, 1)
            row[label] = n_examples / timer.seconds[0]
        rows.append(row)
        log(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{label} {row[label]:,.0f}" for label in labels))

    base = labels[0]
    results = []
    for label in labels:
        values = [row[label] for row in rows]
        results.append({"variant": label, "steps_per_execution": variants[label]["steps_per_execution"],
                        "jit_compile": variants[label]["jit_compile"], "precision": variants[label]["precision"],
                        "images_per_s": summary(values),
                        "best": max(values), "best_over_baseline": max(values) / max(row[base] for row in rows),
                        "per_round_over_baseline": summary([row[label] / row[base] for row in rows])})
    gpus = [tf.config.experimental.get_device_details(gpu).get("device_name", gpu.name)
            for gpu in tf.config.list_physical_devices("GPU")]
    machine = {**common.machine_info(), "gpus": gpus, "tensorflow": tf.__version__, "keras": keras.__version__,
               "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
               "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads()}
    report = {"command": common.command_line(),
              "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
              "machine": machine, "config": args.arch, "title": spec["title"], "batch_size": args.batch_size,
              "images_per_epoch": n_examples, "rounds": args.rounds, "baseline": base, "results": results,
              "per_round": rows}
    print(render(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


def render(report: dict) -> str:
    m = report["machine"]
    lines = [f"Command: `{report['command']}`", "",
             f"- Date: {report['date']}; commit {m['git_commit']}{' + uncommitted changes' if m['git_dirty'] else ''}",
             f"- Machine: {m['cpu']}, {m['cpu_count']} CPUs ({m['cpus_usable']} usable), GPU: "
             f"{', '.join(m.get('gpus') or []) or 'none'}; TensorFlow {m['tensorflow']}, "
             f"Keras {m['keras']}; threads intra {m['intra_op_threads']} / inter {m['inter_op_threads']}",
             f"- {report['title']}, batch {report['batch_size']}, {report['images_per_epoch']:,} images per epoch, "
             f"{report['rounds']} interleaved rounds of one epoch per variant; baseline: {report['baseline']}",
             "",
             "| steps_per_execution | XLA | precision | img/s, median (min–max) | fastest round "
             "| fastest / baseline's fastest | per-round ratio to baseline, median (min–max) |",
             "|---:|---|---|---:|---:|---:|---:|"]
    for r in report["results"]:
        s, q = r["images_per_s"], r["per_round_over_baseline"]
        lines.append(f"| {r['steps_per_execution']} | {'on' if r['jit_compile'] else 'off'} | {r['precision']} "
                     f"| {s['median']:,.0f} ({s['min']:,.0f}–{s['max']:,.0f}) | {r['best']:,.0f} "
                     f"| {r['best_over_baseline']:.3f} | {q['median']:.3f} ({q['min']:.3f}–{q['max']:.3f}) |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
