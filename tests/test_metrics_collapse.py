"""Collapse diagnostics with known answers: KL per dim, active units, MI (both estimators),
(ε, δ)-collapse. Pure NumPy: no TensorFlow, no model."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.special import logsumexp
from scipy.stats import norm

from vae_tf.errors import ConfigError, DataError
from vae_tf.metrics import (
    active_units,
    collapse_curve,
    collapse_fraction,
    collapse_thresholds,
    kl_per_dim_gaussian,
    mean_kl_per_dim,
    mutual_information,
    mutual_information_minibatch,
)


def _one_line(err) -> None:
    message = str(err.value)
    assert message and "\n" not in message


# --- KL per dimension ------------------------------------------------------------------------------

def test_kl_per_dim_matches_hand_values():
    mean = np.array([[0.0, 1.0, 0.0], [2.0, 0.0, -1.0]])
    log_var = np.array([[0.0, 0.0, math.log(4.0)], [0.0, math.log(0.25), 0.0]])
    kl = kl_per_dim_gaussian(mean, log_var)
    expected = np.array([
        [0.0, 0.5, 0.5 * (4.0 - math.log(4.0) - 1.0)],
        [2.0, 0.5 * (0.25 - math.log(0.25) - 1.0), 0.5],
    ])
    np.testing.assert_allclose(kl, expected, rtol=1e-12)
    assert kl.dtype == np.float64
    np.testing.assert_allclose(mean_kl_per_dim(mean, log_var), expected.mean(axis=0), rtol=1e-12)


def test_kl_per_dim_agrees_with_monte_carlo(rng):
    mean, log_var = np.array([[0.7, -1.2]]), np.array([[-0.5, 0.8]])
    z = mean + np.exp(0.5 * log_var) * rng.standard_normal((200_000, 2))
    mc = np.mean(norm.logpdf(z, mean, np.exp(0.5 * log_var)) - norm.logpdf(z), axis=0)
    np.testing.assert_allclose(kl_per_dim_gaussian(mean, log_var)[0], mc, atol=0.01)


def test_kl_shape_mismatch_is_a_one_line_data_error():
    with pytest.raises(DataError) as err:
        kl_per_dim_gaussian(np.zeros((4, 2)), np.zeros((4, 3)))
    _one_line(err)


# --- active units ----------------------------------------------------------------------------------

def test_active_units_on_hand_set_variances(rng):
    n = 1000
    stds = np.array([1.0, 0.2, 0.05, 0.0])  # variances 1, 0.04, 0.0025, 0
    base = rng.standard_normal((n, 4))
    base = (base - base.mean(0)) / base.std(0, ddof=1)  # unit sample variance (ddof=1) exactly
    means = base * stds
    count, variances = active_units(means)
    assert count == 2
    np.testing.assert_allclose(variances, stds**2, rtol=1e-10, atol=1e-15)


def test_active_units_uses_ddof_1_and_greater_equal():
    # Two points 0 and 0.15: ddof=1 variance 0.01125 (active), ddof=0 would be 0.005625 (inactive).
    count, variances = active_units(np.array([[0.0], [0.15]]))
    assert count == 1 and variances[0] == pytest.approx(0.01125)
    # Exactly at the threshold counts as active (>=, as jxhe's calc_au).
    count, _ = active_units(np.array([[0.0], [0.15]]), delta=float(variances[0]))
    assert count == 1


# --- mutual information ----------------------------------------------------------------------------

def _mi_reference(mean, log_var, z, comp_mean=None, comp_log_var=None):
    """Direct N x M x d broadcast (no expansion trick), for checking the chunked estimator."""
    comp_mean = mean if comp_mean is None else comp_mean
    comp_log_var = log_var if comp_log_var is None else comp_log_var
    var = np.exp(comp_log_var)
    log_q = -0.5 * np.sum(np.log(2 * np.pi) + comp_log_var[None] + (z[:, None] - comp_mean[None]) ** 2 / var[None], axis=2)
    log_qz = logsumexp(log_q, axis=1) - math.log(len(comp_mean))
    neg_h = -0.5 * np.sum(1 + np.log(2 * np.pi) + log_var, axis=1)
    return float(np.mean(neg_h - log_qz))


def test_full_mi_matches_a_direct_computation_for_any_chunk(rng):
    n, d = 300, 3
    mean, log_var = rng.standard_normal((n, d)), rng.normal(-1.0, 0.5, (n, d))
    eps = rng.standard_normal((n, d))
    z = mean + np.exp(0.5 * log_var) * eps
    expected = _mi_reference(mean, log_var, z)
    for chunk in (1, 7, 64, None):
        assert mutual_information(mean, log_var, eps=eps, chunk_size=chunk) == pytest.approx(expected, abs=1e-9)
    assert mutual_information(mean, log_var, z=z) == pytest.approx(expected, abs=1e-9)



@pytest.mark.parametrize("log_var_range, mean_scale", [((-20.0, 5.0), 3.0), ((-30.0, 10.0), 10.0), ((-50.0, -50.0), 1.0)])
def test_full_mi_matches_a_direct_computation_for_extreme_posterior_scales(rng, log_var_range, mean_scale):
    """Means far out in units of tiny posterior scales: μ² / σ² up to ~1e23, where expanding
    (z − μ)² / σ² into products loses every digit to cancellation (at log σ² = −50 it gave
    −8.5e6 nats instead of 3.6); the estimator takes the differences directly there."""
    n, d = 80, 4
    mean, log_var = mean_scale * rng.standard_normal((n, d)), rng.uniform(*log_var_range, (n, d))
    eps = rng.standard_normal((n, d))
    expected = _mi_reference(mean, log_var, mean + np.exp(0.5 * log_var) * eps)
    for chunk in (1, 7, None):
        assert mutual_information(mean, log_var, eps=eps, chunk_size=chunk) == pytest.approx(expected, rel=1e-9, abs=1e-9)

def test_mi_is_zero_for_a_code_independent_of_x(rng):
    n, d = 2000, 4
    # q(z|x) is the same distribution for every x (here N(c, 0.5²), not even the prior).
    mean = np.tile([0.3, -1.0, 2.0, 0.0], (n, 1))
    log_var = np.full((n, d), math.log(0.25))
    sd = math.sqrt(d / (2 * n))  # metrics.md §3: the estimator's standard deviation
    assert abs(mutual_information(mean, log_var, seed=0)) < 5 * sd
    assert abs(mutual_information_minibatch(mean, log_var, batch_size=50, seed=0)) < 5 * sd


def test_mi_is_log_n_for_a_code_that_identifies_each_point(rng):
    n, d = 500, 2
    mean = rng.uniform(-1000, 1000, (n, d))  # far apart compared with σ = e^-5
    log_var = np.full((n, d), -10.0)
    eps = rng.standard_normal((n, d))
    # Every z_n has density only under its own component: Î = log N + ½ mean(‖ε‖² − d), the second
    # term being the single-sample noise of −H − log q(z_n|x_n) (sd √(d / 2N)).
    noise = 0.5 * np.mean(np.sum(eps**2, axis=1) - d)
    assert mutual_information(mean, log_var, eps=eps) == pytest.approx(math.log(n) + noise, abs=1e-6)
    assert abs(mutual_information(mean, log_var, seed=1) - math.log(n)) < 5 * math.sqrt(d / (2 * n))


def test_minibatch_mi_is_capped_at_log_batch_and_weights_the_last_batch(rng):
    n, d, b = 1010, 2, 50  # 20 full batches and one of 10
    mean = rng.uniform(-1000, 1000, (n, d))
    log_var = np.full((n, d), -10.0)
    eps = rng.standard_normal((n, d))
    noise = 0.5 * np.mean(np.sum(eps**2, axis=1) - d)
    expected = (1000 * math.log(50) + 10 * math.log(10)) / 1010 + noise
    assert mutual_information_minibatch(mean, log_var, batch_size=b, eps=eps, seed=3) == pytest.approx(expected, abs=1e-6)


def test_collapsed_posterior_gives_half_mean_squared_norm_minus_d(rng):
    """q(z|x) = p(z): both estimators equal ½ mean_i(‖z_i‖² − d) exactly (metrics.md §3),
    which is noisy and can be negative."""
    n, d = 400, 8
    mean, log_var = np.zeros((n, d)), np.zeros((n, d))
    eps = rng.standard_normal((n, d))
    expected = 0.5 * np.mean(np.sum(eps**2, axis=1) - d)
    assert mutual_information(mean, log_var, eps=eps) == pytest.approx(expected, abs=1e-9)
    assert mutual_information_minibatch(mean, log_var, 50, eps=eps, shuffle=False) == pytest.approx(expected, abs=1e-9)
    # Per-batch values scatter around 0 with sd √(d / 2B) = 0.28: some are negative.
    batches = [mutual_information_minibatch(mean[i:i + 50], log_var[i:i + 50], 50, eps=eps[i:i + 50], shuffle=False)
               for i in range(0, n, 50)]
    assert min(batches) < 0 < max(batches)


def test_minibatch_mi_matches_a_loop_over_batches(rng):
    n, d, b = 230, 3, 32
    mean, log_var = rng.standard_normal((n, d)), rng.normal(-0.5, 0.3, (n, d))
    eps = rng.standard_normal((n, d))
    z = mean + np.exp(0.5 * log_var) * eps
    total = 0.0
    for start in range(0, n, b):
        s = slice(start, start + b)
        total += _mi_reference(mean[s], log_var[s], z[s]) * len(mean[s])
    value = mutual_information_minibatch(mean, log_var, b, eps=eps, shuffle=False)
    assert value == pytest.approx(total / n, abs=1e-9)
    # Shuffling regroups the points into other batches, which changes the value ...
    by_seed = {seed: mutual_information_minibatch(mean, log_var, b, eps=eps, seed=seed) for seed in (5, 6)}
    assert abs(by_seed[5] - value) > 1e-6 and abs(by_seed[5] - by_seed[6]) > 1e-6
    # ... but keeps every point with its own z (the rows of eps follow the rows of mean). With
    # z_i = mean_i and posteriors far narrower than the distances between means, only q(z_i|x_i)
    # counts in a batch's mixture, so a batch of B points gives exactly log B - d/2 per point,
    # however the points are grouped: the shuffled value is the size-weighted mean of that.
    # Means on a unit lattice, sd 1/40: neighbours are 40 sd apart (exp(-800) of overlap), and
    # |mean|/sd stays small enough for float64 (the estimator expands the square).
    separated = np.stack(np.unravel_index(np.arange(n), (7, 7, 5)), axis=1).astype(float)
    narrow = np.full((n, d), 2 * math.log(1 / 40))
    sizes = [min(b, n - start) for start in range(0, n, b)]  # 7 batches of 32, then 6
    expected = sum(size * (math.log(size) - d / 2) for size in sizes) / n
    assert mutual_information_minibatch(separated, narrow, b, eps=np.zeros((n, d)), seed=5) == pytest.approx(
        expected, abs=1e-9)
    # The same seed gives the same value, whatever NumPy's global random state.
    np.random.seed(1)
    again = mutual_information_minibatch(mean, log_var, b, eps=eps, seed=5)
    assert again == by_seed[5]


def test_minibatch_mi_with_groups_batches_each_group_apart_as_jxhe_text_loader_does(rng):
    """jxhe's text data loader (data/text_data.py::create_data_batch) sorts sentences by length
    and cuts each length into batches of at most B; calc_mi's batch-size-weighted mean follows."""
    n, d, b = 157, 3, 8
    mean, log_var = rng.standard_normal((n, d)), rng.normal(-0.5, 0.3, (n, d))
    eps = rng.standard_normal((n, d))
    z = mean + np.exp(0.5 * log_var) * eps
    lengths = rng.integers(3, 9, n)
    total = 0.0
    for length in sorted(set(lengths.tolist())):
        rows = np.flatnonzero(lengths == length)  # in their order, as shuffle=False keeps them
        for start in range(0, len(rows), b):
            batch = rows[start:start + b]
            total += _mi_reference(mean[batch], log_var[batch], z[batch]) * len(batch)
    value = mutual_information_minibatch(mean, log_var, b, eps=eps, shuffle=False, groups=lengths)
    assert value == pytest.approx(total / n, abs=1e-9)
    assert abs(value - mutual_information_minibatch(mean, log_var, b, eps=eps, shuffle=False)) > 1e-6
    # one group is the plain estimator; a wrong number of keys is one line
    assert mutual_information_minibatch(mean, log_var, b, eps=eps, seed=3, groups=np.zeros(n)) == pytest.approx(
        mutual_information_minibatch(mean, log_var, b, eps=eps, seed=3), abs=1e-12)
    with pytest.raises(DataError, match="groups has 3 keys for 157 rows; give one key per row"):
        mutual_information_minibatch(mean, log_var, b, eps=eps, groups=[1, 2, 3])


def test_mi_component_subsample_of_all_points_is_the_full_estimator(rng):
    mean, log_var = rng.standard_normal((100, 2)), np.zeros((100, 2)) - 1
    eps = rng.standard_normal((100, 2))
    assert mutual_information(mean, log_var, eps=eps, num_components=100) == pytest.approx(
        mutual_information(mean, log_var, eps=eps), abs=1e-9)


def test_mi_argument_errors_are_one_line():
    with pytest.raises(ConfigError) as err:
        mutual_information(np.zeros((4, 2)), np.zeros((4, 2)), chunk_size=0)
    _one_line(err)
    with pytest.raises(DataError) as err:
        mutual_information(np.zeros((4, 2)), np.zeros((4, 2)), eps=np.zeros((3, 2)))
    _one_line(err)
    with pytest.raises(DataError) as err:
        mutual_information(np.full((4, 2), np.nan), np.zeros((4, 2)))
    _one_line(err)
    # one example has no aggregate posterior to compare with (it returned -1.77 nats)
    with pytest.raises(DataError, match="mean has 1 rows; at least 2 are needed"):
        mutual_information(np.zeros((1, 2)), np.zeros((1, 2)))


# --- (ε, δ)-collapse -------------------------------------------------------------------------------

def test_collapse_fraction_is_one_for_the_prior_and_zero_for_a_sharp_posterior(rng):
    n, d = 500, 6
    prior_kl = kl_per_dim_gaussian(np.zeros((n, d)), np.zeros((n, d)))
    sharp_kl = kl_per_dim_gaussian(rng.standard_normal((n, d)), np.full((n, d), -5.0))
    for eps in (0.01, 0.05, 0.1, 0.5):
        assert collapse_fraction(prior_kl, eps) == 1.0
        assert collapse_fraction(sharp_kl, eps) == 0.0


def test_collapse_counts_with_strict_kl_and_inclusive_fraction():
    n = 100
    kl = np.zeros((n, 4))
    kl[:1, 1] = 1.0  # 1 % of the examples above ε: still collapsed (0.99 ≥ 1 − δ)
    kl[:2, 2] = 1.0  # 2 %: not collapsed
    kl[:, 3] = 0.1   # KL exactly ε: strict < makes it not collapsed at ε = 0.1
    assert collapse_fraction(kl, 0.1, delta=0.01) == 0.5
    assert collapse_fraction(kl, 0.1000001, delta=0.01) == 0.75
    assert collapse_fraction(kl, 0.1, delta=0.02) == 0.75
    np.testing.assert_array_equal(collapse_thresholds(kl, 0.01), [0.0, 0.0, 1.0, 0.1])


def test_collapse_curve_is_monotone_and_agrees_with_the_fraction(rng):
    kl = rng.exponential(scale=[0.001, 0.02, 0.3, 3.0], size=(400, 4))
    eps, frac = collapse_curve(kl, np.logspace(-5, 2, 71))
    assert np.all(np.diff(frac) >= 0) and frac[0] == 0.0 and frac[-1] == 1.0
    for e, f in zip(eps[::7], frac[::7]):
        assert f == collapse_fraction(kl, e)
    eps, frac = collapse_curve(kl, [0.01, 0.05, 0.1, 0.5])
    assert frac.shape == (4,)


def test_collapse_rejects_bad_input():
    with pytest.raises(DataError):
        collapse_fraction(-np.ones((5, 2)), 0.1)
    with pytest.raises(ConfigError) as err:
        collapse_fraction(np.zeros((5, 2)), 0.1, delta=1.5)
    _one_line(err)


@pytest.mark.parametrize("eps", [-0.1, float("nan"), "0.1"])
def test_collapse_fraction_refuses_an_eps_that_is_not_a_kl_threshold(eps):
    """A KL is never negative, so a negative ε counted no dimension as collapsed (0.0), silently."""
    prior_kl = kl_per_dim_gaussian(np.zeros((10, 2)), np.zeros((10, 2)))
    with pytest.raises(ConfigError, match=r"^eps must be a number in \[0.0, inf\], got "):
        collapse_fraction(prior_kl, eps)
    assert collapse_fraction(prior_kl, 0.0) == 0.0 and collapse_fraction(prior_kl, 1e-9) == 1.0


def test_the_gaussian_estimators_say_what_a_family_without_log_variances_lacks():
    """`encode_posterior` of a normal_gamma model has no z_log_var: `mutual_information(mean,
    None)` said "log_var must be a 2-D array, got shape ()"."""
    with pytest.raises(DataError, match=r"^log_var is None: the MI and KL estimators here need a diagonal Gaussian "
                                        r"posterior's z_mean and z_log_var, which this latent family does not give$"):
        mutual_information(np.zeros((4, 2)), None)
