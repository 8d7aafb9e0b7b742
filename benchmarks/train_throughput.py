"""Training throughput of the vae-tf training step against a bare Keras ``train_step``.

Question answered: how much does our machinery (latent family and likelihood objects built on
TFP distributions, the checkpointed seed stream, the ``beta`` variable, five metric trackers)
cost per training image, compared with the smallest Keras VAE that computes the same loss?

The two variants, in one process, on the same ``tf.data`` pipeline:

- **vae-tf**: ``vae_tf.models.build_vae(...)``, ``compile(Adam(lr), steps_per_execution=S)`` and
  ``fit(pipeline, shuffle=False)``, exactly as ``training/train.py`` does.
- **bare Keras**: a ``keras.Model`` subclass holding an encoder and a decoder built by the same
  builders (``vae_tf.networks``: identical layers and shapes; the weights are copied from the
  vae-tf model just before the timing), whose ``train_step`` writes the loss out in plain TF ops:
  ``z = μ + exp(½ log σ²) ε`` with ``ε`` from ``keras.random.normal`` and a ``SeedGenerator`` (the
  Keras VAE example's idiom), the Bernoulli log-likelihood ``−sigmoid_cross_entropy_with_logits`` summed over data
  dimensions, the analytic Gaussian KL summed over latent dimensions, the mean over the batch, one
  ``keras.metrics.Mean`` loss tracker. Same optimizer, learning rate, ``steps_per_execution``,
  ``jit_compile`` setting and ``fit`` call. Before timing, the script checks that both compute the
  same loss for the same weights, batch and noise.

Method: each configuration's data set is sized so that one epoch lasts at least
``--min-epoch-seconds`` (a calibration epoch of the vae-tf model measures the speed; ``--examples``
sets the size instead), rounded to whole executions (``batch_size x steps_per_execution``) so that
every batch is full. Each model then runs ``--warmup-epochs`` untimed epochs (tracing, tf.data
warm-up). Then ``--rounds`` rounds: in each round both variants run ``fit(epochs=E)``, interleaved,
the order alternating (bare first in odd rounds, vae-tf first in even ones) so that drift in
machine load hits both alike. An epoch is timed from ``on_epoch_begin`` to ``on_epoch_end`` (after
the epoch's metrics have been read back, so the device has finished). A round's images/s is
``E x images per epoch / seconds of its E epochs``. Reported: the median images/s of each variant
over the rounds (with min-max), the median of the per-round ratios vae-tf / bare (with min-max),
and the overhead ``1 / ratio - 1`` (extra time per image). Both variants share the process, so
they share the thread pools (``--intra-op-threads`` / ``--inter-op-threads``, TF's defaults when
not given).

Usage::

    python benchmarks/train_throughput.py                        # conv on synthetic 28x28 and MLP on digits (~3 min)
    python benchmarks/train_throughput.py --arch conv --rounds 7 --json throughput.json
    python benchmarks/train_throughput.py --rounds 1 --epochs-per-round 1 --examples 512   # smoke run

The report on stdout (command, machine, Markdown table) is ready to paste into
``docs/performance.md``; progress goes to stderr.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import datetime  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # `python benchmarks/train_throughput.py` from a plain checkout
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks import common  # noqa: E402

#: The acceptance bound of the issue: vae-tf may cost at most this much extra time per image.
MAX_OVERHEAD = 0.05

#: Configurations run by ``--arch all``; ``--arch NAME`` runs one. ``data`` is the default data set
#: (``--data`` overrides it for every configuration).
CONFIGS = {
    "conv": {
        "title": "conv 32/64 + dense 256, latent 16",
        "data": "synthetic28",
        "latent": {"family": "gaussian", "latent_dim": 16},
        "network": {"kind": "conv", "filters": [32, 64], "dense": 256},
    },
    "mlp": {
        "title": "MLP 256/128, latent 8",
        "data": "digits",
        "latent": {"family": "gaussian", "latent_dim": 8},
        "network": {"kind": "mlp", "hidden": [256, 128]},
    },
}
DATA_TITLES = {"synthetic28": "synthetic 28x28x1 uniform [0, 1]", "digits": "digits 8x8x1 (tiled)"}
LIKELIHOOD = {"name": "bernoulli"}
LOG_VAR_CLIP = 20.0  # GaussianLatent's default clip of log σ²; the bare loss applies it too


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- data ---------------------------------------------------------------------------------------
def make_splits(data: str, n_examples: int, seed: int):
    """A ``DataSplits`` whose training split has exactly ``n_examples`` examples."""
    import numpy as np

    from vae_tf.data import DataSplits, load_dataset

    if data == "digits":
        base = load_dataset("digits", seed=seed)
        reps = math.ceil(n_examples / len(base.x_train))
        x = np.concatenate([base.x_train] * reps)[:n_examples]
        return dataclasses.replace(base, x_train=x, y_train=None)
    if data == "synthetic28":
        x = np.random.default_rng(seed).random((n_examples, 28, 28, 1), dtype=np.float32)
        return DataSplits(name="synthetic28", x_train=x, x_val=x[:0], x_test=x[:0], value_range=(0.0, 1.0))
    raise ValueError(f"unknown data set {data!r}")


def data_shape_of(data: str, seed: int) -> tuple[int, ...]:
    return make_splits(data, 1, seed).data_shape


# --- the two variants -----------------------------------------------------------------------------
def build_ours(spec: dict, data_shape, args):
    import keras

    from vae_tf.models import build_vae

    model = build_vae(data_shape, latent=dict(spec["latent"]), likelihood=dict(LIKELIHOOD),
                      network=dict(spec["network"]), objective={"name": "elbo", "beta": 1.0},
                      seed=args.seed, name="vae")
    model.compile(optimizer=keras.optimizers.Adam(args.learning_rate),
                  steps_per_execution=args.steps_per_execution, jit_compile=args.jit_compile)
    return model


def make_bare_class():
    import keras
    import tensorflow as tf

    class BareVAE(keras.Model):
        """The smallest Keras VAE with the vae-tf ELBO (β = 1): plain TF ops, one loss tracker."""

        def __init__(self, encoder, decoder, latent_dim: int, data_rank: int, seed=None, **kwargs):
            super().__init__(**kwargs)
            self.encoder = encoder
            self.decoder = decoder
            self.latent_dim = int(latent_dim)
            self.data_axes = list(range(1, 1 + int(data_rank)))
            self.seed_generator = keras.random.SeedGenerator(seed)
            self.loss_tracker = keras.metrics.Mean(name="loss")

        @property
        def metrics(self):
            return [self.loss_tracker]

        def loss_for(self, x, eps, training=True):
            """−mean_batch(Σ_data log Bernoulli(x | logits) − Σ_latent KL(N(μ, σ²) ‖ N(0, 1)))."""
            mean, log_var = tf.split(self.encoder(x, training=training), 2, axis=-1)
            log_var = tf.clip_by_value(log_var, -LOG_VAR_CLIP, LOG_VAR_CLIP)
            z = mean + tf.exp(0.5 * log_var) * eps
            logits = self.decoder(z, training=training)
            reconstruction = -tf.reduce_sum(
                tf.nn.sigmoid_cross_entropy_with_logits(labels=x, logits=logits), axis=self.data_axes)
            kl = 0.5 * tf.reduce_sum(tf.square(mean) + tf.exp(log_var) - log_var - 1.0, axis=-1)
            return -tf.reduce_mean(reconstruction - kl)

        def train_step(self, data):
            x = data[0] if isinstance(data, (tuple, list)) else data
            eps = keras.random.normal((tf.shape(x)[0], self.latent_dim), seed=self.seed_generator)
            with tf.GradientTape() as tape:
                loss = self.loss_for(x, eps)
            grads = tape.gradient(loss, self.trainable_variables)
            self.optimizer.apply_gradients(zip(grads, self.trainable_variables))
            self.loss_tracker.update_state(loss)
            return {"loss": self.loss_tracker.result()}

        def call(self, x, training=False):
            mean, _ = tf.split(self.encoder(x, training=training), 2, axis=-1)
            return tf.sigmoid(self.decoder(mean, training=training))

    return BareVAE


def build_bare(spec: dict, data_shape, ours, args):
    import keras
    import numpy as np

    from vae_tf.networks import build_decoder, build_encoder

    network = dict(spec["network"])
    kind = network.pop("kind")
    latent_dim = int(spec["latent"]["latent_dim"])
    encoder = build_encoder(kind, data_shape, 2 * latent_dim, **network)
    decoder = build_decoder(kind, latent_dim, data_shape, data_shape[-1], **network)
    # Same architecture (the same starting weights are copied in before the timing).
    for mine, theirs in ((encoder, ours.encoder), (decoder, ours.decoder)):
        got = [tuple(w.shape) for w in mine.weights]
        want = [tuple(w.shape) for w in theirs.weights]
        if got != want:
            raise SystemExit(f"bare {mine.name} weights {got} differ from vae-tf's {want}")
    model = make_bare_class()(encoder, decoder, latent_dim, len(data_shape), seed=args.seed, name="bare_vae")
    model(np.zeros((1,) + tuple(data_shape), np.float32))
    model.compile(optimizer=keras.optimizers.Adam(args.learning_rate),
                  steps_per_execution=args.steps_per_execution, jit_compile=args.jit_compile)
    return model


def copy_weights(bare, ours) -> None:
    """Start the bare model from the vae-tf model's current encoder and decoder weights."""
    bare.encoder.set_weights(ours.encoder.get_weights())
    bare.decoder.set_weights(ours.decoder.get_weights())


def check_same_loss(ours, bare, splits, args) -> float:
    """Largest relative difference between the two losses on one batch, same weights and noise."""
    import numpy as np
    import tensorflow as tf

    x = tf.constant(splits.x_train[: args.batch_size])
    eps = tf.random.stateless_normal((x.shape[0], ours.latent.code_size), seed=[args.seed, 1])
    params = ours.encoder(x, training=True)
    mean, log_var = ours.latent.split(params)
    z = mean + tf.exp(0.5 * log_var) * eps  # the reparameterisation GaussianLatent.sample draws
    reconstruction = ours.likelihood.log_prob(x, ours.decoder(z, training=True))
    kl = tf.reduce_sum(ours.latent.kl_per_dim(params, z), axis=-1)
    ours_loss = float(ours.objective_loss({"reconstruction": reconstruction, "kl": kl}))
    bare_loss = float(bare.loss_for(x, eps))
    rel = abs(ours_loss - bare_loss) / max(1.0, abs(ours_loss))
    if not np.isfinite(rel) or rel > 1e-4:
        raise SystemExit(f"the two variants compute different losses: vae-tf {ours_loss!r}, bare {bare_loss!r}")
    return rel


# --- timing -------------------------------------------------------------------------------------
def make_timer():
    import keras
    import numpy as np

    class EpochTimer(keras.callbacks.Callback):
        """Wall time of each epoch, ended after the epoch's logs are on the host."""

        def __init__(self):
            super().__init__()
            self.seconds: list[float] = []
            self.logs: list[dict] = []
            self._start = 0.0

        def on_epoch_begin(self, epoch, logs=None):
            self._start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            values = {k: np.asarray(v) for k, v in (logs or {}).items()}  # waits for the device
            self.seconds.append(time.perf_counter() - self._start)
            self.logs.append({k: float(v) for k, v in values.items() if v.size == 1})

    return EpochTimer()


def trainable_count(model) -> int:
    return int(sum(math.prod(w.shape) for w in model.trainable_weights))


def timed_fit(model, ds, epochs: int):
    timer = make_timer()
    gc.collect()
    model.fit(ds, epochs=epochs, verbose=0, shuffle=False, callbacks=[timer])
    return timer


def run_config(name: str, args) -> dict:
    import keras

    spec = CONFIGS[name]
    data = args.data or spec["data"]
    unit = args.batch_size * args.steps_per_execution  # images per execution: keeps batches full
    keras.utils.set_random_seed(args.seed)
    data_shape = data_shape_of(data, args.seed)
    ours = build_ours(spec, data_shape, args)
    bare = build_bare(spec, data_shape, ours, args)
    log(f"[{name}] data {data} {data_shape}, trainable parameters vae-tf {trainable_count(ours):,} "
        f"bare {trainable_count(bare):,}; jit_compile vae-tf={ours.jit_compile} bare={bare.jit_compile}")

    if args.examples:
        n_examples = max(unit, math.ceil(args.examples / unit) * unit)
    else:  # calibrate on the vae-tf model: trace on a small set, then time one epoch of it
        n_cal = unit * max(1, math.ceil(args.calibration_steps / args.steps_per_execution))
        cal_ds = make_splits(data, n_cal, args.seed).pipeline("train", args.batch_size, seed=args.seed)
        ours.fit(cal_ds, epochs=1, verbose=0, shuffle=False)
        cal_s = timed_fit(ours, cal_ds, 1).seconds[0]
        wanted = args.min_epoch_seconds * 1.25 * n_cal / cal_s
        n_examples = max(n_cal, math.ceil(wanted / unit) * unit)
        log(f"[{name}] calibration: {n_cal / cal_s:,.0f} images/s -> {n_examples:,} images per epoch")

    splits = make_splits(data, n_examples, args.seed)
    ds = splits.pipeline("train", args.batch_size, seed=args.seed)  # what training/train.py fits on
    copy_weights(bare, ours)  # after the calibration, which trained the vae-tf model a little
    loss_rel_diff = check_same_loss(ours, bare, splits, args)
    log(f"[{name}] same loss on one batch (same weights and noise): relative difference {loss_rel_diff:.1e}")

    variants = {"bare": bare, "vae_tf": ours}
    for label, model in variants.items():
        warm = timed_fit(model, ds, args.warmup_epochs)
        log(f"[{name}] warm-up {label}: {', '.join(f'{s:.2f}' for s in warm.seconds)} s")

    rounds = []
    for r in range(args.rounds):
        order = ["bare", "vae_tf"] if r % 2 == 0 else ["vae_tf", "bare"]
        row = {"order": order}
        for label in order:
            timer = timed_fit(variants[label], ds, args.epochs_per_round)
            seconds = sum(timer.seconds)
            row[label] = {"images_per_s": args.epochs_per_round * n_examples / seconds,
                          "epoch_seconds": timer.seconds, "final_loss": timer.logs[-1].get("loss")}
        row["ratio"] = row["vae_tf"]["images_per_s"] / row["bare"]["images_per_s"]
        rounds.append(row)
        log(f"[{name}] round {r + 1}/{args.rounds}: bare {row['bare']['images_per_s']:,.0f} img/s, "
            f"vae-tf {row['vae_tf']['images_per_s']:,.0f} img/s, ratio {row['ratio']:.3f}")

    def summary(values):
        return {"median": statistics.median(values), "min": min(values), "max": max(values)}

    ratio = summary([row["ratio"] for row in rounds])
    # On a shared machine other tenants only ever slow a round down, so the fastest round of each
    # variant is the least disturbed estimate of its speed; the verdict uses the ratio of bests.
    best = {label: max(row[label]["images_per_s"] for row in rounds) for label in ("bare", "vae_tf")}
    best_ratio = best["vae_tf"] / best["bare"]
    overhead = 1.0 / best_ratio - 1.0
    return {
        "config": name,
        "title": spec["title"],
        "data": data,
        "data_shape": list(data_shape),
        "latent": spec["latent"],
        "network": spec["network"],
        "likelihood": LIKELIHOOD,
        "trainable_parameters": trainable_count(ours),
        "batch_size": args.batch_size,
        "steps_per_execution": args.steps_per_execution,
        "images_per_epoch": n_examples,
        "epochs_per_round": args.epochs_per_round,
        "jit_compile": {"vae_tf": bool(ours.jit_compile), "bare": bool(bare.jit_compile)},
        "loss_check_relative_difference": loss_rel_diff,
        "bare_images_per_s": summary([row["bare"]["images_per_s"] for row in rounds]),
        "vae_tf_images_per_s": summary([row["vae_tf"]["images_per_s"] for row in rounds]),
        "ratio_vae_tf_over_bare": ratio,
        "best_images_per_s": best,
        "best_ratio": best_ratio,
        "overhead": overhead,
        "within_bound": overhead <= MAX_OVERHEAD,
        "rounds": rounds,
    }


# --- report -------------------------------------------------------------------------------------
def machine_info(args) -> dict:
    import keras
    import tensorflow as tf
    import tensorflow_probability as tfp

    gpus = [tf.config.experimental.get_device_details(gpu).get("device_name", gpu.name)
            for gpu in tf.config.list_physical_devices("GPU")]
    return {**common.machine_info(), "gpus": gpus, "tensorflow": tf.__version__, "keras": keras.__version__,
            "tensorflow_probability": tfp.__version__,
            "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
            "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads()}


command_line = common.command_line


def render(report: dict) -> str:
    m = report["machine"]
    threads = ", ".join(f"{k} {m[k + '_op_threads'] or 'TF default'}" for k in ("intra", "inter"))
    commit = m["git_commit"] or "unknown"
    if m["git_dirty"]:
        commit += " + uncommitted changes"
    lines = [
        f"Command: `{report['command']}`",
        "",
        f"- Date: {report['date']}; commit {commit}",
        f"- Machine: {m['cpu']}, {m['cpu_count']} CPUs ({m['cpus_usable']} usable), "
        f"GPU: {', '.join(m['gpus']) or 'none'}; {m['platform']}",
        f"- Software: Python {m['python']}, TensorFlow {m['tensorflow']}, Keras {m['keras']}, "
        f"TFP {m['tensorflow_probability']}; threads: {threads}",
        f"- Method: {report['settings']['warmup_epochs']} warm-up epoch(s) per model excluded; "
        f"{report['settings']['rounds']} rounds x {report['settings']['epochs_per_round']} epoch(s) per "
        "variant, interleaved (order alternating); img/s: median over rounds (min-max); per-round ratio: "
        "median (min-max) of vae-tf / bare in the same round; best ratio = fastest vae-tf round / fastest bare "
        "round (the least disturbed estimate on a shared machine); overhead = 1 / best ratio - 1; Adam, same "
        "starting weights, same tf.data pipeline.",
        "",
        "| Configuration | Data | Batch | Steps/exec | XLA | Images/epoch | Bare Keras img/s | vae-tf img/s "
        "| per-round ratio | best ratio | Overhead | ≤ 5 % |",
        "|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in report["results"]:
        b, o, q = r["bare_images_per_s"], r["vae_tf_images_per_s"], r["ratio_vae_tf_over_bare"]
        jit = r["jit_compile"]
        xla = "on" if jit["vae_tf"] and jit["bare"] else "off" if not (jit["vae_tf"] or jit["bare"]) else \
            f"vae-tf {jit['vae_tf']}, bare {jit['bare']}"
        lines.append(
            f"| {r['title']} | {DATA_TITLES[r['data']]} | {r['batch_size']} | {r['steps_per_execution']} | {xla} "
            f"| {r['images_per_epoch']:,} "
            f"| {b['median']:,.0f} ({b['min']:,.0f}–{b['max']:,.0f}) "
            f"| {o['median']:,.0f} ({o['min']:,.0f}–{o['max']:,.0f}) "
            f"| {q['median']:.3f} ({q['min']:.3f}–{q['max']:.3f}) | {r['best_ratio']:.3f} "
            f"| {100 * r['overhead']:+.1f} % | {'yes' if r['within_bound'] else '**no**'} |"
        )
    return "\n".join(lines)


# --- command line ---------------------------------------------------------------------------------
def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--arch", choices=["all", *CONFIGS], default="all",
                   help="configuration: conv (synthetic 28x28), mlp (digits), or all of them")
    p.add_argument("--data", choices=sorted(DATA_TITLES), default=None,
                   help="data set for every configuration (None: conv -> synthetic28, mlp -> digits)")
    p.add_argument("--batch-size", type=positive_int, default=128, help="batch size of both variants")
    p.add_argument("--steps-per-execution", type=positive_int, default=4,
                   help="compile(steps_per_execution=...) of both variants")
    p.add_argument("--rounds", type=positive_int, default=25, help="interleaved rounds (bare, vae-tf)")
    p.add_argument("--epochs-per-round", type=positive_int, default=1, help="timed epochs per variant per round")
    p.add_argument("--warmup-epochs", type=positive_int, default=1, help="untimed epochs per model before the rounds")
    p.add_argument("--min-epoch-seconds", type=float, default=0.6,
                   help="size each data set so that one epoch lasts at least this long (calibrated)")
    p.add_argument("--examples", type=positive_int, default=None,
                   help="images per epoch (skips the calibration; rounded up to batch x steps/exec)")
    p.add_argument("--calibration-steps", type=positive_int, default=32,
                   help="training steps of the calibration epoch")
    p.add_argument("--learning-rate", type=float, default=1e-3, help="Adam learning rate of both variants")
    p.add_argument("--jit-compile", choices=["auto", "true", "false"], default="auto",
                   help="compile(jit_compile=...) for both variants; auto is Keras' default (XLA on GPU only)")
    p.add_argument("--intra-op-threads", type=int, default=None,
                   help="TF intra-op threads for both variants (None: TF's default)")
    p.add_argument("--inter-op-threads", type=int, default=None,
                   help="TF inter-op threads for both variants (None: TF's default)")
    p.add_argument("--seed", type=int, default=0, help="seed of weights, data and noise")
    p.add_argument("--json", type=Path, default=None, help="also write the full results (every round) here")
    p.add_argument("--fail-over-bound", action="store_true",
                   help=f"exit with status 1 when an overhead exceeds {100 * MAX_OVERHEAD:g} %% "
                        "(otherwise the exit status is 0)")
    args = p.parse_args(argv)
    args.jit_compile = {"auto": "auto", "true": True, "false": False}[args.jit_compile]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    import tensorflow as tf

    # Set before any op runs; both variants share the process and therefore these pools.
    if args.intra_op_threads is not None:
        tf.config.threading.set_intra_op_parallelism_threads(args.intra_op_threads)
    if args.inter_op_threads is not None:
        tf.config.threading.set_inter_op_parallelism_threads(args.inter_op_threads)

    names = list(CONFIGS) if args.arch == "all" else [args.arch]
    report = {
        "command": command_line(),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine_info(args),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "max_overhead": MAX_OVERHEAD,
        "results": [run_config(name, args) for name in names],
    }
    print(render(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        log(f"wrote {args.json}")
    if args.fail_over_bound and not all(r["within_bound"] for r in report["results"]):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
