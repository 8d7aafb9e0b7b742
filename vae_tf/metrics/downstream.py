"""Downstream usefulness of the codes: linear-probe accuracy, cluster accuracy of a categorical
code (Hungarian matching) and a t-SNE embedding for figures."""

from __future__ import annotations

import os

import numpy as np

from vae_tf._cpus import usable_cpus
from vae_tf.errors import DataError
from vae_tf.metrics._checks import as_matrix, class_labels, integer_labels, positive_int, rng_from, same_rows

#: Iteration cap of the probe's lbfgs solver: standardised low-dimensional codes converge far
#: earlier; the default 100 of scikit-learn is too low for 10-class problems on 60 000 points.
PROBE_MAX_ITER = 5000
TSNE_MAX_POINTS = 2000


def idle_cpus() -> int:
    """The CPUs this process may run on less those other work keeps busy (the 1-minute load
    average), at least 1: how many threads scikit-learn's OpenMP loops should use.

    k-means and Barnes-Hut t-SNE run many short OpenMP regions, each waiting for all of its
    threads: with more threads than idle CPUs every region waits for a descheduled thread. On 2
    CPUs with one kept busy by another process (measured 2026-12-04), k-means (2,000 x 64, k = 10,
    10 inits) took 3.73 s on 2 threads against 0.09 s on 1, and the t-SNE of 120 codes 14 s against
    0.2 s; with both CPUs idle, 2 threads gain little (t-SNE of 2,000 codes 4.5 s against 6.8 s)."""
    cpus = usable_cpus()
    try:
        busy = os.getloadavg()[0]
    except OSError:  # no load average on this platform: assume the CPUs are free
        busy = 0.0
    return max(1, min(cpus, int(cpus - busy + 0.5)))


def _openmp_limited():
    """scikit-learn's OpenMP threads capped at :func:`idle_cpus` for a ``with`` block."""
    from threadpoolctl import threadpool_limits  # noqa: PLC0415 (scikit-learn's own dependency)

    return threadpool_limits(limits=idle_cpus(), user_api="openmp")


def linear_probe_accuracy(train_codes, train_y, test_codes, test_y, seed: int = 0, *, C: float = 1.0,
                          max_iter: int = PROBE_MAX_ITER, return_details: bool = False):
    """Test accuracy of a linear classifier on frozen codes (the usual "linear probe").

    ``StandardScaler`` (fitted on the training codes) then
    ``LogisticRegression(C=C, max_iter=max_iter, random_state=seed)`` (lbfgs, multinomial,
    L2), fitted on ``(train_codes, train_y)`` and scored on ``(test_codes, test_y)``.
    Standardising makes C mean the same for every model, whatever the scale of its codes.
    Labels are class indices or names (strings), as scikit-learn takes them.

    Returns:
        the test accuracy (float), or with ``return_details`` a dict with ``test_accuracy``,
        ``train_accuracy``, ``n_iter`` and the settings.
    """
    from sklearn.linear_model import LogisticRegression  # noqa: PLC0415
    from sklearn.pipeline import make_pipeline  # noqa: PLC0415
    from sklearn.preprocessing import StandardScaler  # noqa: PLC0415

    x_train = as_matrix("train_codes", train_codes)
    x_test = as_matrix("test_codes", test_codes)
    y_train, y_test = class_labels(train_y=train_y, test_y=test_y)
    same_rows("train_codes", x_train, "train_y", y_train)
    same_rows("test_codes", x_test, "test_y", y_test)
    if x_train.shape[1] != x_test.shape[1]:
        raise DataError(f"train codes have {x_train.shape[1]} dims but test codes {x_test.shape[1]}")
    if len(np.unique(y_train)) < 2:
        raise DataError("the linear probe needs at least two classes in train_y")
    probe = make_pipeline(StandardScaler(),
                          LogisticRegression(C=C, max_iter=positive_int("max_iter", max_iter), random_state=seed))
    probe.fit(x_train, y_train)
    test_accuracy = float(probe.score(x_test, y_test))
    if not return_details:
        return test_accuracy
    return {"test_accuracy": test_accuracy, "train_accuracy": float(probe.score(x_train, y_train)),
            "n_iter": int(np.max(probe[-1].n_iter_)), "C": float(C), "max_iter": int(max_iter),
            "num_train": int(len(x_train)), "num_test": int(len(x_test)), "seed": seed}


def cluster_accuracy(y_true, y_pred) -> float:
    """Unsupervised clustering accuracy: the best one-to-one map of predicted clusters to classes,
    found by the Hungarian algorithm (``scipy.optimize.linear_sum_assignment`` on the contingency
    table), then the fraction of examples it maps correctly (Xie et al. 2016, Eq. 10).

    Any relabelling of a perfect clustering scores 1. With more clusters than classes the surplus
    clusters are matched to nothing and count as errors (a strict one-to-one map).
    """
    y_true = integer_labels("y_true", y_true)
    y_pred = integer_labels("y_pred", y_pred)
    same_rows("y_true", y_true, "y_pred", y_pred)
    if len(y_true) == 0:
        raise DataError("cluster_accuracy needs at least one example")
    _, t = np.unique(y_true, return_inverse=True)
    _, p = np.unique(y_pred, return_inverse=True)
    table = np.zeros((p.max() + 1, t.max() + 1), dtype=np.int64)
    np.add.at(table, (p, t), 1)
    # Imported here: scipy.optimize takes ~0.13 s to import, and `vae-tf train`'s verdict imports
    # this module without matching clusters (docs/performance.md, start-up).
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(table, maximize=True)
    return float(table[rows, cols].sum() / len(y_true))


def kmeans_accuracy(codes, labels, seed: int = 0, n_init: int = 10) -> float:
    """How well the codes separate the classes without being told them: k-means with k = the
    number of classes (``sklearn.cluster.KMeans(n_init=10, random_state=seed)``, on at most
    :func:`idle_cpus` threads) on the codes,
    scored by :func:`cluster_accuracy` against the labels (chance ≈ the largest class share)."""
    from sklearn.cluster import KMeans  # noqa: PLC0415

    codes = as_matrix("codes", codes)
    labels = integer_labels("labels", labels)
    same_rows("codes", codes, "labels", labels)
    k = len(np.unique(labels))
    if k < 2 or len(codes) < k:
        raise DataError(f"kmeans_accuracy needs at least 2 classes and as many examples, got {k} classes, "
                        f"{len(codes)} examples")
    with _openmp_limited():
        predicted = KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit_predict(codes)
    return cluster_accuracy(labels, predicted)


def tsne_embedding(codes, seed: int = 0, max_points: int = TSNE_MAX_POINTS, *, perplexity: float = 30.0):
    """2-D t-SNE of (at most ``max_points`` randomly chosen) codes, for figures only.

    ``sklearn.manifold.TSNE(init="pca", learning_rate="auto", random_state=seed)`` (random init
    for 1-D codes), on at most :func:`idle_cpus` threads; the
    perplexity is lowered to (n − 1) / 3 for small n. Distances in a t-SNE plot are not metric
    results; use :func:`linear_probe_accuracy` for numbers.

    Returns:
        ``(embedding (m, 2) float64, indices (m,))``: ``indices`` selects the rows of ``codes``
        (and of their labels) that were embedded, in the order of ``embedding``.
    """
    from sklearn.manifold import TSNE  # noqa: PLC0415

    codes = as_matrix("codes", codes, min_rows=3)
    max_points = positive_int("max_points", max_points, minimum=3)
    rng = rng_from(seed)
    n = len(codes)
    indices = np.sort(rng.choice(n, size=max_points, replace=False)) if n > max_points else np.arange(n)
    sub = codes[indices]
    perplexity = float(min(perplexity, max(1.0, (len(sub) - 1) / 3.0)))
    init = "pca" if sub.shape[1] >= 2 else "random"  # PCA init needs 2 input dims
    tsne = TSNE(n_components=2, perplexity=perplexity, init=init, learning_rate="auto",
                random_state=seed if isinstance(seed, int) else 0)
    with _openmp_limited():
        embedding = tsne.fit_transform(sub)
    return embedding.astype(np.float64), indices


__all__ = ["PROBE_MAX_ITER", "TSNE_MAX_POINTS", "cluster_accuracy", "idle_cpus", "kmeans_accuracy",
           "linear_probe_accuracy", "tsne_embedding"]
