"""Downstream metrics: linear probe, Hungarian cluster accuracy, t-SNE embedding."""

from __future__ import annotations

import numpy as np
import pytest

from vae_tf.errors import DataError
from vae_tf.metrics import cluster_accuracy, linear_probe_accuracy, tsne_embedding


def test_cluster_accuracy_of_a_permuted_labelling_is_one(rng):
    y = rng.integers(0, 7, 500)
    permutation = rng.permutation(7)
    assert cluster_accuracy(y, permutation[y]) == 1.0
    assert cluster_accuracy(y, permutation[y] + 100) == 1.0  # cluster ids need not be 0..K-1


def test_cluster_accuracy_hand_cases():
    assert cluster_accuracy([0, 0, 1, 1], [1, 0, 0, 0]) == 0.75
    # Three clusters for two classes: one-to-one matching leaves one cluster unmatched.
    assert cluster_accuracy([0, 0, 1, 1], [0, 1, 2, 2]) == 0.75
    assert cluster_accuracy([0, 1, 2], [0, 0, 0]) == pytest.approx(1 / 3)
    with pytest.raises(DataError):
        cluster_accuracy([0, 1], [0, 1, 1])
    with pytest.raises(DataError):
        cluster_accuracy([0.5, 1.0], [0, 1])


def test_linear_probe_separates_blobs_and_not_noise(rng):
    centres = rng.normal(0, 5, (4, 6))
    y_train, y_test = rng.integers(0, 4, 400), rng.integers(0, 4, 200)
    x_train = centres[y_train] + rng.standard_normal((400, 6))
    x_test = centres[y_test] + rng.standard_normal((200, 6))
    assert linear_probe_accuracy(x_train, y_train, x_test, y_test) > 0.95
    details = linear_probe_accuracy(x_train, y_train, x_test, y_test, return_details=True)
    assert details["n_iter"] < details["max_iter"] and details["train_accuracy"] > 0.95
    noise = linear_probe_accuracy(rng.standard_normal((400, 6)), y_train, rng.standard_normal((200, 6)), y_test)
    assert noise < 0.45
    with pytest.raises(DataError):
        linear_probe_accuracy(x_train, np.zeros(400, np.int64), x_test, y_test)


def test_linear_probe_takes_class_names_as_scikit_learn_does(rng):
    """String labels were refused ("must hold integer class indices, got dtype <U1"); names map to
    one set of classes for both splits, so the accuracy is the integer labels' exactly."""
    centres = rng.normal(0, 1.5, (3, 4))
    y_train, y_test = rng.integers(0, 3, 300), rng.integers(0, 3, 150)
    x_train = centres[y_train] + rng.standard_normal((300, 4))
    x_test = centres[y_test] + rng.standard_normal((150, 4))
    names = np.array(["cat", "dog", "emu"])
    by_index = linear_probe_accuracy(x_train, y_train, x_test, y_test)
    assert 0.5 < by_index < 1.0  # overlapping blobs: a wrong mapping of the test names would show
    assert linear_probe_accuracy(x_train, names[y_train], x_test, names[y_test]) == by_index
    assert linear_probe_accuracy(x_train, list(names[y_train]), x_test, names[y_test].astype(object)) == by_index
    # Test labels of a class the training split lacks still count as misses, not as another class.
    only_two = y_train != 2
    partial = linear_probe_accuracy(x_train[only_two], names[y_train[only_two]], x_test, names[y_test])
    assert partial == linear_probe_accuracy(x_train[only_two], y_train[only_two], x_test, y_test)
    with pytest.raises(DataError, match=r"^train_y holds strings but test_y does not; give both the same kind"):
        linear_probe_accuracy(x_train, names[y_train], x_test, y_test)


@pytest.mark.slow
def test_tsne_embedding_subsamples_reproducibly(rng):
    codes = rng.standard_normal((150, 4))
    emb, idx = tsne_embedding(codes, seed=0, max_points=60)
    assert emb.shape == (60, 2) and idx.shape == (60,) and len(np.unique(idx)) == 60
    emb2, idx2 = tsne_embedding(codes, seed=0, max_points=60)
    np.testing.assert_array_equal(idx, idx2)
    np.testing.assert_allclose(emb, emb2)
    emb1d, _ = tsne_embedding(codes[:20, :1], seed=0)
    assert emb1d.shape == (20, 2)


# --- OpenMP threads: no more than the idle CPUs ------------------------------------------------------
@pytest.mark.parametrize("cpus, load, expected", [(2, 0.0, 2), (2, 0.4, 2), (2, 1.2, 1), (2, 5.0, 1), (8, 2.6, 5)])
def test_idle_cpus_are_the_usable_cpus_less_the_load(monkeypatch, cpus, load, expected):
    from vae_tf.metrics import downstream

    monkeypatch.setattr(downstream.os, "sched_getaffinity", lambda pid: set(range(cpus)), raising=False)
    monkeypatch.setattr(downstream.os, "getloadavg", lambda: (load, 0.0, 0.0))
    assert downstream.idle_cpus() == expected


def test_idle_cpus_without_a_load_average_is_every_usable_cpu(monkeypatch):
    from vae_tf.metrics import downstream

    def no_load():
        raise OSError("no load average")

    monkeypatch.setattr(downstream.os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    monkeypatch.setattr(downstream.os, "getloadavg", no_load)
    assert downstream.idle_cpus() == 3


def test_kmeans_and_tsne_run_on_the_idle_cpus_only(monkeypatch):
    """Both run with scikit-learn's OpenMP pool capped at idle_cpus() (here 1), and the cap is
    lifted afterwards."""
    from sklearn.cluster import KMeans
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_info

    from vae_tf.metrics import downstream

    def openmp_threads():
        return {pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "openmp"}

    before = openmp_threads()
    seen = []
    for cls, method in ((KMeans, "fit_predict"), (TSNE, "fit_transform")):
        real = getattr(cls, method)

        def spy(self, *args, real=real, **kwargs):
            seen.append(openmp_threads())
            return real(self, *args, **kwargs)

        monkeypatch.setattr(cls, method, spy)
    monkeypatch.setattr(downstream, "idle_cpus", lambda: 1)
    rng = np.random.default_rng(0)
    downstream.kmeans_accuracy(rng.normal(size=(60, 3)), np.repeat([0, 1, 2], 20))
    downstream.tsne_embedding(rng.normal(size=(40, 3)))
    assert seen == [{1}, {1}] and openmp_threads() == before


def test_the_metrics_load_scipy_optimize_only_to_match_clusters():
    """`vae-tf train`'s verdict imports vae_tf.metrics; SciPy's optimizers (~0.13 s to import)
    load only when a cluster matching needs them, and then match as usual."""
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys, vae_tf.metrics as m\n"
            "print('scipy.optimize' in sys.modules)\n"
            "print(m.cluster_accuracy([0, 0, 1, 1, 2], [5, 5, 3, 3, 3]), 'scipy.optimize' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1],
                          capture_output=True, text=True, timeout=120)
    assert done.stdout.splitlines() == ["False", "0.8 True"], done.stdout + done.stderr[-2000:]
