"""Every likelihood's log_prob against SciPy (or the closed form), summed over data dims; means,
samples, variance floors and option errors."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from scipy import integrate, special, stats

from vae_tf.errors import ConfigError
from vae_tf.likelihoods import LIKELIHOODS, build_likelihood

SHAPE = (4, 3, 2, 1)  # batch of 4 images 3x2x1


def _sum_data(values):
    return values.reshape(values.shape[0], -1).sum(1)


def test_bernoulli_matches_scipy_on_binary_data(rng):
    lik = build_likelihood("bernoulli", data_rank=3)
    logits = rng.normal(size=SHAPE).astype(np.float32)
    x = (rng.random(SHAPE) < 0.5).astype(np.float32)
    expected = _sum_data(stats.bernoulli.logpmf(x, special.expit(logits)))
    np.testing.assert_allclose(lik.log_prob(tf.constant(x), tf.constant(logits)).numpy(), expected, rtol=1e-5)
    np.testing.assert_allclose(lik.mean(tf.constant(logits)).numpy(), special.expit(logits), rtol=1e-6)


def test_bernoulli_on_grey_levels_is_the_cross_entropy(rng):
    lik = build_likelihood("bernoulli", data_rank=3)
    logits = rng.normal(size=SHAPE).astype(np.float32)
    x = rng.random(SHAPE).astype(np.float32)
    p = special.expit(logits)
    expected = _sum_data(x * np.log(p) + (1 - x) * np.log1p(-p))
    np.testing.assert_allclose(lik.log_prob(tf.constant(x), tf.constant(logits)).numpy(), expected, rtol=1e-5)


def test_continuous_bernoulli_matches_closed_form_and_normalises(rng):
    lik = build_likelihood("continuous_bernoulli", data_rank=3)
    logits = rng.normal(scale=2.0, size=SHAPE).astype(np.float32)
    x = rng.random(SHAPE).astype(np.float32)
    lam = special.expit(logits.astype(np.float64))
    # log C(λ) with C(λ) = 2 artanh(1 − 2λ) / (1 − 2λ) (Loaiza-Ganem & Cunningham 2019, eq. 7).
    log_norm = np.log(2 * np.arctanh(1 - 2 * lam) / (1 - 2 * lam))
    expected = _sum_data(log_norm + x * np.log(lam) + (1 - x) * np.log1p(-lam))
    np.testing.assert_allclose(lik.log_prob(tf.constant(x), tf.constant(logits)).numpy(), expected, rtol=1e-4)

    one = build_likelihood("continuous_bernoulli", data_rank=1)
    for logit in (-3.0, 0.7, 2.5):
        density = lambda v, logit=logit: float(np.exp(one.log_prob(tf.constant([[v]], tf.float32), tf.constant([[logit]])).numpy()[0]))  # noqa: E731
        total, _ = integrate.quad(density, 0.0, 1.0)
        assert total == pytest.approx(1.0, abs=1e-4)


def test_gaussian_fixed_matches_scipy(rng):
    lik = build_likelihood("gaussian", data_rank=3, sigma=0.3)
    loc = rng.normal(size=SHAPE).astype(np.float32)
    x = rng.normal(size=SHAPE).astype(np.float32)
    expected = _sum_data(stats.norm.logpdf(x, loc, 0.3))
    np.testing.assert_allclose(lik.log_prob(tf.constant(x), tf.constant(loc)).numpy(), expected, rtol=1e-5)
    np.testing.assert_allclose(lik.mean(tf.constant(loc)).numpy(), loc)


def test_gaussian_learned_scalar_starts_at_sigma_and_is_trainable(rng):
    lik = build_likelihood("gaussian_learned", data_rank=3, sigma=0.5, min_sigma=0.01)
    assert float(lik.current_sigma()) == pytest.approx(0.5, rel=1e-5)
    loc = rng.normal(size=SHAPE).astype(np.float32)
    x = rng.normal(size=SHAPE).astype(np.float32)
    expected = _sum_data(stats.norm.logpdf(x, loc, 0.5))
    with tf.GradientTape() as tape:
        log_prob = lik.log_prob(tf.constant(x), tf.constant(loc))
        total = tf.reduce_sum(log_prob)
    np.testing.assert_allclose(log_prob.numpy(), expected, rtol=1e-5)
    assert [v.name for v in lik.trainable_weights] == ["raw_sigma"]
    (grad,) = tape.gradient(total, lik.trainable_weights)
    # d/dσ Σ log N(x; μ, σ) = Σ (−1/σ + (x−μ)²/σ³), times dσ/dρ = sigmoid(ρ) (σ = floor + softplus ρ).
    dsigma = np.sum(-1 / 0.5 + (x - loc) ** 2 / 0.5**3)
    assert float(grad) == pytest.approx(dsigma * special.expit(float(lik.raw_sigma.numpy())), rel=1e-4)

    lik.raw_sigma.assign(-50.0)  # softplus(-50) ≈ 0: the floor holds
    assert float(lik.current_sigma()) == pytest.approx(0.01, rel=1e-4)


def test_gaussian_per_pixel_matches_scipy_and_keeps_its_floor(rng):
    lik = build_likelihood("gaussian_per_pixel", data_rank=3, min_sigma=0.05)
    assert lik.param_channels == 2
    loc = rng.normal(size=SHAPE).astype(np.float32)
    raw = rng.normal(size=SHAPE).astype(np.float32)
    out = tf.constant(np.concatenate([loc, raw], axis=-1))
    x = rng.normal(size=SHAPE).astype(np.float32)
    sigma = 0.05 + np.log1p(np.exp(raw.astype(np.float64)))
    expected = _sum_data(stats.norm.logpdf(x, loc, sigma))
    np.testing.assert_allclose(lik.log_prob(tf.constant(x), out).numpy(), expected, rtol=1e-5)
    np.testing.assert_allclose(lik.mean(out).numpy(), loc)
    _, scale = lik.split(tf.constant(np.concatenate([loc, np.full(SHAPE, -80.0, np.float32)], -1)))
    assert float(tf.reduce_min(scale)) >= 0.05


# Likelihoods of values, whose decoder output is [..., param_channels × data]; the token
# categorical (logits [B, T, vocab], ids out) has its own tests below.
VALUE_LIKELIHOODS = [name for name in LIKELIHOODS.names() if name != "categorical"]


@pytest.mark.parametrize("name", VALUE_LIKELIHOODS)
def test_samples_have_the_likelihood_mean(name):
    options = {"sigma": 0.2} if name == "gaussian" else {}
    lik = build_likelihood(name, data_rank=1, **options)
    out = tf.constant(np.tile(np.array([[-1.0, 0.5] * lik.param_channels], np.float32), [20_000, 1]))
    draws = lik.sample(out, seed=tf.constant([3, 4])).numpy()
    assert draws.shape == (20_000, 2)
    np.testing.assert_allclose(draws.mean(0), lik.mean(out[:1]).numpy()[0], atol=0.03)


def test_bernoulli_draws_are_tfps_for_the_same_seed_eager_and_traced(rng):
    """The Bernoulli likelihood samples without TFP (so a `vae-tf train` never imports it); for a
    stateless seed its draws are exactly TFP's ``Bernoulli(logits).sample(seed=...)``, so exports
    and figures sample what they sampled before. Unseeded draws are 0/1 at the right rate."""
    import tensorflow_probability as tfp

    lik = build_likelihood("bernoulli", data_rank=3)
    out = tf.constant(rng.normal(scale=3.0, size=(4, 28, 28, 1)), tf.float32)
    traced = tf.function(lambda o, s: lik.sample(o, seed=s))
    for seed in ([1, 2], [123, -5], [0, 0]):
        seed = tf.constant(seed, tf.int32)
        theirs = tfp.distributions.Bernoulli(logits=out, dtype=tf.float32).sample(seed=seed).numpy()
        np.testing.assert_array_equal(lik.sample(out, seed=seed).numpy(), theirs)
        np.testing.assert_array_equal(traced(out, seed).numpy(), theirs)
    assert 0.1 < theirs.mean() < 0.9  # not a degenerate comparison: both values occur
    half = lik.sample(tf.zeros((50_000,)), seed=None).numpy()
    assert set(np.unique(half)) == {0.0, 1.0} and abs(half.mean() - 0.5) < 0.01


@pytest.mark.parametrize("name", VALUE_LIKELIHOODS)
def test_row_samples_depend_only_on_their_own_seed(name):
    lik = build_likelihood(name, data_rank=1)
    out = tf.constant(np.linspace(-1, 1, 3 * 6 * lik.param_channels, dtype=np.float32).reshape(3, -1))
    seeds = tf.constant([[5, 6], [7, 8], [5, 6]])
    rows = lik.sample_rows(out, seeds).numpy()
    again = lik.sample_rows(out[1:2], seeds[1:2]).numpy()
    np.testing.assert_array_equal(rows[1], again[0])
    np.testing.assert_array_equal(lik.sample_rows(out, seeds).numpy(), rows)


def test_token_categorical_samples_have_the_softmax_frequencies():
    """Each position draws a word id with probability softmax(logits): frequencies over 20 000
    draws match the probabilities computed in NumPy; ids are int32, the mean is the argmax."""
    lik = build_likelihood("categorical", data_rank=1)
    logits = np.array([[[0.0, 1.0, 2.0], [3.0, 0.0, -1.0]]], np.float32)  # [B=1, T=2, vocab=3]
    out = tf.constant(np.repeat(logits, 20_000, axis=0))
    draws = lik.sample(out, seed=tf.constant([3, 4])).numpy()
    assert draws.dtype == np.int32 and draws.shape == (20_000, 2)
    probs = np.exp(logits[0]) / np.exp(logits[0]).sum(-1, keepdims=True)
    for t in range(2):
        np.testing.assert_allclose(np.bincount(draws[:, t], minlength=3) / 20_000, probs[t], atol=0.015)
    np.testing.assert_array_equal(lik.mean(out[:1]).numpy()[0], [2, 0])


def test_token_categorical_log_prob_both_ways_is_scipys_masked_sum_and_has_the_same_gradient():
    """log_prob (the fused sparse cross-entropy, what training differentiates) and
    log_prob_for_evaluation (word logit minus log-sum-exp, what IW-NLL and the ELBO estimates run)
    against SciPy: Σ over non-padding positions of log_softmax(logits)[w], with logits of ±80
    (an exp without the max subtracted would overflow float32); and the same gradient."""
    rng = np.random.default_rng(0)
    lik = build_likelihood("categorical", data_rank=1)
    logits = rng.normal(scale=3.0, size=(5, 6, 11)).astype(np.float32)
    logits[0, 0, 3], logits[1, 2, :] = 80.0, -80.0
    target = rng.integers(1, 11, size=(5, 6)).astype(np.int32)
    target[2, 4:] = 0  # <pad>: not scored
    target[3, :] = 0   # an all-padding row scores 0
    log_softmax = special.log_softmax(logits.astype(np.float64), axis=-1)
    picked = np.take_along_axis(log_softmax, target[..., None], axis=-1)[..., 0]
    reference = np.where(target != 0, picked, 0.0).sum(axis=1)
    out = tf.constant(logits)
    gradients = []
    for method in (lik.log_prob, lik.log_prob_for_evaluation):
        with tf.GradientTape() as tape:
            tape.watch(out)
            value = method(tf.constant(target), out)
        np.testing.assert_allclose(value.numpy(), reference, rtol=1e-5, atol=1e-4)
        gradients.append(tape.gradient(value, out).numpy())
    np.testing.assert_allclose(gradients[1], gradients[0], atol=1e-6)
    # Traced without a known rank (the gather needs it): the same values, by way of log_prob.
    unknown = tf.function(lik.log_prob_for_evaluation, input_signature=[tf.TensorSpec(None, tf.int32),
                                                                        tf.TensorSpec(None, tf.float32)])
    np.testing.assert_allclose(unknown(target, logits).numpy(), reference, rtol=1e-5, atol=1e-4)


def test_token_categorical_row_samples_depend_only_on_their_own_seed():
    lik = build_likelihood("categorical", data_rank=1)
    out = tf.constant(np.linspace(-2, 2, 3 * 5 * 7, dtype=np.float32).reshape(3, 5, 7))
    seeds = tf.constant([[5, 6], [7, 8], [5, 6]])
    rows = lik.sample_rows(out, seeds).numpy()
    assert rows.dtype == np.int32 and rows.shape == (3, 5)
    np.testing.assert_array_equal(rows[1], lik.sample_rows(out[1:2], seeds[1:2]).numpy()[0])
    np.testing.assert_array_equal(lik.sample_rows(out, seeds).numpy(), rows)


@pytest.mark.parametrize("name, options, match", [
    ("gaussian", {"sigma": 0.0}, "sigma must be > 0"),
    ("gaussian", {"sigma": "big"}, "model.likelihood.sigma: input should be a valid number, got 'big'"),
    ("gaussian_learned", {"sigma": 1.0, "min_sigma": 2.0}, "min_sigma must be in"),
    ("gaussian_per_pixel", {"min_sigma": -1.0}, "min_sigma must be > 0"),
    ("bernoulli", {"sigma": 1.0}, "unknown option model.likelihood.sigma; valid options: none"),
    ("poisson", {}, "unknown likelihood 'poisson'; choose one of: bernoulli"),
])
def test_bad_likelihood_options_are_one_line_config_errors(name, options, match):
    with pytest.raises(ConfigError, match=match) as info:
        build_likelihood(name, data_rank=3, **options)
    assert "\n" not in str(info.value)
