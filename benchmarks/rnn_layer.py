"""One recurrent layer's training pass (forward and backward): Keras' ``keras.layers.LSTM`` (or
``GRU``), vae-tf's ``vae_tf.networks.unrolled_rnn.LSTM`` (``GRU``: the unrolled training path) and
PyTorch's ``nn.LSTM`` (``nn.GRU``), side by side in one process.

Question answered: how long one recurrent layer of the text benchmark's model
(``benchmarks/text_throughput.py``: 256 units over a [64, 11, 144] batch) takes to run forward
and backward in each, on this machine and these thread pools; it is the part of the sentence VAE's
step that decides its speed on a CPU (docs/performance.md, Text).

Each variant runs the same thing: the layer from a given initial state over a batch (with
``--mask``, a right-padded mask: sentences of 3 to ``--steps`` words, as the encoder reads them;
PyTorch then runs the whole padded batch, as the decoder does), a loss reading every output and
the final state, and the gradients w.r.t. the inputs, the initial state and the weights. TensorFlow
runs it as one ``tf.function``, PyTorch eagerly. The weights are the same in all three (for an LSTM,
PyTorch's two biases are Keras' bias and zeros; for a GRU, Keras' ``reset_after`` form is PyTorch's,
gates reordered), and the script refuses to time them unless their losses agree.
Rounds alternate the order; reported: the best and median milliseconds per call of each, and the
ratios to PyTorch.

Usage::

    python benchmarks/rnn_layer.py                          # ~1 min on 2 CPUs
    python benchmarks/rnn_layer.py --cell gru --tf-threads 1,2 --mask --rounds 7 --json gru.json
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

from benchmarks.common import command_line, machine_info, write_json  # noqa: E402
from benchmarks.text_throughput import parse_tf_threads, tf_thread_pools  # noqa: E402


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cell", choices=["lstm", "gru"], default="lstm")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=11, help="time steps (the text benchmark's decoder: 11)")
    parser.add_argument("--input", type=int, default=144, help="input width (embedding 128 + latent 16)")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--mask", action="store_true", help="a right-padded mask, as the encoder reads sentences")
    parser.add_argument("--calls", type=int, default=50, help="calls per timed round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads for both (default: all CPUs)")
    parser.add_argument("--tf-threads", default=None, metavar="INTRA,INTER",
                        help="TensorFlow's intra-op and inter-op pools apart, e.g. 1,2; overrides --threads for it")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    for name in ("batch_size", "steps", "input", "hidden", "calls", "rounds"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} {getattr(args, name)}: give a positive whole number")
    tf_threads = parse_tf_threads(args.tf_threads) if args.tf_threads else (
        (args.threads, args.threads) if args.threads else None)

    import keras
    import tensorflow as tf

    if tf_threads:
        tf.config.threading.set_intra_op_parallelism_threads(tf_threads[0])
        tf.config.threading.set_inter_op_parallelism_threads(tf_threads[1])
    from vae_tf.networks import unrolled_rnn

    b, t, d, h = args.batch_size, args.steps, args.input, args.hidden
    rng = np.random.default_rng(args.seed)
    x = rng.normal(size=(b, t, d)).astype("float32")
    h0 = (rng.normal(size=(b, h)) * 0.5).astype("float32")
    c0 = rng.normal(size=(b, h)).astype("float32")
    weights = rng.normal(size=(b, t, h)).astype("float32")
    lengths = rng.integers(min(3, t), t + 1, size=b) if args.mask else np.full(b, t)
    mask = np.arange(t)[None] < lengths[:, None]

    keras.utils.set_random_seed(args.seed)
    lstm = args.cell == "lstm"
    layer_class = "LSTM" if lstm else "GRU"
    layers = {"keras": getattr(keras.layers, layer_class)(h, return_sequences=True, return_state=True),
              "vae-tf": getattr(unrolled_rnn, layer_class)(h, return_sequences=True, return_state=True)}
    states = [tf.constant(a) for a in ((h0, c0) if lstm else (h0,))]
    x_t, w_t = tf.constant(x), tf.constant(weights)
    tf_mask = tf.constant(mask) if args.mask else None
    for layer in layers.values():
        layer(x_t[:1], initial_state=[s[:1] for s in states])
    # random weights, biases included (Keras starts them at zero), so that the loss checks below
    # test the whole weight mapping
    layers["keras"].set_weights([(w + rng.normal(size=w.shape) * 0.1).astype("float32")
                                 for w in layers["keras"].get_weights()])
    layers["vae-tf"].set_weights(layers["keras"].get_weights())

    def tf_step(layer):
        @tf.function
        def step(x, w, *states):
            with tf.GradientTape() as tape:
                tape.watch([x, *states])
                y, *final = layer(x, initial_state=list(states), mask=tf_mask, training=True)
                loss = tf.reduce_sum(y * w) + tf.reduce_sum(final[0] * final[0]) + sum(tf.reduce_sum(s) for s in final[1:])
            return loss, tape.gradient(loss, [x, *states, *layer.trainable_variables])

        return lambda: float(step(x_t, w_t, *states)[0])

    calls = {name: tf_step(layer) for name, layer in layers.items()}
    paths = {"vae-tf": layers["vae-tf"].unrolled_path(x_t, training=True)}
    losses = {name: fn() for name, fn in calls.items()}

    try:
        import torch
    except ImportError:
        log("PyTorch is not installed (the `bench` extra): timing the two TensorFlow layers alone")
        torch = None
    if torch is not None:
        if args.threads:
            torch.set_num_threads(args.threads)
        theirs = (torch.nn.LSTM if lstm else torch.nn.GRU)(d, h, batch_first=True)
        kernel, recurrent, bias = layers["keras"].get_weights()
        if lstm:  # Keras' gate order i, f, c, o is PyTorch's i, f, g, o; one bias, PyTorch's second zero
            w_ih, w_hh, b_ih, b_hh = kernel.T, recurrent.T, bias, np.zeros_like(bias)
        else:  # Keras' z, r, h (bias [input; recurrent]) against PyTorch's r, z, n
            order = np.concatenate([np.arange(h, 2 * h), np.arange(h), np.arange(2 * h, 3 * h)])
            w_ih, w_hh, b_ih, b_hh = kernel.T[order], recurrent.T[order], bias[0][order], bias[1][order]
        with torch.no_grad():
            for name, value in (("weight_ih_l0", w_ih), ("weight_hh_l0", w_hh), ("bias_ih_l0", b_ih),
                                ("bias_hh_l0", b_hh)):
                getattr(theirs, name).copy_(torch.from_numpy(np.ascontiguousarray(value)))
        tx = torch.from_numpy(x).requires_grad_()
        t_states = [torch.from_numpy(a)[None].requires_grad_() for a in ((h0, c0) if lstm else (h0,))]
        tw, tmask = torch.from_numpy(weights), torch.from_numpy(mask)

        def torch_step() -> float:
            theirs.zero_grad(set_to_none=True)
            y, final = theirs(tx, tuple(t_states) if lstm else t_states[0])
            final = final if lstm else (final,)
            if args.mask:  # Keras' masked semantics on the padded batch would need a loop: score the words only
                y = y * tmask[..., None]
            loss = (y * tw).sum() + (final[0] * final[0]).sum() + sum(s.sum() for s in final[1:])
            loss.backward()
            return float(loss)

        calls["pytorch"] = torch_step
        losses["pytorch"] = torch_step()
    if abs(losses["vae-tf"] - losses["keras"]) > 1e-3 * abs(losses["keras"]):
        raise SystemExit(f"vae-tf's and Keras' {layer_class} disagree: loss {losses['vae-tf']} against {losses['keras']}")
    if "pytorch" in losses and not args.mask and abs(losses["pytorch"] - losses["keras"]) > 1e-3 * abs(losses["keras"]):
        raise SystemExit(f"PyTorch's and Keras' {layer_class} disagree: loss {losses['pytorch']} against {losses['keras']}")

    times = {name: [] for name in calls}
    names = list(calls)
    for r in range(args.rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            fn = calls[name]
            start = time.perf_counter()
            for _ in range(args.calls):
                fn()
            times[name].append((time.perf_counter() - start) / args.calls * 1e3)
            log(f"round {r + 1}: {name} {times[name][-1]:.2f} ms")
    report = {"command": command_line(), "machine": machine_info(), "cell": args.cell, "batch_size": b, "steps": t, "input": d,
              "hidden": h, "mask": bool(args.mask), "tf_threads": tf_thread_pools(tf),
              "torch_threads": torch.get_num_threads() if torch is not None else None,
              "vae_tf_unrolled": bool(paths["vae-tf"]),
              "recurrent_products": "per_gate" if unrolled_rnn.per_gate_products(h, 4 if lstm else 3) else "one",
              "ms": {k: {"best": float(min(v)), "median": float(np.median(v))} for k, v in times.items()}}
    if "pytorch" in times:
        report["per_pytorch_best"] = {k: report["ms"]["pytorch"]["best"] / v["best"] for k, v in report["ms"].items()}
    print(render(report))
    if args.json:
        write_json(args.json, report)
    return 0


def render(report: dict) -> str:
    pools = report["tf_threads"]
    torch_threads = "" if report["torch_threads"] is None else f"; PyTorch threads: {report['torch_threads']}"
    lines = [f"Command: `{report['command']}`", "",
             f"One {report['cell'].upper()} layer of {report['hidden']} units over a [{report['batch_size']}, {report['steps']}, "
             f"{report['input']}] batch{' (right-padded mask)' if report['mask'] else ''}, forward and backward; "
             f"TensorFlow's pools: intra-op {pools['intra_op'] or 'default'}, inter-op {pools['inter_op'] or 'default'}"
             f"{torch_threads}; vae-tf's layer {'took' if report['vae_tf_unrolled'] else 'did not take'} the "
             f"unrolled path"
             f"{' (one recurrent product per gate)' if report.get('recurrent_products') == 'per_gate' else ''}.", "",
             "| layer | ms per call, best | median | PyTorch ÷ it (best) |", "|---|---:|---:|---:|"]
    for name, v in report["ms"].items():
        ratio = report.get("per_pytorch_best", {}).get(name)
        lines.append(f"| {name} | {v['best']:.2f} | {v['median']:.2f} | {'' if ratio is None else f'{ratio:.2f}'} |")
    return "\n".join(lines)


if __name__ == "__main__":
    from benchmarks.common import start_as_vae_tf_does

    start_as_vae_tf_does()
    sys.exit(main())
