"""Densities of the code under the approximate posterior, estimated on a batch: the matrix of
log q(z_i | x_j) and the minibatch mutual information I_q(x; z) of He et al. (2019). The aggressive
inference procedure's stopping rule and the MI regulariser's entropy use them; they work for every
latent family through the family interface (no family is named here).

The continuous part of the code (all of z for ``gaussian`` and ``normal_gamma``, the Gaussian dims
of ``gaussian_categorical``) is factorised over dims given x, with per-dim marginals
q(z_i | x) (:meth:`~vae_tf.latents.base.LatentFamily.continuous_posterior`: a Normal for the
Gaussian families, a two-component Student-t mixture for the Normal-Gamma family, λ integrated
out); a categorical part is Cat(π(x)) (:meth:`~vae_tf.latents.base.LatentFamily.category_logits`).

The aggregate posterior q(z) = E_x q(z|x) is estimated by the batch's own mixture, ``j = i``
included (He et al. 2019, jxhe ``calc_mi``, with a sampled log q(z_i | x_i) for its closed-form
entropy: :func:`minibatch_mutual_information`; metrics reference §3):

    log q̂(z_i) = logsumexp_j log q(z_i | x_j) − log B.

All functions are TensorFlow (usable inside ``train_step``), means over the batch, nats. Under
``tf.distribute`` they use each replica's own examples as the minibatch (``B / R`` examples, so
the log B cap is lower), which keeps them free of all-gathers.
"""

from __future__ import annotations

import tensorflow as tf


def log_batch_size(matrix: tf.Tensor) -> tf.Tensor:
    """log B for a ``[B, ...]`` tensor (the normaliser of the batch mixture)."""
    return tf.math.log(tf.cast(tf.shape(matrix)[0], tf.float32))


def log_density_matrix(latent, params: tf.Tensor, z_continuous: tf.Tensor, dims=None) -> tf.Tensor:
    """``[B_z, B_x]``: log q(z_i | x_j) of the continuous code values ``z_continuous``
    ``[B_z, continuous_size]`` under every posterior of the batch, summed over ``dims`` (default:
    all continuous dims)."""
    dist = latent.continuous_posterior(params)
    per_dim = dist.log_prob(z_continuous[:, None, :])  # [B_z, B_x, g] by broadcasting
    if dims is not None:
        per_dim = tf.gather(per_dim, list(dims), axis=-1)
    return tf.reduce_sum(per_dim, axis=-1)


def minibatch_mutual_information(latent, params: tf.Tensor, seed) -> tf.Tensor:
    """I_q(x; z) by the minibatch estimator of He et al. (2019) on one batch, for any family:

        Î = mean_i [ log q(z_i | x_i) − logsumexp_j log q(z_i | x_j) + log B ],

    one z_i ~ q(z|x_i) per example (the discrete model's exact one-hot category where the family
    has one, whose log q adds log π_j(c_i) to the continuous dims). Not jxhe's ``calc_mi`` line
    for line: it has the closed-form −H(q(z|x_i)) where this has log q(z_i | x_i) at the drawn
    z_i, its Monte-Carlo estimate (the same expectation; every family has the density, not every
    family a closed-form entropy), and it averages over its data loader, where this takes the one
    batch it is given (the aggressive procedure's held-out batch: capped at ≈ log B for that B).
    Noisy; with a fixed ``seed`` and batch, differences between two models (or two epochs) are
    not sampling noise. The reported diagnostic is :func:`vae_tf.metrics.mutual_information_minibatch`.
    """
    z = latent.hard_code(params, seed)
    g = latent.continuous_size
    matrix = log_density_matrix(latent, params, z[:, :g])
    logits = latent.category_logits(params)
    if logits is not None:
        log_pi = tf.nn.log_softmax(logits, axis=-1)  # [B_x, K]
        matrix += tf.matmul(z[:, g:], log_pi, transpose_b=True)  # log π_j(c_i), [B_z, B_x]
    log_q_own = tf.linalg.diag_part(matrix)
    return tf.reduce_mean(log_q_own - tf.reduce_logsumexp(matrix, axis=1)) + log_batch_size(matrix)


__all__ = ["log_batch_size", "log_density_matrix", "minibatch_mutual_information"]
