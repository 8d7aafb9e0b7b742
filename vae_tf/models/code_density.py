"""Densities of the code under the approximate posterior, for the batch estimators the remedies
need: the entropy of the aggregate posterior of a part of the code (MI maximisation) and the
minibatch mutual information I_q(x; z) (the aggressive schedule's stopping rule).

Works for every latent family: the continuous part of the code (all of z for ``gaussian`` and
``normal_gamma``, the Gaussian dims of ``gaussian_categorical``) is factorised over dims given x,
with per-dim marginals q(z_i | x) — a Normal for the Gaussian families, a two-component
Student-t mixture for the Normal-Gamma family (λ integrated out); the categorical part of
``gaussian_categorical`` is Cat(π(x)).

The aggregate posterior q(z) = E_x q(z|x) is estimated by the batch's own mixture, ``j = i``
included (He et al. 2019, jxhe ``calc_mi``; metrics reference §3):

    log q̂(z_i) = logsumexp_j log q(z_i | x_j) − log B.

All functions are TensorFlow (usable inside ``train_step``), means over the batch, nats.

Under ``tf.distribute`` (several replicas in sync), :func:`categorical_entropy` uses the
aggregate category distribution of the *global* batch (an all-reduce; the gradient is exact, see
:func:`vae_tf.models.replicas.global_mean`); the pairwise estimators (:func:`continuous_entropy`,
:func:`minibatch_mutual_information`) use each replica's own examples as the minibatch (``B / R``
examples, so their log B cap is lower), which keeps them free of all-gathers.
"""

from __future__ import annotations

import tensorflow as tf
import tensorflow_probability as tfp

from vae_tf.latents.categorical import GaussianCategoricalLatent
from vae_tf.models import replicas

tfd = tfp.distributions


def continuous_size(latent) -> int:
    """Number of continuous code dims (the leading ``latent_dim`` columns of z)."""
    return int(latent.latent_dim)


def has_categorical(latent) -> bool:
    return isinstance(latent, GaussianCategoricalLatent)


def continuous_marginal(latent, params: tf.Tensor):
    """q(z_c | x) of the continuous code part as a TFP distribution with batch shape ``[B, g]``."""
    if has_categorical(latent):
        mean, log_var, _ = latent.split(params)
        return tfd.Normal(mean, tf.exp(0.5 * log_var))
    return latent.posterior(params)


def log_density_matrix(latent, params: tf.Tensor, z_continuous: tf.Tensor, dims=None) -> tf.Tensor:
    """``[B_z, B_x]``: log q(z_i | x_j) of the continuous code values ``z_continuous`` ``[B_z, g]``
    under every posterior of the batch, summed over ``dims`` (default: all continuous dims)."""
    dist = continuous_marginal(latent, params)
    per_dim = dist.log_prob(z_continuous[:, None, :])  # [B_z, B_x, g] by broadcasting
    if dims is not None:
        per_dim = tf.gather(per_dim, list(dims), axis=-1)
    return tf.reduce_sum(per_dim, axis=-1)


def _log_batch_size(x: tf.Tensor) -> tf.Tensor:
    return tf.math.log(tf.cast(tf.shape(x)[0], tf.float32))


def continuous_entropy(latent, params: tf.Tensor, z_continuous: tf.Tensor, dims=None) -> tf.Tensor:
    """H(q(ẑ)) of the selected continuous dims, minibatch estimate ``−mean_i log q̂(ẑ_i)`` (module
    docstring). Including j = i biases q̂ up, so the estimate is low (at most log B above the mean
    conditional entropy): a conservative H in an MI lower bound."""
    matrix = log_density_matrix(latent, params, z_continuous, dims)
    return -tf.reduce_mean(tf.reduce_logsumexp(matrix, axis=1) - _log_batch_size(matrix))


def categorical_entropy(probs: tf.Tensor) -> tf.Tensor:
    """H(mean_B π): the entropy (nats) of the batch's aggregate category distribution (the global
    batch's under ``tf.distribute``)."""
    usage = replicas.global_mean(probs)
    return -tf.reduce_sum(tf.math.multiply_no_nan(tf.math.log(usage), usage))


def hard_code(latent, params: tf.Tensor, seed) -> tf.Tensor:
    """A code z ~ q(z|x) with the *exact* one-hot category for ``gaussian_categorical`` (the
    discrete model used at evaluation and in serving), the family's usual sample otherwise."""
    if has_categorical(latent):
        mean, log_var, logits = latent.split(params)
        seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int32), 2)
        z_gauss = mean + tf.exp(0.5 * log_var) * tf.random.stateless_normal(tf.shape(mean), seed=seeds[0])
        category = tf.random.stateless_categorical(logits, 1, seed=seeds[1], dtype=tf.int32)[:, 0]
        return tf.concat([z_gauss, tf.one_hot(category, latent.categories, dtype=tf.float32)], axis=-1)
    return latent.sample(params, seed=seed)


def minibatch_mutual_information(latent, params: tf.Tensor, seed) -> tf.Tensor:
    """I_q(x; z) by the minibatch estimator of He et al. (2019) on one batch, for any family:

        Î = mean_i [ log q(z_i | x_i) − logsumexp_j log q(z_i | x_j) + log B ],

    one z_i ~ q(z|x_i) per example (exact one-hot category for ``gaussian_categorical``, whose
    log q adds log π_j(c_i) to the Gaussian dims). Capped at ≈ log B and noisy; with a fixed
    ``seed`` and batch, differences between two models (or two epochs) are not sampling noise.
    """
    z = hard_code(latent, params, seed)
    g = continuous_size(latent)
    matrix = log_density_matrix(latent, params, z[:, :g])
    if has_categorical(latent):
        log_pi = tf.nn.log_softmax(latent.split(params)[2], axis=-1)  # [B_x, K]
        matrix += tf.matmul(z[:, g:], log_pi, transpose_b=True)  # log π_j(c_i), [B_z, B_x]
    log_q_own = tf.linalg.diag_part(matrix)
    return tf.reduce_mean(log_q_own - tf.reduce_logsumexp(matrix, axis=1)) + _log_batch_size(matrix)


__all__ = ["categorical_entropy", "continuous_entropy", "continuous_marginal", "continuous_size", "hard_code",
           "has_categorical", "log_density_matrix", "minibatch_mutual_information"]
