"""Variational mutual-information maximisation with an auxiliary Q network (Serdega & Kim 2020,
"Variational Mutual Information Maximization Framework for VAE Latent Codes with Continuous and
Discrete Priors", Algorithm 1): a regulariser, so it composes with any KL weight, input noise and
inference procedure (``regularizers: [{kind: mi_q, weight: 1.0}]``). The same bound as an
evaluation metric of any trained model is :func:`vae_tf.metrics.fit_mi_bound`.

The regulariser is the InfoGAN-style variational lower bound (Barber & Agakov 2003) on the mutual
information between a chosen part ẑ of the code and the decoder's output x':

    MI(θ, φ, Q) = E_{x ~ data, z ~ q_φ(z|x), x' = E_θ[x|z]}[ log Q(ẑ | x') ] + H(ẑ)  ≤  I(ẑ; x'),
    loss += −λ · MI                                        (λ = ``weight``; a batch mean, nats)

**What Q reads.** x' is the likelihood's mean E_θ[x | z] (``likelihood.expected(decoder(z))``):
a deterministic, differentiable function of θ and, through the reparameterised z, of φ, so the
gradient of the bound reaches encoder and decoder. (An ancestral sample from a Bernoulli decoder
would not be differentiable.) For sentences it is the expected one-hot word at every position
(the teacher-forced softmax, ``[positions, vocabulary]``), which Q reads flattened (mlp).

**ẑ** (``target``): ``categorical`` — the categorical part c of a code with one
(``gaussian_categorical``); or a list of continuous dims (``[0, 3]``), or ``gaussian`` for all of
them.

- categorical: Q(c | x') = softmax(Q-logits); during training ẑ is the relaxed one-hot sample c̃
  the decoder saw (the ELBO's own sample), and log Q(ẑ | x') = Σ_k c̃_k log Q_k(x') — exact for a
  one-hot c̃, the usual soft-target relaxation otherwise. H(ẑ) = H(mean_B π(x)), the entropy of
  the batch's aggregate category distribution (:func:`categorical_entropy`). Since log Q_k ≤ 0,
  the bound never exceeds H(ẑ) ≤ log K.
- continuous dims: Q(ẑ | x') = N(μ_Q(x'), diag σ_Q²(x')); H(ẑ) is the minibatch estimate of the
  aggregate posterior's entropy (:func:`continuous_entropy`; any family).

H(ẑ) depends on φ and is part of the regulariser (it rewards using every category); log Q and H
are means over the batch, in nats, like every other term.

**One training step** (Algorithm 1), after the forward pass (z ~ q(z|x), x' = E[x|z]):

1. the *Q step*: maximise mean_B log Q(ẑ | x') w.r.t. Q only (x' and ẑ held fixed), with Q's own
   optimizer (Adam, ``q_learning_rate``), inside the step (``tape.stop_recording``);
2. the model's update then minimises the loss with the −λ·MI term (with the updated Q) w.r.t.
   encoder and decoder, with the model's optimizer.

Encoder-only updates (aggressive inference) and evaluation use the bound without a Q step.

**Variables and checkpoints.** Q is the attribute ``q_network`` of this layer and is frozen from
Keras' point of view (``q_network.trainable = False``), so ``model.trainable_variables`` — what
the model's optimizer updates — stay the VAE's; the Q step differentiates w.r.t.
``q_network.weights`` itself. Q's optimizer is built at construction and its variables are held
in ``q_optimizer_variables``, which Keras tracks: checkpoints of ``model.variables`` carry Q,
Q's Adam state and its step count, and so does ``model.save_weights``.

**Precision and replicas.** Q is built with the model's precision (16-bit compute, float32
output); with ``mixed_float16`` Q's optimizer is a ``LossScaleOptimizer`` too. Under
``tf.distribute`` the Q step weights its loss by the replica's share of the global batch (the optimizers sum
gradients), and H(ẑ) of a categorical target is the global batch's; a continuous target's H(ẑ)
is each replica's minibatch estimate (:mod:`vae_tf.latents.density`).

Logged every step and epoch (train and ``val_``): ``mi_bound`` (the bound on the batch, with the
Q of the model's update), ``mi_entropy`` (H(ẑ)), ``mi_q_log_likelihood`` (mean log Q), ``q_loss``
(the Q step's loss, train only). A second ``mi_q`` regulariser's names end in ``_2``.
"""

from __future__ import annotations

import math
from typing import Literal

import keras
import tensorflow as tf
from pydantic import NonNegativeFloat, PositiveFloat

from vae_tf import replicas
from vae_tf.errors import ConfigError
from vae_tf.latents.density import log_batch_size, log_density_matrix
from vae_tf.optimizers import FusedAdam
from vae_tf.remedies.base import Regularizer, SlotOptions

DEFAULT_Q_NETWORK = {"kind": "mlp", "hidden": [256]}
_LOG_2PI = math.log(2.0 * math.pi)
_Q_LOG_VAR_CLIP = 20.0


# --- the estimators ---------------------------------------------------------------------------
def continuous_entropy(latent, params: tf.Tensor, z_continuous: tf.Tensor, dims=None) -> tf.Tensor:
    """H(q(ẑ)) of the selected continuous dims, minibatch estimate ``−mean_i log q̂(ẑ_i)`` with
    ``log q̂(z_i) = logsumexp_j log q(z_i | x_j) − log B`` (:mod:`vae_tf.latents.density`).
    Including j = i biases q̂ up, so the estimate is low (at most log B above the mean conditional
    entropy): a conservative H in an MI lower bound."""
    matrix = log_density_matrix(latent, params, z_continuous, dims)
    return -tf.reduce_mean(tf.reduce_logsumexp(matrix, axis=1) - log_batch_size(matrix))


def categorical_entropy(probs: tf.Tensor) -> tf.Tensor:
    """H(mean_B π): the entropy (nats) of the batch's aggregate category distribution (the global
    batch's under ``tf.distribute``)."""
    usage = replicas.global_mean(probs)
    return -tf.reduce_sum(tf.math.multiply_no_nan(tf.math.log(usage), usage))


class MITarget:
    """The part ẑ of the code that the MI bound is about (module docstring).

    ``spec``: ``"categorical"``, ``"gaussian"`` (all continuous dims), a list of continuous dim
    indices, or None (categorical when the family has a categorical part, else all continuous dims).
    """

    def __init__(self, latent, spec=None, what: str = "objective.regularizers.target"):
        self.latent = latent
        g = latent.continuous_size
        if spec is None:
            spec = "categorical" if latent.categories else "gaussian"
        if spec == "categorical":
            if not latent.categories:
                raise ConfigError(f"{what}=categorical needs a latent family with a categorical part "
                                  f"(gaussian_categorical; the family is {latent.family!r}): use a list of Gaussian "
                                  "dims instead, e.g. [0, 1]")
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
            return z[:, self.latent.continuous_size:]
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
            return categorical_entropy(tf.nn.softmax(self.latent.category_logits(params), axis=-1))
        return continuous_entropy(self.latent, params, z[:, :self.latent.continuous_size], self.dims)

    def usage(self, params: tf.Tensor) -> tf.Tensor:
        """π(x) ``[B, K]`` of a categorical target (what an aggregate H over many batches needs)."""
        return tf.nn.softmax(self.latent.category_logits(params), axis=-1)


def build_q_network(data_shape, out_size: int, spec=None, name: str = "q_network", dtype=None,
                    what: str = "objective.regularizers.q_network") -> keras.Model:
    """Q: x' ``[B, *data_shape]`` -> ``[B, out_size]``, any registered encoder kind
    (``{"kind": "mlp", "hidden": [256]}`` by default; ``{"kind": "conv", ...}`` for images).
    ``dtype``: the Keras dtype policy of its layers (the model's precision); the output is
    float32 in any case."""
    from vae_tf.networks import build_encoder

    spec = DEFAULT_Q_NETWORK if spec is None else spec
    if not isinstance(spec, dict):
        raise ConfigError(f"{what} must be a mapping like {{kind: mlp, hidden: [256]}}, got {spec!r}")
    spec = dict(spec)
    kind = spec.pop("kind", "mlp")
    if not isinstance(kind, str):
        raise ConfigError(f"{what}.kind must name a network kind (mlp, conv), got {kind!r}")
    return build_encoder(kind, tuple(int(s) for s in data_shape), int(out_size), name=name, what=what, dtype=dtype,
                         **spec)


# --- the regulariser --------------------------------------------------------------------------
class MIQ(Regularizer):
    """``regularizers: [{kind: mi_q, weight: 1.0, target: categorical, q_network: {kind: mlp,
    hidden: [256]}, q_learning_rate: 0.001}]`` (module docstring): the penalty is ``−λ · mi_bound``.
    ``target`` defaults to the categorical part when the family has one, else every Gaussian dim.
    """

    kind = "mi_q"

    class Options(SlotOptions):
        kind: Literal["mi_q"] = "mi_q"
        weight: NonNegativeFloat = 1.0
        target: Literal["categorical", "gaussian"] | list[int] | None = None
        q_network: dict | None = None
        q_learning_rate: PositiveFloat = 1e-3

    def __init__(self, options, context, index: int = 1, **kwargs):
        super().__init__(options, context, index=index, **kwargs)
        what = "objective.regularizers"
        self.target = MITarget(context.latent, self.options.target, what=f"{what}.target")
        self.q_network = build_q_network(context.decoded_shape or context.data_shape, self.target.q_size,
                                         self.options.q_network,
                                         name=self.key("q_network"), dtype=context.precision,
                                         what=f"{what}.q_network")
        # Frozen for Keras: model.trainable_variables (the model optimizer's) stay the VAE's; the
        # Q step differentiates w.r.t. q_network.weights itself.
        self.q_network.trainable = False
        self.q_optimizer = FusedAdam(self.options.q_learning_rate, name=self.key("q_optimizer"))
        if context.precision == "mixed_float16":  # Q computes in float16 like the VAE: dynamic loss scaling
            self.q_optimizer = keras.optimizers.LossScaleOptimizer(self.q_optimizer,
                                                                   name=self.key("q_loss_scale_optimizer"))
        self.q_optimizer.build(self.q_network.weights)
        # A list attribute of variables is tracked by Keras: Q's optimizer state becomes part of
        # model.variables, so checkpoints and save_weights carry it.
        self.q_optimizer_variables = list(self.q_optimizer.variables)
        self.bound_tracker = keras.metrics.Mean(name=self.key("mi_bound"))
        self.entropy_tracker = keras.metrics.Mean(name=self.key("mi_entropy"))
        self.log_q_tracker = keras.metrics.Mean(name=self.key("mi_q_log_likelihood"))
        self.q_loss_tracker = keras.metrics.Mean(name=self.key("q_loss"))
        self.train_only_metrics = (self.key("q_loss"),)

    def describe(self):
        return {**super().describe(), "target": self.target.describe()}

    @property
    def metrics(self):
        return [self.bound_tracker, self.entropy_tracker, self.log_q_tracker, self.q_loss_tracker]

    def q_inputs(self, model, terms: dict) -> tuple[tf.Tensor, tf.Tensor]:
        """``(x', ẑ)``: the likelihood's expectation of the decoder output (its mean; a sentence's
        word probabilities) and the part of the code."""
        return model.likelihood.expected(terms["out"]), self.target.select(terms["z"])

    def q_update(self, model, x_rec: tf.Tensor, target: tf.Tensor) -> tf.Tensor:
        """The Q step: one update of Q's weights maximising mean_B log Q(ẑ | x') (``x_rec`` and
        ``target`` are constants here). Returns its loss −mean_B log Q."""
        weights = self.q_network.weights
        with tf.GradientTape() as tape:
            loss = -tf.reduce_mean(self.target.q_log_likelihood(self.q_network(x_rec, training=True), target))
            scaled = model.gradient_loss(loss, self.q_optimizer, batch_size=tf.shape(target)[0])  # replicas, loss scale
        self.q_optimizer.apply_gradients(zip(tape.gradient(scaled, weights), weights))
        return loss

    def eval_terms(self, model, terms):
        x_rec, target = self.q_inputs(model, terms)
        log_q = self.target.q_log_likelihood(self.q_network(x_rec, training=False), target)
        entropy = self.target.entropy(terms["params"], terms["z"])
        return {self.key("mi_q_log_likelihood"): log_q, self.key("mi_entropy"): entropy,
                self.key("mi_bound"): tf.reduce_mean(log_q) + entropy}

    def train_terms(self, model, terms, tape):
        x_rec, target = self.q_inputs(model, terms)
        with tape.stop_recording():  # the Q step: its own optimizer, no gradient to θ, φ
            q_loss = self.q_update(model, tf.stop_gradient(x_rec), tf.stop_gradient(target))
        return {**self.eval_terms(model, terms), self.key("q_loss"): q_loss}

    @property
    def penalty_key(self):
        return self.key("mi_bound")

    def penalty(self, terms):
        return -self.options.weight * terms[self.penalty_key]

    def update_trackers(self, terms):
        batch = tf.cast(tf.shape(terms["elbo"])[0], tf.float32)

        def mean(key):
            return replicas.batch_mean_for_tracker(terms[self.key(key)], batch)

        self.bound_tracker.update_state(mean("mi_bound"), sample_weight=batch)
        self.entropy_tracker.update_state(mean("mi_entropy"), sample_weight=batch)
        self.log_q_tracker.update_state(terms[self.key("mi_q_log_likelihood")])
        if self.key("q_loss") in terms:
            self.q_loss_tracker.update_state(mean("q_loss"), sample_weight=batch)


__all__ = ["DEFAULT_Q_NETWORK", "MIQ", "MITarget", "build_q_network", "categorical_entropy", "continuous_entropy"]
