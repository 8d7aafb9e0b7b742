"""Time of a fresh model's first ``fit``: tracing its training step, TensorFlow's graph
optimisation and the first execution, for the conv reference and the MLP, each model compiled as
the training job compiles it (``FusedAdam``, ``steps_per_execution`` 4). What every ``vae-tf
train``, suite child and test model pays once before its first step (docs/performance.md, "Adam's
step scalars made once per step").

Each round is a fresh process that builds ``--models`` models one after the other and times each
one's first ``fit`` of 4 steps (512 random images, batch 128). ``--compare-tree DIR`` runs the
same rounds with another checkout of vae-tf first on ``PYTHONPATH`` (e.g. a ``git worktree`` of
the commit before a change), alternating with this one.

Usage::

    python benchmarks/first_fit.py
    git worktree add /tmp/before HEAD~1 && python benchmarks/first_fit.py --compare-tree /tmp/before
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[1])
if ROOT not in sys.path:  # after PYTHONPATH: a --compare-tree checkout's vae_tf comes first in a child
    sys.path.append(ROOT)

ARCHS = {"conv": ((28, 28, 1), {"kind": "conv", "filters": [32, 64], "dense": 256}),
         "mlp": ((8, 8, 1), {"kind": "mlp", "hidden": [256, 128]})}


def child(arch: str, models: int) -> dict:
    """The first ``fit`` of ``models`` fresh models of ``arch`` in this process, seconds each."""
    import numpy as np
    import tensorflow as tf

    from vae_tf.models import build_vae
    from vae_tf.optimizers import FusedAdam

    shape, network = ARCHS[arch]
    x = np.random.default_rng(0).random((512,) + shape, dtype=np.float32)
    data = tf.data.Dataset.from_tensor_slices(x).batch(128, drop_remainder=True)
    seconds = []
    for _ in range(models):
        model = build_vae(shape, latent={"family": "gaussian", "latent_dim": 16}, likelihood={"name": "bernoulli"},
                          network=network, seed=0)
        model.compile(optimizer=FusedAdam(1e-3), steps_per_execution=4)
        start = time.perf_counter()
        model.fit(data, epochs=1, verbose=0)
        seconds.append(time.perf_counter() - start)
    import vae_tf

    return {"seconds": seconds, "vae_tf": str(Path(vae_tf.__file__).resolve().parents[1])}


def render(report: dict) -> str:
    m = report["machine"]
    lines = [f"Command: `{report['command']}`", "",
             f"- Date: {report['date']}; commit {m['git_commit']}{' + uncommitted changes' if m['git_dirty'] else ''}",
             f"- Machine: {m['cpu']}, {m['cpu_count']} CPUs; {report['rounds']} rounds, a fresh process each, "
             f"{report['models']} models per process; seconds of each model's first fit of 4 steps", "",
             "| model | tree | first fit, s: median (min–max) |", "|---|---|---:|"]
    for arch, trees in report["results"].items():
        for tree, s in trees.items():
            lines.append(f"| {arch} | {tree} | {s['median']:.3f} ({s['min']:.3f}–{s['max']:.3f}) |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--archs", nargs="+", choices=list(ARCHS), default=list(ARCHS))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--models", type=int, default=3, help="models built one after the other in each process")
    p.add_argument("--compare-tree", type=Path, help="another vae-tf checkout, run alternating with this one")
    p.add_argument("--json", type=Path, help="write the report here too")
    p.add_argument("--child", choices=list(ARCHS), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        import json

        print(json.dumps(child(args.child, args.models)))
        return 0
    from benchmarks import common

    if args.compare_tree is not None and not (args.compare_tree / "vae_tf").is_dir():
        p.error(f"--compare-tree {args.compare_tree} is not a vae-tf checkout (no vae_tf/ in it)")

    trees = {"this checkout": Path(ROOT)}
    if args.compare_tree is not None:
        trees[f"{args.compare_tree}"] = args.compare_tree.resolve()
    seconds = {arch: {tree: [] for tree in trees} for arch in args.archs}
    for _ in range(args.rounds):
        for arch in args.archs:
            for tree, root in trees.items():
                env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2",
                       "PYTHONPATH": os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH")) if p)}
                result = common.run_json_child([sys.executable, str(Path(__file__).resolve()), "--child", arch,
                                                "--models", str(args.models)], env=env, cwd=root)
                if Path(result["vae_tf"]) != root:
                    raise SystemExit(f"error: the child for {tree} imported vae_tf from {result['vae_tf']}")
                seconds[arch][tree].extend(result["seconds"])
    report = {"command": common.command_line(), "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
              "machine": common.machine_info(), "rounds": args.rounds, "models": args.models,
              "results": {arch: {tree: common.summary(v) for tree, v in t.items()} for arch, t in seconds.items()},
              "seconds": seconds}
    print(render(report))
    if args.json:
        common.write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
