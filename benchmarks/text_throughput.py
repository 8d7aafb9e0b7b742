"""Training throughput of a sentence VAE: vae-tf's LSTM VAE against the same model written in
PyTorch eager, side by side in one process (issue: text VAEs, goal vae-tf >= 1.0x in tokens/s).

The model (both frameworks, parameter counts checked equal): word embeddings (``--embedding``) for
the encoder and for the decoder, a one-layer LSTM encoder (``--hidden``) whose final state gives
(μ, log σ²) of a diagonal Gaussian code (``--latent``), an LSTM decoder whose initial state is
(tanh(W z), W z) and whose every input is [word vector, z] (``z_injection: both``), a linear layer
to the vocabulary. Loss: −Σ log p(word) over the words and ``<eos>`` of every sentence (padding
masked) + the analytic KL, mean over the batch; Adam (lr 1e-3, Keras' ε = 1e-7).

- **vae-tf**: ``build_vae`` + ``FusedAdam`` + ``fit`` on ``DataSplits.resumable_pipeline`` with
  ``steps_per_execution`` (default 4), as ``training/train.py`` trains;
- **vae-tf (XLA)**, with ``--jit-compile both``: the same model (same initial weights) compiled
  with ``jit_compile=True``, as ``train.jit_compile=true`` compiles it (its sentences tokenised in
  the input pipeline, :meth:`vae_tf.models.text.TextVAE.tokenized`), in the same rounds;
- **PyTorch eager**: ``torch.nn.Embedding`` / ``LSTM`` / ``Linear``, the encoder reading packed
  sequences (``pack_padded_sequence``, so padding is skipped as vae-tf's mask skips it), the
  decoder over the padded batch with the loss masked, ``torch.optim.Adam(foreach=True)``; the
  same token ids (vae-tf's own tokenizer), the same batches (reshuffled each pass); on the GPU when
  PyTorch sees one (``--torch-device``), as TensorFlow puts vae-tf on its GPU.

Data: the synthetic corpus of He et al. (``text_synthetic``, 10-word sentences, vocabulary 1,000),
``--sentences`` of them. tokens/s counts the scored positions (words + ``<eos>``). Rounds:
``--rounds`` rounds, each one timed epoch per framework, the order alternating; reported: the
median and best tokens/s of each and the ratio of medians and of bests (other tenants of a shared
machine only ever slow a round down).

Usage::

    python benchmarks/text_throughput.py                         # ~3 min on 2 CPUs
    python benchmarks/text_throughput.py --rounds 9 --hidden 256 --embedding 128 --json text.json
    python benchmarks/text_throughput.py --jit-compile both     # and the same model under XLA, same rounds
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks.common import command_line, machine_info, write_json  # noqa: E402


#: The second vae-tf variant of ``--jit-compile both``: the same model compiled with ``jit_compile=True``.
XLA_VARIANT = "vae-tf (XLA)"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def build_vae_tf(data, args, jit_compile="auto"):
    """vae-tf's sentence VAE of the module docstring, compiled as training/train.py compiles it;
    ``jit_compile`` as ``train.jit_compile`` (fit_teardown.py and profile_step.py keep Keras' default)."""
    import keras

    from vae_tf.models import build_vae
    from vae_tf.models.text import text_settings
    from vae_tf.optimizers import FusedAdam

    keras.utils.set_random_seed(args.seed)
    model = build_vae((), latent={"family": "gaussian", "latent_dim": args.latent}, likelihood={"name": "categorical"},
                      network={"kind": "lstm", "embedding": args.embedding, "hidden": [args.hidden],
                               "z_injection": "both"}, text=text_settings(data.metadata), seed=args.seed)
    model.compile(optimizer=FusedAdam(1e-3), steps_per_execution=args.steps_per_execution, jit_compile=jit_compile)
    return model


def lstm_paths(model) -> dict:
    """How vae-tf's model ran on this machine (read after training): XLA on or off (Keras resolves
    ``auto`` at compile time: on where there is a GPU, unless a layer cannot be compiled), how many
    of its LSTMs Keras set up for cuDNN (where TensorFlow sees a GPU and the layer's settings allow
    it; Keras marks those ``supports_jit = False``; each call still falls back to the generic loop
    if TensorFlow's cuDNN op refuses the batch) and how many trained through vae-tf's unrolled path
    (:mod:`vae_tf.networks.unrolled_rnn`: on a CPU)."""
    import keras

    lstms = [layer for layer in (*model.encoder.rnns, *model.decoder.rnns) if isinstance(layer, keras.layers.LSTM)]
    return {"jit_compile": bool(model.jit_compile), "lstm_layers": len(lstms),
            "cudnn_lstm_layers": sum(not layer.supports_jit for layer in lstms),
            "unrolled_lstm_layers": sum(getattr(layer, "unrolled_in_training", None) is True for layer in lstms)}


def build_torch(torch, vocab: int, args):
    nn = torch.nn

    class TorchTextVAE(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc_emb = nn.Embedding(vocab, args.embedding)
            self.enc = nn.LSTM(args.embedding, args.hidden, batch_first=True)
            self.params = nn.Linear(args.hidden, 2 * args.latent)
            self.dec_emb = nn.Embedding(vocab, args.embedding)
            self.z_to_state = nn.Linear(args.latent, args.hidden)
            self.dec = nn.LSTM(args.embedding + args.latent, args.hidden, batch_first=True)
            self.logits = nn.Linear(args.hidden, vocab)

        def loss(self, ids, lengths):
            """ids: [B, T] word ids (0 = padding); lengths: [B] words per sentence."""
            b, t = ids.shape
            packed = nn.utils.rnn.pack_padded_sequence(self.enc_emb(ids), lengths.cpu(), batch_first=True,
                                                       enforce_sorted=False)
            _, (h, _) = self.enc(packed)
            mean, log_var = self.params(h[-1]).chunk(2, dim=-1)
            z = mean + torch.exp(0.5 * log_var) * torch.randn_like(mean)
            bos = torch.full((b, 1), 2, dtype=ids.dtype, device=ids.device)
            inputs = torch.cat([bos, ids], dim=1)                       # <bos> w1 ... wn
            padded = torch.cat([ids, torch.zeros((b, 1), dtype=ids.dtype, device=ids.device)], dim=1)
            targets = padded.scatter(1, lengths[:, None], 3)           # w1 ... wn <eos>
            c0 = self.z_to_state(z)
            state = (torch.tanh(c0)[None], c0[None])
            x = torch.cat([self.dec_emb(inputs), z[:, None, :].expand(b, t + 1, z.shape[-1])], dim=-1)
            out, _ = self.dec(x, state)
            logp = torch.log_softmax(self.logits(out), dim=-1).gather(-1, targets[..., None])[..., 0]
            reconstruction = (logp * (targets != 0)).sum(dim=1)
            kl = 0.5 * (mean ** 2 + log_var.exp() - 1.0 - log_var).sum(dim=1)
            return -(reconstruction - kl).mean()

    return TorchTextVAE()


def parameter_count_tf(model) -> int:
    return int(sum(np.prod(v.shape) for v in model.trainable_variables))


def parse_tf_threads(text: str) -> tuple[int, int]:
    """``"1,2"`` -> (1, 2): TensorFlow's intra-op and inter-op thread counts (0: TensorFlow's choice)."""
    parts = text.split(",")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise SystemExit(f"--tf-threads {text!r}: give INTRA,INTER as two whole numbers, e.g. --tf-threads 1,2")
    return int(parts[0]), int(parts[1])


def tf_thread_pools(tf) -> dict[str, int]:
    """TensorFlow's intra-op and inter-op thread counts as set by ``tf.config.threading`` or, where
    that says 0 (not set), by ``TF_NUM_INTRAOP_THREADS`` / ``TF_NUM_INTEROP_THREADS``; 0: TensorFlow's
    default (one thread per CPU)."""
    pools = {}
    for name, getter, variable in (("intra_op", tf.config.threading.get_intra_op_parallelism_threads, "TF_NUM_INTRAOP_THREADS"),
                                   ("inter_op", tf.config.threading.get_inter_op_parallelism_threads, "TF_NUM_INTEROP_THREADS")):
        value = getter()
        if not value and os.environ.get(variable, "").strip().isdigit():
            value = int(os.environ[variable])
        pools[name] = value
    return pools


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sentences", type=int, default=8192)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--embedding", type=int, default=128)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--latent", type=int, default=16)
    parser.add_argument("--steps-per-execution", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads for both (default: all CPUs)")
    parser.add_argument("--tf-threads", default=None, metavar="INTRA,INTER",
                        help="TensorFlow's intra-op and inter-op pools apart, e.g. 1,2 (as TF_NUM_INTRAOP_THREADS "
                             "and TF_NUM_INTEROP_THREADS); overrides --threads for TensorFlow")
    parser.add_argument("--torch-device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="where PyTorch trains (auto: cuda when PyTorch sees a GPU; TensorFlow places vae-tf "
                             "on its GPU by itself)")
    parser.add_argument("--jit-compile", choices=["auto", "true", "false", "both"], default="auto",
                        help="vae-tf's XLA setting, as train.jit_compile (auto: Keras' choice, off on a CPU); "
                             "both: a second vae-tf model, compiled with XLA, in the same rounds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    group = args.batch_size * args.steps_per_execution  # whole groups of steps per epoch
    if args.sentences < group:  # all sentences are training sentences: say so before TensorFlow loads
        raise SystemExit(f"--sentences {args.sentences} is fewer than one group of --batch-size x "
                         f"--steps-per-execution = {group} sentences; give more sentences or smaller batches")
    if args.torch_device == "cuda":  # asked for explicitly: refuse before TensorFlow loads if it cannot be
        try:
            import torch
        except ImportError:
            raise SystemExit("--torch-device cuda needs PyTorch (pip install -e '.[bench]'); or leave it at auto")
        if not torch.cuda.is_available():
            raise SystemExit("--torch-device cuda: this PyTorch sees no CUDA GPU; use --torch-device cpu or auto")

    tf_threads = (args.threads, args.threads) if args.threads else None
    if args.tf_threads:
        tf_threads = parse_tf_threads(args.tf_threads)
    import tensorflow as tf

    if tf_threads:
        tf.config.threading.set_intra_op_parallelism_threads(tf_threads[0])
        tf.config.threading.set_inter_op_parallelism_threads(tf_threads[1])
    from vae_tf.data import load_dataset

    data = load_dataset("text_synthetic", seed=args.seed, n_samples=args.sentences, val_fraction=0.0,
                        test_fraction=0.0)
    n = len(data.x_train) // group * group
    data = dataclasses.replace(data, x_train=data.x_train[:n], y_train=None, factors_train=None)
    steps = n // args.batch_size
    ours = build_vae_tf(data, args, jit_compile={"auto": "auto", "true": True, "false": False, "both": "auto"}[args.jit_compile])
    # --jit-compile both: the same model (same initial weights) compiled with XLA, trained in the same rounds
    with_xla = build_vae_tf(data, args, jit_compile=True) if args.jit_compile == "both" else None
    ids = ours.codec.encode(tf.constant(data.x_train)).numpy().astype(np.int64)
    lengths = (ids != 0).sum(axis=1)
    tokens_per_epoch = int((lengths + 1).sum())

    try:
        import torch
    except ImportError:
        log("PyTorch is not installed (the `bench` extra): measuring vae-tf alone")
        torch = None
    device = "cpu"
    if torch is not None:
        use_cuda = args.torch_device == "cuda" or (args.torch_device == "auto" and torch.cuda.is_available())
        device = "cuda" if use_cuda else "cpu"
        if args.threads:
            torch.set_num_threads(args.threads)
        torch.manual_seed(args.seed)
        theirs = build_torch(torch, ours.codec.vocab_size, args).to(device)
        torch_params = sum(p.numel() for p in theirs.parameters())
        # Keras' LSTM has one bias vector per gate, PyTorch two (b_ih, b_hh): 4 * hidden extra per LSTM.
        expected = parameter_count_tf(ours) + 2 * 4 * args.hidden
        if torch_params != expected:
            raise SystemExit(f"parameter counts differ: PyTorch {torch_params}, vae-tf {parameter_count_tf(ours)} "
                             f"(+{2 * 4 * args.hidden} second LSTM biases)")
        optimizer = torch.optim.Adam(theirs.parameters(), lr=1e-3, eps=1e-7, foreach=True)
        ids_t, lengths_t = torch.from_numpy(ids).to(device), torch.from_numpy(lengths).to(device)
        rng = np.random.default_rng(args.seed)

        def torch_epoch() -> float:
            order = rng.permutation(n)
            start = time.perf_counter()
            for s in range(steps):
                rows = torch.from_numpy(order[s * args.batch_size:(s + 1) * args.batch_size]).to(device)
                loss = theirs.loss(ids_t[rows], lengths_t[rows])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            float(loss.detach())
            return time.perf_counter() - start

    def tf_epoch(model, stream) -> float:
        start = time.perf_counter()
        history = model.fit(stream, epochs=1, steps_per_epoch=steps, verbose=0)
        float(history.history["loss"][-1])
        return time.perf_counter() - start

    epochs = {"vae-tf": functools.partial(tf_epoch, ours, data.resumable_pipeline(
        "train", args.batch_size, seed=args.seed, epochs=10_000))}
    if with_xla is not None:
        epochs[XLA_VARIANT] = functools.partial(tf_epoch, with_xla, data.resumable_pipeline(
            "train", args.batch_size, seed=args.seed, epochs=10_000))
    if torch is not None:
        epochs["pytorch_eager"] = torch_epoch
    warm_up = {}
    for name, epoch in epochs.items():
        log(f"warm-up of {name} (tracing{', compiling' if name == XLA_VARIANT else ''})")
        warm_up[name] = epoch()
    times = {name: [] for name in epochs}
    for r in range(args.rounds):
        order = list(epochs) if r % 2 == 0 else list(epochs)[::-1]
        for name in order:
            seconds = epochs[name]()
            times[name].append(seconds)
            log(f"round {r + 1}: {name} {tokens_per_epoch / seconds:,.0f} tokens/s")
    rates = {k: [tokens_per_epoch / s for s in v] for k, v in times.items() if v}
    report = {"command": command_line(), "machine": machine_info(), "load_average": os.getloadavg(),
              "sentences": n, "tokens_per_epoch": tokens_per_epoch, "torch_device": device,
              "tensorflow_gpus": [gpu.name for gpu in tf.config.list_physical_devices("GPU")], "batch_size": args.batch_size,
              "embedding": args.embedding, "hidden": args.hidden, "latent": args.latent,
              "vocab": int(ours.codec.vocab_size), "parameters": parameter_count_tf(ours),
              "vae_tf_paths": lstm_paths(ours),
              **({"vae_tf_xla_paths": lstm_paths(with_xla)} if with_xla is not None else {}),
              "warm_up_seconds": warm_up,
              "tf_threads": tf_thread_pools(tf),
              "tokens_per_second": {k: {"median": float(np.median(v)), "best": float(max(v)), "min": float(min(v))}
                                    for k, v in rates.items()}}
    if "pytorch_eager" in rates:
        per_round = [a / b for a, b in zip(rates["vae-tf"], rates["pytorch_eager"])]
        report["ratio_median_of_rounds"] = float(np.median(per_round))
        report["ratio_of_bests"] = max(rates["vae-tf"]) / max(rates["pytorch_eager"])
        if XLA_VARIANT in rates:
            report["xla_ratio_median_of_rounds"] = float(np.median(
                [a / b for a, b in zip(rates[XLA_VARIANT], rates["pytorch_eager"])]))
            report["xla_ratio_of_bests"] = max(rates[XLA_VARIANT]) / max(rates["pytorch_eager"])
    print(render(report))
    if args.json:
        write_json(args.json, report)
    return 0


def render(report: dict) -> str:
    lines = [f"Command: `{report['command']}`", "",
             f"{report['sentences']} sentences of text_synthetic ({report['tokens_per_epoch']:,} scored tokens per "
             f"epoch), batch {report['batch_size']}, embedding {report['embedding']}, LSTM {report['hidden']}, "
             f"latent {report['latent']}, vocabulary {report['vocab']}, {report['parameters']:,} parameters "
             f"(Keras count); PyTorch on {report.get('torch_device', 'cpu')}, TensorFlow GPUs: "
             f"{', '.join(report.get('tensorflow_gpus') or []) or 'none'}; load average {', '.join(f'{v:.1f}' for v in report['load_average'])}.",
             *([f"vae-tf: XLA {'on' if paths['jit_compile'] else 'off'}, {paths['cudnn_lstm_layers']} of "
                f"{paths['lstm_layers']} LSTM layers set up for cuDNN, {paths.get('unrolled_lstm_layers', 0)} trained "
                f"through the unrolled path."] if (paths := report.get("vae_tf_paths")) else []),
             *([f"{XLA_VARIANT}: XLA {'on' if paths['jit_compile'] else 'off'}, {paths.get('unrolled_lstm_layers', 0)} "
                f"of {paths['lstm_layers']} LSTM layers trained through the unrolled path."]
               if (paths := report.get("vae_tf_xla_paths")) else []),
             *([f"TensorFlow's thread pools: intra-op {pools['intra_op'] or 'default'}, inter-op "
                f"{pools['inter_op'] or 'default'} (default: TensorFlow's choice, one thread per CPU)."]
               if (pools := report.get("tf_threads")) else []),
             "",
             "| variant | tokens/s (median) | best | worst |", "|---|---:|---:|---:|"]
    for name, v in report["tokens_per_second"].items():
        lines.append(f"| {name} | {v['median']:,.0f} | {v['best']:,.0f} | {v['min']:,.0f} |")
    if "ratio_median_of_rounds" in report:
        lines += ["", f"vae-tf ÷ PyTorch eager: **{report['ratio_median_of_rounds']:.2f}** (median of per-round "
                      f"ratios), {report['ratio_of_bests']:.2f} (ratio of bests); goal >= 1.0."]
    if "xla_ratio_median_of_rounds" in report:
        lines += ["", f"{XLA_VARIANT} ÷ PyTorch eager: **{report['xla_ratio_median_of_rounds']:.2f}** (median of "
                      f"per-round ratios), {report['xla_ratio_of_bests']:.2f} (ratio of bests)."]
    if warm := report.get("warm_up_seconds"):
        lines += ["", "Warm-up epoch (tracing, XLA's compiling, PyTorch's first allocations), seconds: "
                  + ", ".join(f"{name} {seconds:.1f}" for name, seconds in warm.items()) + "."]
    return "\n".join(lines)


if __name__ == "__main__":
    from benchmarks.common import start_as_vae_tf_does

    start_as_vae_tf_does()
    sys.exit(main())
