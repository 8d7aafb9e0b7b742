"""Where a training step's time goes: TensorFlow's profiler on the vae-tf conv reference (or the
text benchmark's LSTM VAE, ``--model text``).

Question answered: which ops take the time of a vae-tf training step on this machine (forward,
gradients, optimizer update, input pipeline), and how much does the optimizer's update cost with
Keras' ``Adam`` against vae-tf's ``FusedAdam``? This is what found the fused update
(``docs/performance.md``, "Where a training step's time goes").

The model is the one ``benchmarks/train_throughput.py`` times (conv 32/64, dense 256, latent 16,
Bernoulli, batch 128, ``steps_per_execution`` 4), fitted as ``training/train.py`` fits
(``DataSplits.resumable_pipeline``). ``--model text`` profiles the LSTM VAE that
``benchmarks/text_throughput.py`` times (embedding 128, LSTM 256, latent 16, vocabulary 1,004,
batch 64 of the synthetic corpus's sentences; ``--examples`` is then sentences); its ``recurrent
layers`` parts are the ops inside the LSTM layers, forward and gradient (the hand-written backward
pass of vae-tf's unrolled layers, ``vae_tf.networks.unrolled_rnn``, runs under
``unrolled_backward``; Keras' ``while`` loop, where a layer takes it, under the layer's name). For each ``--optimizer``, after two untimed epochs, one epoch
runs under ``tf.profiler.experimental`` and the trace's framework-op statistics (TensorFlow's own
``framework_op_stats`` tool) are summed by op type and by part of the step: ``optimizer`` (ops
under the optimizer's name scope), ``gradients`` (under ``gradient_tape``), ``input`` (tf.data)
and ``forward`` (the rest). Times are self-times summed over threads ("op time"), so their shares
say where the work is, not the wall time. Idle time is left out.

Usage::

    python benchmarks/profile_step.py                          # keras and fused Adam (~1 min)
    python benchmarks/profile_step.py --optimizer fused --top 30
    python benchmarks/profile_step.py --model text --optimizer fused --batch-size 64
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse  # noqa: E402
import collections  # noqa: E402
import datetime  # noqa: E402
import glob  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import types  # noqa: E402
from pathlib import Path  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks import common  # noqa: E402
from benchmarks import train_throughput as tt  # noqa: E402


def op_stats(xplane: str) -> list[dict]:
    """Rows of TensorFlow's ``framework_op_stats`` tool for one trace (type, name, self-time µs)."""
    from tensorflow.python.profiler.internal import _pywrap_profiler_plugin as plugin

    data, ok = plugin.xspace_to_tools_data([xplane], "framework_op_stats", {})
    if not ok:
        raise SystemExit(f"TensorFlow's profiler could not read {xplane}")
    table = json.loads(data)[0]
    columns = [c["id"] for c in table["cols"]]
    rows = [{k: cell.get("v") for k, cell in zip(columns, row["c"])} for row in table["rows"]]
    return [{"type": r["type"], "name": r["operation"], "self_us": float(r["total_self_time"]),
             "count": int(r["occurrences"] or 0)} for r in rows if r["type"] != "IDLE"]


def part_of_step(row: dict, optimizer_scope: str, recurrent: bool = False) -> str:
    if row["type"] == "Dataset" or row["name"].startswith("Iterator::"):
        return "input"
    if f"/{optimizer_scope}/" in row["name"]:
        return "optimizer"
    if recurrent and "unrolled_backward" in row["name"]:  # the unrolled layers' hand-written backward pass
        return "recurrent layers (gradient)"
    if recurrent and re.search(r"_(lstm|gru)_\d+(_\d+)*/", row["name"]):  # inside a recurrent layer's scope
        return "recurrent layers (gradient)" if "gradient_tape" in row["name"] else "recurrent layers"
    if "gradient_tape" in row["name"]:
        return "gradients"
    return "forward"


def profile(optimizer: str, args) -> dict:
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(args.seed)
    if args.model == "text":
        model, stream = _text_model(args)
    else:
        spec = tt.CONFIGS["conv"]
        splits = tt.make_splits("synthetic28", args.examples, args.seed)
        settings = types.SimpleNamespace(seed=args.seed, learning_rate=1e-3, steps_per_execution=4,
                                         jit_compile=False)
        model = tt.build_ours(spec, splits.data_shape, settings)
        stream = tt.training_stream(splits, args.batch_size, args.seed)
    if optimizer == "keras":
        model.compile(optimizer=keras.optimizers.Adam(1e-3), steps_per_execution=4, jit_compile=False)
    tt.timed_fit(model, stream, 2)
    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        timer = tt.timed_fit(model, stream, 1)
        tf.profiler.experimental.stop()
        xplanes = sorted(glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True))
        rows = op_stats(xplanes[-1])
    total = sum(r["self_us"] for r in rows)
    parts, types_ = collections.Counter(), collections.Counter()
    for r in rows:
        parts[part_of_step(r, model.optimizer.name, recurrent=args.model == "text")] += r["self_us"]
        types_[r["type"]] += r["self_us"]
    steps = args.examples // args.batch_size
    return {"optimizer": optimizer, "optimizer_class": type(model.optimizer).__name__,
            "epoch_seconds": timer.seconds[0], "steps": steps, "op_ms_per_step": total / 1e3 / steps,
            "parts": {k: v / total for k, v in parts.most_common()},
            "optimizer_ms_per_step": parts["optimizer"] / 1e3 / steps,
            "op_types": {k: v / total for k, v in types_.most_common()}}  # all of them; the table lists --top


def _text_model(args):
    """The text benchmark's vae-tf model and a ``(dataset, steps)`` stream of ``args.examples``
    synthetic sentences (``benchmarks/text_throughput.py`` builds both the same way)."""
    import dataclasses

    from benchmarks import text_throughput
    from vae_tf.data import load_dataset

    data = load_dataset("text_synthetic", seed=args.seed, n_samples=args.examples, val_fraction=0.0,
                        test_fraction=0.0)
    data = dataclasses.replace(data, y_train=None, factors_train=None)
    sizes = types.SimpleNamespace(embedding=128, hidden=256, latent=16, steps_per_execution=4, seed=args.seed)
    model = text_throughput.build_vae_tf(data, sizes)
    stream = data.resumable_pipeline("train", args.batch_size, seed=args.seed, epochs=10_000)
    return model, (stream, args.examples // args.batch_size)


def render(report: dict) -> str:
    m = report["machine"]
    lines = [f"Command: `{report['command']}`", "",
             f"- Date: {report['date']}; commit {m['git_commit']}{' + uncommitted changes' if m['git_dirty'] else ''}",
             f"- Machine: {m['cpu']}, {m['cpus_usable']} usable CPUs; TensorFlow {report['tensorflow']}",
             f"- {report.get('model', 'conv')} reference, batch {report['batch_size']}, steps_per_execution 4, "
             f"one profiled epoch of {report['examples']:,} {'sentences' if report.get('model') == 'text' else 'images'} "
             "after two untimed ones; shares of op self-time (idle excluded)", ""]
    results = report["results"]
    parts = list(dict.fromkeys(p for r in results for p in r["parts"]))
    lines += ["| optimizer | op time ms/step | " + " | ".join(parts) + " | optimizer ms/step |",
              "|---|---:|" + "---:|" * len(parts) + "---:|"]
    for r in results:
        lines.append(f"| {r['optimizer_class']} | {r['op_ms_per_step']:.1f} | "
                     + " | ".join(f"{100 * r['parts'].get(p, 0):.1f} %" for p in parts)
                     + f" | {r['optimizer_ms_per_step']:.2f} |")
    for r in results:
        lines += ["", f"Op types, {r['optimizer_class']} (share of op time):", "",
                  "| op type | share |", "|---|---:|"]
        lines += [f"| {k} | {100 * v:.1f} % |" for k, v in list(r["op_types"].items())[:report["top"]]]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--optimizer", nargs="+", choices=["keras", "fused"], default=["keras", "fused"],
                   help="keras: keras.optimizers.Adam; fused: vae_tf.optimizers.FusedAdam (what vae-tf trains with)")
    p.add_argument("--model", choices=["conv", "text"], default="conv",
                   help="conv: the conv reference on 28x28 images; text: the text benchmark's LSTM VAE")
    p.add_argument("--examples", type=int, default=4096,
                   help="images (sentences with --model text) in the profiled epoch, rounded up to whole "
                        "groups of 4 batches")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--top", type=int, default=15, help="op types listed in the table (the JSON has all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    unit = args.batch_size * 4
    args.examples = max(unit, -(-args.examples // unit) * unit)
    import tensorflow as tf

    report = {"command": common.command_line(),
              "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
              "machine": common.machine_info(), "tensorflow": tf.__version__, "batch_size": args.batch_size,
              "examples": args.examples, "model": args.model, "top": args.top, "results": [profile(o, args) for o in args.optimizer]}
    print(render(report))
    if args.json:
        common.write_json(args.json, report)
    return 0


if __name__ == "__main__":
    from benchmarks.common import start_as_vae_tf_does

    start_as_vae_tf_does()
    sys.exit(main())
