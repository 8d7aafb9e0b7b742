"""The plain ELBO's per-step cost over a bare Keras ``train_step``, and where it comes from.

Question answered: of the time vae-tf's training step takes more than the bare Keras VAE of
``benchmarks/train_throughput.py`` (same networks, weights, data pipeline, loss), how much is
the optimizer, the composed objective's forward pass, and the trackers and bookkeeping? The
composable-remedies issue asks that the plain ELBO cost at most 5 % more per step.

``train_throughput.py`` times whole 0.6-second ``fit`` epochs, 25 rounds: on the tiny MLP (a step
of ~2 ms) its per-round ratios spread over ±20 %, too wide to see a 5 % difference. This script
calls each model's compiled ``train_function`` directly (``steps_per_execution`` steps per call,
no callbacks, one long-lived iterator per model over ``DataSplits.resumable_pipeline``) in short
blocks, interleaved with the order flipping each round, for ``--seconds``; it reports the median
ms per step and the median of the per-round ratios to the bare loop. Variants:

- ``bare``: the bare Keras loop with ``keras.optimizers.Adam`` (train_throughput's);
- ``vae-tf``: ``build_vae`` with a constant β = 1 and ``FusedAdam``, as the training job compiles it;
- ``bare+fused-all``: the bare loop with ``FusedAdam(min_fused_size=1)`` (the fused kernel on
  every variable): the optimizer's part;
- ``vae-tf parts, bare step``: the vae-tf model's networks and optimizer under the bare step
  (one tracker, no bookkeeping): everything but the step's code;
- ``vae-tf step, one tracker``: vae-tf's forward pass and update (``inference.train_step``) with
  only the loss tracker: the composed objective without the trackers and bookkeeping.

Usage::

    python benchmarks/step_overhead.py --arch mlp --seconds 80
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import types  # noqa: E402
from pathlib import Path  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


def bare_step_on_ours(self, data):
    """train_throughput's bare step, on the vae-tf model's networks, seed stream and optimizer."""
    import tensorflow as tf

    from benchmarks.train_throughput import bare_elbo_loss

    x = self.unpack(data)
    eps = tf.random.stateless_normal((tf.shape(x)[0], self.latent.code_size), seed=self.next_seed())
    with tf.GradientTape() as tape:
        loss = bare_elbo_loss(self.encoder, self.decoder, x, eps)
    grads = tape.gradient(loss, self.trainable_variables)
    self.optimizer.apply_gradients(zip(grads, self.trainable_variables))
    self.loss_tracker.update_state(loss)
    return {"loss": self.loss_tracker.result()}


def ours_step_one_tracker(self, data):
    """vae-tf's forward pass and update, without the other trackers and the step bookkeeping."""
    terms = self.inference.train_step(self, self.unpack(data))
    self.loss_tracker.update_state(terms["loss"])
    return {"loss": self.loss_tracker.result()}


def build_variants(args) -> dict:
    import keras

    from benchmarks import train_throughput as tt
    from vae_tf.optimizers import FusedAdam

    spec = tt.CONFIGS[args.arch]
    settings = tt.parse_args(["--arch", args.arch, "--batch-size", str(args.batch_size),
                              "--steps-per-execution", str(args.steps_per_execution)])
    keras.utils.set_random_seed(settings.seed)
    shape = tt.data_shape_of(spec["data"], settings.seed)
    ours = tt.build_ours(spec, shape, settings)
    variants = {"bare": tt.build_bare(spec, shape, ours, settings), "vae-tf": ours}
    fused = tt.build_bare(spec, shape, ours, settings)
    fused.compile(optimizer=FusedAdam(settings.learning_rate, min_fused_size=1),
                  steps_per_execution=settings.steps_per_execution)
    variants["bare+fused-all"] = fused
    for name, step in (("vae-tf parts, bare step", bare_step_on_ours),
                       ("vae-tf step, one tracker", ours_step_one_tracker)):
        model = tt.build_ours(spec, shape, settings)
        model.train_step = types.MethodType(step, model)
        variants[name] = model
    for model in variants.values():
        if model is not ours:
            tt.copy_weights(model, ours)  # same starting encoder and decoder weights
    unit = args.batch_size * args.steps_per_execution
    splits = tt.make_splits(spec["data"], unit * args.executions_per_pass, settings.seed)
    return {name: (model, splits) for name, model in variants.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", choices=["mlp", "conv"], default="mlp")
    p.add_argument("--seconds", type=float, default=80.0, help="timed seconds (all variants together)")
    p.add_argument("--calls-per-block", type=int, default=16, help="train_function calls per timed block")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps-per-execution", type=int, default=4)
    p.add_argument("--executions-per-pass", type=int, default=64, help="size of the data set, in executions")
    args = p.parse_args(argv)

    import numpy as np
    import tensorflow as tf

    from benchmarks import train_throughput as tt

    functions = {}
    for name, (model, splits) in build_variants(args).items():
        ds, steps = tt.training_stream(splits, args.batch_size, 0)
        model.fit(ds, epochs=1, steps_per_epoch=steps, verbose=0)  # traces, builds the optimizer
        functions[name] = (model.make_train_function(), iter(ds))
    times = {name: [] for name in functions}
    deadline, rounds = time.time() + args.seconds, 0
    while time.time() < deadline:
        for name in (list(functions) if rounds % 2 == 0 else list(functions)[::-1]):
            function, iterator = functions[name]
            start = time.perf_counter()
            for _ in range(args.calls_per_block):
                function(iterator)
            times[name].append((time.perf_counter() - start) / (args.calls_per_block * args.steps_per_execution) * 1e3)
        rounds += 1

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                            text=True).stdout.strip()
    print(f"Command: `python benchmarks/step_overhead.py {' '.join(argv if argv is not None else sys.argv[1:])}`\n")
    print(f"{time.strftime('%Y-%m-%d')}, commit {commit}, {platform.machine()}, {os.cpu_count()} CPUs, "
          f"TensorFlow {tf.__version__}; {tt.CONFIGS[args.arch]['title']}, batch {args.batch_size}, "
          f"steps_per_execution {args.steps_per_execution}; {rounds} interleaved rounds of "
          f"{args.calls_per_block} calls per variant.\n")
    print("| variant | ms per step, median (p10–p90) | per-round ratio to bare, median (p10–p90) |")
    print("|---|---:|---:|")
    base = np.array(times["bare"])
    for name, values in times.items():
        t = np.array(values)
        ratio = t / base
        print(f"| {name} | {np.median(t):.3f} ({np.percentile(t, 10):.3f}–{np.percentile(t, 90):.3f}) | "
              f"{np.median(ratio):.3f} ({np.percentile(ratio, 10):.3f}–{np.percentile(ratio, 90):.3f}) |")
    return 0


if __name__ == "__main__":
    from benchmarks.common import start_as_vae_tf_does

    start_as_vae_tf_does()
    sys.exit(main())
