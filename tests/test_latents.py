"""Gaussian latent family: analytic KL vs Monte Carlo, reparameterisation, stateless prior draws."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from scipy import stats

from vae_tf.errors import ConfigError
from vae_tf.latents import GaussianLatent, build_latent


def test_analytic_kl_matches_monte_carlo(rng):
    family = GaussianLatent(latent_dim=4)
    mean = rng.normal(size=(3, 4)).astype(np.float32)
    log_var = rng.normal(scale=0.7, size=(3, 4)).astype(np.float32)
    params = tf.constant(np.concatenate([mean, log_var], axis=1))
    kl = family.kl_per_dim(params).numpy()  # [3, 4]

    # TFP's registered Normal-Normal KL on the family's own distributions.
    import tensorflow_probability as tfp

    np.testing.assert_allclose(kl, tfp.distributions.kl_divergence(family.posterior(params), family.prior()).numpy(),
                               rtol=1e-5, atol=1e-6)
    # Closed form written out independently.
    var = np.exp(log_var)
    expected = 0.5 * (mean**2 + var - log_var - 1.0)
    np.testing.assert_allclose(kl, expected, rtol=1e-5, atol=1e-6)

    # Monte Carlo: E_q[log q(z) - log p(z)], per dim, with SciPy densities; within 3 standard errors.
    n = 200_000
    z = mean[None] + np.sqrt(var)[None] * rng.standard_normal((n, 3, 4))
    log_ratio = stats.norm.logpdf(z, mean[None], np.sqrt(var)[None]) - stats.norm.logpdf(z)
    mc, se = log_ratio.mean(0), log_ratio.std(0) / np.sqrt(n)
    assert np.all(np.abs(mc - kl) < 3 * se + 1e-4), (mc, kl, se)


def test_sample_is_reparameterised_and_has_posterior_moments():
    family = GaussianLatent(latent_dim=2)
    params = tf.Variable([[1.0, -2.0, np.log(0.25), np.log(4.0)]])
    with tf.GradientTape() as tape:
        z = family.sample(tf.tile(params, [50_000, 1]), seed=tf.constant([1, 2]))
        objective = tf.reduce_mean(z[:, 0] + z[:, 1] ** 2)
    grad = tape.gradient(objective, params).numpy()[0]
    # d/dμ0 E[z0] = 1; d/dμ1 E[z1²] = 2 μ1 = -4; d/dlogσ1² E[z1²] = σ1² = 4.
    np.testing.assert_allclose(grad[[0, 1, 3]], [1.0, -4.0, 4.0], rtol=0.05)
    np.testing.assert_allclose(z.numpy().mean(0), [1.0, -2.0], atol=0.05)
    np.testing.assert_allclose(z.numpy().std(0), [0.5, 2.0], rtol=0.02)


def test_embedding_and_export_outputs_are_the_posterior_mean():
    family = GaussianLatent(latent_dim=3)
    params = tf.constant([[0.1, 0.2, 0.3, -1.0, 0.0, 1.0]])
    out = family.export_outputs(params)
    assert list(out)[0] == "embedding"
    np.testing.assert_allclose(out["embedding"], [[0.1, 0.2, 0.3]])
    np.testing.assert_allclose(out["z_mean"], out["embedding"])
    np.testing.assert_allclose(out["z_log_var"], [[-1.0, 0.0, 1.0]])


def test_entropy_matches_scipy():
    family = GaussianLatent(latent_dim=2)
    params = tf.constant([[0.0, 3.0, np.log(0.5), np.log(2.0)]], tf.float32)
    expected = stats.norm(0, np.sqrt(0.5)).entropy() + stats.norm(0, np.sqrt(2.0)).entropy()
    np.testing.assert_allclose(family.entropy_per_example(params).numpy(), [expected], rtol=1e-5)


@pytest.mark.slow
def test_prior_samples_are_stateless_per_row():
    family = GaussianLatent(latent_dim=5)
    seeds = tf.constant([[1, 2], [3, 4], [1, 2]])
    z = family.sample_prior(seeds).numpy()
    np.testing.assert_array_equal(z[0], z[2])  # same seed row, same draw
    assert not np.allclose(z[0], z[1])
    alone = family.sample_prior(tf.constant([[3, 4]])).numpy()
    np.testing.assert_array_equal(alone[0], z[1])  # independent of the other rows
    many = family.sample_prior(tf.stack([tf.zeros(4000, tf.int32), tf.range(4000)], axis=1)).numpy()
    assert abs(many.mean()) < 0.05 and abs(many.std() - 1.0) < 0.05


def test_log_var_clip_keeps_extreme_encoders_finite():
    family = GaussianLatent(latent_dim=1, log_var_clip=10.0)
    params = tf.constant([[0.0, 1e4], [0.0, -1e4]])
    assert np.all(np.isfinite(family.kl_per_dim(params).numpy()))


@pytest.mark.parametrize("options, match", [({"latent_dim": 0}, "positive integer"),
                                            ({"latent_dim": 4, "bogus": 1}, "unknown option model.latent.bogus; valid options: latent_dim, log_var_clip"),
                                            # the name first: not "latent_dim must be a positive integer, got None"
                                            ({"latent_dims": 4}, r"^unknown option model.latent.latent_dims; did you mean "
                                                                 r"model.latent.latent_dim\?$"),
                                            ({}, r"^model.latent.latent_dim is required$")])
def test_bad_latent_options_are_config_errors(options, match):
    with pytest.raises(ConfigError, match=match):
        build_latent("gaussian", **options)
    with pytest.raises(ConfigError, match="choose one of: gaussian"):
        build_latent("wishart", latent_dim=2)


@pytest.mark.parametrize("family, options", [("gaussian", {}), ("gaussian_categorical", {"categories": 3})])
def test_log_var_clip_bounds_huge_raw_outputs_and_is_the_identity_inside_its_range(family, options):
    """A diverging (or 16-bit, overflowed) encoder cannot make the KL Inf; inside the clamp the KL
    and its gradient are the unclamped closed form."""
    latent = build_latent(family, latent_dim=2, log_var_clip=10.0, **options)
    extra = [[0.3, -0.2, 0.1]] * 3 if family == "gaussian_categorical" else [[]] * 3
    mean = [[0.5, -1.0], [0.5, -1.0], [0.5, -1.0]]
    log_var = [[1e30, -1e30], [np.inf, -np.inf], [3.0, -9.5]]
    params = tf.constant(np.concatenate([mean, log_var, extra], axis=1), tf.float32)
    kl = latent.kl_per_dim(params).numpy()
    assert np.all(np.isfinite(kl))
    np.testing.assert_allclose(kl[0, :2], 0.5 * (np.square(mean[0]) + np.exp([10.0, -10.0]) - [10.0, -10.0] - 1),
                               rtol=1e-6)
    np.testing.assert_array_equal(kl[1], kl[0])
    np.testing.assert_allclose(kl[2, :2], 0.5 * (np.square(mean[2]) + np.exp(log_var[2]) - log_var[2] - 1),
                               rtol=1e-6)
    assert np.all(np.isfinite(latent.sample(params, seed=tf.constant([1, 2])).numpy()))
    inside = tf.Variable(params[2:])
    with tf.GradientTape() as tape:
        total = tf.reduce_sum(latent.kl_per_dim(inside)[:, :2])
    grad = tape.gradient(total, inside).numpy()[0, 2:4]
    np.testing.assert_allclose(grad, 0.5 * (np.exp(log_var[2]) - 1), rtol=1e-6)  # d/dlogσ² ½(σ² − logσ²)
    assert build_latent(family, latent_dim=2, **options).log_var_clip == 20.0  # the documented default


@pytest.mark.parametrize("family, extra", [("gaussian", {}), ("gaussian_categorical", {"categories": 3})])
@pytest.mark.parametrize("clip", [-5, 0, float("nan"), float("inf"), True, "5"])
def test_a_log_var_clip_that_is_not_a_positive_number_is_a_one_line_error(family, extra, clip):
    """-5 was taken: the clamp's bounds crossed (tf.clip_by_value(lv, 5, -5)) and every input
    encoded to log σ² = 5, without a word."""
    with pytest.raises(ConfigError, match=r"^model.latent.log_var_clip(:| must be a finite number > 0)") as err:
        build_latent(family, latent_dim=2, log_var_clip=clip, **extra)
    assert "\n" not in str(err.value) and repr(clip) in str(err.value)
    latent = build_latent(family, latent_dim=2, log_var_clip=3, **extra)  # an int is a number
    _, log_var = latent.split(tf.constant([[0.0, 0.0, 9.0, -9.0] + [0.0] * (latent.param_size - 4)]))[:2]
    np.testing.assert_allclose(log_var.numpy(), [[3.0, -3.0]])
