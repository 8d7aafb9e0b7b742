"""How long ``Model.fit`` takes to *return* after its last batch, with tf.data's autotuning on
(TensorFlow's default) and off (what ``DataSplits.pipeline`` / ``resumable_pipeline`` now set,
``vae_tf.data.splits.static_pipeline``).

The model is the text benchmark's LSTM VAE (``benchmarks/text_throughput.py``), trained with
``fit`` on ``resumable_pipeline`` for ``--epochs`` epochs in one call, on the same in-memory
pipeline with the one option changed; the order of the variants alternates. A callback stamps
the end of the last batch; "teardown" is the time from there to ``fit`` returning (the epoch-end
callbacks take no measurable time here). Also reported: the process's CPU seconds over the whole
call, so an idle wait shows as wall time without CPU time.

Usage::

    python benchmarks/fit_teardown.py                      # ~3 min on 2 CPUs
    python benchmarks/fit_teardown.py --epochs 1,4,8 --threads 1
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks.common import command_line, machine_info  # noqa: E402

BATCH_SIZE, STEPS_PER_EXECUTION = 64, 4
GROUP = BATCH_SIZE * STEPS_PER_EXECUTION  # sentences per train_function call


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", default="1,3,8", help="comma-separated fit lengths in epochs")
    parser.add_argument("--sentences", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=None, help="TensorFlow threads (default: all CPUs)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    lengths = [int(e) for e in args.epochs.split(",")]
    if args.sentences < GROUP:  # the whole corpus trains (no validation or test split): refused before TensorFlow loads
        raise SystemExit(f"--sentences {args.sentences} is fewer than one group of {STEPS_PER_EXECUTION} batches of "
                         f"{BATCH_SIZE} = {GROUP} sentences")

    import keras
    import tensorflow as tf

    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    from benchmarks.text_throughput import build_vae_tf
    from vae_tf.data import load_dataset

    data = load_dataset("text_synthetic", seed=args.seed, n_samples=args.sentences, val_fraction=0.0,
                        test_fraction=0.0)
    n = len(data.x_train) // GROUP * GROUP  # whole groups
    data = dataclasses.replace(data, x_train=data.x_train[:n], y_train=None, factors_train=None)
    steps = n // BATCH_SIZE
    model = build_vae_tf(data, argparse.Namespace(seed=args.seed, latent=16, embedding=128, hidden=256,
                                                  steps_per_execution=STEPS_PER_EXECUTION))
    stream = data.resumable_pipeline("train", BATCH_SIZE, seed=args.seed, epochs=10_000)  # autotuning off
    on = tf.data.Options()
    on.autotune.enabled = True
    variants = {"autotune on (TensorFlow's default)": stream.with_options(on), "autotune off (vae-tf)": stream}

    class LastBatch(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            self.at = time.perf_counter()

    model.fit(stream, epochs=1, steps_per_epoch=steps, verbose=0)  # tracing, not measured
    rows = []
    for i, epochs in enumerate(lengths):
        names = list(variants) if i % 2 == 0 else list(variants)[::-1]
        for name in names:
            mark, start, cpu = LastBatch(), time.perf_counter(), cpu_seconds()
            model.fit(variants[name], epochs=epochs, steps_per_epoch=steps, verbose=0, callbacks=[mark])
            end = time.perf_counter()
            rows.append((epochs, name, mark.at - start, end - mark.at, end - start, cpu_seconds() - cpu))
            print(f"{epochs} epochs, {name}: teardown {end - mark.at:.2f} s", file=sys.stderr, flush=True)

    info = machine_info()
    print(f"Command: `{command_line()}`\n\nMachine: {info['cpu']}, {info['cpus_usable']} usable CPUs, TensorFlow "
          f"{tf.__version__}, commit {info['git_commit']}{' (dirty)' if info['git_dirty'] else ''}.\n\nLSTM VAE of benchmarks/text_throughput.py, {n} sentences of "
          f"text_synthetic, batch {BATCH_SIZE}, {steps} steps per epoch, load average "
          f"{', '.join(f'{v:.1f}' for v in os.getloadavg())} at the end.\n")
    print("| epochs in the fit call | tf.data | to the last batch (s) | last batch → fit returns (s) | "
          "whole call (s) | CPU s over the call |")
    print("|---:|---|---:|---:|---:|---:|")
    for epochs, name, train, teardown, total, cpu in rows:
        print(f"| {epochs} | {name} | {train:.2f} | {teardown:.2f} | {total:.2f} | {cpu:.2f} |")
    return 0


if __name__ == "__main__":
    from benchmarks.common import start_as_vae_tf_does

    start_as_vae_tf_does()
    raise SystemExit(main())
