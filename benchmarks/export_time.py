"""Export and load of a model's SavedModel: time and size, each measurement in a fresh process.

Question answered (issue #20, start-up): what does ``vae_tf.export.export_model`` cost after
training, what does ``tf.saved_model.load`` of the result cost (``vae-tf embed``, Beam workers,
MLflow's pyfunc), and how large is the SavedModel? For two models:

- **conv**: the conv reference VAE (28x28x1, conv 32/64, dense 256, latent 16, Bernoulli);
- **text**: ``training/configs/text_synthetic.yaml``'s LSTM sentence VAE (its vocabulary built from
  200 synthetic sentences), built as ``vae-tf train`` builds it.

Each round runs every model (and, with ``--compare-tree DIR``, every model with that checkout of
vae-tf first on ``PYTHONPATH``, e.g. a ``git worktree`` of the commit before a change) in its own
process, the order rotating: build the model, ``export_model`` it (timed), ``tf.saved_model.load``
the version directory (timed). Reported per variant: median (min-max) of both times, the
SavedModel's bytes (``saved_model.pb``, variables and assets) and the number of functions in its
graph library (each traced endpoint graph is one; a graph stored twice counts twice).

Usage::

    python benchmarks/export_time.py --rounds 3
    git worktree add /tmp/before <commit> && python benchmarks/export_time.py --compare-tree /tmp/before
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

MODELS = ("conv", "text")


def build(model_name: str):
    """The model ``model_name`` of :data:`MODELS`, built and called once (ready to export)."""
    import numpy as np
    import tensorflow as tf

    if model_name == "conv":
        from vae_tf.models import build_vae

        model = build_vae((28, 28, 1), latent={"family": "gaussian", "latent_dim": 16},
                          likelihood={"name": "bernoulli"},
                          network={"kind": "conv", "filters": [32, 64], "dense": 256}, seed=0)
        model(np.zeros((2, 28, 28, 1), np.float32))
        return model
    from training.config import load_config
    from training.train import prepare

    config = load_config(str(Path(__file__).resolve().parents[1] / "training" / "configs" / "text_synthetic.yaml"),
                         ["data.options.n_samples=200"])
    return prepare(config, tf.distribute.get_strategy()).model


def graph_functions(version_dir: Path) -> int:
    """The number of functions in the SavedModel's graph library."""
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel()
    saved.ParseFromString((version_dir / "saved_model.pb").read_bytes())
    return sum(len(graph.graph_def.library.function) for graph in saved.meta_graphs)


def measure(model_name: str, workdir: Path) -> dict:
    """Build, export (timed) and load (timed) one model in this process."""
    import tensorflow as tf

    from vae_tf.export import export_model

    model = build(model_name)
    start = time.perf_counter()
    version_dir = export_model(model, workdir, model_name)
    export_seconds = time.perf_counter() - start
    start = time.perf_counter()
    tf.saved_model.load(str(version_dir))
    load_seconds = time.perf_counter() - start
    size = sum(f.stat().st_size for f in version_dir.rglob("*") if f.is_file())
    return {"export_seconds": export_seconds, "load_seconds": load_seconds, "bytes": size,
            "graph_functions": graph_functions(version_dir)}


def summarize(rows: list[dict]) -> dict:
    """Median (min-max) of each timed field over the rounds of one variant; size and function
    count as measured (the same every round)."""
    from benchmarks.common import summary

    return {**{key: summary(row[key] for row in rows) for key in ("export_seconds", "load_seconds")},
            "bytes": rows[-1]["bytes"], "graph_functions": rows[-1]["graph_functions"]}


def render(report: dict) -> str:
    settings = report["settings"]
    lines = [f"Command: `{settings['command']}`", "",
             f"- Date: {settings['date']}; commit {settings['commit']}"
             + (f"; before: {settings['compare_commit'] or settings['compare_tree']}" if settings["compare_tree"] else ""),
             f"- Machine: {settings['machine']}; {settings['rounds']} rounds, a fresh process per variant per round", "",
             "| model | tree | export s | load s | SavedModel MB | graph functions |", "|---|---|---:|---:|---:|---:|"]
    for variant, r in report["results"].items():
        model_name, _, tree = variant.partition("@")
        e, lo = r["export_seconds"], r["load_seconds"]
        lines.append(f"| {model_name} | {tree or 'this checkout'} | {e['median']:.2f} ({e['min']:.2f}–{e['max']:.2f}) | "
                     f"{lo['median']:.2f} ({lo['min']:.2f}–{lo['max']:.2f}) | {r['bytes'] / 1e6:.2f} | "
                     f"{r['graph_functions']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    import argparse
    import datetime
    import tempfile

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    p.add_argument("--compare-tree", help="another checkout of vae-tf, measured in the same rounds")
    p.add_argument("--json", help="write the report here too")
    p.add_argument("--child", choices=MODELS, help=argparse.SUPPRESS)
    p.add_argument("--workdir", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:  # one measurement, printed as the last line of JSON; vae-tf from PYTHONPATH's checkout
        print(json.dumps(measure(args.child, Path(args.workdir))))
        return 0
    root = str(Path(__file__).resolve().parents[1])
    if root not in sys.path:
        sys.path.insert(0, root)
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    from benchmarks import common

    variants = [*args.models, *([f"{m}@before" for m in args.models] if args.compare_tree else [])]
    rows: dict[str, list] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory() as tmp:
        for round_index in range(args.rounds):
            shift = round_index % len(variants)
            for variant in variants[shift:] + variants[:shift]:
                tree = args.compare_tree if variant.endswith("@before") else root
                env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (tree, os.environ.get("PYTHONPATH")))),
                       "TF_CPP_MIN_LOG_LEVEL": "2"}
                workdir = Path(tmp) / f"{variant}-{round_index}"
                try:
                    rows[variant].append(common.run_json_child(
                        [sys.executable, os.path.abspath(__file__), "--child", variant.split("@")[0], "--workdir",
                         str(workdir)], env=env, cwd=tree))
                except common.ChildFailed as err:
                    print(f"error: {variant} failed: {err}", file=sys.stderr)
                    return 1
                print(f"round {round_index + 1}/{args.rounds}: {variant} {rows[variant][-1]}", file=sys.stderr)
    report = {"settings": {"command": common.command_line(), "rounds": args.rounds,
                           "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                           "commit": common.git_state()[0], "compare_tree": args.compare_tree,
                           "compare_commit": common.git_state(args.compare_tree)[0] if args.compare_tree else None,
                           "machine": common.cpu_model()},
              "results": {v: summarize(r) for v, r in rows.items()}}
    print(render(report))
    if args.json:
        common.write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
