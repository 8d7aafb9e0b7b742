"""Fréchet and kernel distances (known answers) and the cached feature classifier of ``fd_classifier``."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vae_tf.errors import DataError
from vae_tf.metrics import sample_quality
from vae_tf.metrics import (
    FDClassifierSpec,
    fd_classifier,
    feature_statistics,
    frechet_distance,
    kernel_distance,
    load_or_train_fd_classifier,
)


def test_frechet_distance_of_identical_statistics_is_zero(rng):
    f = rng.standard_normal((500, 6)) @ rng.standard_normal((6, 6))
    mu, sigma = feature_statistics(f)
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-8)


def test_frechet_distance_one_dimensional_hand_case():
    # N(1, 2²) vs N(3, 3²): (1 − 3)² + 2² + 3² − 2·2·3 = 4 + 1 = 5.
    assert frechet_distance(1.0, 4.0, 3.0, 9.0) == pytest.approx(5.0, abs=1e-12)
    # Diagonal covariances add up over dimensions.
    value = frechet_distance([0.0, 1.0], np.diag([1.0, 4.0]), [1.0, 1.0], np.diag([4.0, 1.0]))
    assert value == pytest.approx(1.0 + 1.0 + 1.0, abs=1e-9)


def test_frechet_distance_handles_singular_covariances():
    s = np.zeros((3, 3))
    s[0, 0] = 1.0
    assert np.isfinite(frechet_distance(np.zeros(3), s, np.ones(3), s))
    with pytest.raises(DataError):
        frechet_distance(np.zeros(2), np.eye(3), np.zeros(2), np.eye(3))


def test_feature_statistics_use_n_minus_1(rng):
    f = rng.standard_normal((50, 3))
    mu, sigma = feature_statistics(f)
    np.testing.assert_allclose(sigma, np.cov(f, rowvar=False, ddof=1))


@pytest.mark.slow
def test_kernel_distance_matches_the_population_mmd_of_two_gaussians():
    # In one dimension k(x, y) = (xy + 1)³ = Σ_j C(3, j) (xy)^j, so the population MMD² is
    # Σ_j C(3, j) (E x^j − E y^j)²; for N(0, 1) against N(μ, 1) the raw moments are (μ, μ² + 1, μ³ + 3μ)
    # against (0, 1, 0): 3μ² + 3μ⁴ + (μ³ + 3μ)². The estimator is unbiased, so its mean over subsets
    # lands on it.
    rng = np.random.default_rng(1)
    mu = 0.5
    x, y = rng.standard_normal((20000, 1)), mu + rng.standard_normal((20000, 1))
    expected = 3 * mu**2 + 3 * mu**4 + (mu**3 + 3 * mu) ** 2
    mean, std, m = kernel_distance(x, y, seed=0)
    assert m == 1000 and std > 0
    assert mean == pytest.approx(expected, rel=0.05)
    # One distribution against itself: zero in expectation (and allowed below zero).
    same, _, _ = kernel_distance(x, rng.standard_normal((20000, 1)), seed=0)
    assert abs(same) < 0.02 * expected


def test_kernel_distance_on_whole_sets_equals_the_unbiased_mmd_from_sklearn(rng):
    from sklearn.metrics.pairwise import polynomial_kernel

    x, y = rng.standard_normal((40, 5)), 0.3 + rng.standard_normal((40, 5))
    kxx, kyy = (polynomial_kernel(a, degree=3, gamma=1 / 5, coef0=1) for a in (x, y))
    kxy = polynomial_kernel(x, y, degree=3, gamma=1 / 5, coef0=1)
    n = 40
    expected = ((kxx.sum() - np.trace(kxx)) + (kyy.sum() - np.trace(kyy))) / (n * (n - 1)) - 2 * kxy.mean()
    # A subset as large as both sets is the whole of both, whatever the draw: one estimate, no spread
    # (it reported a std of 0 over 3 identical "subsets").
    mean, std, m = kernel_distance(x, y, num_subsets=3, subset_size=1000, seed=4)
    assert m == n and mean == pytest.approx(expected, rel=1e-10) and np.isnan(std)
    # Subsets smaller than the sets: a spread, and a mean near the whole sets' estimate.
    mean, std, m = kernel_distance(x, y, num_subsets=50, subset_size=30, seed=4)
    assert m == 30 and std > 0 and abs(mean - expected) < 3 * std


def test_kernel_distance_subsets_follow_the_seed_and_bad_input_is_refused(rng):
    x, y = rng.standard_normal((300, 4)), rng.standard_normal((200, 4)) + 1.0
    first = kernel_distance(x, y, num_subsets=5, subset_size=50, seed=7)
    assert kernel_distance(x, y, num_subsets=5, subset_size=50, seed=7) == first
    assert kernel_distance(x, y, num_subsets=5, subset_size=50, seed=8) != first
    with pytest.raises(DataError, match="one D"):
        kernel_distance(x, y[:, :3])
    with pytest.raises(DataError, match="at least 2"):
        kernel_distance(x[:1], y)
    from vae_tf.errors import ConfigError

    with pytest.raises(ConfigError, match="num_subsets must be an integer >= 1"):
        kernel_distance(x, y, num_subsets=0)


@pytest.mark.slow
def test_fd_classifier_trains_once_caches_and_scores(digits, tmp_path):
    spec = FDClassifierSpec(epochs=3)
    clf = load_or_train_fd_classifier(digits, cache_dir=tmp_path, spec=spec)
    assert clf.test_accuracy > 0.5  # 10 classes; 3 epochs on 1437 digits
    assert clf.path.parent == tmp_path and clf.path.name.startswith("digits-")
    info = json.loads((clf.path / "info.json").read_text())
    assert info["test_accuracy"] == clf.test_accuracy and info["spec"]["epochs"] == 3
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]

    sample_quality._IN_PROCESS.clear()  # as in a new process: what the disk cache holds
    again = load_or_train_fd_classifier(digits, cache_dir=tmp_path, spec=spec)  # from the cache
    assert again.path == clf.path and again is not clf
    np.testing.assert_allclose(again.features(digits.x_test[:20]), clf.features(digits.x_test[:20]), atol=1e-5)
    # Loaded once per process: a suite's next child gets the same model (no second load and trace).
    assert load_or_train_fd_classifier(digits, cache_dir=tmp_path, spec=spec) is again

    # Retraining with the same spec gives the same network (seeded weights and example order).
    retrained = load_or_train_fd_classifier(digits, cache_dir=tmp_path, spec=spec, retrain=True)
    np.testing.assert_array_equal(retrained.features(digits.x_test), clf.features(digits.x_test))
    reloaded = load_or_train_fd_classifier(digits, cache_dir=tmp_path, spec=spec)  # the retrained entry
    assert reloaded is retrained and reloaded is not again

    same = fd_classifier(digits.x_test, digits.x_test, clf)
    assert same["fd_classifier"] == pytest.approx(0.0, abs=1e-6) and same["num_generated"] == len(digits.x_test)
    real = fd_classifier(digits.x_val, digits.x_test, clf)
    noise = np.random.default_rng(0).uniform(0, 1, digits.x_test.shape).astype(np.float32)
    from_noise = fd_classifier(noise, digits.x_test, clf)
    assert from_noise["fd_classifier"] > 5 * real["fd_classifier"]
    # The kernel distance on the same features: near zero for held-out digits, far from it for noise.
    assert same["kid_subset_size"] == len(digits.x_test) and np.isnan(same["kid_classifier_std"])
    assert from_noise["kid_classifier"] > 5 * abs(real["kid_classifier"])


def test_fd_classifier_needs_labels(digits, tmp_path):
    import dataclasses

    unlabelled = dataclasses.replace(digits, y_train=None, y_val=None, y_test=None)
    with pytest.raises(DataError, match="no labels"):
        load_or_train_fd_classifier(unlabelled, cache_dir=tmp_path)
