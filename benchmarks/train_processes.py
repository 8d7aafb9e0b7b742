"""Training throughput against the peers with **each trainer in a process of its own**, as users
run them (issue #20): vae-tf, PyTorch eager, the same model under ``torch.compile`` and pythae's
``BaseTrainer``, on the reference conv VAE, rounds interleaved in one run.

Why a second measure next to ``benchmarks/train_throughput.py``, which runs every trainer in one
process: a skeptical reviewer's question is whether sharing a process (TensorFlow's and PyTorch's
thread pools, one allocator, one garbage collector) helps or hurts one side. No user runs vae-tf
and pythae in one process, so this script runs each as users do, alone in its process, and keeps
the rest of the method (same machine, same data and starting weights, rounds interleaved in one
run) so that its ratios compare with the one-process benchmark's (docs/performance.md).

Method: one worker process per trainer, started with ``spawn`` (a fresh interpreter: the PyTorch
workers never import TensorFlow, the vae-tf worker never imports PyTorch), each with the machine's
CPUs as its thread pools (TensorFlow intra- and inter-op, PyTorch intra- and inter-op), the same
data (``--examples`` uniform [0, 1] 28x28x1 images from ``--seed``) and the same starting weights
(the vae-tf model's, sent to the PyTorch workers as arrays). ``--warmup-epochs`` untimed epochs per
trainer (torch.compile compiles in them), then ``--rounds`` rounds: in each, every worker in turn
trains ``--epochs-per-round`` epochs while the others wait idle, the order rotating and reversing
as in ``train_throughput.py``. Reported: images/s of each trainer (median, min–max over rounds),
vae-tf ÷ it per round (median, min–max) and of the fastest rounds, the final losses (all the same
nats-per-image scale), the parameter counts (checked equal). The loss functions themselves are
checked against each other in ``train_throughput.py`` (same weights, same noise); here every
trainer trains as it does there (vae-tf: ``build_vae`` + ``FusedAdam`` + ``fit`` on
``DataSplits.resumable_pipeline``, ``steps_per_execution`` 4).

Usage::

    python benchmarks/train_processes.py                      # 9 rounds, ~4 min on 2 CPUs
    python benchmarks/train_processes.py --rounds 15 --json processes.json
    python benchmarks/train_processes.py --rounds 1 --examples 256 --torch-compile-backend aot_eager  # smoke
"""

from __future__ import annotations

import argparse
import datetime
import multiprocessing
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks import common  # noqa: E402
from benchmarks.train_throughput import CONFIGS, positive_int, torch_arch  # noqa: E402

TRAINERS = ("vae_tf", "torch", "torch_compile", "pythae")
TITLES = {"vae_tf": "vae-tf", "torch": "PyTorch eager", "torch_compile": "PyTorch torch.compile",
          "pythae": "pythae BaseTrainer"}
TARGETS = {"torch": 1.15, "torch_compile": 1.5, "pythae": 1.5}  # issue #10 (eager), issue #20 (the peers)
CONV = CONFIGS["conv"]  # the reference conv VAE of train_throughput.py
BATCH = 128


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def images(n: int, seed: int) -> np.ndarray:
    """The benchmark's data: train_throughput.py's ``synthetic28`` (uniform [0, 1] 28x28x1)."""
    return np.random.default_rng(seed).random((n, 28, 28, 1), dtype=np.float32)


# --- the workers (each in a fresh process) -------------------------------------------------------
class VaeTfTrainer:
    """vae-tf as training/train.py trains (train_throughput.build_ours, the same pipeline)."""

    def __init__(self, x: np.ndarray, args):
        import keras
        import tensorflow as tf

        from benchmarks.torch_reference import keras_conv_weights
        from benchmarks.train_throughput import build_ours, trainable_count, training_stream
        from vae_tf.data import DataSplits

        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
        keras.utils.set_random_seed(args.seed)
        args.jit_compile, args.learning_rate, args.steps_per_execution = "auto", 1e-3, 4
        self.model = build_ours(CONV, x.shape[1:], args)
        splits = DataSplits(name="synthetic28", x_train=x, x_val=x[:0], x_test=x[:0], value_range=(0.0, 1.0))
        self.stream = training_stream(splits, BATCH, args.seed)
        self.model(x[:1])
        self.weights = keras_conv_weights(self.model.encoder, self.model.decoder)
        self.parameters = trainable_count(self.model)
        self.settings = {"tensorflow": tf.__version__, "threads": args.threads, "steps_per_execution": 4}

    def epochs(self, n: int) -> tuple[list[float], float]:
        from benchmarks.train_throughput import timed_fit

        timer = timed_fit(self.model, self.stream, n)
        return timer.seconds, float(timer.logs[-1]["loss"])


class TorchSide:
    """PyTorch eager, torch.compile (``compile_backend``) or pythae's trainer, from given Keras weights
    (None: the framework's own initial weights)."""

    def __init__(self, kind: str, x: np.ndarray, weights: dict, args, workdir: str):
        from benchmarks import torch_reference as ref

        torch, why = ref.import_torch()
        if torch is None:
            raise SystemExit(f"PyTorch is not installed ({why}); pip install -e '.[bench]' adds it")
        self.settings = ref.set_threads(torch, args.threads)
        arch = torch_arch(CONV)
        latent_dim = CONV["latent"]["latent_dim"]
        if kind == "pythae":
            from benchmarks import pythae_reference as pyref

            pythae, why = pyref.import_pythae()
            if pythae is None:
                raise SystemExit(f"pythae is not installed ({why}); pip install -e '.[bench]' adds it")
            self.trainer = pyref.PythaeTrainer(torch, x, BATCH, workdir=workdir, latent_dim=latent_dim,
                                               learning_rate=1e-3, seed=args.seed, **arch)
            if weights is not None:  # else pythae's own initial weights (train_alone.py)
                ref.load_keras_weights(torch, self.trainer.net, weights)
            model = self.trainer.model
            self.settings |= {"pythae": getattr(pythae, "__version__", "?"), **self.trainer.settings}
        else:
            backend = args.torch_compile_backend if kind == "torch_compile" else None
            self.trainer = ref.TorchTrainer(torch, x, BATCH, latent_dim=latent_dim, learning_rate=1e-3,
                                            seed=args.seed, compile_backend=backend, **arch)
            if weights is not None:  # else PyTorch's own initial weights (train_alone.py)
                ref.load_keras_weights(torch, self.trainer.model, weights)
            model = self.trainer.model
            self.settings |= self.trainer.settings
        self.kind = kind
        self.parameters = ref.parameter_count(model)

    def epochs(self, n: int) -> tuple[list[float], float]:
        if self.kind == "pythae":
            seconds, loss = self.trainer.fit(n)
            return list(seconds), float(loss)
        seconds, losses = zip(*(self.trainer.fit_epoch() for _ in range(n)))
        return list(seconds), float(losses[-1])


def worker(kind: str, args, conn) -> None:
    """One trainer's process: build it, report ("ready", parameters, settings[, weights]), then run
    the epochs asked for until told to stop. Any error is sent back as one message."""
    try:
        if kind == "vae_tf":
            from benchmarks.common import start_as_vae_tf_does

            start_as_vae_tf_does()
        x = images(args.examples, args.seed)
        with tempfile.TemporaryDirectory(prefix="vae-tf-pythae-") as workdir:
            trainer = VaeTfTrainer(x, args) if kind == "vae_tf" else TorchSide(kind, x, conn.recv(), args, workdir)
            # What this process imported: the PyTorch trainers must run without TensorFlow (module docstring).
            modules = {name: name in sys.modules for name in ("tensorflow", "torch")}
            conn.send(("ready", trainer.parameters, {**trainer.settings, "modules": modules},
                       trainer.weights if kind == "vae_tf" else None))
            while (n := conn.recv()) is not None:
                conn.send(("done", *trainer.epochs(n)))
    except BaseException as err:  # noqa: BLE001 - reported by the parent, in one line
        detail = str(err) if isinstance(err, SystemExit) else traceback.format_exc(limit=3).strip().splitlines()[-1]
        conn.send(("error", f"{TITLES[kind]}: {detail}"))


class Worker:
    """The parent's handle on one trainer's process."""

    def __init__(self, context, kind: str, args):
        self.kind = kind
        self.conn, child = context.Pipe()
        self.process = context.Process(target=worker, args=(kind, args, child), name=f"bench-{kind}", daemon=True)
        self.process.start()

    def receive(self, timeout: float):
        deadline = time.monotonic() + timeout
        while not self.conn.poll(1.0):
            if not self.process.is_alive():  # a crash in native code sends no message
                raise SystemExit(f"{TITLES[self.kind]}: its process ended with exit code {self.process.exitcode}")
            if time.monotonic() > deadline:
                raise SystemExit(f"{TITLES[self.kind]}: no answer within {timeout:.0f} s")
        message = self.conn.recv()
        if message[0] == "error":
            raise SystemExit(message[1])
        return message[1:]

    def epochs(self, n: int, timeout: float) -> tuple[list[float], float]:
        self.conn.send(n)
        return self.receive(timeout)

    def stop(self) -> None:
        try:
            self.conn.send(None)
        except (BrokenPipeError, OSError):
            pass
        self.process.join(10)
        if self.process.is_alive():
            self.process.kill()


# --- the run --------------------------------------------------------------------------------------
def run(args) -> dict:
    context = multiprocessing.get_context("spawn")
    workers: dict[str, Worker] = {}
    try:
        workers["vae_tf"] = Worker(context, "vae_tf", args)
        parameters, settings, weights = {}, {}, None
        parameters["vae_tf"], settings["vae_tf"], weights = workers["vae_tf"].receive(args.timeout)
        for kind in args.trainers:
            if kind != "vae_tf":
                workers[kind] = Worker(context, kind, args)
                workers[kind].conn.send(weights)
                parameters[kind], settings[kind], _ = workers[kind].receive(args.timeout)
                if parameters[kind] != parameters["vae_tf"]:
                    raise SystemExit(f"{TITLES[kind]} has {parameters[kind]:,} parameters, vae-tf "
                                     f"{parameters['vae_tf']:,}: not the same architecture")
        log("trainers ready: " + ", ".join(f"{TITLES[k]} ({parameters[k]:,} parameters)" for k in workers))
        warmup = {}
        for kind, w in workers.items():
            seconds, _ = w.epochs(args.warmup_epochs, args.timeout)
            warmup[kind] = seconds
            log(f"warm-up {TITLES[kind]}: {', '.join(f'{s:.2f}' for s in seconds)} s")
        labels, rounds = list(workers), []
        for r in range(args.rounds):
            k = r % len(labels)  # the order rotates, and reverses every other cycle, as in train_throughput.py
            order = labels[k:] + labels[:k]
            order = order if (r // len(labels)) % 2 == 0 else order[::-1]
            row = {"order": order}
            for kind in order:
                seconds, loss = workers[kind].epochs(args.epochs_per_round, args.timeout)
                row[kind] = {"images_per_s": args.epochs_per_round * args.examples / sum(seconds),
                             "epoch_seconds": seconds, "final_loss": loss}
            for kind in labels[1:]:
                row[f"ratio_{kind}"] = row["vae_tf"]["images_per_s"] / row[kind]["images_per_s"]
            rounds.append(row)
            log(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{TITLES[k]} {row[k]['images_per_s']:,.0f}" for k in labels))
    finally:
        for w in workers.values():
            w.stop()
    best = {kind: max(row[kind]["images_per_s"] for row in rounds) for kind in labels}
    return {
        "trainers": labels, "parameters": parameters, "settings": settings, "warmup_seconds": warmup, "rounds": rounds,
        "images_per_s": {kind: common.summary(row[kind]["images_per_s"] for row in rounds) for kind in labels},
        "best_images_per_s": best,
        "ratio_vae_tf_over": {kind: common.summary(row[f"ratio_{kind}"] for row in rounds) for kind in labels[1:]},
        "best_ratio_vae_tf_over": {kind: best["vae_tf"] / best[kind] for kind in labels[1:]},
        "final_loss": {kind: rounds[-1][kind]["final_loss"] for kind in labels},
    }


def render(report: dict) -> str:
    r, m = report["result"], report["machine"]
    lines = [f"Command: `{report['command']}`", "",
             f"- Date: {report['date']}; commit {m['git_commit']}{' (+ uncommitted changes)' if m['git_dirty'] else ''}",
             f"- Machine: {m['cpu']}, {m['cpus_usable']} usable CPUs; load average at the start "
             f"{m['load_average']}, at the end {report['load_average_end']}",
             f"- Method: each trainer in a process of its own (spawned; no TensorFlow in the PyTorch workers), "
             f"{report['threads']} threads each; {report['examples']:,} images per epoch, batch {BATCH}; "
             f"{report['warmup_epochs']} warm-up epoch(s) each, then {report['rounds']} rounds of "
             f"{report['epochs_per_round']} epoch(s) per trainer, the order rotating", "",
             "| trainer | parameters | img/s, median (min–max) | vae-tf ÷ it, per-round median (min–max) | fastest rounds "
             "| target | met | final loss |",
             "|---|---:|---:|---:|---:|---:|---|---:|"]
    for kind in r["trainers"]:
        s = r["images_per_s"][kind]
        rate = f"{s['median']:,.0f} ({s['min']:,.0f}–{s['max']:,.0f})"
        if kind == "vae_tf":
            lines.append(f"| {TITLES[kind]} | {r['parameters'][kind]:,} | {rate} | – | – | – | – | {r['final_loss'][kind]:.2f} |")
            continue
        q, target = r["ratio_vae_tf_over"][kind], TARGETS[kind]
        best = r["best_ratio_vae_tf_over"][kind]
        met = "yes" if q["median"] >= target and best >= target else "**no**"
        lines.append(f"| {TITLES[kind]} | {r['parameters'][kind]:,} | {rate} | {q['median']:.3f} ({q['min']:.3f}–{q['max']:.3f}) "
                     f"| {best:.3f} | ≥ {target} | {met} | {r['final_loss'][kind]:.2f} |")
    if "torch_compile" in r["settings"]:
        lines += ["", f"- torch.compile: backend {r['settings']['torch_compile'].get('compile', {}).get('backend')}; "
                      f"its warm-up epoch (with the compilation) {sum(r['warmup_seconds']['torch_compile']):.1f} s"]
    return "\n".join(lines)


def checked_run_arguments(parser: argparse.ArgumentParser, argv) -> argparse.Namespace:
    """``parser``'s arguments (``--examples``, ``--threads`` among them), ``--examples`` checked to
    be whole executions (one line otherwise) and ``--threads`` defaulting to the usable CPUs; also
    for benchmarks/train_alone.py."""
    args = parser.parse_args(argv)
    if args.examples % (BATCH * 4):
        parser.error(f"--examples must be a multiple of {BATCH * 4} (whole executions of 4 batches of {BATCH}), "
                     f"got {args.examples}")
    args.threads = args.threads or len(os.sched_getaffinity(0))
    return args


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trainers", nargs="+", choices=TRAINERS[1:], default=list(TRAINERS[1:]),
                   help="the peers timed against vae-tf (default: all three)")
    p.add_argument("--rounds", type=positive_int, default=9)
    p.add_argument("--epochs-per-round", type=positive_int, default=1)
    p.add_argument("--warmup-epochs", type=positive_int, default=1)
    p.add_argument("--examples", type=positive_int, default=8192, help="images per epoch (a multiple of 512)")
    p.add_argument("--threads", type=positive_int, default=None, help="threads per trainer (default: usable CPUs)")
    p.add_argument("--torch-compile-backend", default="inductor")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=positive_int, default=600, help="seconds allowed for one worker's answer")
    p.add_argument("--json", type=Path, default=None)
    args = checked_run_arguments(p, argv)
    args.trainers = ["vae_tf", *dict.fromkeys(args.trainers)]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    machine = common.machine_info()
    result = run(args)
    report = {"command": common.command_line(), "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
              "machine": machine, "load_average_end": common.load_average(), "threads": args.threads,
              "examples": args.examples, "warmup_epochs": args.warmup_epochs, "rounds": args.rounds,
              "epochs_per_round": args.epochs_per_round, "result": result}
    print(render(report))
    if args.json:
        common.write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
