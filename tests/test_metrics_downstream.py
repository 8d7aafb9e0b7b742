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
