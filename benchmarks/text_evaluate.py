"""``model.evaluate`` of a sentence VAE with its evaluation step as it is and as it was before
the step stopped running the fused cross-entropy (docs/performance.md, "The evaluation step
without the fused cross-entropy").

Keras' evaluation step (``model.evaluate``, ``fit``'s validation) takes no gradient, so a text
model scores its words there with ``Likelihood.log_prob_for_evaluation`` (each word's logit minus
the log-sum-exp), not with the training step's fused ``sparse_softmax_cross_entropy_with_logits``,
which also writes a ``[B, T, vocab]`` gradient on every call. For each model size two models with
the same weights run in one process: **after** (the package as it is) and **before** (its
``log_prob_for_evaluation`` pointed back at ``log_prob``); after one untimed call each,
``--rounds`` rounds of ``model.evaluate`` over ``--sentences`` synthetic sentences, the order
alternating. Reported: median seconds of each, the median of the per-round ratios before ÷
after, and both losses (equal up to float32 round-off).

Usage::

    python benchmarks/text_evaluate.py                      # the shipped config's sizes and the text benchmark's
    python benchmarks/text_evaluate.py --sizes 50x50 --rounds 10 --json ev.json
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks.common import command_line, machine_info, summary, write_json  # noqa: E402


def parse_size(text: str) -> tuple[int, int]:
    """``HIDDENxEMBEDDING`` → ``(hidden, embedding)``."""
    try:
        hidden, embedding = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a size is HIDDENxEMBEDDING, e.g. 50x50, got {text!r}") from None
    if hidden < 1 or embedding < 1:
        raise argparse.ArgumentTypeError(f"both numbers of a size must be positive, got {text!r}")
    return hidden, embedding


def measure(data, x, hidden: int, embedding: int, args) -> dict:
    from benchmarks.text_throughput import build_vae_tf

    settings = argparse.Namespace(seed=args.seed, latent=args.latent, embedding=embedding, hidden=hidden,
                                  steps_per_execution=4)
    after, before = build_vae_tf(data, settings), build_vae_tf(data, settings)
    before.set_weights(after.get_weights())
    before.likelihood.log_prob_for_evaluation = before.likelihood.log_prob  # the step as it was
    models = {"before": before, "after": after}
    for model in models.values():
        model.evaluate(x, batch_size=args.batch_size, verbose=0)  # tracing, not timed
    seconds = {name: [] for name in models}
    for r in range(args.rounds):
        for name in (("before", "after") if r % 2 == 0 else ("after", "before")):
            start = time.perf_counter()
            models[name].evaluate(x, batch_size=args.batch_size, verbose=0)
            seconds[name].append(time.perf_counter() - start)
    losses = {name: float(model.evaluate(x, batch_size=args.batch_size, verbose=0, return_dict=True)["loss"])
              for name, model in models.items()}
    ratios = [b / a for b, a in zip(seconds["before"], seconds["after"])]
    return {"hidden": hidden, "embedding": embedding, "seconds": seconds, "loss": losses,
            "summary_seconds": {name: summary(v) for name, v in seconds.items()},
            "ratio_median_of_rounds": float(np.median(ratios))}


def render(report: dict) -> str:
    def cell(s: dict) -> str:
        return f"{s['median']:.3f} ({s['min']:.3f}–{s['max']:.3f})"

    lines = [f"Command: `{report['command']}`", "",
             "| model | before, s median (min–max) | after, s median (min–max) | before ÷ after, per round (median) "
             "| loss before | loss after |",
             "|---|---:|---:|---:|---:|---:|"]
    for row in report["results"]:
        seconds = row["summary_seconds"]
        lines.append(f"| LSTM {row['hidden']}, embedding {row['embedding']} | {cell(seconds['before'])} | "
                     f"{cell(seconds['after'])} | {row['ratio_median_of_rounds']:.2f} | "
                     f"{row['loss']['before']:.4f} | {row['loss']['after']:.4f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", nargs="+", type=parse_size, default=[(50, 50), (256, 128)],
                   help="models as HIDDENxEMBEDDING (default: 50x50, the shipped config's; 256x128, the text benchmark's)")
    p.add_argument("--sentences", type=int, default=4096)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--latent", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the report here")
    args = p.parse_args(argv)
    for name in ("sentences", "batch_size", "rounds"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")

    from vae_tf.data import load_dataset

    data = load_dataset("text_synthetic", seed=args.seed, n_samples=args.sentences, val_fraction=0.0, test_fraction=0.0)
    x = data.x_train[:args.sentences]
    report = {"command": command_line(), "machine": machine_info(), "sentences": len(x), "batch_size": args.batch_size,
              "rounds": args.rounds, "results": [measure(data, x, h, e, args) for h, e in args.sizes]}
    print(render(report))
    if args.json:
        write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
