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
units (benchmarks/gpu_check.sh) and on CPUs with bf16 matrix instructions (Intel AMX,
AVX512-BF16); on a CPU without them it is slower.

``--torch`` adds the same model in PyTorch eager (benchmarks/torch_reference.py, started from the
float32 vae-tf model's weights) at each precision: float32, and PyTorch's automatic mixed
precision for the mixed ones (the loss under ``torch.autocast`` with bfloat16 or float16, the
latent, likelihood and loss in float32 as in vae-tf, float16 with a dynamic ``GradScaler``), in
the same interleaved rounds; each vae-tf row then also gets its ratio to PyTorch at the same
precision, and every row the mean loss of its last timed epoch (the same loss scale for all).

Usage::

    python benchmarks/train_settings.py                                   # S 1/4/16/64 x XLA off/on (~3 min)
    python benchmarks/train_settings.py --steps 1 4 --jit false --rounds 1 --examples 512   # smoke run
    python benchmarks/train_settings.py --steps 4 16 --jit false true --precision float32 mixed_bfloat16   # GPU
    python benchmarks/train_settings.py --steps 4 --jit false --precision float32 mixed_bfloat16 --torch   # vs PyTorch AMP
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse  # noqa: E402
import datetime  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import types  # noqa: E402
from pathlib import Path  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks import common  # noqa: E402
from benchmarks.common import summary  # noqa: E402
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
    p.add_argument("--torch", action="store_true",
                   help="also PyTorch eager at each precision (float32; autocast bfloat16 / float16), same rounds")
    p.add_argument("--json", type=Path, default=None)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.torch:  # before anything slow: a bad request fails at once
        import importlib.util

        if importlib.util.find_spec("torch") is None:
            raise SystemExit("--torch needs PyTorch (pip install -e '.[bench]'); or leave --torch out")
        if tt.CONFIGS[args.arch]["network"]["kind"] != "conv":
            raise SystemExit(f"--torch: the PyTorch reference exists for the conv architecture only, not {args.arch!r}")
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
                variants[label] = {"trainer_name": "vae-tf", "steps_per_execution": steps, "jit_compile": jit == "true",
                                   "precision": precision, "model": tt.build_ours(spec, splits.data_shape, settings)}
    torch_info = add_torch_variants(variants, splits, args, threads) if args.torch else None

    def run_epoch(label) -> tuple[float, float]:
        """One timed epoch of a variant: (seconds, its mean loss)."""
        v = variants[label]
        if "trainer" in v:
            return v["trainer"].fit_epoch()
        timer = tt.timed_fit(v["model"], ds, 1)
        return timer.seconds[0], float(timer.logs[-1]["loss"])

    failed = warm_up(variants, run_epoch)

    labels = list(variants)
    rows, last_loss = [], {}
    for r in range(args.rounds):
        k = r % len(labels)
        order = labels[k:] + labels[:k]
        order = order if (r // len(labels)) % 2 == 0 else order[::-1]
        row = {}
        for label in order:
            seconds, last_loss[label] = run_epoch(label)
            row[label] = n_examples / seconds
        rows.append(row)
        log(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{label} {row[label]:,.0f}" for label in labels))

    base = labels[0]
    results = []
    for label in labels:
        v, values = variants[label], [row[label] for row in rows]
        result = {"variant": label, "trainer": v["trainer_name"], "steps_per_execution": v["steps_per_execution"],
                  "jit_compile": v["jit_compile"], "precision": v["precision"],
                  "images_per_s": summary(values), "final_loss": last_loss[label],
                  "best": max(values), "best_over_baseline": max(values) / max(row[base] for row in rows),
                  "per_round_over_baseline": summary([row[label] / row[base] for row in rows])}
        peer = TORCH_LABEL.format(precision=v["precision"])
        if v["trainer_name"] == "vae-tf" and peer in variants:
            result["over_torch"] = {"variant": peer, "best": max(values) / max(row[peer] for row in rows),
                                    "per_round": summary([row[label] / row[peer] for row in rows])}
        results.append(result)
    gpus = [tf.config.experimental.get_device_details(gpu).get("device_name", gpu.name)
            for gpu in tf.config.list_physical_devices("GPU")]
    machine = {**common.machine_info(), "gpus": gpus, "tensorflow": tf.__version__, "keras": keras.__version__,
               "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
               "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads()}
    report = {"command": common.command_line(),
              "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
              "machine": machine, "config": args.arch, "title": spec["title"], "batch_size": args.batch_size,
              "images_per_epoch": n_examples, "rounds": args.rounds, "baseline": base, "results": results,
              "per_round": rows, "torch": torch_info, "failed": failed}
    print(render(report))
    if args.json:
        common.write_json(args.json, report)
    return 0


def warm_up(variants: dict, run_epoch) -> dict:
    """Each variant's untimed first epoch (tracing, compilation). A variant that TensorFlow cannot
    run (seen: XLA's Triton GEMM fusion failing on float16 on an H200) is left out of the rounds and
    reported with its error instead of ending the whole run; returns {label: why}."""
    import tensorflow as tf

    from vae_tf.errors import tensorflow_root_error

    failed = {}
    for label in list(variants):
        try:
            log(f"warm-up {label}: {run_epoch(label)[0]:.2f} s")
        except tf.errors.OpError as err:
            failed[label] = f"{type(err).__name__}: {tensorflow_root_error(err)}"
            log(f"warm-up {label} failed, left out of the rounds: {failed[label]}")
            del variants[label]
    if not variants:
        raise SystemExit("every variant failed in its first epoch: " + "; ".join(f"{k}: {v}" for k, v in failed.items()))
    return failed


#: A PyTorch variant's label; a vae-tf row's peer is the one of its precision.
TORCH_LABEL = "PyTorch eager {precision}"
#: PyTorch's automatic mixed precision for each vae-tf precision policy.
AUTOCAST = {"float32": None, "mixed_bfloat16": "bfloat16", "mixed_float16": "float16"}


def add_torch_variants(variants: dict, splits, args, threads: int) -> dict:
    """One PyTorch eager trainer per precision of ``args.precision`` (class docstring of
    ``TorchTrainer``: channels_last, fused Adam), on CUDA when PyTorch sees a GPU, starting from the
    weights of the first vae-tf variant (all vae-tf variants start from the same ones); returns
    PyTorch's settings for the report."""
    import torch  # main() checked that it is there and that the architecture is the conv one

    from benchmarks import torch_reference as ref

    spec = tt.CONFIGS[args.arch]
    info = ref.set_threads(torch, threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    first = next(iter(variants.values()))["model"]
    for precision in args.precision:
        trainer = ref.TorchTrainer(torch, splits.x_train, args.batch_size, latent_dim=int(spec["latent"]["latent_dim"]),
                                   learning_rate=args.learning_rate, seed=args.seed, device=device,
                                   autocast=AUTOCAST[precision], **tt.torch_arch(spec))
        ref.copy_keras_weights(torch, trainer.model, first.encoder, first.decoder)
        if ref.parameter_count(trainer.model) != tt.trainable_count(first):
            raise SystemExit(f"the PyTorch model has {ref.parameter_count(trainer.model):,} parameters, vae-tf "
                             f"{tt.trainable_count(first):,}: not the same architecture")
        variants[TORCH_LABEL.format(precision=precision)] = {
            "trainer_name": "pytorch_eager", "steps_per_execution": None, "jit_compile": None, "precision": precision,
            "trainer": trainer, "settings": trainer.settings}
    return {**info, "device": device}


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
             "| trainer | steps_per_execution | XLA | precision | img/s, median (min–max) | fastest round "
             "| fastest / baseline's fastest | per-round ratio to baseline, median (min–max) "
             "| vae-tf ÷ PyTorch eager, same precision: per-round median (min–max); fastest rounds "
             "| mean loss, last epoch |",
             "|---|---:|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in report["results"]:
        s, q = r["images_per_s"], r["per_round_over_baseline"]
        torch_row = r.get("trainer") == "pytorch_eager"
        trainer = "PyTorch eager" + (f" (autocast {AUTOCAST[r['precision']]})" if AUTOCAST[r["precision"]] else "") \
            if torch_row else "vae-tf"
        peer = r.get("over_torch")
        versus = (f"{peer['per_round']['median']:.3f} ({peer['per_round']['min']:.3f}–{peer['per_round']['max']:.3f}); "
                  f"{peer['best']:.3f}" if peer else "–")
        loss = f"{r['final_loss']:.2f}" if r.get("final_loss") is not None else "–"
        lines.append(f"| {trainer} | {'–' if torch_row else r['steps_per_execution']} "
                     f"| {'–' if torch_row else ('on' if r['jit_compile'] else 'off')} | {r['precision']} "
                     f"| {s['median']:,.0f} ({s['min']:,.0f}–{s['max']:,.0f}) | {r['best']:,.0f} "
                     f"| {r['best_over_baseline']:.3f} | {q['median']:.3f} ({q['min']:.3f}–{q['max']:.3f}) "
                     f"| {versus} | {loss} |")
    for label, why in (report.get("failed") or {}).items():
        lines.append(f"- {label}: failed in its first epoch, not timed: {why}")
    if report.get("torch"):
        t = report["torch"]
        lines += ["", f"- PyTorch {t['version']} eager on {t['device']}: {t['intra_op_threads']} intra-op / "
                      f"{t['inter_op_threads']} inter-op threads, channels_last, fused Adam; same starting weights"]
    return "\n".join(lines)


if __name__ == "__main__":
    from benchmarks.common import start_as_vae_tf_does

    start_as_vae_tf_does()
    sys.exit(main())
