"""One trainer alone in this process, epoch after epoch, as a plain training script runs it: the
reference conv VAE trained by vae-tf, PyTorch eager or pythae's ``BaseTrainer``
(benchmarks/train_processes.py's trainers), images/s of each epoch after the warm-up.

Why: the interleaved benchmarks (``train_throughput.py``, ``train_processes.py``) time the PyTorch
trainers 25-55 % faster than a process that trains them back to back with glibc's default
``malloc`` (docs/performance.md, issue #20). Run this script once per setting, e.g. with and without
glibc's tunables, which only the environment sets (before the process starts)::

    python benchmarks/train_alone.py --trainer torch
    MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=134217728 python benchmarks/train_alone.py --trainer torch
    python benchmarks/train_alone.py --trainer vae_tf --epochs 8 --json alone.json

Each trainer starts from its own framework's initial weights (no TensorFlow in a PyTorch run);
the data are ``--examples`` uniform [0, 1] 28x28x1 images from ``--seed``, batch 128, threads the
usable CPUs (``--threads``).
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks import common  # noqa: E402
from benchmarks.train_processes import TITLES, TorchSide, VaeTfTrainer, checked_run_arguments, images  # noqa: E402
from benchmarks.train_throughput import positive_int  # noqa: E402

TRAINERS = ("vae_tf", "torch", "pythae")
#: glibc's malloc tunables (read from the environment when the process starts): reported, so that a
#: run says which allocator settings it had.
MALLOC_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_ARENA_MAX", "MALLOC_TOP_PAD_",
                    "LD_PRELOAD")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trainer", choices=TRAINERS, required=True)
    p.add_argument("--epochs", type=positive_int, default=6, help="timed epochs, after --warmup-epochs")
    p.add_argument("--warmup-epochs", type=positive_int, default=1)
    p.add_argument("--examples", type=positive_int, default=8192, help="images per epoch (a multiple of 512)")
    p.add_argument("--threads", type=positive_int, default=None, help="threads (default: usable CPUs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None)
    return checked_run_arguments(p, argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    x = images(args.examples, args.seed)
    with tempfile.TemporaryDirectory(prefix="vae-tf-pythae-") as workdir:
        trainer = (VaeTfTrainer(x, args) if args.trainer == "vae_tf"
                   else TorchSide(args.trainer, x, None, args, workdir))
        trainer.epochs(args.warmup_epochs)
        seconds, loss = trainer.epochs(args.epochs)
    rates = [args.examples / s for s in seconds]
    report = {"command": common.command_line(), "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
              "machine": common.machine_info(), "trainer": args.trainer, "threads": args.threads,
              "examples": args.examples, "epochs": args.epochs, "parameters": trainer.parameters,
              "malloc": {name: os.environ.get(name) for name in MALLOC_VARIABLES if os.environ.get(name)},
              "images_per_s": rates, "median": statistics.median(rates), "min": min(rates), "max": max(rates),
              "final_loss": loss}
    malloc = ", ".join(f"{k}={v}" for k, v in report["malloc"].items()) or "glibc's defaults"
    print(f"{TITLES[args.trainer]} alone, {args.epochs} epochs of {args.examples:,} images back to back, "
          f"{args.threads} threads, malloc: {malloc}: {report['median']:,.0f} img/s median "
          f"({report['min']:,.0f}–{report['max']:,.0f}), final loss {loss:.2f}")
    if args.json:
        common.write_json(args.json, report)
    return 0


if __name__ == "__main__":
    common.start_as_vae_tf_does()  # a vae-tf run starts as vae-tf processes do; nothing for the PyTorch ones
    sys.exit(main())
