"""Disentanglement scores on data with known generative factors: BetaVAE, FactorVAE, MIG, DCI and
SAP with the defaults of disentanglement_lib's study (Locatello et al. 2019; metrics.md §6).

The logic of google-research/disentanglement_lib @86a644d (``evaluation/metrics/*.py``, configs
``config/unsupervised_study_v1/metric_configs/*.gin``) is restated here on NumPy and
scikit-learn; DLIB itself no longer installs (it pins TensorFlow 1.14).

Conventions that differ from DLIB's code, on purpose:

- Arrays are **row-major**: codes ``(N, d)`` and factors ``(N, K)`` (DLIB transposes both).
- Randomness comes from one ``np.random.default_rng(random_state)`` (default 0) consumed in call
  order, and observations are drawn in large vectorised blocks rather than 16 or 64 at a time.
  Scores are therefore *distributed* like DLIB's, not bit-identical: compare distributions over
  seeds, never single numbers with published ones.
- The representation is whatever ``representation_fn(x) -> codes`` returns; for a VAE use the
  encoder **mean** (:func:`vae_tf.metrics.encode.representation_function`), DLIB's
  ``postprocess_configs/mean.gin``.
- Factors are **integer class indices** (``GroundTruthData.sample_factors``).

Default sample sizes (DLIB study): BetaVAE 10 000 train votes / 5 000 eval votes of batch 64;
FactorVAE 10 000 points for the variances, 10 000 / 5 000 votes of batch 64; MIG 10 000 points;
DCI and SAP 10 000 train / 5 000 test points. Every function takes smaller sizes as arguments
(tests and quick runs); the result dict records the sizes and the seed used.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Protocol, runtime_checkable

import numpy as np

# SciPy's statistics and scikit-learn are imported by the functions that use them, so that
# importing vae_tf.metrics (every `vae-tf train` does, for its verdict) does not load them.

from vae_tf.errors import DataError
from vae_tf.metrics._checks import as_matrix, integer_labels, positive_float, positive_int, rng_from, same_rows

#: DLIB study defaults.
NUM_TRAIN = 10000
NUM_EVAL = 5000
NUM_VARIANCE_ESTIMATE = 10000
VOTE_BATCH_SIZE = 64
MIG_BINS = 20
FACTOR_VAE_PRUNE = 0.05
#: Observations per representation_fn call (does not change any score; only speed and memory).
ENCODE_BATCH_SIZE = 1024


# --- ground-truth data ----------------------------------------------------------------------------

@runtime_checkable
class GroundTruthData(Protocol):
    """What the sampling-based metrics need from a data set with known factors (DLIB's
    ``GroundTruthData``): the number of classes of every factor, a factor sampler and a renderer."""

    factor_sizes: tuple[int, ...]

    @property
    def num_factors(self) -> int: ...

    def sample_factors(self, num: int, random_state: np.random.Generator) -> np.ndarray:
        """int64 class indices ``(num, num_factors)``."""

    def sample_observations_from_factors(self, factors: np.ndarray, random_state: np.random.Generator) -> np.ndarray:
        """Observations for the given factor rows, float32 ``(num, *data_shape)``."""


def _num_factors(data) -> int:
    return int(getattr(data, "num_factors", len(data.factor_sizes)))


def _represent(representation_fn: Callable, x: np.ndarray, batch_size: int = ENCODE_BATCH_SIZE) -> np.ndarray:
    """Codes of ``x`` (float64 ``(n, d)``), calling ``representation_fn`` on blocks of observations."""
    parts = []
    for start in range(0, len(x), batch_size):
        block = np.asarray(representation_fn(x[start:start + batch_size]))
        if block.ndim != 2 or len(block) != len(x[start:start + batch_size]):
            raise DataError(f"representation_fn must return codes (n, d) for n observations, got shape {block.shape}")
        parts.append(block.astype(np.float64))
    codes = np.concatenate(parts, axis=0)
    if not np.all(np.isfinite(codes)):
        raise DataError("representation_fn returned NaN or Inf codes")
    return codes


def generate_factor_codes(ground_truth_data: GroundTruthData, representation_fn: Callable, num_points: int,
                          random_state=0, batch_size: int = ENCODE_BATCH_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Sample ``num_points`` factor rows, render them and encode them (DLIB
    ``generate_batch_factor_code``): ``(codes (N, d) float64, factors (N, K) int64)``.

    ``random_state`` is an int or a ``np.random.Generator`` (consumed: pass the same Generator
    to draw a train and then a test set); ``batch_size`` only sets the block size."""
    num_points = positive_int("num_points", num_points)
    rng = rng_from(random_state)
    factors = np.asarray(ground_truth_data.sample_factors(num_points, rng), dtype=np.int64)
    codes_parts = []
    for start in range(0, num_points, batch_size):
        obs = ground_truth_data.sample_observations_from_factors(factors[start:start + batch_size], rng)
        codes_parts.append(_represent(representation_fn, obs, batch_size))
    return np.concatenate(codes_parts, axis=0), factors


def _seed_record(random_state):
    """What the result records as the seed (a Generator passed in is not JSON)."""
    return random_state if isinstance(random_state, (int, np.integer)) else "numpy Generator (caller's)"


def _versions() -> dict:
    import scipy  # noqa: PLC0415
    import sklearn  # noqa: PLC0415
    return {"numpy": np.__version__, "scipy": scipy.__version__, "scikit_learn": sklearn.__version__}


# --- BetaVAE score --------------------------------------------------------------------------------

def _votes_per_block(batch_size: int) -> int:
    return max(1, 8192 // batch_size)


def _beta_vae_votes(data, representation_fn, batch_size, num_points, rng) -> tuple[np.ndarray, np.ndarray]:
    k_total = _num_factors(data)
    features, labels = [], []
    block = _votes_per_block(batch_size)
    for start in range(0, num_points, block):
        v = min(block, num_points - start)
        k = rng.integers(0, k_total, size=v)
        f1 = np.asarray(data.sample_factors(v * batch_size, rng), dtype=np.int64)
        f2 = np.asarray(data.sample_factors(v * batch_size, rng), dtype=np.int64)
        rows = np.arange(v * batch_size)
        cols = np.repeat(k, batch_size)
        f2[rows, cols] = f1[rows, cols]  # the pair shares factor k
        r1 = _represent(representation_fn, data.sample_observations_from_factors(f1, rng))
        r2 = _represent(representation_fn, data.sample_observations_from_factors(f2, rng))
        features.append(np.abs(r1 - r2).reshape(v, batch_size, -1).mean(axis=1))
        labels.append(k)
    return np.concatenate(features), np.concatenate(labels)


def beta_vae_score(ground_truth_data: GroundTruthData, representation_fn: Callable, *, random_state: int = 0,
                   batch_size: int = VOTE_BATCH_SIZE, num_train: int = NUM_TRAIN, num_eval: int = NUM_EVAL) -> dict:
    """BetaVAE disentanglement score (Higgins et al. 2017), DLIB ``beta_vae_sklearn`` defaults.

    Each vote: draw factor k uniformly; draw two batches of ``batch_size`` factor rows and copy
    column k of the first into the second; feature = mean over the batch of |r(x₁) − r(x₂)|
    (d-dim), label = k. A ``LogisticRegression(random_state=random_state)`` (scikit-learn
    defaults: lbfgs, multinomial, C = 1, max_iter = 100, unscaled features, as DLIB) is fitted on
    ``num_train`` votes and scored on ``num_eval`` fresh votes. Results depend on the
    scikit-learn version (the default solver changed in 0.22; disentanglement_lib#33).

    Cost: (num_train + num_eval) x 2 x batch_size observations rendered and encoded
    (1.92 M at the defaults).

    Returns:
        ``{"train_accuracy", "eval_accuracy", ...}`` plus the sizes, the seed, whether the
        logistic regression converged, and library versions.
    """
    from sklearn.exceptions import ConvergenceWarning  # noqa: PLC0415
    from sklearn.linear_model import LogisticRegression  # noqa: PLC0415
    batch_size = positive_int("batch_size", batch_size, minimum=1)
    num_train, num_eval = positive_int("num_train", num_train), positive_int("num_eval", num_eval)
    rng = rng_from(random_state)
    x_train, y_train = _beta_vae_votes(ground_truth_data, representation_fn, batch_size, num_train, rng)
    model = LogisticRegression(random_state=random_state if isinstance(random_state, int) else 0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        model.fit(x_train, y_train)
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    train_accuracy = float(np.mean(model.predict(x_train) == y_train))
    x_eval, y_eval = _beta_vae_votes(ground_truth_data, representation_fn, batch_size, num_eval, rng)
    eval_accuracy = float(model.score(x_eval, y_eval))
    return {"train_accuracy": train_accuracy, "eval_accuracy": eval_accuracy, "num_train": num_train,
            "num_eval": num_eval, "batch_size": batch_size, "random_state": _seed_record(random_state),
            "classifier": "LogisticRegression(defaults)", "converged": converged, **_versions()}


# --- FactorVAE score ------------------------------------------------------------------------------

def _factor_vae_votes(data, representation_fn, batch_size, num_points, rng, global_var, active_idx) -> np.ndarray:
    k_total = _num_factors(data)
    votes = np.zeros((k_total, len(global_var)), dtype=np.int64)
    block = _votes_per_block(batch_size)
    for start in range(0, num_points, block):
        v = min(block, num_points - start)
        k = rng.integers(0, k_total, size=v)
        f = np.asarray(data.sample_factors(v * batch_size, rng), dtype=np.int64).reshape(v, batch_size, -1)
        f[np.arange(v), :, k] = f[np.arange(v), 0, k][:, None]  # factor k fixed to row 0's value
        obs = data.sample_observations_from_factors(f.reshape(v * batch_size, -1), rng)
        r = _represent(representation_fn, obs).reshape(v, batch_size, -1)
        local_var = np.var(r, axis=1, ddof=1)
        ratio = local_var[:, active_idx] / global_var[active_idx]
        d_star = active_idx[np.argmin(ratio, axis=1)]  # back to a full-dimension index
        np.add.at(votes, (k, d_star), 1)
    return votes


def factor_vae_score(ground_truth_data: GroundTruthData, representation_fn: Callable, *, random_state: int = 0,
                     batch_size: int = VOTE_BATCH_SIZE, num_train: int = NUM_TRAIN, num_eval: int = NUM_EVAL,
                     num_variance_estimate: int = NUM_VARIANCE_ESTIMATE,
                     prune_threshold: float = FACTOR_VAE_PRUNE) -> dict:
    """FactorVAE disentanglement score (Kim & Mnih 2018), DLIB ``factor_vae_score`` defaults.

    1. Global variance of every code dim over ``num_variance_estimate`` random observations
       (``ddof=1``); dims with √var < ``prune_threshold`` (0.05) are inactive; with none active
       every score is 0.
    2. Each vote: draw factor k; draw ``batch_size`` factor rows and set column k to row 0's
       value; local variance (``ddof=1``); d* = argmin over active dims of local / global
       variance; ``votes[k, d*] += 1``.
    3. Classifier: majority vote ``argmax_k votes_train[:, d]``; accuracy =
       Σ_d votes[cls(d), d] / Σ votes, for the training votes and for ``num_eval`` fresh votes
       scored with the *training* classifier (``eval_accuracy`` is the score).

    One deliberate fix of a DLIB quirk: DLIB stores d* as an index into the *active subset* but
    uses it as a full-dimension index (the same only when every dim is active) and reports the
    total dimension count as ``num_active_dims``; here d* is mapped back to its dimension and
    ``num_active_dims`` counts the active ones. Always say "DLIB defaults" with this number: the
    paper's protocol and other codebases differ.
    """
    batch_size = positive_int("batch_size", batch_size, minimum=2)
    num_train, num_eval = positive_int("num_train", num_train), positive_int("num_eval", num_eval)
    num_variance_estimate = positive_int("num_variance_estimate", num_variance_estimate, minimum=2)
    prune_threshold = float(prune_threshold)
    rng = rng_from(random_state)
    codes, _ = generate_factor_codes(ground_truth_data, representation_fn, num_variance_estimate, rng)
    global_var = np.var(codes, axis=0, ddof=1)
    active_idx = np.flatnonzero(np.sqrt(global_var) >= prune_threshold)
    base = {"num_train": num_train, "num_eval": num_eval, "num_variance_estimate": num_variance_estimate,
            "batch_size": batch_size, "random_state": _seed_record(random_state), "prune_threshold": prune_threshold,
            "num_active_dims": int(len(active_idx)), **_versions()}
    if len(active_idx) == 0:
        return {"train_accuracy": 0.0, "eval_accuracy": 0.0, **base}
    train_votes = _factor_vae_votes(ground_truth_data, representation_fn, batch_size, num_train, rng,
                                    global_var, active_idx)
    classifier = np.argmax(train_votes, axis=0)
    dims = np.arange(train_votes.shape[1])
    train_accuracy = float(train_votes[classifier, dims].sum() / train_votes.sum())
    eval_votes = _factor_vae_votes(ground_truth_data, representation_fn, batch_size, num_eval, rng,
                                   global_var, active_idx)
    eval_accuracy = float(eval_votes[classifier, dims].sum() / eval_votes.sum())
    return {"train_accuracy": train_accuracy, "eval_accuracy": eval_accuracy, **base}


# --- MIG ------------------------------------------------------------------------------------------

def _codes_factors(codes, factors, codes_name="codes", factors_name="factors") -> tuple[np.ndarray, np.ndarray]:
    codes = as_matrix(codes_name, codes)
    factors = integer_labels(factors_name, factors, ndim=2)
    same_rows(codes_name, codes, factors_name, factors)
    return codes, factors


def histogram_discretize(codes, num_bins: int = MIG_BINS) -> np.ndarray:
    """DLIB's discretiser: per code column, ``num_bins`` equal-width bins over that sample's own
    [min, max] (``np.histogram`` edges without the last one, then ``np.digitize``): int labels
    1..num_bins, shape ``(N, d)``. Outliers set the range (a known weakness)."""
    codes = as_matrix("codes", codes)
    num_bins = positive_int("num_bins", num_bins)
    out = np.empty(codes.shape, dtype=np.int64)
    for i in range(codes.shape[1]):  # per code dimension
        edges = np.histogram_bin_edges(codes[:, i], bins=num_bins)
        out[:, i] = np.digitize(codes[:, i], edges[:-1])
    return out


def discrete_mutual_info(discrete_codes: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """m[i, k] = I(code_i; v_k) in nats (``sklearn.metrics.mutual_info_score``), ``(d, K)``."""
    from sklearn.metrics import mutual_info_score  # noqa: PLC0415
    return np.array([[mutual_info_score(factors[:, k], discrete_codes[:, i]) for k in range(factors.shape[1])]
                     for i in range(discrete_codes.shape[1])])


def discrete_entropy(factors: np.ndarray) -> np.ndarray:
    """H(v_k) = I(v_k; v_k) in nats, ``(K,)``."""
    from sklearn.metrics import mutual_info_score  # noqa: PLC0415
    return np.array([mutual_info_score(factors[:, k], factors[:, k]) for k in range(factors.shape[1])])


def mig(codes, factors, num_bins: int = MIG_BINS) -> dict:
    """Mutual Information Gap (Chen et al. 2018), DLIB ``discrete_mig`` variant:

        m[i, k] = I(disc(μ_i); v_k),   H[k] = H(v_k),   MIG = mean_k (m_(1),k − m_(2),k) / H[k]

    (top two codes i per factor k; ``num_bins`` = 20 equal-width bins per code). The original
    (rtqichen/beta-tcvae) estimates continuous MI on the whole data set and gives different numbers;
    never mix the variants. A factor that is constant in the sample (H = 0) has no MIG: it gets
    NaN in ``mig_per_factor`` and is left out of the mean (DLIB would return NaN). With a single
    code dimension the gap is m_(1),k / H[k].

    Args:
        codes: representation ``(N, d)`` (encoder means).
        factors: integer factor classes ``(N, K)``.

    Returns:
        ``{"discrete_mig", "mig_per_factor", "mutual_info" (d, K), "entropy" (K,), "num_bins", "num_points"}``.
    """
    codes, factors = _codes_factors(codes, factors)
    m = discrete_mutual_info(histogram_discretize(codes, num_bins), factors)
    entropy = discrete_entropy(factors)
    sorted_m = np.sort(m, axis=0)[::-1]
    second = sorted_m[1] if len(sorted_m) > 1 else np.zeros(m.shape[1])
    with np.errstate(divide="ignore", invalid="ignore"):
        per_factor = np.where(entropy > 0, (sorted_m[0] - second) / np.where(entropy > 0, entropy, 1.0), np.nan)
    valid = np.isfinite(per_factor)
    score = float(np.mean(per_factor[valid])) if valid.any() else float("nan")
    return {"discrete_mig": score, "mig_per_factor": per_factor, "mutual_info": m, "entropy": entropy,
            "num_bins": int(num_bins), "num_points": int(len(codes)), **_versions()}


def compute_mig(ground_truth_data: GroundTruthData, representation_fn: Callable, *, random_state: int = 0,
                num_train: int = NUM_TRAIN, num_bins: int = MIG_BINS) -> dict:
    """:func:`mig` on ``num_train`` (10 000) fresh sampled observations (DLIB ``mig``)."""
    codes, factors = generate_factor_codes(ground_truth_data, representation_fn, num_train, random_state)
    return {**mig(codes, factors, num_bins), "random_state": _seed_record(random_state)}


# --- DCI ------------------------------------------------------------------------------------------

def _entropy_complement(p: np.ndarray, base: int) -> np.ndarray:
    """1 − H_base(p) along axis 0 (``scipy.stats.entropy`` normalises p first); NaN when base < 2."""
    import scipy.stats  # noqa: PLC0415
    if base < 2:
        return np.full(p.shape[1], np.nan)
    return 1.0 - scipy.stats.entropy(p, base=base)


def dci_from_importance(importance) -> dict:
    """Disentanglement and completeness (Eastwood & Williams 2018) from a non-negative importance
    matrix R ``(d codes, K factors)``, DLIB's formulas with its 1e-11 offset:

        P_ij = (R_ij + 1e-11) / Σ_k (R_ik + 1e-11);  D_i = 1 − H_{base K}(P_i·);  ρ_i = Σ_j R_ij / Σ R
        disentanglement = Σ_i ρ_i D_i
        C_j = 1 − H_{base d}(R_·j + 1e-11, normalised);   completeness = Σ_j (Σ_i R_ij / Σ R) C_j

    An all-zero R weighs codes (factors) uniformly, as DLIB does.
    """
    r = np.asarray(importance, dtype=np.float64)
    d, k = r.shape
    per_code = _entropy_complement(r.T + 1e-11, k)
    per_factor = _entropy_complement(r + 1e-11, d)
    weights = r if r.sum() > 0 else np.ones_like(r)
    code_importance = weights.sum(axis=1) / weights.sum()
    factor_importance = weights.sum(axis=0) / weights.sum()
    return {"disentanglement": float(np.sum(per_code * code_importance)),
            "completeness": float(np.sum(per_factor * factor_importance)),
            "disentanglement_per_code": per_code, "completeness_per_factor": per_factor}


def _fit_factor(factory, x_train, y_train, x_test, y_test):
    """One factor's classifier: (|feature importances|, train accuracy, test accuracy)."""
    if len(np.unique(y_train)) < 2:  # constant factor: nothing to learn, no importance
        return np.zeros(x_train.shape[1]), 1.0, float(np.mean(y_test == y_train[0]))
    model = factory()
    model.fit(x_train, y_train)
    return (np.abs(model.feature_importances_), float(np.mean(model.predict(x_train) == y_train)),
            float(np.mean(model.predict(x_test) == y_test)))


def dci(train_codes, train_factors, test_codes, test_factors, *, random_state: int = 0,
        classifier_factory: Callable | None = None, n_jobs: int | None = None) -> dict:
    """DCI (Eastwood & Williams 2018), DLIB variant: for every factor j a
    ``GradientBoostingClassifier()`` (scikit-learn defaults: 100 trees of depth 3, learning rate
    0.1) is fitted on the codes; R[:, j] = |feature_importances_|; informativeness = mean
    classification accuracy over factors (train and test; higher is better, unlike the paper's
    NRMSE error with Lasso / random-forest regressors). DLIB passes no ``random_state``; ours is
    ``random_state`` (default 0) so the trees are reproducible.

    Args:
        train_codes, test_codes: ``(N, d)``; train_factors, test_factors: integer ``(N, K)``.
        random_state: seed of the boosted trees.
        classifier_factory: optional ``() -> classifier`` replacing the default (say so when used).
        n_jobs: fit the K factors' classifiers in parallel (joblib); the scores do not change.

    Returns:
        ``{"disentanglement", "completeness", "informativeness_train", "informativeness_test",
        "importance_matrix" (d, K), ...}``. Cost: Σ_j n_classes_j x 100 trees on N points: the
        slowest metric here (dSprites' 113 classes: ~25 s per 1 000 training points on one CPU
        core, so minutes at the default 10 000; see docs/performance.md).
    """
    from sklearn.ensemble import GradientBoostingClassifier  # noqa: PLC0415
    from joblib import Parallel, delayed  # noqa: PLC0415  (a scikit-learn dependency)

    x_train, y_train = _codes_factors(train_codes, train_factors, "train_codes", "train_factors")
    x_test, y_test = _codes_factors(test_codes, test_factors, "test_codes", "test_factors")
    if x_train.shape[1] != x_test.shape[1] or y_train.shape[1] != y_test.shape[1]:
        raise DataError("train and test codes/factors must have the same number of columns")
    factory = classifier_factory or (lambda: GradientBoostingClassifier(random_state=random_state))
    # Threads: tree building releases the GIL, and nothing has to be pickled to worker processes.
    fits = Parallel(n_jobs=n_jobs, prefer="threads")(
        delayed(_fit_factor)(factory, x_train, y_train[:, j], x_test, y_test[:, j]) for j in range(y_train.shape[1]))
    importance = np.stack([f[0] for f in fits], axis=1)
    return {**dci_from_importance(importance), "informativeness_train": float(np.mean([f[1] for f in fits])),
            "informativeness_test": float(np.mean([f[2] for f in fits])), "importance_matrix": importance,
            "num_train": int(len(x_train)), "num_test": int(len(x_test)), "random_state": _seed_record(random_state),
            "classifier": "GradientBoostingClassifier(defaults)" if classifier_factory is None else "custom",
            **_versions()}


def compute_dci(ground_truth_data: GroundTruthData, representation_fn: Callable, *, random_state: int = 0,
                num_train: int = NUM_TRAIN, num_test: int = NUM_EVAL, n_jobs: int | None = None) -> dict:
    """:func:`dci` on ``num_train`` / ``num_test`` fresh sampled observations (DLIB ``dci``)."""
    rng = rng_from(random_state)
    train = generate_factor_codes(ground_truth_data, representation_fn, num_train, rng)
    test = generate_factor_codes(ground_truth_data, representation_fn, num_test, rng)
    seed = random_state if isinstance(random_state, int) else 0
    return dci(*train, *test, random_state=seed, n_jobs=n_jobs)


# --- SAP ------------------------------------------------------------------------------------------

def sap_score_matrix(train_codes, train_factors, test_codes=None, test_factors=None, *, continuous: bool = False,
                     random_state: int = 0, svm_c: float = 0.01) -> np.ndarray:
    """SAP score matrix S ``(d, K)`` (Kumar et al. 2018, §3; DLIB ``compute_score_matrix``).

    - ``continuous=False`` (the study default): S[i, j] = test accuracy of
      ``LinearSVC(C=0.01, class_weight="balanced")`` fitted on the 1-D code μ_i to predict
      factor j (scikit-learn 1.9's ``dual="auto"``; pin the version). A factor with a single class
      in the training sample gets S[:, j] = 0.
    - ``continuous=True``: S[i, j] = cov(μ_i, y_j)² / (var μ_i · var y_j), ``ddof=1``, 0 where
      var μ_i ≤ 1e-12 (or var y_j = 0); test arrays are not used.
    """
    from sklearn.exceptions import ConvergenceWarning  # noqa: PLC0415
    from sklearn.svm import LinearSVC  # noqa: PLC0415
    x_train, y_train = _codes_factors(train_codes, train_factors, "train_codes", "train_factors")
    d, k = x_train.shape[1], y_train.shape[1]
    if continuous:
        xc = x_train - x_train.mean(axis=0)
        yc = y_train - y_train.mean(axis=0)
        n = len(x_train)
        if n < 2:
            raise DataError("continuous SAP needs at least 2 points")
        cov = xc.T @ yc / (n - 1)
        var_x = np.sum(xc**2, axis=0) / (n - 1)
        var_y = np.sum(yc**2, axis=0) / (n - 1)
        with np.errstate(divide="ignore", invalid="ignore"):
            s = cov**2 / (var_x[:, None] * var_y[None, :])
        s[(var_x <= 1e-12)[:, None] | (var_y == 0)[None, :] | ~np.isfinite(s)] = 0.0
        return s
    if test_codes is None or test_factors is None:
        raise DataError("discrete SAP needs test_codes and test_factors (or pass continuous=True)")
    x_test, y_test = _codes_factors(test_codes, test_factors, "test_codes", "test_factors")
    svm_c = positive_float("svm_c", svm_c)
    s = np.zeros((d, k))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for j in range(k):  # one 1-D classifier per (code, factor) pair
            if len(np.unique(y_train[:, j])) < 2:
                continue
            for i in range(d):
                clf = LinearSVC(C=svm_c, class_weight="balanced", random_state=random_state)
                clf.fit(x_train[:, i:i + 1], y_train[:, j])
                s[i, j] = np.mean(clf.predict(x_test[:, i:i + 1]) == y_test[:, j])
    return s


def sap(train_codes, train_factors, test_codes=None, test_factors=None, *, continuous: bool = False,
        random_state: int = 0) -> dict:
    """Separated Attribute Predictability: SAP = mean_j (largest − second-largest S[:, j]) of the
    score matrix of :func:`sap_score_matrix`.

    A 1-D linear classifier cannot isolate the middle classes of an ordinal factor, so discrete SAP
    stays small even for perfect codes (≈ 0.18 for identity-plus-noise codes of a 10-class factor,
    where continuous SAP ≈ 1); report which variant you use. With a single code dimension SAP is
    mean_j S[0, j].
    """
    s = sap_score_matrix(train_codes, train_factors, test_codes, test_factors, continuous=continuous,
                         random_state=random_state)
    top = np.sort(s, axis=0)[::-1]
    second = top[1] if len(top) > 1 else np.zeros(s.shape[1])
    return {"sap_score": float(np.mean(top[0] - second)), "score_matrix": s,
            "variant": "continuous" if continuous else "discrete LinearSVC(C=0.01, class_weight='balanced')",
            "num_train": int(len(np.asarray(train_codes))),
            "num_test": None if continuous else int(len(np.asarray(test_codes))), **_versions()}


def compute_sap(ground_truth_data: GroundTruthData, representation_fn: Callable, *, random_state: int = 0,
                num_train: int = NUM_TRAIN, num_test: int = NUM_EVAL, continuous: bool = False) -> dict:
    """:func:`sap` on ``num_train`` / ``num_test`` fresh sampled observations (DLIB ``sap_score``,
    ``continuous_factors=False`` by default)."""
    rng = rng_from(random_state)
    train = generate_factor_codes(ground_truth_data, representation_fn, num_train, rng)
    test = generate_factor_codes(ground_truth_data, representation_fn, num_test, rng)
    seed = random_state if isinstance(random_state, int) else 0
    return {**sap(*train, *test, continuous=continuous, random_state=seed), "random_state": _seed_record(random_state)}


__all__ = [
    "GroundTruthData",
    "beta_vae_score",
    "compute_dci",
    "compute_mig",
    "compute_sap",
    "dci",
    "dci_from_importance",
    "discrete_entropy",
    "discrete_mutual_info",
    "factor_vae_score",
    "generate_factor_codes",
    "histogram_discretize",
    "mig",
    "sap",
    "sap_score_matrix",
]
