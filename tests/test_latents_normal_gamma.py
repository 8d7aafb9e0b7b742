"""Normal-Gamma mixture latent (NG-VAE): densities vs SciPy, sample moments, gradients, the
closed-form KL vs Monte Carlo, the mixture KL estimators, and training + export on digits."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy import special, stats

from vae_tf.errors import ConfigError
from vae_tf.export import export_model
from vae_tf.latents import NormalGammaLatent, build_latent
from vae_tf.latents.normal_gamma import NormalGamma, NormalGammaMixture, kl_gamma, kl_normal_gamma
from vae_tf.models import build_vae


def _ng_logpdf(z, lam, mu, a, b):
    return stats.gamma.logpdf(lam, a, scale=1.0 / b) + stats.norm.logpdf(z, mu, 1.0 / np.sqrt(lam))


def test_log_prob_matches_scipy(rng):
    mu, a, b = np.array([0.5, -1.0, 2.0]), np.array([3.0, 1.5, 20.0]), np.array([2.0, 0.5, 4.0])
    z, lam = rng.normal(size=3), rng.gamma(2.0, size=3)
    ng = NormalGamma(mu, a, b)
    np.testing.assert_allclose(ng.log_prob(z, lam).numpy(), _ng_logpdf(z, lam, mu, a, b), rtol=1e-5)
    # The marginal of z is Student-t(2α, μ, √(β/α)).
    np.testing.assert_allclose(ng.marginal().log_prob(z.astype(np.float32)).numpy(), stats.t.logpdf(z, 2 * a, mu, np.sqrt(b / a)), rtol=1e-5)

    logit = np.array([0.3, -2.0, 1.5])
    p = special.expit(logit)
    mix = NormalGammaMixture(mu, logit, (9.0, 2.5), (2.0, 2.5))
    expected = np.logaddexp(np.log(p) + _ng_logpdf(z, lam, mu, 9.0, 2.0), np.log1p(-p) + _ng_logpdf(z, lam, mu, 2.5, 2.5))
    np.testing.assert_allclose(mix.log_prob(z, lam).numpy(), expected, rtol=1e-5)
    marginal = np.log(p * stats.t.pdf(z, 18.0, mu, np.sqrt(2.0 / 9.0)) + (1 - p) * stats.t.pdf(z, 5.0, mu, 1.0))
    np.testing.assert_allclose(mix.marginal().log_prob(z.astype(np.float32)).numpy(), marginal, rtol=1e-5)


def test_sample_moments_match_the_analytic_ones():
    ng = NormalGamma([1.0, -2.0], [5.0, 3.0], [2.0, 6.0])
    z, lam = (t.numpy() for t in ng.sample([200_000], seed=tf.constant([3, 4])))
    np.testing.assert_allclose(lam.mean(0), [5 / 2, 3 / 6], rtol=0.01)  # E[λ] = α/β
    np.testing.assert_allclose(z.mean(0), [1.0, -2.0], atol=0.01)
    np.testing.assert_allclose(z.var(0), [2 / 4, 6 / 2], rtol=0.03)  # Var[z] = β/(α − 1)
    np.testing.assert_allclose(ng.variance().numpy(), [0.5, 3.0])

    mix = NormalGammaMixture([0.5], [1.0], (9.0, 2.5), (2.0, 2.5))
    p = special.expit(1.0)
    z, lam = (t.numpy() for t in mix.sample([200_000], seed=tf.constant([5, 6])))
    np.testing.assert_allclose(lam.mean(), p * 4.5 + (1 - p) * 1.0, rtol=0.01)
    np.testing.assert_allclose(mix.precision_mean().numpy(), [p * 4.5 + (1 - p) * 1.0], rtol=1e-6)
    np.testing.assert_allclose(z.var(), p * 0.25 + (1 - p) * 2.5 / 1.5, rtol=0.03)
    np.testing.assert_allclose(mix.variance().numpy(), [p * 0.25 + (1 - p) * 2.5 / 1.5], rtol=1e-6)


def test_gradients_reach_mean_weight_and_hyperparameters():
    """Pathwise gradients of Monte-Carlo means match the analytic derivatives of the moments."""
    loc, logit = tf.Variable([0.3]), tf.Variable([0.4])
    a1, b1, a2, b2 = (tf.Variable(v) for v in (6.0, 2.0, 3.0, 3.0))
    variables = [logit, a1, b1, a2, b2]
    with tf.GradientTape(persistent=True) as tape:
        mix = NormalGammaMixture(loc, logit, (a1, a2), (b1, b2))
        z, lam = mix.sample([100_000], seed=tf.constant([7, 8]))
        mean_lam, mean_z = tf.reduce_mean(lam), tf.reduce_mean(z)
    grads = [np.asarray(g).reshape(()) for g in tape.gradient(mean_lam, variables)]
    p = float(special.expit(0.4))
    dp = p * (1 - p)
    # E[λ] = p α1/β1 + (1 − p) α2/β2.
    expected = [dp * (6 / 2 - 3 / 3), p / 2, -p * 6 / 4, (1 - p) / 3, -(1 - p) * 3 / 9]
    np.testing.assert_allclose(grads, expected, rtol=0.05)
    # E[z] = μ: dE[z]/dμ = 1; z = μ + ε/√λ also carries gradients to every precision parameter.
    grads_z = tape.gradient(mean_z, [loc, *variables])
    assert float(grads_z[0][0]) == pytest.approx(1.0, rel=1e-5)
    assert all(g is not None and np.all(np.isfinite(g)) for g in grads_z)

    # Through the family: the reconstruction-side sample carries gradients to μ and logit p.
    family = NormalGammaLatent(latent_dim=2)
    params = tf.Variable([[0.5, -0.5, 0.0, 1.0]])
    with tf.GradientTape() as tape:
        z = family.sample(tf.tile(params, [20_000, 1]), seed=tf.constant([1, 2]))
        objective = tf.reduce_sum(tf.reduce_mean(tf.square(z), axis=0))  # Σ_i E[z_i²] = Σ_i μ_i² + Var[z_i]
    grad = tape.gradient(objective, params).numpy()[0]
    np.testing.assert_allclose(grad[:2], [1.0, -1.0], rtol=0.1)  # 2 μ_i
    # d Var[z_i] / d logit_i = p (1 − p) (β1/(α1 − 1) − β2/(α2 − 1)) < 0: a sharper z as p rises.
    p = special.expit([0.0, 1.0])
    np.testing.assert_allclose(grad[2:], p * (1 - p) * (0.25 - 2.5 / 1.5), rtol=0.15)


def _mc_kl_component(mu, a, b, a0, b0, n, rng):
    lam = rng.gamma(a, 1.0 / b, size=n)
    z = mu + rng.standard_normal(n) / np.sqrt(lam)
    log_ratio = _ng_logpdf(z, lam, mu, a, b) - stats.norm.logpdf(z) - stats.gamma.logpdf(lam, a0, scale=1.0 / b0)
    return log_ratio.mean(), log_ratio.std() / np.sqrt(n)


@pytest.mark.parametrize("mu, a, b, a0, b0", [(0.0, 2.5, 2.5, 1.0, 1.0), (1.3, 9.0, 2.0, 1.0, 1.0),
                                              (-0.7, 4.0, 0.5, 2.0, 3.0), (0.2, 30.0, 30.0, 5.0, 5.0)])
def test_closed_form_kl_matches_monte_carlo(mu, a, b, a0, b0, rng):
    kl = float(kl_normal_gamma(mu, a, b, a0, b0))
    mc, se = _mc_kl_component(mu, a, b, a0, b0, 400_000, rng)
    assert abs(mc - kl) < 3 * se, (kl, mc, se)
    # The Gamma part equals TFP's registered Gamma-Gamma KL.
    import tensorflow_probability as tfp

    tfd = tfp.distributions
    assert float(kl_gamma(a, b, a0, b0)) == pytest.approx(
        float(tfd.kl_divergence(tfd.Gamma(a, b), tfd.Gamma(a0, b0))), rel=1e-5, abs=1e-6)


def _mixture_kl_reference(mu, logit, components, prior, n, rng):
    """KL(q || p) of one Normal-Gamma mixture dimension by NumPy/SciPy draws (component,
    λ | component, z | λ) and SciPy densities: ``(estimate, standard error)``. The prior is
    N(0, 1) x Gamma(a0, b0) (the model's, class docstring)."""
    p = float(special.expit(logit))
    (a1, b1), (a2, b2) = components
    a0, b0 = prior
    first = rng.random(n) < p
    lam = np.where(first, rng.gamma(a1, 1 / b1, n), rng.gamma(a2, 1 / b2, n))
    z = mu + rng.standard_normal(n) / np.sqrt(lam)
    log_q = np.logaddexp(np.log(p) + _ng_logpdf(z, lam, mu, a1, b1), np.log1p(-p) + _ng_logpdf(z, lam, mu, a2, b2))
    log_ratio = log_q - stats.norm.logpdf(z) - stats.gamma.logpdf(lam, a0, scale=1 / b0)
    return log_ratio.mean(), log_ratio.std() / np.sqrt(n)


def test_mixture_kl_estimators_against_a_large_monte_carlo(rng):
    mu, logit = 0.8, 0.2
    (a1, b1), (a2, b2), (a0, b0) = (9.0, 2.0), (2.5, 2.5), (1.0, 1.0)
    reference, se = _mixture_kl_reference(mu, logit, ((a1, b1), (a2, b2)), (a0, b0), 400_000, rng)

    mix = NormalGammaMixture([mu], [logit], (a1, a2), (b1, b2))
    bound = float(mix.kl_bound(a0, b0)[0])
    gap = float(mix.entropy_of_choice()[0])
    # Convexity: KL ≤ bound ≤ KL + H(p).
    assert reference - 3 * se <= bound <= reference + gap + 3 * se, (reference, bound, gap, se)
    assert bound - reference > 10 * se  # the bound is not tight here: the test can tell them apart

    # The unbiased Monte-Carlo estimator (TF draws) agrees with the reference.
    mc = float(mix.kl_monte_carlo(a0, b0, num_samples=200_000, seed=tf.constant([9, 9]))[0])
    assert abs(mc - reference) < 3 * np.sqrt(se**2 + 2 * se**2), (mc, reference, se)


def test_family_kl_per_dim_is_the_bound_or_the_monte_carlo_estimate(rng):
    params = tf.constant([[0.5, -1.0, 2.0, -3.0], [0.0, 0.3, -0.5, 0.1]])
    family = NormalGammaLatent(latent_dim=2)
    kl = family.kl_per_dim(params).numpy()
    assert kl.shape == (2, 2)
    mu, logit = params.numpy()[:, :2], params.numpy()[:, 2:]
    p = special.expit(logit)
    kl1 = np.vectorize(lambda m: float(kl_normal_gamma(m, 9.0, 2.0, 1.0, 1.0)))(mu)
    kl2 = np.vectorize(lambda m: float(kl_normal_gamma(m, 2.5, 2.5, 1.0, 1.0)))(mu)
    np.testing.assert_allclose(kl, p * kl1 + (1 - p) * kl2, rtol=1e-5)

    # One-sample Monte Carlo per row: 100,000 rows average to the KL, checked against an
    # independent NumPy/SciPy estimate (the default components 9/2 and 2.5/2.5, prior Gamma(1, 1)).
    mc_family = NormalGammaLatent(latent_dim=2, kl_estimator="monte_carlo")
    tf.random.set_seed(0)
    draws = mc_family.kl_per_dim(tf.tile(params[:1], [100_000, 1])).numpy()
    for dim, (m, lg) in enumerate(zip(mu[0], logit[0])):
        reference, se = _mixture_kl_reference(m, lg, ((9.0, 2.0), (2.5, 2.5)), (1.0, 1.0), 400_000, rng)
        mc_se = draws[:, dim].std() / np.sqrt(len(draws))
        assert abs(draws[:, dim].mean() - reference) < 4 * np.hypot(se, mc_se), (dim, draws[:, dim].mean(), reference)


def test_export_outputs_and_stateless_prior():
    family = NormalGammaLatent(latent_dim=2)
    params = tf.constant([[0.5, -1.0, 2.0, -3.0]])
    out = family.export_outputs(params)
    assert list(out) == ["embedding", "z_mean", "precision_mean", "informative_weight"]
    p = special.expit([2.0, -3.0])
    np.testing.assert_allclose(out["embedding"], [[0.5, -1.0]])
    np.testing.assert_allclose(out["informative_weight"], [p], rtol=1e-6)
    np.testing.assert_allclose(out["precision_mean"], [p * 4.5 + (1 - p) * 1.0], rtol=1e-6)
    z = family.sample_prior(tf.constant([[1, 2], [3, 4], [1, 2]])).numpy()
    np.testing.assert_array_equal(z[0], z[2])
    np.testing.assert_array_equal(family.sample_prior(tf.constant([[3, 4]])).numpy()[0], z[1])


@pytest.mark.parametrize("options, match", [
    ({"alpha1": 1.0}, "alpha1 must be > 1"),
    ({"alpha2": 0.5}, "alpha2 must be > 1"),
    ({"beta1": 0.0}, "beta1 must be a finite number > 0"),
    ({"alpha1": 2.0, "beta1": 4.0}, "informative component must have the larger precision mean"),
    ({"kl_estimator": "exact"}, "kl_estimator must be one of bound, monte_carlo"),
    ({"alpha3": 1.0}, "unknown option model.latent.alpha3; did you mean model.latent.alpha2\\?"),
])
def test_bad_options_are_one_line_config_errors(options, match):
    with pytest.raises(ConfigError, match=match):
        build_latent("normal_gamma", latent_dim=3, **options)


@pytest.mark.slow
def test_trains_on_digits_reports_diagnostics_and_exports(digits, tmp_path):
    keras.utils.set_random_seed(0)
    model = build_vae(digits.data_shape, latent={"family": "normal_gamma", "latent_dim": 3},
                      network={"kind": "mlp", "hidden": [32]}, seed=0)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    history = model.fit(digits.pipeline("train", 64), validation_data=digits.pipeline("val", 128), epochs=2,
                        verbose=0, shuffle=False).history
    keys = ["informative_dims"] + [f"{name}_{i}" for name in ("informative_weight", "precision_mean") for i in range(3)]
    for key in ["loss", "elbo", "kl", *keys, *[f"val_{k}" for k in keys]]:
        assert key in history and np.all(np.isfinite(history[key])), key
    assert all(0 < history[f"informative_weight_{i}"][-1] < 1 for i in range(3))
    assert all(1.0 < history[f"precision_mean_{i}"][-1] < 4.5 for i in range(3))
    diagnostics = model.latent.per_dim_diagnostics()  # the last evaluation's values
    np.testing.assert_allclose(diagnostics["informative_weight"],
                               [history[f"val_informative_weight_{i}"][-1] for i in range(3)], rtol=1e-5)
    assert model.kl_per_dim.shape == (3,)

    path = export_model(model, tmp_path, "ng")
    loaded = tf.saved_model.load(str(path))
    x = digits.x_test[:8]
    served = loaded.signatures["encode"](x=tf.constant(x))
    local = model.encode(x)
    assert set(served) == {"embedding", "z_mean", "precision_mean", "informative_weight"}
    for key in local:
        assert served[key].shape == (8, 3)
        np.testing.assert_allclose(served[key].numpy(), local[key].numpy(), rtol=1e-5, atol=1e-6)
    drawn = loaded.signatures["sample"](seed=tf.constant([[1, 2], [3, 4]]))
    assert drawn["z"].shape == (2, 3) and drawn["x_mean"].shape == (2, 8, 8, 1)
    info = json.loads((path / "assets" / "vae_tf_model.json").read_text())
    assert info["latent"]["family"] == "normal_gamma"
    assert info["latent"]["hyperparameters"]["alpha1"] == 9.0
    assert info["signatures"]["encode"]["outputs"] == ["embedding", "informative_weight", "precision_mean", "z_mean"]


@pytest.mark.slow
def test_the_diagnostics_read_a_many_draw_monte_carlo_kl_that_is_never_negative(rng):
    """Trained with ``kl_estimator: monte_carlo``, every `vae-tf train` ended at its first epoch's
    diagnostics: single draws are negative for many examples, and the (ε, δ)-collapse check
    refused them. The diagnostics now read the mean of many draws, clipped at 0, which agrees
    with an independent SciPy estimate of the mixture KL; training keeps the one-draw estimate."""
    from vae_tf.latents.normal_gamma import DIAGNOSTIC_KL_DRAWS
    from vae_tf.metrics import collapse_fraction

    family = NormalGammaLatent(latent_dim=2, kl_estimator="monte_carlo")
    params = tf.constant([[0.0, 0.0, -6.0, -6.0]] * 4000)  # collapsed dims: p ≈ 0, KL ≈ KL2 = 0.41
    one = family.kl_per_dim(params, seed=tf.constant([1, 2])).numpy()
    assert (one < 0).mean() > 0.2  # what the collapse check used to be given
    kl = family.kl_per_dim_diagnostic(params, seed=tf.constant([1, 2])).numpy()
    assert kl.shape == (4000, 2) and kl.min() >= 0
    reference, se = _mixture_kl_reference(0.0, -6.0, ((9.0, 2.0), (2.5, 2.5)), (1.0, 1.0), 400_000, rng)
    spread = one.std() / np.sqrt(DIAGNOSTIC_KL_DRAWS)  # one example's many-draw mean
    assert abs(kl.mean() - reference) < 4 * np.hypot(se, spread / np.sqrt(kl.size)) + 1e-3, (kl.mean(), reference)
    assert kl.std() < 2 * spread  # each example's value is a mean of many draws
    assert collapse_fraction(kl, 0.01) == 0.0  # the floor (0.41 nats) is far above ε
    bound = NormalGammaLatent(latent_dim=2)
    np.testing.assert_array_equal(bound.kl_per_dim_diagnostic(params).numpy(), bound.kl_per_dim(params).numpy())


@pytest.mark.slow
def test_a_monte_carlo_kl_model_trains_with_the_epoch_diagnostics_and_evaluates(digits):
    from training.callbacks import CollapseDiagnostics
    from vae_tf.metrics import evaluate_model

    keras.utils.set_random_seed(0)
    model = build_vae(digits.data_shape, network={"kind": "mlp", "hidden": [32]}, seed=0,
                      latent={"family": "normal_gamma", "latent_dim": 3, "kl_estimator": "monte_carlo"})
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    history = model.fit(digits.pipeline("train", 64), epochs=1, verbose=0,
                        callbacks=[CollapseDiagnostics(digits.x_val)]).history
    assert 0 <= history["val_collapsed_fraction"][0] <= 1 and history["val_active_units"][0] >= 0
    result = evaluate_model(model, digits, split="test", iw_k=0, probe=False, max_examples=300)
    assert result["metrics"]["collapsed_frac_eps_0.01"] == 0.0 and result["metrics"]["kl"] > 3 * 0.40
