"""Variational mutual-information maximisation with an auxiliary Q network (Serdega & Kim 2020,
"Variational Mutual Information Maximization Framework for VAE Latent Codes with Continuous and
Discrete Priors", Algorithm 1), and :func:`fit_mi_bound`, the same bound as an evaluation metric
for any trained model.

The regulariser is the InfoGAN-style variational lower bound (Barber & Agakov 2003) on the mutual
information between a chosen part ẑ of the code and the decoder's output x':

    MI(θ, φ, Q) = E_{x ~ data, z ~ q_φ(z|x), x' = E_θ[x|z]}[ log Q(ẑ | x') ] + H(ẑ)  ≤  I(ẑ; x').

**What Q reads.** x' is the likelihood's mean E_θ[x | z] (``likelihood.mean(decoder(z))``): a
deterministic, differentiable function of θ and, through the reparameterised z, of φ, so the
gradient of the bound reaches encoder and decoder. (An ancestral sample from a Bernoulli decoder
would not be differentiable.)

**ẑ** (``mi_target``): ``categorical`` — the categorical part c of a ``gaussian_categorical``
code; or a list of continuous dims (``[0, 3]``), or ``gaussian`` for all of them.

- categorical: Q(c | x') = softmax(Q-logits); during training ẑ is the relaxed one-hot sample c̃
  the decoder saw (the ELBO's own sample), and log Q(ẑ | x') = Σ_k c̃_k log Q_k(x') — exact for a
  one-hot c̃, the usual soft-target relaxation otherwise. H(ẑ) = H(mean_batch π(x)), the entropy
  of the batch's aggregate category distribution. Since log Q_k ≤ 0, the bound never exceeds
  H(ẑ) ≤ log K.
- continuous dims: Q(ẑ | x') = N(μ_Q(x'), diag σ_Q²(x')); H(ẑ) is the minibatch estimate of the
  aggregate posterior's entropy (:func:`vae_tf.models.code_density.continuous_entropy`; any
  family, Normal-Gamma included).

H(ẑ) depends on φ and is part of the regulariser (it rewards using every category); log Q and H
are per-example means over the batch, in nats, like every other term.

**One training step** (Algorithm 1): one forward pass (z ~ q(z|x), x' = E[x|z]); then

1. the *Q step*: maximise E[log Q(ẑ | x')] w.r.t. Q only (x' and ẑ held fixed), with Q's own
   optimizer ``q_optimizer`` (Adam, ``q_learning_rate``);
2. the *VAE step*: minimise ``−mean(rec − β·kl) − λ·MI`` w.r.t. encoder and decoder (with the
   updated Q), with the model's optimizer (``model.optimizer``, from ``compile``).

**Variables and checkpoints.** Q is the attribute ``q_network`` and is frozen from Keras' point
of view (``q_network.trainable = False``), so ``model.trainable_variables`` — what
``model.optimizer`` updates — are exactly the VAE's, as for every other objective; the Q step
differentiates w.r.t. ``q_network.weights`` explicitly. Q's weights are still in
``model.variables``. ``q_optimizer`` is built at construction and its variables are held in the
attribute ``q_optimizer_variables``, which Keras tracks as non-trainable model variables: a
checkpoint of ``model.variables`` + ``model.optimizer.variables``
(``training.callbacks.checkpoint_for``) therefore carries Q, Q's Adam state and its step count,
and so does ``model.save_weights`` (the export's rebuildable weights).

**Precision and replicas.** Q is built with the model's precision (16-bit compute, float32
output); with ``mixed_float16`` ``q_optimizer`` is a ``LossScaleOptimizer`` too. Under
``tf.distribute`` both steps divide their loss by the number of replicas (the optimizers sum
gradients), and H(ẑ) of a categorical target is the global batch's; a continuous target's H(ẑ)
is each replica's minibatch estimate (:mod:`vae_tf.models.code_density`).

Logged every step and epoch (train and ``val_``): ``mi_bound`` (the bound on the batch, with the
Q of the VAE step), ``mi_entropy`` (H(ẑ)), ``mi_q_log_likelihood`` (E log Q), ``q_loss`` (the Q
step's loss, train only).
"""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf

from vae_tf.errors import ConfigError
from vae_tf.models.code_density import (categorical_entropy, continuous_entropy, continuous_size, hard_code,
                                        has_categorical)
from vae_tf.models import replicas
from vae_tf.models.vae import ACTIVE_KL_THRESHOLD, VAE
from vae_tf.optimizers import FusedAdam
from vae_tf.schedules import _number

DEFAULT_Q_NETWORK = {"kind": "mlp", "hidden": [256]}
_LOG_2PI = math.log(2.0 * math.pi)
_Q_LOG_VAR_CLIP = 20.0


class MITarget:
    """The part ẑ of the code that the MI bound is about (module docstring).

    ``spec``: ``"categorical"``, ``"gaussian"`` (all continuous dims), a list of continuous dim
    indices, or None (categorical when the family has one, else all continuous dims).
    """

    def __init__(self, latent, spec=None, what: str = "objective.options.mi_target"):
        self.latent = latent
        g = continuous_size(latent)
        if spec is None:
            spec = "categorical" if has_categorical(latent) else "gaussian"
        if spec == "categorical":
            if not has_categorical(latent):
                raise ConfigError(f"{what}=categorical needs model.latent.family=gaussian_categorical (the family is "
                                  f"{latent.family!r}); use a list of Gaussian dims instead, e.g. [0, 1]")
            self.kind, self.dims = "categorical", None
            self.q_size = int(latent.categories)
            return
        if spec == "gaussian":
            spec = list(range(g))
        if (not isinstance(spec, (list, tuple)) or not spec
                or not all(isinstance(d, int) and not isinstance(d, bool) for d in spec)):
            raise ConfigError(f"{what} must be 'categorical', 'gaussian' or a non-empty list of Gaussian dim "
                              f"indices, got {spec!r}")
        bad = [d for d in spec if not 0 <= d < g]
        if bad or len(set(spec)) != len(spec):
            raise ConfigError(f"{what} dims must be distinct integers in [0, {g}) (the Gaussian dims of the "
                              f"code), got {list(spec)!r}")
        self.kind, self.dims = "continuous", [int(d) for d in spec]
        self.q_size = 2 * len(self.dims)

    def describe(self):
        return "categorical" if self.kind == "categorical" else list(self.dims)

    def select(self, z: tf.Tensor) -> tf.Tensor:
        """ẑ from the full code z: the category block ``[B, K]`` or the chosen dims ``[B, n]``."""
        if self.kind == "categorical":
            return z[:, continuous_size(self.latent):]
        return tf.gather(z, self.dims, axis=-1)

    def q_log_likelihood(self, q_out: tf.Tensor, target: tf.Tensor) -> tf.Tensor:
        """log Q(ẑ | x') per example ``[B]`` (soft-target cross-entropy for the categorical part,
        a diagonal Gaussian log density summed over the chosen dims otherwise)."""
        if self.kind == "categorical":
            return tf.reduce_sum(target * tf.nn.log_softmax(q_out, axis=-1), axis=-1)
        mean, log_var = tf.split(q_out, 2, axis=-1)
        log_var = tf.clip_by_value(log_var, -_Q_LOG_VAR_CLIP, _Q_LOG_VAR_CLIP)
        return -0.5 * tf.reduce_sum(_LOG_2PI + log_var + tf.square(target - mean) * tf.exp(-log_var), axis=-1)

    def entropy(self, params: tf.Tensor, z: tf.Tensor) -> tf.Tensor:
        """H(ẑ) on the batch (module docstring), nats."""
        if self.kind == "categorical":
            return categorical_entropy(tf.nn.softmax(self.latent.split(params)[2], axis=-1))
        return continuous_entropy(self.latent, params, z[:, :continuous_size(self.latent)], self.dims)


def build_q_network(data_shape, out_size: int, spec=None, name: str = "q_network", dtype=None) -> keras.Model:
    """Q: x' ``[B, *data_shape]`` -> ``[B, out_size]``, any registered encoder kind
    (``{"kind": "mlp", "hidden": [256]}`` by default; ``{"kind": "conv", ...}`` for images).
    ``dtype``: the Keras dtype policy of its layers (the model's precision); the output is
    float32 in any case."""
    from vae_tf.networks import build_encoder

    what = "objective.options.q_network"
    spec = DEFAULT_Q_NETWORK if spec is None else spec
    if not isinstance(spec, dict):
        raise ConfigError(f"{what} must be a mapping like {{kind: mlp, hidden: [256]}}, got {spec!r}")
    spec = dict(spec)
    kind = spec.pop("kind", "mlp")
    if not isinstance(kind, str):
        raise ConfigError(f"{what}.kind must name a network kind (mlp, conv), got {kind!r}")
    return build_encoder(kind, tuple(int(s) for s in data_shape), int(out_size), name=name, what=what, dtype=dtype,
                         **spec)


class MIMaxVAE(VAE):
    """ELBO + λ · (variational MI lower bound between a part ẑ of the code and the decoder output),
    trained with two optimizers in one step (Serdega & Kim 2020, Algorithm 1; module docstring):

        Q step:    max_Q  mean_batch log Q(ẑ | x')
        VAE step:  min_{θ,φ}  −mean_batch(reconstruction − β·kl) − λ·(mean_batch log Q(ẑ | x') + H(ẑ))

    with x' = E_θ[x | z] (the likelihood mean: differentiable w.r.t. θ and, through the
    reparameterised z, φ).

    Options (``objective.options``): ``mi_weight`` λ (default 1.0); ``mi_target``
    (``categorical``, ``gaussian`` or a list of Gaussian dims; default: the categorical part when
    the family has one, else every Gaussian dim); ``q_network`` (a network spec like
    ``model.network``: ``{kind: mlp, hidden: [256]}``); ``q_learning_rate`` (Adam, default 1e-3).
    """

    objective = "mi_max"

    def __init__(self, *args, mi_weight: float = 1.0, mi_target=None, q_network=None,
                 q_learning_rate: float = 1e-3, **kwargs):
        super().__init__(*args, **kwargs)
        self.mi_weight = _number(mi_weight, "objective.options.mi_weight", low=0.0)
        self.mi_target = MITarget(self.latent, mi_target)
        data_shape = tuple(self.encoder.inputs[0].shape[1:])
        self.q_network = build_q_network(data_shape, self.mi_target.q_size, q_network, dtype=self.precision)
        # Frozen for Keras: model.trainable_variables (model.optimizer's) stay the VAE's; the Q
        # step differentiates w.r.t. q_network.weights itself.
        self.q_network.trainable = False
        q_learning_rate = _number(q_learning_rate, "objective.options.q_learning_rate", positive=True)
        self.q_optimizer = FusedAdam(q_learning_rate, name="q_optimizer")
        if self.precision == "mixed_float16":  # Q computes in float16 like the VAE: dynamic loss scaling
            self.q_optimizer = keras.optimizers.LossScaleOptimizer(self.q_optimizer, name="q_loss_scale_optimizer")
        self.q_optimizer.build(self.q_network.weights)
        # A list attribute of variables is tracked by Keras: Q's optimizer state becomes part of
        # model.variables, so checkpoints and save_weights carry it (module docstring).
        self.q_optimizer_variables = list(self.q_optimizer.variables)
        self.mi_bound_tracker = keras.metrics.Mean(name="mi_bound")
        self.mi_entropy_tracker = keras.metrics.Mean(name="mi_entropy")
        self.mi_q_log_likelihood_tracker = keras.metrics.Mean(name="mi_q_log_likelihood")
        self.q_loss_tracker = keras.metrics.Mean(name="q_loss")

    @property
    def metrics(self):
        return [*super().metrics, self.mi_bound_tracker, self.mi_entropy_tracker, self.mi_q_log_likelihood_tracker,
                self.q_loss_tracker]

    # --- the two steps ---------------------------------------------------------------------
    def q_inputs(self, terms: dict) -> tuple[tf.Tensor, tf.Tensor]:
        """``(x', ẑ)`` of a forward pass: the likelihood mean of the decoder output, and the part
        of the sampled code the bound is about."""
        return self.likelihood.mean(terms["out"]), self.mi_target.select(terms["z"])

    def q_update(self, x_rec: tf.Tensor, target: tf.Tensor) -> tf.Tensor:
        """The Q step: one ``q_optimizer`` update of Q's weights that maximises mean log Q(ẑ | x')
        (``x_rec`` and ``target`` are constants here). Returns the step's loss −mean log Q."""
        weights = self.q_network.weights
        with tf.GradientTape() as tape:
            loss = -tf.reduce_mean(self.mi_target.q_log_likelihood(self.q_network(x_rec, training=True), target))
            scaled = self.gradient_loss(loss, self.q_optimizer)  # 1/replicas, loss scale
        self.q_optimizer.apply_gradients(zip(tape.gradient(scaled, weights), weights))
        return loss

    def mi_terms(self, terms: dict, x_rec: tf.Tensor, target: tf.Tensor) -> dict:
        """``mi_q_log_likelihood`` ``[B]``, ``mi_entropy`` and ``mi_bound`` (scalars, nats)."""
        q_log_likelihood = self.mi_target.q_log_likelihood(self.q_network(x_rec, training=False), target)
        entropy = self.mi_target.entropy(terms["params"], terms["z"])
        return {"mi_q_log_likelihood": q_log_likelihood, "mi_entropy": entropy,
                "mi_bound": tf.reduce_mean(q_log_likelihood) + entropy}

    def objective_loss(self, terms):
        """``−mean(rec − β·kl) − λ·mi_bound`` (the plain ELBO loss when ``terms`` has no bound)."""
        loss = super().objective_loss(terms)
        if "mi_bound" in terms:
            loss = loss - self.mi_weight * terms["mi_bound"]
        return loss

    def _update_mi_trackers(self, terms: dict) -> None:
        batch = tf.cast(tf.shape(terms["elbo"])[0], tf.float32)
        self.mi_bound_tracker.update_state(terms["mi_bound"], sample_weight=batch)
        self.mi_entropy_tracker.update_state(terms["mi_entropy"], sample_weight=batch)
        self.mi_q_log_likelihood_tracker.update_state(terms["mi_q_log_likelihood"])

    def train_step(self, data):
        x = self.unpack(data)

        def forward(tape):
            terms = self.compute_terms(x, training=True)
            x_rec, target = self.q_inputs(terms)
            with tape.stop_recording():  # the Q step: its own optimizer, no gradient to θ, φ
                terms["q_loss"] = self.q_update(tf.stop_gradient(x_rec), tf.stop_gradient(target))
            terms.update(self.mi_terms(terms, x_rec, target))
            return terms

        loss, terms = self.optimise(x, forward)
        q_loss = terms["q_loss"]
        self._update_mi_trackers(terms)
        self.q_loss_tracker.update_state(q_loss, sample_weight=tf.cast(tf.shape(x)[0], tf.float32))
        return replicas.step_logs({**self.update_trackers(loss, terms), **self.state_metrics()})

    def test_step(self, data):
        x = self.unpack(data)
        terms = self.compute_terms(x, training=False)
        terms.update(self.mi_terms(terms, *self.q_inputs(terms)))
        loss = self.objective_loss(terms)
        self.kl_per_dim_tracker.update_state(terms["kl_per_dim"])
        self._update_mi_trackers(terms)
        logs = self.update_trackers(loss, terms)
        logs.pop("q_loss", None)  # no Q step in evaluation
        active = tf.reduce_sum(tf.cast(self.kl_per_dim_tracker.result() > ACTIVE_KL_THRESHOLD, tf.float32))
        return replicas.step_logs({**logs, "active_kl_dims": active})


def fit_mi_bound(model, x, *, steps: int = 1000, batch_size: int = 128, learning_rate: float = 1e-3,
                 q_network=None, target=None, x_eval=None, seed: int = 0, log_every: int = 50) -> dict:
    """The variational MI lower bound of a *frozen* model (any :class:`~vae_tf.models.VAE`):
    fit a fresh Q network to recover ẑ from x' = E[x | z], then report the bound (Serdega & Kim
    2020, §3: "a way to evaluate mutual information between latent codes and observations for a
    fixed VAE model").

    Fitting: ``steps`` Adam steps (``learning_rate``) of max_Q mean log Q(ẑ | x') on shuffled
    batches of ``x``; the model's weights are not touched. Codes are drawn with the exact
    one-hot category (the discrete model used in serving), so for ``mi_target=categorical`` the
    bound is a proper lower bound on I(c; x') ≤ H(c) ≤ log K.

    Evaluation on ``x_eval`` (default ``x``), one code per example (stateless seeds from
    ``seed``): ``mi_bound = mean log Q(ẑ | x') + H(ẑ)`` with H(ẑ) the entropy of the aggregate
    category distribution over all of ``x_eval`` (categorical target), or the size-weighted mean
    of the minibatch estimate over batches of ``batch_size`` (continuous dims).

    ``x`` may also be a :class:`vae_tf.data.DataSplits`: Q is then fitted on its training split
    and evaluated on its test split (validation split when the test split is empty) unless
    ``x_eval`` is given.

    Returns ``{"mi_bound", "entropy", "q_log_likelihood", "target", "steps", "batch_size",
    "history": [(step, bound on that training batch), ...] every ``log_every`` steps}``.
    """
    if hasattr(x, "x_train"):  # a DataSplits
        if x_eval is None:
            x_eval = x.x_test if len(x.x_test) else (x.x_val if len(x.x_val) else None)
        x = x.x_train
    latent = model.latent
    mi_target = MITarget(latent, target, what="target")
    for name, value in (("steps", steps), ("batch_size", batch_size), ("log_every", log_every)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    learning_rate = _number(learning_rate, "learning_rate", positive=True)
    x = np.asarray(x, np.float32)
    x_eval = x if x_eval is None else np.asarray(x_eval, np.float32)
    data_shape = tuple(model.encoder.inputs[0].shape[1:])
    if x.shape[1:] != data_shape or x_eval.shape[1:] != data_shape or len(x) == 0 or len(x_eval) == 0:
        raise ConfigError(f"x and x_eval must be non-empty batches of shape (N, {', '.join(map(str, data_shape))}), "
                          f"got {x.shape} and {x_eval.shape}")
    q_net = build_q_network(data_shape, mi_target.q_size, q_network, name="q_network_eval")
    optimizer = FusedAdam(learning_rate)
    optimizer.build(q_net.trainable_variables)

    def forward(xb, step_seed):
        params = model.encoder(xb, training=False)
        z = hard_code(latent, params, step_seed)
        x_rec = model.likelihood.mean(model.decoder(z, training=False))
        return params, z, x_rec, mi_target.select(z)

    specs = [tf.TensorSpec((None, *data_shape), tf.float32), tf.TensorSpec((2,), tf.int32)]

    @tf.function(input_signature=specs)
    def train(xb, step_seed):
        params, z, x_rec, target_z = forward(xb, step_seed)
        with tf.GradientTape() as tape:
            log_q = mi_target.q_log_likelihood(q_net(x_rec, training=True), target_z)
            loss = -tf.reduce_mean(log_q)
        weights = q_net.trainable_variables
        optimizer.apply_gradients(zip(tape.gradient(loss, weights), weights))
        return tf.reduce_mean(log_q) + mi_target.entropy(params, z)

    @tf.function(input_signature=specs)
    def evaluate(xb, step_seed):
        params, z, x_rec, target_z = forward(xb, step_seed)
        log_q = mi_target.q_log_likelihood(q_net(x_rec, training=False), target_z)
        extra = (tf.nn.softmax(latent.split(params)[2], axis=-1) if mi_target.kind == "categorical"
                 else mi_target.entropy(params, z))
        return log_q, extra

    rng = np.random.default_rng(seed)
    history, order, position = [], rng.permutation(len(x)), 0
    size = min(batch_size, len(x))
    for step in range(steps):
        if position + size > len(x):
            order, position = rng.permutation(len(x)), 0
        batch = x[order[position:position + size]]
        position += size
        bound = train(tf.constant(batch), tf.constant([seed, step], tf.int32))
        if (step + 1) % log_every == 0 or step + 1 == steps:
            history.append((step + 1, float(bound)))

    log_qs, extras, weights = [], [], []
    for b, start in enumerate(range(0, len(x_eval), batch_size)):
        xb = x_eval[start:start + batch_size]
        log_q, extra = evaluate(tf.constant(xb), tf.constant([seed + 1, b], tf.int32))
        log_qs.append(log_q.numpy())
        extras.append(extra.numpy())
        weights.append(len(xb))
    q_log_likelihood = float(np.mean(np.concatenate(log_qs)))
    if mi_target.kind == "categorical":
        usage = np.concatenate(extras).astype(np.float64).mean(axis=0)
        entropy = float(-np.sum(usage[usage > 0] * np.log(usage[usage > 0])))
    else:
        entropy = float(np.average(np.asarray(extras, np.float64), weights=weights))
    return {"mi_bound": q_log_likelihood + entropy, "entropy": entropy, "q_log_likelihood": q_log_likelihood,
            "target": mi_target.describe(), "steps": steps, "batch_size": batch_size, "history": history}


__all__ = ["DEFAULT_Q_NETWORK", "MIMaxVAE", "MITarget", "build_q_network", "fit_mi_bound"]
