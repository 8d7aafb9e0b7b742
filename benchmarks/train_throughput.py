"""Training throughput of vae-tf against a bare Keras ``train_step`` and a PyTorch eager loop.

Questions answered: how much does our machinery (latent family and likelihood objects built on
TFP distributions, the checkpointed seed stream, the ``beta`` variable, five metric trackers)
cost per training image, compared with the smallest Keras VAE that computes the same loss? How
does vae-tf compare with the same VAE written in PyTorch eager, and what fraction of the
machine's fp32 matmul peak does training reach (issue #10's targets: >= 1.15x PyTorch eager,
>= 0.95x bare Keras, >= 40 % of the peak on the conv reference architecture)?

The variants, in one process:

- **vae-tf**: ``vae_tf.models.build_vae(...)``, ``compile(FusedAdam(lr), steps_per_execution=S)``
  (``vae_tf.optimizers.FusedAdam``: Keras' Adam with TensorFlow's fused update kernel) and
  ``fit`` on ``DataSplits.resumable_pipeline`` with ``steps_per_epoch``, exactly as
  ``training/train.py`` does.
- **bare Keras**: a ``keras.Model`` subclass holding an encoder and a decoder built by the same
  builders (``vae_tf.networks``: identical layers and shapes; the weights are copied from the
  vae-tf model just before the timing), whose ``train_step`` writes the loss out in plain TF ops:
  ``z = μ + exp(½ log σ²) ε`` with ``ε`` from ``keras.random.normal`` and a ``SeedGenerator`` (the
  Keras VAE example's idiom), the Bernoulli log-likelihood ``−sigmoid_cross_entropy_with_logits`` summed over data
  dimensions, the analytic Gaussian KL summed over latent dimensions, the mean over the batch, one
  ``keras.metrics.Mean`` loss tracker. Same optimizer, learning rate, ``steps_per_execution``,
  ``jit_compile`` setting and ``fit`` call. Before timing, the script checks that both compute the
  same loss for the same (random) weights, batch and noise. Its optimizer is Keras' own
  ``keras.optimizers.Adam`` (what a Keras user writes); ``--bare-optimizer fused`` gives it
  vae-tf's ``FusedAdam`` instead, so that the ratio isolates the cost of vae-tf's machinery
  from the gain of the fused update.
- **PyTorch eager** (conv only, when ``torch`` is installed: the optional ``bench`` extra;
  otherwise a one-line notice and the other two still run): ``benchmarks/torch_reference.py``,
  the same layers, parameter count (checked), starting weights (copied from the bare model),
  loss and Adam settings (Keras' ε = 1e-7), the same in-memory images reshuffled every epoch,
  batch 128; ``channels_last`` memory format and the fused Adam by default
  (``--torch-channels-last``, ``--torch-adam``, ``--torch-padding``). Before timing, the
  Keras-exact padding variant with the Keras weights must give the Keras loss on one batch.
- **matmul** (``--matmul-size``, default 2048; 0 turns it off): the fp32 ``tf.matmul`` peak of
  the moment, best of ``--matmul-repeats`` products, timed as one more interleaved variant each
  round; efficiency = images/s x training FLOPs per image (``benchmarks/flops.py``) / that peak.

Threads: ``--threads N`` (default: one per usable CPU) gives TensorFlow N intra-op and N
inter-op threads and PyTorch ``set_num_threads(N)`` / ``set_num_interop_threads(N)``; the
report states them.

Method: each configuration's data set is sized so that one epoch lasts at least
``--min-epoch-seconds`` (a calibration epoch of the vae-tf model measures the speed; ``--examples``
sets the size instead), rounded to whole executions (``batch_size x steps_per_execution``) so that
every batch is full. Each model then runs ``--warmup-epochs`` untimed epochs (tracing, tf.data
warm-up). Then ``--rounds`` rounds: in each round every variant runs E epochs, interleaved, the
order rotating each round (and reversed every other cycle) so that drift in machine load hits
all alike. An epoch is timed from ``on_epoch_begin`` to ``on_epoch_end`` (after
the epoch's metrics have been read back, so the device has finished). A round's images/s is
``E x images per epoch / seconds of its E epochs``. Reported: the median images/s of each variant
over the rounds (with min-max), the median of the per-round ratios vae-tf / bare (with min-max),
and the overhead ``1 / ratio - 1`` (extra time per image); the same for vae-tf / PyTorch; the
fastest round of each variant ("best": other tenants of a shared machine only ever slow a round
down) and the ratios of the bests, which the verdicts use.

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
import contextlib  # noqa: E402
import dataclasses  # noqa: E402
import datetime  # noqa: E402
import gc  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # `python benchmarks/train_throughput.py` from a plain checkout
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks import common  # noqa: E402
from benchmarks.common import summary  # noqa: E402

#: The acceptance bound of the issue: vae-tf may cost at most this much extra time per image.
MAX_OVERHEAD = 0.05
#: Targets of issue #10 (conv reference architecture): vae-tf images/s at least this many times
#: the PyTorch eager reference's and the bare Keras loop's, and training FLOP/s at least this
#: fraction of the measured fp32 matmul peak.
MIN_RATIO_TORCH = 1.15
MIN_RATIO_BARE = 0.95
MIN_EFFICIENCY = 0.40
#: A round counts as quiet when its matmul probe reached this fraction of the run's best.
QUIET_MATMUL = 0.95
#: Issue #20: the trainers a user would pick instead (conv reference architecture), and the
#: images/s vae-tf must reach as a multiple of each (the eager loop keeps issue #10's target).
PEER_TITLES = {"torch_compile": "PyTorch torch.compile", "pythae": "pythae BaseTrainer"}
MIN_RATIO_PEERS = {"torch": MIN_RATIO_TORCH, "torch_compile": 1.5, "pythae": 1.5}

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


def torch_arch(spec: dict) -> dict:
    """The PyTorch references' architecture arguments (``filters``, ``dense``) of a conv entry of
    :data:`CONFIGS` (benchmarks/torch_reference.py, benchmarks/pythae_reference.py)."""
    return {"filters": tuple(spec["network"]["filters"]), "dense": spec["network"]["dense"]}


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
    from vae_tf.models import build_vae
    from vae_tf.optimizers import FusedAdam

    model = build_vae(data_shape, latent=dict(spec["latent"]), likelihood=dict(LIKELIHOOD),
                      network=dict(spec["network"]), objective={"kl_weight": {"kind": "constant", "beta": 1.0}},
                      seed=args.seed, name="vae", precision=getattr(args, "precision", "float32"))
    model.compile(optimizer=FusedAdam(args.learning_rate),
                  steps_per_execution=args.steps_per_execution, jit_compile=args.jit_compile)
    return model


def bare_elbo_loss(encoder, decoder, x, eps, training=True):
    """The bare loop's loss in plain TF ops: −mean_batch(Σ_data log Bernoulli(x | logits) −
    Σ_latent KL(N(μ, σ²) ‖ N(0, 1))), with z = μ + exp(½ log σ²) ε."""
    import tensorflow as tf

    mean, log_var = tf.split(encoder(x, training=training), 2, axis=-1)
    log_var = tf.clip_by_value(log_var, -LOG_VAR_CLIP, LOG_VAR_CLIP)
    z = mean + tf.exp(0.5 * log_var) * eps
    logits = decoder(z, training=training)
    data_axes = list(range(1, len(x.shape)))
    reconstruction = -tf.reduce_sum(tf.nn.sigmoid_cross_entropy_with_logits(labels=x, logits=logits), axis=data_axes)
    kl = 0.5 * tf.reduce_sum(tf.square(mean) + tf.exp(log_var) - log_var - 1.0, axis=-1)
    return -tf.reduce_mean(reconstruction - kl)


def make_bare_class():
    import keras
    import tensorflow as tf

    class BareVAE(keras.Model):
        """The smallest Keras VAE with the vae-tf ELBO (β = 1): plain TF ops, one loss tracker."""

        def __init__(self, encoder, decoder, latent_dim: int, seed=None, **kwargs):
            super().__init__(**kwargs)
            self.encoder = encoder
            self.decoder = decoder
            self.latent_dim = int(latent_dim)
            self.seed_generator = keras.random.SeedGenerator(seed)
            self.loss_tracker = keras.metrics.Mean(name="loss")

        @property
        def metrics(self):
            return [self.loss_tracker]

        def loss_for(self, x, eps, training=True):
            return bare_elbo_loss(self.encoder, self.decoder, x, eps, training=training)

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
    from vae_tf.optimizers import FusedAdam

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
    model = make_bare_class()(encoder, decoder, latent_dim, seed=args.seed, name="bare_vae")
    model(np.zeros((1,) + tuple(data_shape), np.float32))
    optimizer = FusedAdam if args.bare_optimizer == "fused" else keras.optimizers.Adam
    model.compile(optimizer=optimizer(args.learning_rate),
                  steps_per_execution=args.steps_per_execution, jit_compile=args.jit_compile)
    return model


def copy_weights(bare, ours) -> None:
    """Start the bare model from the vae-tf model's current encoder and decoder weights."""
    bare.encoder.set_weights(ours.encoder.get_weights())
    bare.decoder.set_weights(ours.decoder.get_weights())


@contextlib.contextmanager
def strict_float32(torch=None):
    """Float32 matmuls and convolutions in full float32 while the loss checks run. On a GPU with
    TF32 (Ampere and later) both frameworks would otherwise round their inputs to a 10-bit mantissa,
    by default (TensorFlow) or as this script asks (PyTorch, ``setup_threads``), and that rounding
    alone can move a loss by more than the checks' 1e-4: the checks are for the architecture, not
    for TF32. The timed runs keep TF32. On a CPU nothing changes."""
    import tensorflow as tf

    tf_tf32 = tf.config.experimental.tensor_float_32_execution_enabled()
    tf.config.experimental.enable_tensor_float_32_execution(False)
    torch_tf32 = None
    if torch is not None:
        torch_tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        tf.config.experimental.enable_tensor_float_32_execution(tf_tf32)
        if torch_tf32 is not None:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = torch_tf32


@contextlib.contextmanager
def random_weights(model, seed: int):
    """Every trainable weight of ``model`` redrawn from N(0, 0.05²) inside the block, restored after.
    The builders zero-initialise the output layers, so with the starting weights every model
    computes the same constant loss (784 log 2) and a loss comparison would prove nothing."""
    import numpy as np

    saved = [v.numpy() for v in model.trainable_weights]
    rng = np.random.default_rng(seed)
    for v in model.trainable_weights:
        v.assign(rng.normal(0.0, 0.05, tuple(v.shape)).astype(np.float32))
    try:
        yield model
    finally:
        for v, value in zip(model.trainable_weights, saved):
            v.assign(value)


def check_same_loss(ours, bare, splits, args) -> float:
    """Largest relative difference between the two losses on one batch, same (random) weights and
    noise; leaves both models with ``ours``' weights."""
    with random_weights(ours, args.seed):
        copy_weights(bare, ours)
        rel = _loss_difference(ours, bare, splits, args)
    copy_weights(bare, ours)
    return rel


def _loss_difference(ours, bare, splits, args) -> float:
    import numpy as np
    import tensorflow as tf

    x = tf.constant(splits.x_train[: args.batch_size])
    eps = tf.random.stateless_normal((x.shape[0], ours.latent.code_size), seed=[args.seed, 1])
    params = ours.encoder(x, training=True)
    mean, log_var = ours.latent.split(params)
    z = mean + tf.exp(0.5 * log_var) * eps  # the reparameterisation GaussianLatent.sample draws
    reconstruction = ours.likelihood.log_prob(x, ours.decoder(z, training=True))
    kl = tf.reduce_sum(ours.latent.kl_per_dim(params, z), axis=-1)
    ours_loss = float(-tf.reduce_mean(reconstruction) + ours.kl_weight.penalty(kl, ours.kl_weight.initial_beta(),
                                                                                 ours.train_steps))
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


def training_stream(splits, batch_size: int, seed: int, passes: int = 10_000):
    """What ``training/train.py`` fits on: ``DataSplits.resumable_pipeline``, one stream of batches
    over ``passes`` passes (lazily: a pass costs nothing until it is read), and the batches per
    pass, to give ``fit`` as ``steps_per_epoch``. Every ``fit`` call starts a new iterator."""
    return (splits.resumable_pipeline("train", batch_size, seed=seed, epochs=passes),
            splits.steps_per_epoch("train", batch_size))


def timed_fit(model, stream, epochs: int):
    """Fit ``epochs`` epochs on ``stream`` (``training_stream``'s pair), timing each."""
    ds, steps = stream
    timer = make_timer()
    gc.collect()
    model.fit(ds, epochs=epochs, steps_per_epoch=steps, verbose=0, shuffle=False, callbacks=[timer])
    return timer


def torch_variant(name: str, splits, bare, args):
    """The PyTorch eager trainer of ``name`` (conv only), started from the bare model's weights,
    after checking that PyTorch computes the same loss; ``(trainer, info)`` or ``(None, reason)``."""
    if args.torch is None:
        return None, args.torch_missing
    if name != "conv":
        return None, "the PyTorch reference exists for the conv architecture only"
    import numpy as np
    import tensorflow as tf

    from benchmarks import torch_reference as ref

    torch = args.torch
    spec = CONFIGS[name]
    shape = splits.data_shape
    arch = torch_arch(spec)
    latent_dim = int(spec["latent"]["latent_dim"])
    # 1. The same function: the Keras-exact padding variant with the bare weights, same batch and noise.
    exact = ref.build_model(torch, shape, latent_dim=latent_dim, padding="tf", **arch)
    x = splits.x_train[: args.batch_size]
    eps = np.random.default_rng(args.seed).standard_normal((len(x), latent_dim)).astype(np.float32)
    with random_weights(bare, args.seed + 1):
        ref.copy_keras_weights(torch, exact, bare.encoder, bare.decoder)
        keras_loss = float(bare.loss_for(tf.constant(x), tf.constant(eps)))
        with torch.no_grad():
            torch_loss = float(exact.loss(ref.nchw(torch, x), torch.from_numpy(eps)))
    rel = abs(keras_loss - torch_loss) / max(1.0, abs(keras_loss))
    if not np.isfinite(rel) or rel > 1e-4:
        raise SystemExit(f"PyTorch and Keras compute different losses: {torch_loss!r} vs {keras_loss!r}")
    # 2. The timed trainer (--torch-padding; idiomatic by default), from the same starting weights.
    trainer = ref.TorchTrainer(torch, splits.x_train, args.batch_size, latent_dim=latent_dim,
                               learning_rate=args.learning_rate, channels_last=args.torch_channels_last,
                               adam=args.torch_adam, padding=args.torch_padding, seed=args.seed,
                               device=args.torch_device, **arch)
    ref.copy_keras_weights(torch, trainer.model, bare.encoder, bare.decoder)
    info = {"trainable_parameters": ref.parameter_count(trainer.model), "loss_check_relative_difference": rel,
            "loss_check": {"keras": keras_loss, "torch": torch_loss},
            **trainer.settings}
    return trainer, info


def compiled_variant(name: str, splits, bare, eager, args):
    """The PyTorch trainer of ``eager``'s settings with its loss under ``torch.compile``, from the
    same starting weights; ``(trainer, info)`` or ``(None, reason)``. Its first call (the
    compilation) is the check: the compiled loss equals the eager one on one batch, same noise."""
    if eager is None:
        return None, "no PyTorch eager reference"
    if args.no_torch_compile:
        return None, "--no-torch-compile"
    import numpy as np

    from benchmarks import torch_reference as ref

    torch = args.torch
    spec = CONFIGS[name]
    arch = torch_arch(spec)
    latent_dim = int(spec["latent"]["latent_dim"])
    trainer = ref.TorchTrainer(torch, splits.x_train, args.batch_size, latent_dim=latent_dim,
                               learning_rate=args.learning_rate, channels_last=args.torch_channels_last,
                               adam=args.torch_adam, padding=args.torch_padding, seed=args.seed,
                               compile_backend=args.torch_compile_backend, compile_mode=args.torch_compile_mode,
                               device=args.torch_device, **arch)
    ref.copy_keras_weights(torch, trainer.model, bare.encoder, bare.decoder)
    xb = eager.x[: args.batch_size]
    eps = torch.from_numpy(np.random.default_rng(args.seed).standard_normal((len(xb), latent_dim))
                           .astype(np.float32)).to(args.torch_device)
    start = time.perf_counter()
    compiled_loss = float(trainer.loss(xb, eps).detach())  # grad mode on, as in training: one compilation
    compile_seconds = time.perf_counter() - start
    eager_loss = float(eager.model.loss(xb, eps))
    rel = abs(compiled_loss - eager_loss) / max(1.0, abs(eager_loss))
    if not np.isfinite(rel) or rel > 1e-4:
        raise SystemExit(f"torch.compile changed the loss: {compiled_loss!r} vs eager {eager_loss!r}")
    return trainer, {"trainable_parameters": ref.parameter_count(trainer.model), "loss_check_relative_difference": rel,
                     "loss_check": {"eager": eager_loss, "compiled": compiled_loss},
                     "first_call_seconds": compile_seconds, **trainer.settings}


def pythae_variant(name: str, splits, bare, args):
    """pythae's ``BaseTrainer`` on the same architecture (benchmarks/pythae_reference.py), from the
    same starting weights, after checking that pythae's loss function gives the Keras loss (the
    Keras-exact padding variant with the bare model's random weights, same batch and noise);
    ``(trainer, info)`` or ``(None, reason)``."""
    if args.pythae is None:
        return None, args.pythae_missing
    if name != "conv":
        return None, "the pythae reference exists for the conv architecture only"
    import numpy as np
    import tensorflow as tf

    from benchmarks import pythae_reference as pyref
    from benchmarks import torch_reference as ref

    torch = args.torch
    spec = CONFIGS[name]
    shape = splits.data_shape
    arch = torch_arch(spec)
    latent_dim = int(spec["latent"]["latent_dim"])
    exact, exact_net = pyref.build_model(torch, shape, latent_dim=latent_dim, padding="tf", **arch)
    x = splits.x_train[: args.batch_size]
    eps = np.random.default_rng(args.seed).standard_normal((len(x), latent_dim)).astype(np.float32)
    with random_weights(bare, args.seed + 2):
        ref.copy_keras_weights(torch, exact_net, bare.encoder, bare.decoder)
        keras_loss = float(bare.loss_for(tf.constant(x), tf.constant(eps)))
        with torch.no_grad():
            pythae_loss = float(pyref.loss_with_noise(exact, ref.nchw(torch, x), torch.from_numpy(eps)))
    rel = abs(keras_loss - pythae_loss) / max(1.0, abs(keras_loss))
    if not np.isfinite(rel) or rel > 1e-4:
        raise SystemExit(f"pythae and Keras compute different losses: {pythae_loss!r} vs {keras_loss!r}")
    trainer = pyref.PythaeTrainer(torch, splits.x_train, args.batch_size, workdir=args.pythae_workdir,
                                  latent_dim=latent_dim, learning_rate=args.learning_rate, seed=args.seed, **arch)
    ref.copy_keras_weights(torch, trainer.net, bare.encoder, bare.decoder)
    return trainer, {"trainable_parameters": ref.parameter_count(trainer.model), "loss_check_relative_difference": rel,
                     "loss_check": {"keras": keras_loss, "pythae": pythae_loss},
                     "pythae_version": args.pythae.__version__ if hasattr(args.pythae, "__version__") else
                     common_version("pythae"), **trainer.settings}


def common_version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "unknown"


def matmul_round(args) -> float:
    """The fp32 matmul GFLOP/s of this moment (best of a few n x n products, TensorFlow)."""
    from benchmarks.flops import tf_matmul_gflops

    return tf_matmul_gflops(args.matmul_size, args.matmul_repeats)


def run_config(name: str, args) -> dict:
    import keras

    from benchmarks.flops import training_flops_per_image

    spec = CONFIGS[name]
    data = args.data or spec["data"]
    unit = args.batch_size * args.steps_per_execution  # images per execution: keeps batches full
    keras.utils.set_random_seed(args.seed)
    data_shape = data_shape_of(data, args.seed)
    ours = build_ours(spec, data_shape, args)
    bare = build_bare(spec, data_shape, ours, args)
    flops_per_image = training_flops_per_image(ours.encoder, ours.decoder)
    log(f"[{name}] data {data} {data_shape}, trainable parameters vae-tf {trainable_count(ours):,} "
        f"bare {trainable_count(bare):,}; jit_compile vae-tf={ours.jit_compile} bare={bare.jit_compile}; "
        f"{flops_per_image / 1e6:.2f} MFLOP per training image")

    if args.examples:
        n_examples = max(unit, math.ceil(args.examples / unit) * unit)
    else:  # calibrate on the vae-tf model: trace on a small set, then time one epoch of it
        n_cal = unit * max(1, math.ceil(args.calibration_steps / args.steps_per_execution))
        cal_ds = training_stream(make_splits(data, n_cal, args.seed), args.batch_size, args.seed)
        timed_fit(ours, cal_ds, 1)  # traces
        cal_s = timed_fit(ours, cal_ds, 1).seconds[0]
        wanted = args.min_epoch_seconds * 1.25 * n_cal / cal_s
        n_examples = max(n_cal, math.ceil(wanted / unit) * unit)
        log(f"[{name}] calibration: {n_cal / cal_s:,.0f} images/s -> {n_examples:,} images per epoch")

    splits = make_splits(data, n_examples, args.seed)
    ds = training_stream(splits, args.batch_size, args.seed)  # what training/train.py fits on
    with strict_float32(args.torch):
        loss_rel_diff = check_same_loss(ours, bare, splits, args)  # then bare starts from ours' weights
        log(f"[{name}] same loss on one batch (same weights and noise): relative difference {loss_rel_diff:.1e}")
        trainer, torch_info = torch_variant(name, splits, bare, args)
    if trainer is None:
        log(f"[{name}] no PyTorch reference: {torch_info}")
    else:
        log(f"[{name}] PyTorch eager: {torch_info}")
        if torch_info["trainable_parameters"] != trainable_count(bare):
            raise SystemExit(f"PyTorch reference has {torch_info['trainable_parameters']:,} parameters, "
                             f"Keras {trainable_count(bare):,}: not the same architecture")

    peers = {}  # the other PyTorch trainers: label -> (trainer, info)
    for label, make in (("torch_compile", lambda: compiled_variant(name, splits, bare, trainer, args)),
                        ("pythae", lambda: pythae_variant(name, splits, bare, args))):
        # pythae is checked against Keras (full float32); torch.compile against eager PyTorch, both with
        # the same TF32 setting, so that it compiles once, with the setting it is timed with.
        with strict_float32(args.torch) if label == "pythae" else contextlib.nullcontext():
            peer, info = make()
        if peer is None:
            log(f"[{name}] no {PEER_TITLES[label]}: {info}")
            peers[label] = (None, {"skipped": info})
            continue
        log(f"[{name}] {PEER_TITLES[label]}: {info}")
        if info["trainable_parameters"] != trainable_count(bare):
            raise SystemExit(f"{PEER_TITLES[label]} has {info['trainable_parameters']:,} parameters, "
                             f"Keras {trainable_count(bare):,}: not the same architecture")
        peers[label] = (peer, info)

    def run_torch_trainer(model, epochs: int) -> dict:
        seconds, losses = zip(*(model.fit_epoch() for _ in range(epochs)))
        return {"seconds": list(seconds), "final_loss": losses[-1]}

    def run_pythae(model, epochs: int) -> dict:
        seconds, loss = model.fit(epochs)
        return {"seconds": seconds, "final_loss": loss}

    def run_keras(model, epochs: int) -> dict:
        timer = timed_fit(model, ds, epochs)
        return {"seconds": timer.seconds, "final_loss": timer.logs[-1].get("loss")}

    variants = {"bare": lambda e: run_keras(bare, e), "vae_tf": lambda e: run_keras(ours, e)}
    if trainer is not None:
        variants["torch"] = lambda e: run_torch_trainer(trainer, e)
    if peers.get("torch_compile", (None,))[0] is not None:
        variants["torch_compile"] = lambda e: run_torch_trainer(peers["torch_compile"][0], e)
    if peers.get("pythae", (None,))[0] is not None:
        variants["pythae"] = lambda e: run_pythae(peers["pythae"][0], e)
    for label, run in variants.items():
        warm = run(args.warmup_epochs)
        log(f"[{name}] warm-up {label}: {', '.join(f'{s:.2f}' for s in warm['seconds'])} s")

    labels = list(variants) + (["matmul"] if args.matmul_size else [])
    rounds = []
    for r in range(args.rounds):
        k = r % len(labels)  # rotate the order (and reverse it every other round) so drift hits all alike
        order = labels[k:] + labels[:k]
        order = order if (r // len(labels)) % 2 == 0 else order[::-1]
        row = {"order": order}
        for label in order:
            if label == "matmul":
                row["matmul_gflops"] = matmul_round(args)
                continue
            gc.collect()
            result = variants[label](args.epochs_per_round)
            row[label] = {"images_per_s": args.epochs_per_round * n_examples / sum(result["seconds"]),
                          "epoch_seconds": result["seconds"], "final_loss": result["final_loss"]}
        row["ratio"] = row["vae_tf"]["images_per_s"] / row["bare"]["images_per_s"]
        if "torch" in row:
            row["ratio_torch"] = row["vae_tf"]["images_per_s"] / row["torch"]["images_per_s"]
        for peer in PEER_TITLES:
            if peer in row:
                row[f"ratio_{peer}"] = row["vae_tf"]["images_per_s"] / row[peer]["images_per_s"]
        rounds.append(row)
        log(f"[{name}] round {r + 1}/{args.rounds}: "
            + ", ".join(f"{label} {row[label]['images_per_s']:,.0f} img/s" for label in variants)
            + f"; vae-tf/bare {row['ratio']:.3f}"
            + "".join(f", vae-tf/{peer} {row[f'ratio_{peer}']:.3f}" for peer in ("torch", *PEER_TITLES)
                      if f"ratio_{peer}" in row)
            + (f"; matmul {row['matmul_gflops']:.0f} GFLOP/s" if "matmul_gflops" in row else ""))

    ratio = summary([row["ratio"] for row in rounds])
    # On a shared machine other tenants only ever slow a round down, so the fastest round of each
    # variant is the least disturbed estimate of its speed; the verdict uses the ratio of bests.
    best = {label: max(row[label]["images_per_s"] for row in rounds) for label in variants}
    best_ratio = best["vae_tf"] / best["bare"]
    overhead = 1.0 / best_ratio - 1.0
    result = {
        "config": name,
        "title": spec["title"],
        "data": data,
        "data_shape": list(data_shape),
        "latent": spec["latent"],
        "network": spec["network"],
        "likelihood": LIKELIHOOD,
        "trainable_parameters": trainable_count(ours),
        "trainable_parameters_bare": trainable_count(bare),
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
        "training_flops_per_image": flops_per_image,
        "torch": torch_info if trainer is not None else {"skipped": torch_info},
        "rounds": rounds,
    }
    if trainer is not None:
        result["torch_images_per_s"] = summary([row["torch"]["images_per_s"] for row in rounds])
        result["ratio_vae_tf_over_torch"] = summary([row["ratio_torch"] for row in rounds])
        result["best_ratio_torch"] = best["vae_tf"] / best["torch"]
    # Every PyTorch-side trainer, eager included, for the peers table.
    result["peers"] = {}
    for peer in ("torch", *PEER_TITLES):
        if peer not in variants:
            result["peers"][peer] = {"skipped": torch_info if peer == "torch" else peers[peer][1]["skipped"]}
            continue
        result["peers"][peer] = {
            "info": torch_info if peer == "torch" else peers[peer][1],
            "images_per_s": summary([row[peer]["images_per_s"] for row in rounds]),
            "ratio_vae_tf_over_peer": summary([row[f"ratio_{peer}"] for row in rounds]),
            "best_ratio": best["vae_tf"] / best[peer],
            "final_loss": rounds[-1][peer]["final_loss"],
        }
    result["vae_tf_final_loss"] = rounds[-1]["vae_tf"]["final_loss"]
    if args.matmul_size:
        peaks = [row["matmul_gflops"] for row in rounds]
        result["matmul_gflops"] = summary(peaks)
        # Best training speed over the best peak (both the least disturbed estimates), and per round.
        result["efficiency"] = {label: best[label] * flops_per_image / 1e9 / max(peaks) for label in variants}
        result["efficiency_per_round"] = {
            label: summary([row[label]["images_per_s"] * flops_per_image / 1e9 / row["matmul_gflops"] for row in rounds])
            for label in variants}
        # The matmul doubles as a load probe: rounds whose matmul came within QUIET_MATMUL of the
        # run's best are the ones where the machine was (nearly) ours; their medians are a second
        # estimate next to the ratio of bests.
        quiet = [row for row in rounds if row["matmul_gflops"] >= QUIET_MATMUL * max(peaks)]
        result["quiet_rounds"] = {
            "count": len(quiet),
            **{f"{label}_images_per_s": summary([row[label]["images_per_s"] for row in quiet]) for label in variants},
            "ratio_vae_tf_over_bare": summary([row["ratio"] for row in quiet]),
            **({"ratio_vae_tf_over_torch": summary([row["ratio_torch"] for row in quiet])} if trainer is not None else {}),
            **{f"ratio_vae_tf_over_{peer}": summary([row[f"ratio_{peer}"] for row in quiet])
               for peer in PEER_TITLES if peer in variants},
        }
    return result


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
            "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
            "torch": args.torch_threads}


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
        "variant, interleaved (order rotating); img/s: median over rounds (min-max); per-round ratio: "
        "median (min-max) of vae-tf / bare in the same round; best ratio = fastest vae-tf round / fastest bare "
        "round (the least disturbed estimate on a shared machine); overhead = 1 / best ratio - 1; optimizers: "
        "vae-tf FusedAdam, bare "
        + ("FusedAdam" if report["settings"].get("bare_optimizer") == "fused" else "keras.optimizers.Adam")
        + "; same starting weights, same tf.data pipeline (DataSplits.resumable_pipeline).",
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
    lines += render_targets(report)
    lines += render_peers(report)
    return "\n".join(lines)


def verdict(ok: bool) -> str:
    return "yes" if ok else "**no**"


def render_targets(report: dict) -> list[str]:
    """The issue #10 table: vae-tf vs PyTorch eager vs bare Keras, and the arithmetic efficiency."""
    rows = [r for r in report["results"] if "torch_images_per_s" in r or "efficiency" in r]
    if not rows:
        return [f"\nPyTorch reference: {r['torch'].get('skipped')}" for r in report["results"][:1]]
    t = report["machine"].get("torch")
    torch_line = (
        f"- PyTorch eager reference skipped: {rows[0]['torch'].get('skipped')}" if not t else
        f"- PyTorch {t['version']} eager: {t['intra_op_threads']} intra-op / "
        f"{t['inter_op_threads']} inter-op threads ({t['parallel_backend']}); "
        + "; ".join(f"{r['config']}: {r['torch'].get('trainable_parameters', 0):,} parameters (Keras "
                    f"{r['trainable_parameters_bare']:,}), channels_last {r['torch'].get('channels_last')}, Adam "
                    f"{r['torch'].get('adam')}, padding {r['torch'].get('padding')}, loss vs Keras on one batch "
                    f"{r['torch'].get('loss_check_relative_difference', float('nan')):.1e}"
                    for r in rows if "torch_images_per_s" in r))
    lines = [
        "",
        torch_line,
        f"- Efficiency = images/s x training FLOPs per image (benchmarks/flops.py convention) / fp32 matmul "
        f"peak ({report['settings']['matmul_size']}² tf.matmul measured as one more interleaved variant "
        "each round); fastest round over highest peak, and median (min-max) of the per-round values.",
        "",
        "| Configuration | PyTorch eager img/s | Bare Keras img/s | vae-tf img/s | vae-tf / PyTorch per-round "
        f"| best | ≥ {MIN_RATIO_TORCH:g} | vae-tf / bare best | ≥ {MIN_RATIO_BARE:g} | MFLOP/img | matmul GFLOP/s "
        f"| vae-tf efficiency best (per-round) | ≥ {100 * MIN_EFFICIENCY:.0f} % |",
        "|---|---:|---:|---:|---:|---:|---|---:|---|---:|---:|---:|---|",
    ]
    def span(v, fmt="{:,.0f}", scale=1.0):
        return (f"{fmt.format(scale * v['median'])} ({fmt.format(scale * v['min'])}–{fmt.format(scale * v['max'])})"
                if v else "–")

    for r in rows:
        bt = r.get("best_ratio_torch")
        e = r.get("efficiency", {}).get("vae_tf")
        lines.append(
            f"| {r['title']} | {span(r.get('torch_images_per_s'))} | {span(r['bare_images_per_s'])} "
            f"| {span(r['vae_tf_images_per_s'])} | {span(r.get('ratio_vae_tf_over_torch'), '{:.3f}')} "
            f"| {f'{bt:.3f}' if bt else '–'} | {verdict(bt >= MIN_RATIO_TORCH) if bt else '–'} "
            f"| {r['best_ratio']:.3f} | {verdict(r['best_ratio'] >= MIN_RATIO_BARE)} "
            f"| {r['training_flops_per_image'] / 1e6:.2f} | {span(r.get('matmul_gflops'))} "
            f"| {f'{100 * e:.1f} %' if e else '–'} ({span(r.get('efficiency_per_round', {}).get('vae_tf'), '{:.1f}', 100)}) "
            f"| {verdict(e >= MIN_EFFICIENCY) if e else '–'} |")
    for r in rows:
        q = r.get("quiet_rounds")
        if q and q["count"]:
            lines.append(
                f"\nQuiet rounds ({r['config']}: {q['count']} of {len(r['rounds'])} rounds whose matmul reached "
                f"{100 * QUIET_MATMUL:.0f} % of the run's best), medians (min–max): "
                + ", ".join(f"{name} {span(q.get(key + '_images_per_s'))} img/s"
                            for name, key in (("PyTorch", "torch"), ("bare", "bare"), ("vae-tf", "vae_tf")) if q.get(key + "_images_per_s"))
                + (f"; vae-tf / PyTorch {span(q['ratio_vae_tf_over_torch'], '{:.3f}')}"
                   if q.get("ratio_vae_tf_over_torch") else "")
                + f"; vae-tf / bare {span(q['ratio_vae_tf_over_bare'], '{:.3f}')}.")
    return lines


def render_peers(report: dict) -> list[str]:
    """The issue #20 table: vae-tf against each PyTorch-side trainer a user would pick (eager,
    torch.compile, pythae's BaseTrainer), with parameter counts and loss checks."""
    rows = [r for r in report["results"] if any("images_per_s" in p for p in r.get("peers", {}).values())]
    if not rows:
        return []
    m = report["machine"]
    titles = {"torch": "PyTorch eager", **PEER_TITLES}
    lines = ["", f"Load average (1, 5, 15 min) at the start {fmt_load(m.get('load_average'))}, at the end "
                 f"{fmt_load(m.get('load_average_end'))}.", "",
             "| Configuration | Trainer | parameters | loss check (rel. diff.) | img/s, median (min–max) "
             "| vae-tf / it, per-round median (min–max) | best | target | met |",
             "|---|---|---:|---|---:|---:|---:|---:|---|"]
    for r in rows:
        o = r["vae_tf_images_per_s"]
        lines.append(f"| {r['title']} | vae-tf | {r['trainable_parameters']:,} | vs bare Keras "
                     f"{r['loss_check_relative_difference']:.1e} | {o['median']:,.0f} ({o['min']:,.0f}–{o['max']:,.0f}) "
                     "| – | – | – | – |")
        for peer, title in titles.items():
            p = r["peers"].get(peer, {})
            if "images_per_s" not in p:
                lines.append(f"| {r['title']} | {title} | – | – | skipped: {p.get('skipped', 'not run')} | – | – | – | – |")
                continue
            info, v, q = p["info"], p["images_per_s"], p["ratio_vae_tf_over_peer"]
            against = {"torch": "vs Keras", "torch_compile": "vs eager", "pythae": "vs Keras"}[peer]
            target = MIN_RATIO_PEERS[peer]
            lines.append(
                f"| {r['title']} | {title} | {info['trainable_parameters']:,} | {against} "
                f"{info['loss_check_relative_difference']:.1e} | {v['median']:,.0f} ({v['min']:,.0f}–{v['max']:,.0f}) "
                f"| {q['median']:.3f} ({q['min']:.3f}–{q['max']:.3f}) | {p['best_ratio']:.3f} | ≥ {target:g} "
                f"| {verdict(p['best_ratio'] >= target)} |")
        settings = []
        for peer in ("torch_compile", "pythae"):
            info = r["peers"].get(peer, {}).get("info")
            if peer == "torch_compile" and info:
                settings.append(f"torch.compile: backend {info['compile']['backend']}, mode {info['compile']['mode']}, "
                                f"first call (compilation) {info['first_call_seconds']:.1f} s, otherwise the eager "
                                "loop's settings")
            if peer == "pythae" and info:
                settings.append(f"pythae {info['pythae_version']}: BaseTrainer, {info['optimizer']} (PyTorch default "
                                f"implementation), lr {info['learning_rate']:g}, batch {info['batch_size']}, no "
                                "eval set, steps_saving None (no checkpoints), progress bar on (output swallowed), "
                                f"device {info['device']}")
        lines += [f"- {line}" for line in settings]
        lines.append(f"- Final training loss of the last round (nats per image, same scale for all): vae-tf "
                     f"{r['vae_tf_final_loss']:.2f}, "
                     + ", ".join(f"{titles[peer]} {p['final_loss']:.2f}" for peer, p in r["peers"].items()
                                 if "final_loss" in p))
    return lines


def fmt_load(load) -> str:
    return "unknown" if not load else " / ".join(f"{v:.2f}" for v in load)


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
    p.add_argument("--threads", type=int, default=None,
                   help="threads of every framework: TF intra- and inter-op pools and torch.set_num_threads / "
                        "set_num_interop_threads (None: one per usable CPU)")
    p.add_argument("--intra-op-threads", type=int, default=None, help="TF intra-op threads (overrides --threads)")
    p.add_argument("--inter-op-threads", type=int, default=None, help="TF inter-op threads (overrides --threads)")
    p.add_argument("--bare-optimizer", choices=["keras", "fused"], default="keras",
                   help="the bare loop's Adam: keras.optimizers.Adam (default) or vae-tf's FusedAdam")
    p.add_argument("--no-torch", action="store_true",
                   help="skip the PyTorch eager reference (it runs for the conv configuration when torch is installed)")
    p.add_argument("--torch-channels-last", choices=["true", "false"], default="true",
                   help="PyTorch reference in channels_last memory format (oneDNN's preferred CPU layout)")
    p.add_argument("--torch-adam", choices=["fused", "foreach", "loop"], default="fused",
                   help="PyTorch Adam implementation")
    p.add_argument("--torch-padding", choices=["idiomatic", "tf"], default="idiomatic",
                   help="PyTorch conv padding: idiomatic (padding=1) or tf (Keras-exact, an extra pad/crop)")
    p.add_argument("--no-torch-compile", action="store_true",
                   help="skip the torch.compile variant of the PyTorch reference")
    p.add_argument("--torch-compile-backend", default="inductor",
                   help="torch.compile backend (inductor: PyTorch's default; aot_eager: no code generation, smoke tests)")
    p.add_argument("--torch-compile-mode", default=None,
                   help="torch.compile mode (None: the default; e.g. max-autotune-no-cudagraphs, reduce-overhead)")
    p.add_argument("--torch-device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="device of the PyTorch trainers (auto: cuda when PyTorch sees a GPU); pythae picks its own "
                        "(cuda when available)")
    p.add_argument("--no-pythae", action="store_true",
                   help="skip pythae's BaseTrainer (it runs for the conv configuration when pythae is installed)")
    p.add_argument("--matmul-size", type=int, default=2048,
                   help="n of the n x n fp32 tf.matmul timed each round for the efficiency (0: off)")
    p.add_argument("--matmul-repeats", type=positive_int, default=3, help="matmuls per round (best counts)")
    p.add_argument("--seed", type=int, default=0, help="seed of weights, data and noise")
    p.add_argument("--json", type=Path, default=None, help="also write the full results (every round) here")
    p.add_argument("--fail-over-bound", action="store_true",
                   help=f"exit with status 1 when an overhead exceeds {100 * MAX_OVERHEAD:g} %% "
                        "(otherwise the exit status is 0)")
    args = p.parse_args(argv)
    args.jit_compile = {"auto": "auto", "true": True, "false": False}[args.jit_compile]
    args.torch_channels_last = args.torch_channels_last == "true"
    return args


def setup_threads(args) -> None:
    """Give TensorFlow and PyTorch the same thread counts, before either runs an op; load torch
    (``args.torch``: the module or None, ``args.torch_missing``: why not)."""
    import tensorflow as tf

    threads = args.threads or len(os.sched_getaffinity(0))
    tf.config.threading.set_intra_op_parallelism_threads(args.intra_op_threads or threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.inter_op_threads or threads)
    args.torch, args.torch_missing, args.torch_threads = None, "--no-torch", None
    args.pythae, args.pythae_missing = None, "--no-pythae" if args.no_pythae else "needs PyTorch (--no-torch)"
    if not args.no_torch:
        from benchmarks.torch_reference import import_torch, set_threads

        args.torch, why = import_torch()
        if args.torch is None:
            args.torch_missing = f"PyTorch is not installed ({why}); pip install -e '.[bench]' adds it"
            args.pythae_missing = "needs PyTorch"
            log(f"PyTorch reference skipped: {args.torch_missing}")
        else:
            args.torch_threads = set_threads(args.torch, threads)
            if args.torch_device == "auto":
                args.torch_device = "cuda" if args.torch.cuda.is_available() else "cpu"
            if args.torch_device == "cuda":
                # TensorFlow runs float32 matmuls and convolutions in TF32 on GPUs that have it (its
                # default); PyTorch does for convolutions only unless asked: the same for both.
                args.torch.backends.cuda.matmul.allow_tf32 = True
                args.torch.backends.cudnn.allow_tf32 = True
    if args.torch is not None and not args.no_pythae:
        from benchmarks.pythae_reference import import_pythae

        args.pythae, why = import_pythae()
        if args.pythae is None:
            args.pythae_missing = f"pythae is not installed ({why}); pip install -e '.[bench]' adds it"
            log(f"pythae reference skipped: {args.pythae_missing}")


def main(argv=None) -> int:
    args = parse_args(argv)

    # Set before any op runs; the variants share the process and therefore these pools.
    setup_threads(args)

    names = list(CONFIGS) if args.arch == "all" else [args.arch]
    machine = machine_info(args)
    with tempfile.TemporaryDirectory(prefix="vae-tf-pythae-") as workdir:
        args.pythae_workdir = workdir  # pythae's trainer writes its run folders here
        settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                    if k not in ("torch", "pythae", "pythae_workdir")}
        results = [run_config(name, args) for name in names]
    machine["load_average_end"] = common.load_average()
    report = {
        "command": command_line(),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine,
        "settings": settings,
        "max_overhead": MAX_OVERHEAD,
        "results": results,
    }
    print(render(report))
    if args.json:
        common.write_json(args.json, report)
        log(f"wrote {args.json}")
    if args.fail_over_bound and not all(r["within_bound"] for r in report["results"]):
        return 1
    return 0


if __name__ == "__main__":
    from benchmarks.common import start_as_vae_tf_does

    start_as_vae_tf_does()
    sys.exit(main())
