"""XLA and sentence length: the sentence VAE's warm-up and training speed as sentences grow, with
and without ``jit_compile``, each measurement in a fresh process.

Question answered (issue #16, XLA for text): the unrolled recurrences
(:mod:`vae_tf.networks.unrolled_rnn`) build one graph step per token. XLA compiles that graph into
one program: how do its compile time and its speed grow with the length, and up to which length
does unrolling under XLA still beat Keras' ``while`` loop under XLA
(:data:`~vae_tf.networks.unrolled_rnn.MAX_UNROLLED_STEPS_XLA`)?

The model is the text benchmark's (``benchmarks.text_throughput.build_vae_tf``: embedding 128, one LSTM of 256
in the encoder and the decoder, latent 16, z at the decoder's start and every input), on 2,048
sentences of exactly ``L`` words drawn uniformly from 500 (a ``text_file`` corpus written by the
benchmark; the model's steps are ``L`` in the encoder and ``L + 1`` in the decoder). Variants:

- **no XLA**: ``jit_compile=False``, what ``train.jit_compile=auto`` gives on a CPU;
- **XLA**: ``jit_compile=True`` as vae-tf runs it (unrolled up to ``MAX_UNROLLED_STEPS_XLA`` steps,
  Keras' loop beyond);
- **XLA, always unrolled**: the same with ``MAX_UNROLLED_STEPS_XLA`` raised to
  ``MAX_UNROLLED_STEPS`` (what vae-tf did before the cap);
- **XLA, Keras' loop**: the same with ``MAX_UNROLLED_STEPS_XLA = 0``.

Each (length, variant) runs in a process of its own: build, one ``fit`` call of ``--warmup-steps``
batches (the tracing and, with XLA, the compilation), then ``--rounds`` calls of ``--steps``
batches (batch 64, ``steps_per_execution`` 4). Reported: warm-up seconds (the first call less the
time its batches take at the steady rate) and tokens/s (scored positions: words and ``<eos>``) of
the median timed call; and per length the ratio of the XLA variants' speed to Keras' loop under
XLA. Single processes, not interleaved rounds: compare large differences only.

Usage::

    python benchmarks/text_lengths.py                               # lengths 10 16 20 24 32 63
    python benchmarks/text_lengths.py --lengths 3 --steps 4 --rounds 1 --hidden 8 --embedding 8   # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

#: variant -> MAX_UNROLLED_STEPS_XLA in the child (None: the library's own) and jit_compile.
VARIANTS = {"no_xla": (None, False), "xla": (None, True), "xla_always_unrolled": ("max", True),
            "xla_keras_loop": (0, True)}
VARIANT_TITLES = {"no_xla": "no XLA", "xla": "XLA (vae-tf)", "xla_always_unrolled": "XLA, always unrolled",
                  "xla_keras_loop": "XLA, Keras' loop"}
VOCABULARY_WORDS = 500
SENTENCES = 2048
BATCH = 64


def corpus(path: Path, length: int, seed: int = 0) -> Path:
    """``SENTENCES`` sentences of exactly ``length`` words from ``VOCABULARY_WORDS``, one per line."""
    import numpy as np

    rng = np.random.default_rng(seed)
    words = np.array([f"w{i}" for i in range(VOCABULARY_WORDS)])
    path.write_text("".join(" ".join(rng.choice(words, size=length)) + "\n" for _ in range(SENTENCES)))
    return path


def measure(args) -> dict:
    """One (length, variant) in this process."""
    import numpy as np

    from vae_tf.networks import unrolled_rnn

    cap, jit = VARIANTS[args.child]
    if cap is not None:
        unrolled_rnn.MAX_UNROLLED_STEPS_XLA = unrolled_rnn.MAX_UNROLLED_STEPS if cap == "max" else cap
    from benchmarks.text_throughput import build_vae_tf
    from vae_tf.data import load_dataset

    data = load_dataset("text_file", path=str(corpus(Path(args.workdir) / "corpus.txt", args.length)), seed=0,
                        val_fraction=0.0, test_fraction=0.0)
    model = build_vae_tf(data, argparse.Namespace(seed=0, latent=args.latent, embedding=args.embedding,
                                                  hidden=args.hidden, steps_per_execution=4), jit_compile=jit)
    stream = data.resumable_pipeline("train", BATCH, seed=0, epochs=10_000)
    start = time.perf_counter()
    model.fit(stream, epochs=1, steps_per_epoch=args.warmup_steps, verbose=0)
    first = time.perf_counter() - start
    seconds = []
    for _ in range(args.rounds):
        start = time.perf_counter()
        model.fit(stream, epochs=1, steps_per_epoch=args.steps, verbose=0)
        seconds.append(time.perf_counter() - start)
    steady = float(np.median(seconds))
    layers = [layer for layer in model._flatten_layers() if isinstance(layer, (unrolled_rnn.LSTM, unrolled_rnn.GRU))]
    return {"length": args.length, "variant": args.child, "jit_compile": bool(model.jit_compile),
            "max_unrolled_steps_xla": unrolled_rnn.MAX_UNROLLED_STEPS_XLA,
            "unrolled": [layer.unrolled_in_training for layer in layers],
            "warmup_seconds": first - steady * args.warmup_steps / args.steps,
            "tokens_per_second": args.steps * BATCH * (args.length + 1) / steady, "steady_seconds": steady}


def render(report: dict) -> str:
    s = report["settings"]
    lines = [f"Command: `{s['command']}`", "",
             f"- Date: {s['date']}; commit {s['commit']}; machine: {s['machine']}; load average "
             f"{', '.join(map(str, s['load_average'] or []))} at the start",
             f"- LSTM {s['hidden']}, embedding {s['embedding']}, latent {s['latent']}, {SENTENCES:,} sentences of L "
             f"words from {VOCABULARY_WORDS}, batch {BATCH}; warm-up: a first call of {s['warmup_steps']} batches; "
             f"speed: median of {s['rounds']} calls of {s['steps']} batches; a fresh process each", "",
             "| L (decoder steps) | variant | unrolled (encoder, decoder) | warm-up s | tokens/s | ÷ XLA, Keras' loop |",
             "|---|---|---|---:|---:|---:|"]
    for length, rows in report["results"].items():
        loop = rows.get("xla_keras_loop", {}).get("tokens_per_second")
        for variant, r in rows.items():
            ratio = f"{r['tokens_per_second'] / loop:.2f}" if loop and variant != "xla_keras_loop" else "–"
            lines.append(f"| {length} ({int(length) + 1}) | {VARIANT_TITLES[variant]} | "
                         f"{', '.join('yes' if u else 'no' for u in r['unrolled'])} | {r['warmup_seconds']:.1f} | "
                         f"{r['tokens_per_second']:,.0f} | {ratio} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    import datetime
    import tempfile

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lengths", type=int, nargs="+", default=[10, 16, 20, 24, 32, 63])
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    p.add_argument("--warmup-steps", type=int, default=4)
    p.add_argument("--steps", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--embedding", type=int, default=128)
    p.add_argument("--latent", type=int, default=16)
    p.add_argument("--json", help="write the report here too")
    p.add_argument("--child", choices=list(VARIANTS), help=argparse.SUPPRESS)
    p.add_argument("--length", type=int, help=argparse.SUPPRESS)
    p.add_argument("--workdir", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    root = str(Path(__file__).resolve().parents[1])
    if root not in sys.path:
        sys.path.insert(0, root)
    if args.child:  # one measurement, printed as the last line of JSON
        from benchmarks.common import start_as_vae_tf_does

        start_as_vae_tf_does()
        print(json.dumps(measure(args)))
        return 0
    if min(args.lengths) < 1 or args.steps < 1 or args.rounds < 1 or args.warmup_steps < 1:
        p.error("--lengths, --steps, --rounds and --warmup-steps must be at least 1")
    from benchmarks import common

    settings = {"command": common.command_line(), "commit": common.git_state()[0], "machine": common.cpu_model(),
                "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "load_average": common.load_average(), **{k: getattr(args, k) for k in
                ("warmup_steps", "steps", "rounds", "hidden", "embedding", "latent")}}
    results: dict[str, dict] = {}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (root, os.environ.get("PYTHONPATH")))),
           "TF_CPP_MIN_LOG_LEVEL": "2"}
    passed = []  # the measurement's settings, handed to every child
    for name in ("warmup_steps", "steps", "rounds", "hidden", "embedding", "latent"):
        passed += ["--" + name.replace("_", "-"), str(getattr(args, name))]
    with tempfile.TemporaryDirectory() as tmp:
        for length in args.lengths:
            for variant in args.variants:
                workdir = Path(tmp) / f"{length}-{variant}"
                workdir.mkdir()
                try:
                    row = common.run_json_child([sys.executable, os.path.abspath(__file__), "--child", variant,
                                                 "--length", str(length), "--workdir", str(workdir), *passed],
                                                env=env, cwd=root)
                except common.ChildFailed as err:
                    print(f"error: L={length} {variant} failed: {err}", file=sys.stderr)
                    return 1
                results.setdefault(str(length), {})[variant] = row
                print(f"L={length} {variant}: warm-up {row['warmup_seconds']:.1f} s, "
                      f"{row['tokens_per_second']:,.0f} tokens/s", file=sys.stderr, flush=True)
    report = {"settings": settings, "results": results}
    print(render(report))
    if args.json:
        common.write_json(Path(args.json), report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
