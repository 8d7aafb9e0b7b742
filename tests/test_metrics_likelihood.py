"""IW-NLL and the ELBO on a linear-Gaussian VAE, where log p(x) is known in closed form.

Model: z ~ N(0, I_d), x | z ~ N(W z + b, s² I_D), so p(x) = N(b, W Wᵀ + s² I). The columns of W
are orthogonal, so the exact posterior N(A (x − b), Σ) has a *diagonal* Σ = (I + WᵀW / s²)⁻¹
and the Gaussian family can represent it exactly. Encoder and decoder are single Dense layers
(no activation) whose weights are set by hand.
"""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy.stats import multivariate_normal

from vae_tf.errors import ConfigError, DataError
from vae_tf.latents import GaussianLatent
from vae_tf.likelihoods import GaussianFixedLikelihood
from vae_tf.metrics import elbo_estimate, iw_log_weights, iw_nll
from vae_tf.models import VAE

D, d, S = 5, 2, 0.5


@pytest.fixture(scope="module")
def linear_gaussian():
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.standard_normal((D, d)))
    w = q * np.array([1.5, 0.8])  # orthogonal columns: WᵀW diagonal
    b = rng.standard_normal(D)
    sigma_post = np.linalg.inv(np.eye(d) + w.T @ w / S**2)
    a = sigma_post @ w.T / S**2
    x = (rng.standard_normal((200, d)) @ w.T + b + S * rng.standard_normal((200, D))).astype(np.float32)
    log_px = multivariate_normal(b, w @ w.T + S**2 * np.eye(D)).logpdf(x.astype(np.float64))
    return {"w": w, "b": b, "sigma_post": sigma_post, "a": a, "x": x, "log_px": log_px}


def _model(lg, shrink=1.0, log_var_shift=0.0, latent=None) -> VAE:
    """The exact posterior (shrink=1, shift=0) or a deliberately wrong one."""
    encoder = keras.Sequential([keras.Input((D,)), keras.layers.Dense(2 * d)])
    kernel = np.zeros((D, 2 * d))
    kernel[:, :d] = shrink * lg["a"].T
    bias = np.concatenate([-shrink * lg["a"] @ lg["b"], np.log(np.diag(lg["sigma_post"])) + log_var_shift])
    encoder.layers[0].set_weights([kernel.astype(np.float32), bias.astype(np.float32)])
    decoder = keras.Sequential([keras.Input((d,)), keras.layers.Dense(D)])
    decoder.layers[0].set_weights([lg["w"].T.astype(np.float32), lg["b"].astype(np.float32)])
    model = VAE(encoder=encoder, decoder=decoder, latent=latent or GaussianLatent(d),
                likelihood=GaussianFixedLikelihood(sigma=S, data_rank=1))
    model(np.zeros((1, D), np.float32))
    return model


def _analytic_elbo(lg, model) -> np.ndarray:
    """E_q log p(x|z) − KL(q ‖ p) in closed form, per example."""
    params = model.encoder(lg["x"]).numpy().astype(np.float64)
    mu, log_var = params[:, :d], params[:, d:]
    var = np.exp(log_var)
    x, w, b = lg["x"].astype(np.float64), lg["w"], lg["b"]
    resid = x - mu @ w.T - b
    rec = (-0.5 * D * math.log(2 * math.pi * S**2) - 0.5 * np.sum(resid**2, axis=1) / S**2
           - 0.5 * (var @ np.sum(w**2, axis=0)) / S**2)
    kl = 0.5 * np.sum(mu**2 + var - log_var - 1, axis=1)
    return rec - kl


def test_exact_posterior_gives_the_true_nll_for_every_k(linear_gaussian):
    """With q(z|x) = p(z|x) every weight equals p(x): L_K = log p(x) exactly, whatever K."""
    model = _model(linear_gaussian)
    true_nll = -linear_gaussian["log_px"]
    for k, chunk in ((1, 1), (20, 10)):
        mean, per_example = iw_nll(model, linear_gaussian["x"], k=k, chunk=chunk, return_per_example=True)
        np.testing.assert_allclose(per_example, true_nll, atol=2e-4)
        assert mean == pytest.approx(true_nll.mean(), abs=1e-4)
    np.testing.assert_allclose(_analytic_elbo(linear_gaussian, model), linear_gaussian["log_px"], atol=2e-4)


def test_iw_nll_decreases_towards_the_true_nll_and_bounds_it(linear_gaussian):
    model = _model(linear_gaussian, shrink=0.5, log_var_shift=1.0)  # a poor encoder: a large gap
    true_nll = float(-linear_gaussian["log_px"].mean())
    neg_elbo = float(-_analytic_elbo(linear_gaussian, model).mean())
    values = [iw_nll(model, linear_gaussian["x"], k=k, chunk=min(k, 100), seed=1) for k in (1, 10, 100, 1000)]
    assert all(a > b for a, b in zip(values, values[1:])), values
    assert values[-1] >= true_nll - 0.01
    assert values[-1] - true_nll < 0.1 * (neg_elbo - true_nll)
    # IW-NLL ≤ −ELBO (the ELBO is L_1 in expectation): K = 500, the default.
    assert iw_nll(model, linear_gaussian["x"]) <= neg_elbo
    # L_1 is an unbiased estimate of the ELBO (within Monte-Carlo error).
    assert values[0] == pytest.approx(neg_elbo, abs=0.3)


def test_elbo_estimate_matches_the_closed_form(linear_gaussian):
    model = _model(linear_gaussian, shrink=0.5, log_var_shift=1.0)
    exact = _analytic_elbo(linear_gaussian, model)
    result = elbo_estimate(model, linear_gaussian["x"], num_samples=200, return_per_example=True)
    assert result["elbo"] == pytest.approx(exact.mean(), abs=0.05)
    assert result["elbo"] == pytest.approx(result["reconstruction"] - result["kl"], abs=1e-9)
    assert result["elbo_per_example"].shape == (200,)


def test_iw_draws_are_reproducible_and_chunking_only_changes_the_draws(linear_gaussian):
    model = _model(linear_gaussian, shrink=0.8)
    x = linear_gaussian["x"][:30]
    a = iw_log_weights(model, x, k=20, chunk=10, seed=3, batch_size=16)
    b = iw_log_weights(model, x, k=20, chunk=10, seed=3, batch_size=16)
    assert a.shape == (30, 20) and a.dtype == np.float64
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, iw_log_weights(model, x, k=20, chunk=10, seed=4, batch_size=16))


def test_k_must_be_a_multiple_of_the_chunk(linear_gaussian):
    model = _model(linear_gaussian)
    with pytest.raises(ConfigError, match="multiple of chunk") as err:
        iw_nll(model, linear_gaussian["x"], k=250, chunk=100)
    assert "\n" not in str(err.value)
    with pytest.raises(DataError):
        iw_nll(model, np.zeros((3, D + 1), np.float32), k=10, chunk=10)


class _NoDistributionLatent(GaussianLatent):
    def posterior(self, params):
        return params  # not a distribution


def test_a_family_without_tfp_distributions_gets_a_clear_error(linear_gaussian):
    model = _model(linear_gaussian, latent=_NoDistributionLatent(d))
    with pytest.raises(ConfigError, match="iw_terms") as err:
        iw_nll(model, linear_gaussian["x"][:4], k=2, chunk=2)
    assert "\n" not in str(err.value)


class _CustomTermsLatent(GaussianLatent):
    """A family that supplies its own IW terms (here: the Gaussian ones, computed by hand)."""

    def iw_terms(self, params, num_samples, seed):
        mean, log_var = self.split(params)
        eps = tf.random.stateless_normal(tf.concat([[num_samples], tf.shape(mean)], 0), seed=seed)
        z = mean + tf.exp(0.5 * log_var) * eps
        log_q = tf.reduce_sum(-0.5 * (math.log(2 * math.pi) + log_var + eps**2), axis=-1)
        log_p = tf.reduce_sum(-0.5 * (math.log(2 * math.pi) + z**2), axis=-1)
        return z, log_q, log_p


def test_a_family_may_supply_its_own_importance_terms(linear_gaussian):
    model = _model(linear_gaussian, latent=_CustomTermsLatent(d))
    _, per_example = iw_nll(model, linear_gaussian["x"], k=10, chunk=10, return_per_example=True)
    np.testing.assert_allclose(per_example, -linear_gaussian["log_px"], atol=2e-4)


def test_each_metric_function_is_traced_once_for_every_batch_and_split_size(linear_gaussian):
    """The metrics run batch by batch, the last batch shorter, and on splits of other sizes: each
    compiled function takes any batch size from its first call (one trace each, where
    `reduce_retracing` traced twice), and the values are those of the closed form."""
    from vae_tf.metrics import encode_posterior, representation_function
    from vae_tf.metrics._compiled import compiled_for
    from vae_tf.metrics.encode import _embed, _summarise
    from vae_tf.metrics.likelihood import _elbo_terms, _log_weights

    lg = linear_gaussian
    model = _model(lg)
    for rows in (200, 77):  # batches of 64: 64, 64, 64, 8; then 64, 13
        x = lg["x"][:rows]
        _, per_example = iw_nll(model, x, k=4, chunk=2, batch_size=64, return_per_example=True)
        np.testing.assert_allclose(per_example, -lg["log_px"][:rows], atol=2e-4)  # exact posterior: every draw is log p(x)
        elbo = elbo_estimate(model, x, num_samples=200, batch_size=64)  # a Monte-Carlo mean: compared on average
        assert elbo["elbo"] == pytest.approx(_analytic_elbo(lg, model)[:rows].mean(), abs=0.1)
        codes = representation_function(model, batch_size=64)(x)
        np.testing.assert_allclose(codes, model.encoder(x).numpy()[:, :d], rtol=1e-5, atol=1e-6)
        assert encode_posterior(model, x, batch_size=64)["z_mean"].shape == (rows, d)
    for fn in (_log_weights, _elbo_terms, _embed, _summarise):
        assert compiled_for(model, fn, batch_polymorphic=True).experimental_get_tracing_count() == 1, fn.__name__
