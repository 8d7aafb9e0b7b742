"""Posterior-collapse diagnostics on encoder outputs: KL per dimension, active units, mutual
information I_q(x; z) and (ε, δ)-collapse.

All functions take NumPy arrays of the diagonal-Gaussian posterior parameters ``mean`` (μ) and
``log_var`` (log σ²), shape ``(N, d)`` (N evaluation examples, d latent dimensions), reduce in
float64 and are vectorised over examples (no Python loop over data points). Natural logs (nats).
Definitions and defaults follow ``reference/metrics.md`` §1–§4.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.special import logsumexp

from vae_tf.errors import DataError
from vae_tf.metrics._checks import as_matrix, fraction, positive_float, positive_int, rng_from, same_shape

#: Active-unit threshold on Cov_x(E_q[z_u]) (Burda et al. 2016; jxhe ``calc_au``).
AU_DELTA = 0.01
#: δ of the (ε, δ)-collapse (Lucas et al. 2019, §6.2).
COLLAPSE_DELTA = 0.01
#: The fixed ε grid reported next to the curve (metrics.md §4).
COLLAPSE_EPS_GRID = (0.01, 0.05, 0.1, 0.5)
#: Minibatch size of the He et al. (2019) MI estimator on images (jxhe ``image.py``).
MI_BATCH_SIZE = 50
#: jxhe's text runs (``config_yahoo.py`` and the others: ``batch_size: 32``), batches of one
#: sentence length (metrics.md §3: "B = 50 (images) / 32 (text)").
TEXT_MI_BATCH_SIZE = 32
#: Elements of one float64 block of the N x N log-density matrix (8 MiB: 1 << 23 elements, 64 MiB,
#: was 1.8x slower on 8,192 x 8,192, its temporaries no longer fitting any cache).
_BLOCK_ELEMENTS = 1 << 20
_LOG_2PI = math.log(2.0 * math.pi)


def _gaussian_params(mean, log_var) -> tuple[np.ndarray, np.ndarray]:
    if log_var is None:  # what encode_posterior gives a family without z_log_var (normal_gamma)
        raise DataError("log_var is None: the MI and KL estimators here need a diagonal Gaussian posterior's "
                        "z_mean and z_log_var, which this latent family does not give")
    mean = as_matrix("mean", mean)
    log_var = as_matrix("log_var", log_var)
    same_shape("mean", mean, "log_var", log_var)
    return mean, log_var


# --- §1 KL per dimension ------------------------------------------------------------------------

def kl_per_dim_gaussian(mean, log_var) -> np.ndarray:
    """Per-example analytic KL(N(μ, σ²) ‖ N(0, 1)) of every latent dimension.

        KL_d(x) = ½ (μ_d² + σ_d² − log σ_d² − 1)        (Kingma & Welling 2014, App. B)

    Returns float64 ``(N, d)`` in nats. Keep the per-example values: the (ε, δ)-collapse
    (:func:`collapse_fraction`) needs them; :func:`mean_kl_per_dim` averages them.
    """
    mean, log_var = _gaussian_params(mean, log_var)
    return 0.5 * (np.square(mean) + np.exp(log_var) - log_var - 1.0)


def mean_kl_per_dim(mean, log_var) -> np.ndarray:
    """KL̄_d = (1/N) Σ_n KL_d(x_n), float64 ``(d,)`` nats; its sum is the ELBO's KL term."""
    return kl_per_dim_gaussian(mean, log_var).mean(axis=0)


# --- §2 active units ----------------------------------------------------------------------------

def active_units(means, delta: float = AU_DELTA) -> tuple[int, np.ndarray]:
    """Active units of Burda, Grosse & Salakhutdinov (2016), as jxhe ``calc_au`` computes them.

        A_u = Cov_x(E_{q(z|x)}[z_u]),   unit u active ⇔ A_u ≥ δ   (δ = 0.01)

    Args:
        means: encoder means μ ``(N, d)`` of the evaluation set (means, not samples).
        delta: threshold; it assumes an N(0, I) prior (meaningless on a rescaled latent space).

    Returns:
        ``(count, variances)``: the number of units with variance ``≥ delta`` (the paper writes
        ``>``; the two differ only at exactly δ) and the per-unit variances, float64 ``(d,)``,
        with divisor N − 1 (``ddof=1``, like the reference; NumPy's default is N).
    """
    means = as_matrix("means", means, min_rows=2)
    delta = positive_float("delta", delta)
    variances = np.var(means, axis=0, ddof=1)
    return int(np.count_nonzero(variances >= delta)), variances


# --- §3 mutual information ----------------------------------------------------------------------

def _neg_entropy(log_var: np.ndarray) -> np.ndarray:
    """−H(q(z|x_n)) = −½ Σ_d (1 + log 2π + log σ²_{n,d}), ``(N,)`` (diagonal Gaussian only)."""
    return -0.5 * np.sum(1.0 + _LOG_2PI + log_var, axis=1)


def _draw_z(mean, log_var, z, eps, rng) -> np.ndarray:
    if z is not None and eps is not None:
        raise DataError("give either z or eps to the MI estimator, not both")
    if z is not None:
        z = as_matrix("z", z)
        same_shape("z", z, "mean", mean)
        return z
    if eps is None:
        eps = rng.standard_normal(mean.shape)
    else:
        eps = as_matrix("eps", eps)
        same_shape("eps", eps, "mean", mean)
    return mean + np.exp(0.5 * log_var) * eps


#: Above this bound on the expanded terms (z² / σ², μ² / σ²) the expansion's cancellation error
#: (~1e-16 of them) could reach 1e-8 nats, so the differences z − μ are taken directly instead.
_EXPANSION_LIMIT = 1e8


def _log_mixture_density(z: np.ndarray, mean: np.ndarray, log_var: np.ndarray, chunk_size: int) -> np.ndarray:
    """logsumexp_m log q(z_n | x_m) for every row of z ``(N, d)`` against components ``(M, d)``: ``(N,)``.

    Usually Σ_d (z_d − μ_md)² / σ²_md expanded into products, so that the N x M x d tensor never
    exists, as one product per block: the rows ``[−½ z², z, 1]`` against the components
    ``[σ⁻², μ σ⁻², const]``, ``const[m] = −½ Σ_d (log 2π + log σ²_md + μ²_md / σ²_md)``, give
    log q(z_n | x_m) directly, and the logsumexp runs in place on that block (about 12x faster
    than three products and SciPy's logsumexp on 8,192 x 8,192, the same values). When z² / σ² or μ² / σ² is so large
    (> ``_EXPANSION_LIMIT``: means far out in units of very small posterior scales) that the
    expansion's cancellation would show, the block is computed from the differences z − μ,
    ``(rows, M, d)`` at a time: slower, exact to float64 rounding. A row whose every density is
    zero gives −inf, as SciPy's logsumexp does.
    """
    inv_var = np.exp(-log_var)
    max_inv_var = inv_var.max(axis=0)
    bound = max(float(np.max(np.square(z).max(axis=0) * max_inv_var, initial=0.0)),
                float(np.max(np.square(mean) * inv_var, initial=0.0)))
    m, d = mean.shape
    if bound > _EXPANSION_LIMIT:
        base = -0.5 * np.sum(_LOG_2PI + log_var, axis=1)
        rows_per_block = max(1, min(chunk_size, _BLOCK_ELEMENTS // (m * d)))

        def block_at(start):
            diff = z[start:start + rows_per_block, None, :] - mean[None, :, :]
            return base[None, :] - 0.5 * np.einsum("cmd,md->cm", np.square(diff), inv_var)
    else:
        const = -0.5 * np.sum(_LOG_2PI + log_var + np.square(mean) * inv_var, axis=1)
        rows = np.concatenate([-0.5 * np.square(z), z, np.ones((len(z), 1))], axis=1)
        components = np.concatenate([inv_var, mean * inv_var, const[:, None]], axis=1).T.copy()
        rows_per_block = chunk_size

        def block_at(start):
            return rows[start:start + rows_per_block] @ components
    out = np.empty(len(z))
    for start in range(0, len(z), rows_per_block):
        block = block_at(start)
        peak = block.max(axis=1)
        peak[~np.isfinite(peak)] = 0.0  # an all −inf row stays −inf (not NaN), as in SciPy
        block -= peak[:, None]
        np.exp(block, out=block)
        with np.errstate(divide="ignore"):
            out[start:start + rows_per_block] = np.log(block.sum(axis=1)) + peak
    return out


def mutual_information(mean, log_var, *, z=None, eps=None, seed=0, chunk_size: int | None = None,
                       num_components: int | None = None) -> float:
    """I_q(x; z) with the aggregate posterior over the whole evaluation set (metrics.md §3).

    With q(x, z) = p_data(x) q(z|x) and q(z) = E_x q(z|x) (Hoffman & Johnson 2016; the
    full-dataset pattern of Chen et al. 2018, rtqichen/beta-tcvae ``elbo_decomposition.py``):

        I_q(x; z) = E_x E_{q(z|x)}[log q(z|x)] − E_{q(z)}[log q(z)]
        z_n ~ q(z|x_n)  (one draw per example)
        log q̂(z_n) = logsumexp_m log q(z_n | x_m) − log M      (m over the M mixture components)
        Î = (1/N) Σ_n [ −H(q(z|x_n)) − log q̂(z_n) ]

    −H is the closed-form diagonal-Gaussian entropy. By default the mixture is the whole set
    (M = N, m = n included), so Î ≲ log N; for a collapsed posterior Î ≈ 0 with standard
    deviation ≈ √(d / 2N). Cost N·M·d; memory is bounded by one ``(chunk_size, M)`` float64
    block (the N x M log-density matrix is never held whole).

    Args:
        mean, log_var: posterior parameters ``(N, d)``.
        z: optional samples ``(N, d)`` to use instead of drawing them.
        eps: optional standard-normal noise ``(N, d)``; z = μ + σ ε (for exact comparisons).
        seed: int or ``np.random.Generator`` for the noise (and the component subsample).
        chunk_size: rows of z per block; default: as many as fit 2**20 float64 elements (8 MiB).
        num_components: use a random subset of M mixture components instead of all N
            (stated in the result by the caller); ``None``: all.

    Returns:
        Î in nats (float).
    """
    mean, log_var = _gaussian_params(mean, log_var)
    # One example's aggregate posterior is its own posterior: the estimate would be −H − log q(z), noise.
    as_matrix("mean", mean, min_rows=2)
    rng = rng_from(seed)
    z = _draw_z(mean, log_var, z, eps, rng)
    n = len(mean)
    if num_components is None:
        comp_mean, comp_log_var = mean, log_var
    else:
        m = positive_int("num_components", num_components)
        idx = np.sort(rng.choice(n, size=min(m, n), replace=False))
        comp_mean, comp_log_var = mean[idx], log_var[idx]
    m = len(comp_mean)
    if chunk_size is None:
        chunk_size = max(1, _BLOCK_ELEMENTS // m)
    chunk_size = positive_int("chunk_size", chunk_size)
    log_qz = _log_mixture_density(z, comp_mean, comp_log_var, chunk_size) - math.log(m)
    return float(np.mean(_neg_entropy(log_var) - log_qz))


def mutual_information_minibatch(mean, log_var, batch_size: int = MI_BATCH_SIZE, *, z=None, eps=None,
                                 seed=0, shuffle: bool = True, groups=None) -> float:
    """I_q(x; z) by the minibatch estimator of He et al. (2019), jxhe ``calc_mi`` semantics.

    The evaluation set is cut into batches of B points (shuffled by ``seed`` unless
    ``shuffle=False``; the last batch may be smaller); in each batch every x_i gets one
    z_i ~ q(z|x_i), the aggregate posterior is the batch's own mixture (j = i included):

        Î_b = (1/B) Σ_i [ −H(q(z|x_i)) − (logsumexp_j log q(z_i | x_j) − log B) ]

    and the result is the batch-size-weighted mean of Î_b over the batches.

    ``groups`` (one key per row, e.g. a sentence's length): batches are cut within each group
    (each group's last batch may be smaller), as jxhe's text data loader batches sentences of one
    length together (``data/text_data.py::create_data_batch``, B = 32).

    Reported for comparability with the papers that copy ``calc_mi``; prefer
    :func:`mutual_information`. Pitfalls (metrics.md §3):

    - **capped at ≈ log B** (3.91 nats for B = 50, 3.47 for B = 32): values from different B
      are not comparable, always report B;
    - **noisy and can be negative**: for a fully collapsed posterior the expectation is 0 but a
      batch gives ½ mean_i(‖z_i‖² − d), standard deviation √(d / 2B) (0.28 nats for d = 8,
      B = 50);
    - shuffling changes the value: for exact comparisons pass ``shuffle=False`` and the same
      ``eps`` (or ``z``), whose rows follow the rows of ``mean``.
    """
    mean, log_var = _gaussian_params(mean, log_var)
    batch_size = positive_int("batch_size", batch_size)
    rng = rng_from(seed)
    n, d = mean.shape
    order = rng.permutation(n) if shuffle else np.arange(n)
    z = _draw_z(mean, log_var, z, eps, rng)
    if groups is None:
        parts = [order]
    else:
        keys = np.asarray(groups).reshape(-1)
        if len(keys) != n:
            raise DataError(f"groups has {len(keys)} keys for {n} rows; give one key per row")
        ordered = keys[order]
        parts = [order[ordered == key] for key in np.unique(keys)]  # each group in the shuffled order
    total = sum(_minibatch_sum(mean[part], log_var[part], z[part], batch_size) for part in parts)
    return total / n


def _minibatch_sum(mean: np.ndarray, log_var: np.ndarray, z: np.ndarray, batch_size: int) -> float:
    """Σ_i [−H(q(z|x_i)) − log q_batch(z_i)] over rows cut in order into batches of
    ``batch_size`` (the last may be smaller)."""
    n, d = mean.shape
    neg_h = _neg_entropy(log_var)
    total = 0.0
    full = (n // batch_size) * batch_size
    # Every full batch at once: (nb, B, B) log densities via einsum (no loop over batches).
    if full:
        nb = full // batch_size
        zb = z[:full].reshape(nb, batch_size, d)
        mb = mean[:full].reshape(nb, batch_size, d)
        ivb = np.exp(-log_var[:full]).reshape(nb, batch_size, d)
        const = -0.5 * np.sum(_LOG_2PI + log_var[:full].reshape(nb, batch_size, d) + mb**2 * ivb, axis=2)
        quad = np.einsum("bid,bjd->bij", zb**2, ivb) - 2.0 * np.einsum("bid,bjd->bij", zb, mb * ivb)
        log_qz = logsumexp(const[:, None, :] - 0.5 * quad, axis=2) - math.log(batch_size)
        total += float(np.sum(neg_h[:full] - log_qz.reshape(-1)))
    if full < n:  # the last, smaller batch (weighted by its size, as calc_mi does)
        rest = slice(full, n)
        log_qz = _log_mixture_density(z[rest], mean[rest], log_var[rest], n - full) - math.log(n - full)
        total += float(np.sum(neg_h[rest] - log_qz))
    return total


# --- §4 (ε, δ)-collapse -------------------------------------------------------------------------

def _kl_matrix(kl_per_example) -> np.ndarray:
    kl = as_matrix("kl_per_example", kl_per_example)
    if np.any(kl < -1e-9):
        raise DataError("kl_per_example has negative values; pass per-example KL divergences (N, d)")
    return kl


def collapse_thresholds(kl_per_example, delta: float = COLLAPSE_DELTA) -> np.ndarray:
    """Per dimension i, the smallest KL value t_i such that dim i is (ε, δ)-collapsed for every
    ε > t_i (and for no ε ≤ t_i).

    Count-based: with N examples and m = ⌈(1 − δ) N⌉ (rounded with a 1e-9 tolerance, so that
    0.99 · 100 counts as 99), dim i is collapsed at ε ⇔ #{n: KL_i(x_n) < ε} ≥ m ⇔ the m-th
    smallest KL_i is < ε. So t_i is that order statistic (not an interpolated ``np.quantile``).
    Returns float64 ``(d,)``; ``-inf`` where m = 0 (δ = 1: everything is collapsed).
    """
    kl = _kl_matrix(kl_per_example)
    delta = fraction("delta", delta)
    n = len(kl)
    m = int(math.ceil((1.0 - delta) * n - 1e-9))
    if m <= 0:
        return np.full(kl.shape[1], -np.inf)
    return np.partition(kl, m - 1, axis=0)[m - 1]


def collapse_fraction(kl_per_example, eps: float, delta: float = COLLAPSE_DELTA) -> float:
    """Fraction of (ε, δ)-collapsed latent dimensions (Lucas, Tucker, Grosse, Norouzi 2019, §6.2).

    Dimension i is (ε, δ)-collapsed if P_{x∼p_data}[KL(q(z_i|x) ‖ p(z_i)) < ε] ≥ 1 − δ:

        frac_below[i] = (1/N) Σ_n 1[KL_i(x_n) < ε]        (strict <, count-based)
        collapsed[i]  = frac_below[i] ≥ 1 − δ
        result        = mean_i collapsed[i]

    Args:
        kl_per_example: ``(N, d)`` per-example KL per dimension (analytic for Gaussians:
            :func:`kl_per_dim_gaussian`; Monte Carlo for other families, say which).
        eps: the KL threshold ε (nats).
        delta: δ (default 0.01, the paper's value).
    """
    eps = fraction("eps", eps, low=0.0, high=math.inf)  # a KL is >= 0: a negative ε collapses nothing
    return float(np.mean(collapse_thresholds(kl_per_example, delta) < eps))


def collapse_curve(kl_per_example, eps_grid=None, delta: float = COLLAPSE_DELTA) -> tuple[np.ndarray, np.ndarray]:
    """Fraction of (ε, δ)-collapsed dimensions over a grid of ε (the curve of Lucas et al. 2019).

    Args:
        kl_per_example: ``(N, d)`` per-example KL per dimension.
        eps_grid: increasing ε values; default 61 points log-spaced over [1e-4, 10] nats.
        delta: δ (default 0.01).

    Returns:
        ``(eps_grid, fractions)``, float64 arrays of the same length. Uses
        :func:`collapse_thresholds` once (O(N d)), then one comparison per ε.
    """
    eps_grid = np.logspace(-4, 1, 61) if eps_grid is None else np.asarray(eps_grid, dtype=np.float64).reshape(-1)
    if eps_grid.size == 0 or not np.all(np.isfinite(eps_grid)):
        raise DataError("eps_grid must be a non-empty list of finite numbers")
    thresholds = collapse_thresholds(kl_per_example, delta)
    fractions = np.mean(thresholds[None, :] < eps_grid[:, None], axis=1)
    return eps_grid, fractions


#: A code with active units but fewer than this fraction of its dims active is "partially collapsed".
PARTIAL_COLLAPSE_FRACTION = 0.5


#: An MI estimate further than this above the KL is said to be noise (closer: the two agree, e.g.
#: a collapsed code's 1e-9 against a KL of 0).
MI_ABOVE_KL_NATS = 1e-3


def _nats(value: float) -> str:
    """Three significant digits, trailing zeros kept (``2.00``, ``15.0``, ``0.00547``; ``3416``)."""
    return f"{value:.0f}" if abs(value) >= 999.5 else f"{value:#.3g}".rstrip(".")  # 999.7 rounds to 1000, not 1.00e+03


@dataclass(frozen=True)
class CollapseVerdict:
    """Whether a model's code carries information, in one word and one line.

    - ``collapsed``: no active unit (Burda et al.'s A_u < δ = :data:`AU_DELTA` for every dim: the
      encoder's mean does not move with x, so the decoder cannot read anything from z);
    - ``partially collapsed``: some units active, but fewer than :data:`PARTIAL_COLLAPSE_FRACTION`
      of the dims;
    - ``healthy``: at least that fraction active.

    The line also reports the mutual information I_q(x; z) when known, the KL (nats, summed over
    dims, mean over examples) and the fraction of (ε, δ)-collapsed dims (Lucas et al. 2019, ε = δ =
    0.01): the diagnostics' own thresholds, recorded by :meth:`thresholds`.
    """

    status: str
    active: int
    dims: int
    kl: float
    mi: float | None = None
    collapsed_fraction: float | None = None

    @property
    def line(self) -> str:
        parts = [f"{self.active}/{self.dims} dims active"]
        if self.mi is not None and math.isfinite(self.mi):
            # 0 <= I_q(x; z) <= E_x KL(q(z|x) || p(z)): an estimate outside (small sets: its spread
            # is ~sqrt(d / 2N) for a collapsed code, see mutual_information) is said to be noise
            if self.mi < 0:
                parts.append(f"MI ~0 nats (estimate {_nats(self.mi)}, below 0 by sampling noise)")
            elif self.mi - self.kl > MI_ABOVE_KL_NATS:
                parts.append(f"MI {_nats(self.mi)} nats (above the KL, which bounds it: sampling noise; "
                             "more examples narrow it)")
            else:
                parts.append(f"MI {_nats(self.mi)} nats")
        parts.append(f"KL {_nats(self.kl)} nats")
        if self.collapsed_fraction is not None:
            parts.append(f"{self.collapsed_fraction:.0%} of dims (0.01, 0.01)-collapsed")
        return f"{self.status}: " + ", ".join(parts)

    @staticmethod
    def thresholds() -> str:
        return (f"active unit: Var_x E[z_u|x] >= {AU_DELTA:g} (Burda et al. 2016); collapsed: 0 active; partially "
                f"collapsed: < {PARTIAL_COLLAPSE_FRACTION:.0%} of dims active; (eps, delta)-collapsed dim: "
                f"KL < 0.01 nats on >= {1 - COLLAPSE_DELTA:.0%} of examples (Lucas et al. 2019)")


def collapse_verdict(active: int, dims: int, kl: float, mi: float | None = None,
                     collapsed_fraction: float | None = None) -> CollapseVerdict:
    """The :class:`CollapseVerdict` of a model from its diagnostics: ``active`` units out of
    ``dims`` (:func:`active_units` on the embedding), the mean total ``kl``, and optionally the MI
    and the (0.01, 0.01)-collapsed fraction."""
    active, dims = int(active), int(dims)
    if dims < 1 or not 0 <= active <= dims:
        raise DataError(f"collapse_verdict needs 0 <= active <= dims and dims >= 1, got {active} of {dims}")
    if active == 0:
        status = "collapsed"
    elif active < PARTIAL_COLLAPSE_FRACTION * dims:
        status = "partially collapsed"
    else:
        status = "healthy"
    return CollapseVerdict(status, active, dims, float(kl), None if mi is None else float(mi),
                           None if collapsed_fraction is None else float(collapsed_fraction))


__all__ = [
    "PARTIAL_COLLAPSE_FRACTION",
    "CollapseVerdict",
    "collapse_verdict",
    "AU_DELTA",
    "COLLAPSE_DELTA",
    "COLLAPSE_EPS_GRID",
    "MI_BATCH_SIZE",
    "TEXT_MI_BATCH_SIZE",
    "active_units",
    "collapse_curve",
    "collapse_fraction",
    "collapse_thresholds",
    "kl_per_dim_gaussian",
    "mean_kl_per_dim",
    "mutual_information",
    "mutual_information_minibatch",
]
