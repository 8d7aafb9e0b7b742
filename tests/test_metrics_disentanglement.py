"""Disentanglement scores with known answers on synthetic codes, and the dSprites sampler."""

from __future__ import annotations

import numpy as np
import pytest

from vae_tf.data.dsprites import DSpritesGroundTruth
from vae_tf.errors import ConfigError, DataError
from vae_tf.metrics import (
    GroundTruthData,
    beta_vae_score,
    compute_mig,
    compute_sap,
    dci,
    dci_from_importance,
    factor_vae_score,
    generate_factor_codes,
    histogram_discretize,
    mig,
    sap,
)

SIZES = (3, 4, 5)


def _factors(rng, n, sizes=SIZES):
    return np.stack([rng.integers(0, s, n) for s in sizes], axis=1)


class FactorsAsObservations:
    """A ground-truth sampler whose "observation" is the factor vector itself, so that the identity
    is a perfectly disentangled representation and a constant-noise map a useless one."""

    factor_sizes = SIZES

    @property
    def num_factors(self):
        return len(self.factor_sizes)

    def sample_factors(self, num, random_state):
        return _factors(random_state, num)

    def sample_observations_from_factors(self, factors, random_state):
        return np.asarray(factors, dtype=np.float32)


def _identity(x):
    return np.asarray(x, dtype=np.float64)


def _noise_fn(seed=0):
    rng = np.random.default_rng(seed)
    return lambda x: rng.standard_normal((len(x), 3))


# --- MIG -------------------------------------------------------------------------------------------

def test_mig_is_one_for_codes_equal_to_the_factors_and_zero_for_random_codes(rng):
    f = _factors(rng, 2000)
    perfect = mig(f + 0.01 * rng.standard_normal(f.shape), f)
    assert perfect["discrete_mig"] > 0.95
    assert perfect["mutual_info"].shape == (3, 3) and perfect["entropy"].shape == (3,)
    np.testing.assert_allclose(perfect["entropy"], np.log(SIZES), atol=0.02)  # uniform factors
    assert mig(rng.standard_normal((2000, 3)), f)["discrete_mig"] < 0.05


def test_mig_of_a_permuted_code_is_unchanged(rng):
    f = _factors(rng, 1000)
    codes = f + 0.01 * rng.standard_normal(f.shape)
    assert mig(codes[:, ::-1], f)["discrete_mig"] == pytest.approx(mig(codes, f)["discrete_mig"])


def test_histogram_discretizer_is_dlibs():
    """disentanglement_lib's ``_histogram_discretize``: each code gets ``num_bins`` equal-width
    bins spanning its own [min, max], labelled 1..num_bins, the maximum in the last bin. Expected
    labels from that definition: the centre of bin k is labelled k; the ends are 1 and 20."""
    centres = (np.arange(20) + 0.5) / 20  # bin k (1-based) of [0, 1] is [(k-1)/20, k/20)
    column = np.concatenate([[0.0, 1.0], centres])
    codes = np.stack([column, 10 * column - 3], axis=1)  # the second code spans [-3, 7]: its own bins
    expected = [1, 20] + list(range(1, 21))
    labels = histogram_discretize(codes, num_bins=20)
    assert labels.shape == codes.shape
    assert labels[:, 0].tolist() == expected and labels[:, 1].tolist() == expected


def test_mig_leaves_a_constant_factor_out(rng):
    f = _factors(rng, 500)
    f[:, 1] = 2
    result = mig(f + 0.01 * rng.standard_normal(f.shape), f)
    assert np.isnan(result["mig_per_factor"][1]) and result["discrete_mig"] > 0.9


# --- DCI -------------------------------------------------------------------------------------------

def test_dci_from_importance_known_matrices():
    perfect = dci_from_importance(np.eye(3))
    assert perfect["disentanglement"] == pytest.approx(1.0, abs=1e-9)
    assert perfect["completeness"] == pytest.approx(1.0, abs=1e-9)
    uniform = dci_from_importance(np.ones((3, 3)))
    assert uniform["disentanglement"] == pytest.approx(0.0, abs=1e-9)
    assert uniform["completeness"] == pytest.approx(0.0, abs=1e-9)
    # One code explains every factor: disentanglement 0 for it, completeness 1.
    one_code = dci_from_importance(np.array([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]))
    assert one_code["disentanglement"] == pytest.approx(0.0, abs=1e-6)
    assert one_code["completeness"] == pytest.approx(1.0, abs=1e-6)


@pytest.mark.slow
def test_dci_is_one_for_codes_equal_to_the_factors_and_zero_for_random_codes(rng):
    ftr, fte = _factors(rng, 600), _factors(rng, 300)
    perfect = dci(ftr + 0.01 * rng.standard_normal(ftr.shape), ftr, fte + 0.01 * rng.standard_normal(fte.shape), fte)
    assert perfect["disentanglement"] > 0.95 and perfect["completeness"] > 0.95
    assert perfect["informativeness_test"] > 0.95
    assert perfect["importance_matrix"].shape == (3, 3)
    random = dci(rng.standard_normal((600, 3)), ftr, rng.standard_normal((300, 3)), fte)
    assert random["disentanglement"] < 0.1
    assert random["informativeness_test"] < 0.45  # chance is 1/3, 1/4, 1/5
    # Fitting the factors in parallel changes nothing (each classifier has its own seed).
    codes = rng.standard_normal((200, 3))
    serial = dci(codes[:100], ftr[:100], codes[100:], ftr[100:200])
    parallel = dci(codes[:100], ftr[:100], codes[100:], ftr[100:200], n_jobs=2)
    np.testing.assert_array_equal(serial["importance_matrix"], parallel["importance_matrix"])


# --- SAP -------------------------------------------------------------------------------------------

def test_sap_continuous_is_one_for_codes_equal_to_the_factors(rng):
    f = _factors(rng, 1000)
    assert sap(f + 0.01 * rng.standard_normal(f.shape), f, continuous=True)["sap_score"] > 0.99
    assert sap(rng.standard_normal((1000, 3)), f, continuous=True)["sap_score"] < 0.05


def test_sap_discrete_prefers_the_matching_code_and_is_zero_for_random_codes(rng):
    # Binary factors: a 1-D linear classifier can separate them perfectly from the right code.
    f, ft = _factors(rng, 600, (2, 2)), _factors(rng, 300, (2, 2))
    perfect = sap(f + 0.01 * rng.standard_normal(f.shape), f, ft + 0.01 * rng.standard_normal(ft.shape), ft)
    s = perfect["score_matrix"]
    assert np.all(np.diag(s) > 0.99) and perfect["sap_score"] > 0.4
    assert sap(rng.standard_normal((600, 2)), f, rng.standard_normal((300, 2)), ft)["sap_score"] < 0.1
    with pytest.raises(DataError):
        sap(f.astype(float), f)  # discrete SAP needs a test set


# --- sampling-based scores -------------------------------------------------------------------------

def test_factor_vae_score_is_one_for_a_disentangled_code_and_chance_for_noise():
    data = FactorsAsObservations()
    assert isinstance(data, GroundTruthData)
    perfect = factor_vae_score(data, _identity, batch_size=16, num_train=60, num_eval=30, num_variance_estimate=200)
    assert perfect["train_accuracy"] == 1.0 and perfect["eval_accuracy"] == 1.0
    assert perfect["num_active_dims"] == 3
    noise = factor_vae_score(data, _noise_fn(), batch_size=16, num_train=300, num_eval=300, num_variance_estimate=200)
    assert noise["eval_accuracy"] < 0.6  # chance ~ 1/3 (the majority vote overfits a little)


def test_factor_vae_score_without_active_dims_is_zero():
    result = factor_vae_score(FactorsAsObservations(), lambda x: np.zeros((len(x), 2)), batch_size=8,
                              num_train=5, num_eval=5, num_variance_estimate=20)
    assert result["eval_accuracy"] == 0.0 and result["num_active_dims"] == 0


def test_beta_vae_score_is_high_for_a_disentangled_code_and_chance_for_noise():
    data = FactorsAsObservations()
    perfect = beta_vae_score(data, _identity, batch_size=16, num_train=150, num_eval=60)
    assert perfect["eval_accuracy"] > 0.95
    noise = beta_vae_score(data, _noise_fn(), batch_size=16, num_train=150, num_eval=150)
    assert noise["eval_accuracy"] < 0.6


def test_sampling_is_reproducible_for_a_seed():
    data = FactorsAsObservations()
    a = generate_factor_codes(data, _identity, 50, random_state=7)
    b = generate_factor_codes(data, _identity, 50, random_state=7)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    c = compute_mig(data, _identity, num_train=500, random_state=1)
    assert c["discrete_mig"] > 0.9 and c["num_points"] == 500
    assert compute_sap(data, _identity, num_train=200, num_test=100, continuous=True)["sap_score"] > 0.95


def test_dsprites_ground_truth_renders_float_images():
    gt = DSpritesGroundTruth(image_size=32)
    assert gt.factor_sizes == (3, 6, 40, 32, 32) and gt.num_factors == 5
    factors, obs = gt.sample(6, np.random.default_rng(0))
    assert factors.shape == (6, 5) and factors.dtype == np.int64
    assert obs.shape == (6, 32, 32, 1) and obs.dtype == np.float32
    assert set(np.unique(obs)) <= {0.0, 1.0}

    def centroid(x):  # a hand-made representation: where the sprite is, and how big
        img = x[..., 0]
        mass = img.sum(axis=(1, 2))
        cols = (img.sum(axis=1) * np.arange(32)).sum(1) / mass
        rows = (img.sum(axis=2) * np.arange(32)).sum(1) / mass
        return np.stack([cols, rows, mass], axis=1)

    result = compute_sap(gt, centroid, num_train=300, num_test=100, continuous=True)
    assert result["score_matrix"].shape == (3, 5) and 0.0 <= result["sap_score"] <= 1.0
    assert np.argmax(result["score_matrix"][:, 3]) == 0  # pos_x is read from the column centroid
    # The position codes carry the position factors: MIG on the full factor set is positive.
    assert compute_mig(gt, centroid, num_train=500)["mig_per_factor"][3] > 0.3


def test_bad_sizes_and_shapes_are_one_line_errors(rng):
    with pytest.raises(ConfigError) as err:
        factor_vae_score(FactorsAsObservations(), _identity, num_train=0)
    assert "\n" not in str(err.value)
    with pytest.raises(DataError) as err:
        mig(np.zeros((10, 2)), np.zeros((9, 3), np.int64))
    assert "\n" not in str(err.value)
    with pytest.raises(DataError):
        mig(np.zeros((10, 2)), np.full((10, 3), 0.5))
