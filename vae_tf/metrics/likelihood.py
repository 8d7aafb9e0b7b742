"""Importance-weighted NLL (Burda, Grosse & Salakhutdinov 2016) and a Monte-Carlo ELBO for a
:class:`vae_tf.models.VAE` (metrics.md §5).

    L_K(x) = log (1/K) Σ_k w_k,   w_k = p(x|z_k) p(z_k) / q(z_k|x),   z_k ~ q(z|x)
    ELBO = E[L_1] ≤ E[L_K] ≤ E[L_{K+1}] ≤ log p(x),   L_K → log p(x) as K → ∞

How the three densities are obtained from the model:

- q(z|x) and p(z): ``model.latent.posterior(params)`` / ``model.latent.prior()``, TFP
  distributions factorised over latent dimensions (batch shape ``[B, d]`` / ``[d]``); their
  ``log_prob`` is summed over every axis after the sample and batch axes. This holds for any
  family whose posterior and prior are such distributions.
- A family that is not (e.g. mixed continuous/discrete codes, or a code z that is a function of
  the sampled variables) provides ``iw_terms(params, num_samples, seed) -> (z, log_q, log_p)``
  with ``z`` ``[S, B, code_size]`` and ``log_q``, ``log_p`` ``[S, B]`` (log densities summed over
  the latent variables, MC-ready); it is used when present.
- p(x|z): ``model.log_likelihood(target, z)`` (``likelihood.log_prob(x, decoder(z))``, summed over
  data dimensions; for a sentence, the teacher-forced log-probability of its words and ``<eos>``).

Report the NLL only for normalised likelihoods (Bernoulli on binarised data, Gaussian with σ,
continuous Bernoulli); compare models at the same K.
"""

from __future__ import annotations

import math
import weakref

import numpy as np
import tensorflow as tf
from scipy.special import logsumexp

from vae_tf.errors import ConfigError
from vae_tf.metrics._checks import positive_int
from vae_tf.metrics._compiled import compiled_for
from vae_tf.models.inputs import model_rows

#: jxhe ``nll_iw`` defaults (``--iw_nsamples 500`` drawn in chunks of 100).
IW_K = 500
IW_CHUNK = 100

def _is_distribution(obj) -> bool:
    return callable(getattr(obj, "log_prob", None)) and callable(getattr(obj, "sample", None))


def _sum_trailing(log_prob: tf.Tensor, keep: int) -> tf.Tensor:
    """Sum a log_prob over every axis after the first ``keep`` (the factorised latent dims)."""
    rank = log_prob.shape.rank
    if rank is None or rank < keep:
        raise ConfigError("the latent family's log_prob has an unexpected rank; give it an iw_terms method")
    if rank == keep:
        return log_prob
    return tf.reduce_sum(log_prob, axis=list(range(keep, rank)))


#: Models whose latent family :func:`_check_family` passed (it runs the encoder eagerly: ~0.1 s
#: for a text model, once per model instead of once per metric call).
_FAMILY_CHECKED: weakref.WeakSet = weakref.WeakSet()


def _check_family(model, x: np.ndarray) -> None:
    """Fail eagerly, with one line, before tracing: inside tf.function the error would be wrapped."""
    latent = model.latent
    if hasattr(latent, "iw_terms") or model in _FAMILY_CHECKED:
        return
    params = model.posterior_params(tf.constant(x[:1]))
    if not (_is_distribution(latent.posterior(params)) and _is_distribution(latent.prior())):
        raise ConfigError(
            f"latent family {getattr(latent, 'family', type(latent).__name__)!r} has no TFP posterior/prior "
            "factorised over dims; give it an iw_terms(params, num_samples, seed) method for IW-NLL"
        )
    _FAMILY_CHECKED.add(model)


def latent_log_terms(latent, params: tf.Tensor, num_samples: int, seed: tf.Tensor):
    """``(z, log_q, log_p)`` for ``num_samples`` draws per example: ``z`` ``[S, B, code]``,
    ``log_q`` = log q(z|x) and ``log_p`` = log p(z), each ``[S, B]`` summed over latent dims."""
    if hasattr(latent, "iw_terms"):
        return latent.iw_terms(params, num_samples, seed)
    posterior, prior = latent.posterior(params), latent.prior()
    if not (_is_distribution(posterior) and _is_distribution(prior)):
        raise ConfigError(
            f"latent family {getattr(latent, 'family', type(latent).__name__)!r} has no TFP posterior/prior "
            "factorised over dims; give it an iw_terms(params, num_samples, seed) method for IW-NLL"
        )
    z = posterior.sample(num_samples, seed=seed)
    log_q = _sum_trailing(posterior.log_prob(z), 2)
    log_p = _sum_trailing(prior.log_prob(z), 2)
    return z, log_q, log_p


def _log_weights(model, x, seed, chunk):
    """``(x [B, ...], seed [2], chunk []) -> log w [chunk, B]`` (float32), compiled per model
    (:func:`compiled_for`); ``chunk`` is a tensor, so one trace serves every chunk size."""
    params = model.posterior_params(x)
    target = model.prepare(x)[1]
    z, log_q, log_p = latent_log_terms(model.latent, params, chunk, seed)
    batch = tf.shape(params)[0]
    flat_z = tf.reshape(z, tf.concat([[chunk * batch], tf.shape(z)[2:]], axis=0))
    # Row c * B + b of the flattened draws belongs to example b: tile the target the same way.
    tiled = tf.tile(target, tf.concat([[chunk], tf.ones([tf.rank(target) - 1], tf.int32)], axis=0))
    log_px = tf.reshape(model.log_likelihood(tiled, flat_z), [chunk, batch])
    return log_px + log_p - log_q


def _batched_log_weights(model, x, k: int, chunk: int, seed: int, batch_size: int):
    """Yield ``(start, log_w)`` per batch of examples, ``log_w`` float64 ``(B, K)``."""
    k = positive_int("k", k)
    chunk = positive_int("chunk", chunk)
    if k % chunk:
        raise ConfigError(f"k={k} must be a multiple of chunk={chunk} (every chunk draws chunk samples); "
                          f"use e.g. k={math.ceil(k / chunk) * chunk}")
    batch_size = positive_int("batch_size", batch_size)
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise ConfigError(f"seed must be an integer, got {seed!r}")
    x = model_rows(model, x, as_array=True)
    _check_family(model, x)
    fn = compiled_for(model, _log_weights, batch_polymorphic=True)
    n_chunks = k // chunk
    for b, start in enumerate(range(0, len(x), batch_size)):
        xb = tf.constant(x[start:start + batch_size])
        log_w = np.empty((len(xb), k), dtype=np.float64)
        for c in range(n_chunks):
            s = tf.constant([int(seed), b * n_chunks + c], tf.int32)
            lw = fn(xb, s, tf.constant(chunk, tf.int32)).numpy()  # [chunk, B] float32
            log_w[:, c * chunk:(c + 1) * chunk] = lw.T
        yield start, log_w


def iw_log_weights(model, x, k: int = IW_K, chunk: int = IW_CHUNK, seed: int = 0,
                   batch_size: int = 100) -> np.ndarray:
    """The K log importance weights log w_k of every example, float64 ``(N, K)``.

    Draws are stateless: chunk c of batch b uses the seed ``(seed, b * (K / chunk) + c)``, so the
    result is a function of ``(seed, batch_size, chunk)`` and of nothing else.
    """
    return np.concatenate([lw for _, lw in _batched_log_weights(model, x, k, chunk, seed, batch_size)], axis=0)


def iw_nll(model, x, k: int = IW_K, chunk: int = IW_CHUNK, seed: int = 0, batch_size: int = 100,
           return_per_example: bool = False):
    """Importance-weighted negative log-likelihood NLL_K = −(1/N) Σ_n L_K(x_n) in nats/example.

    L_K(x) = logsumexp_k(log w_k) − log K with w_k = p(x|z_k) p(z_k) / q(z_k|x), z_k ~ q(z|x)
    (Burda et al. 2016, Eq. 8); the logsumexp is taken in float64. K samples per example are
    drawn in chunks of ``chunk`` (jxhe ``nll_iw``: K = 500, chunk 100); K must be a multiple of
    the chunk (jxhe silently divides by K even when fewer samples were drawn).

    NLL_K is an upper bound of −log p(x) that decreases in expectation as K grows; NLL_1 is
    −ELBO with a single-sample reconstruction term. Divide by ``D ln 2`` for bits/dim.

    Args:
        model: a :class:`vae_tf.models.VAE` (encoder, latent family, decoder, likelihood).
        x: examples ``(N, *data_shape)``.
        k, chunk: importance samples per example and samples per decoder pass.
        seed: integer seed of the stateless draws (see :func:`iw_log_weights`).
        batch_size: examples per pass; one decoder call sees ``chunk * batch_size`` codes.
        return_per_example: also return −L_K(x_n), float64 ``(N,)``.

    Returns:
        the mean NLL (float), or ``(mean, per_example)``.
    """
    # Reduced batch by batch: memory is batch_size x K, whatever N.
    per_example = np.concatenate([-(logsumexp(lw, axis=1) - math.log(k))
                                  for _, lw in _batched_log_weights(model, x, k, chunk, seed, batch_size)])
    mean = float(np.mean(per_example))
    return (mean, per_example) if return_per_example else mean


def _elbo_terms(model, xb, s, num_samples):
    """``(x, seed, num_samples) -> (reconstruction [B], kl [B])``, compiled per model
    (:func:`compiled_for`), the reconstruction a Monte-Carlo mean over ``num_samples`` draws."""
    params = model.posterior_params(xb)
    target = model.prepare(xb)[1]
    batch = tf.shape(params)[0]
    z, _, _ = latent_log_terms(model.latent, params, num_samples, s)
    flat_z = tf.reshape(z, tf.concat([[num_samples * batch], tf.shape(z)[2:]], axis=0))
    tiled = tf.tile(target, tf.concat([[num_samples], tf.ones([tf.rank(target) - 1], tf.int32)], axis=0))
    rec = tf.reduce_mean(tf.reshape(model.log_likelihood(tiled, flat_z), [num_samples, batch]), axis=0)
    kl = tf.reduce_sum(model.latent.kl_per_dim(params, z[0]), axis=-1)
    return rec, kl


def elbo_estimate(model, x, num_samples: int = 1, seed: int = 0, batch_size: int = 256,
                  return_per_example: bool = False) -> dict:
    """ELBO = E_q[log p(x|z)] − KL(q(z|x) ‖ p(z)) per example, averaged over ``x``.

    The reconstruction term is a Monte-Carlo mean over ``num_samples`` draws z ~ q(z|x); the KL is
    the family's ``kl_per_dim`` summed over dims (analytic for the Gaussian family; the family's
    docstring says when it is Monte Carlo). Same conventions as training: data dims and latent
    dims summed, mean over examples, nats.

    Returns:
        ``{"elbo", "reconstruction", "kl"}`` (floats); with ``return_per_example`` also
        ``"elbo_per_example"`` float64 ``(N,)``.
    """
    num_samples = positive_int("num_samples", num_samples)
    batch_size = positive_int("batch_size", batch_size)
    x = model_rows(model, x, as_array=True)
    _check_family(model, x)
    terms = compiled_for(model, _elbo_terms, batch_polymorphic=True)
    recs, kls = [], []
    for b, start in enumerate(range(0, len(x), batch_size)):
        rec, kl = terms(tf.constant(x[start:start + batch_size]), tf.constant([int(seed), b], tf.int32),
                         tf.constant(num_samples, tf.int32))
        recs.append(rec.numpy().astype(np.float64))
        kls.append(kl.numpy().astype(np.float64))
    rec, kl = np.concatenate(recs), np.concatenate(kls)
    result = {"elbo": float(np.mean(rec - kl)), "reconstruction": float(np.mean(rec)), "kl": float(np.mean(kl))}
    if return_per_example:
        result["elbo_per_example"] = rec - kl
    return result


__all__ = ["IW_CHUNK", "IW_K", "elbo_estimate", "iw_log_weights", "iw_nll", "latent_log_terms"]
