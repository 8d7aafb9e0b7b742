"""Tests of vae_tf.data: loaders, seeded splits, validation, pipelines, the dSprites generator."""

from __future__ import annotations


import dataclasses

import numpy as np
import pytest

from vae_tf.data import (
    DATASETS,
    DataSplits,
    DSpritesGenerator,
    load_dataset,
    register_dataset,
    validate_array,
)
from vae_tf.data import dsprites as dsp
from vae_tf.errors import ConfigError, DataError


def raises_one_line(fn, *args, match: str | None = None, **kwargs) -> str:
    """Call fn, expect a DataError, check its message is one line, return the message."""
    with pytest.raises(DataError) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message and message == " ".join(message.split())
    if match is not None:
        assert match in message, message
    return message


def row_multiset(*arrays: np.ndarray) -> list[bytes]:
    return sorted(row.tobytes() for arr in arrays for row in arr.reshape(len(arr), -1))


# -- digits and splits ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits() -> DataSplits:
    return load_dataset("digits", seed=0)


def test_digits_shapes_range_labels(digits):
    from sklearn.datasets import load_digits

    assert digits.name == "digits"
    assert digits.x_train.shape == (1437, 8, 8, 1)
    assert digits.x_val.shape == (180, 8, 8, 1) and digits.x_test.shape == (180, 8, 8, 1)
    assert digits.data_shape == (8, 8, 1)
    assert digits.num_examples == {"train": 1437, "val": 180, "test": 180}
    for split in ("train", "val", "test"):
        x, y = digits.split(split)
        assert x.dtype == np.float32 and y.dtype == np.int64
        assert x.min() == 0.0 and x.max() == 1.0
        assert set(np.unique(y)) == set(range(10))
    assert digits.value_range == (0.0, 1.0) and digits.binary is False
    assert digits.factors_train is None and digits.factor_names is None
    # The three splits are a partition of the source, scaled by /16, each image with its label.
    bunch = load_digits()
    source = (bunch.images / 16.0).astype(np.float32)[..., None]
    assert row_multiset(digits.x_train, digits.x_val, digits.x_test) == row_multiset(source)
    by_image = {img.tobytes(): int(t) for img, t in zip(source, bunch.target)}
    assert all(by_image[img.tobytes()] == int(t) for img, t in zip(digits.x_test, digits.y_test))
    assert digits.metadata["source"] == "sklearn.datasets.load_digits"
    assert digits.metadata["n_train"] == 1437 and digits.metadata["seed"] == 0


def test_split_determinism_by_seed(digits):
    same = load_dataset("digits", seed=0)
    other = load_dataset("digits", seed=1)
    for split in ("train", "val", "test"):
        np.testing.assert_array_equal(getattr(same, f"x_{split}"), getattr(digits, f"x_{split}"))
        np.testing.assert_array_equal(getattr(same, f"y_{split}"), getattr(digits, f"y_{split}"))
    assert not np.array_equal(other.x_test, digits.x_test)
    assert not np.array_equal(other.y_train, digits.y_train)


def test_fractions_and_max_samples():
    small = load_dataset("digits", seed=3, val_fraction=0.2, test_fraction=0.3, max_samples=100)
    assert small.num_examples == {"train": 50, "val": 20, "test": 30}
    no_val = load_dataset("digits", val_fraction=0.0, test_fraction=0.0, max_samples=10)
    assert no_val.num_examples == {"train": 10, "val": 0, "test": 0}
    assert no_val.x_val.shape == (0, 8, 8, 1)
    # max_samples truncates the seeded permutation: a capped run keeps a prefix of it.
    from vae_tf.data import SplitPlan

    plan_full = SplitPlan(seed=3, val_fraction=0.0, test_fraction=0.0)
    plan_cap = SplitPlan(seed=3, val_fraction=0.0, test_fraction=0.0, max_samples=40)
    np.testing.assert_array_equal(plan_cap.indices(1797)[0], plan_full.indices(1797)[0][:40])


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"val_fraction": 1.0}, "val_fraction must be a number in [0, 1)"),
        ({"test_fraction": -0.1}, "test_fraction must be a number in [0, 1)"),
        ({"val_fraction": 0.5, "test_fraction": 0.5}, "make their sum smaller than 1"),
        ({"max_samples": 2}, "leave no training example"),
        ({"max_samples": 0}, "max_samples must be a positive integer"),
        ({"seed": 1.5}, "seed must be an integer"),
    ],
)
def test_bad_split_settings(kwargs, fragment):
    raises_one_line(load_dataset, "digits", match=fragment, **kwargs)


def test_registry_errors():
    message = raises_one_line(load_dataset, "cifar", match="unknown data set 'cifar'")
    for known in ("digits", "dsprites", "mnist", "fashion_mnist", "npz", "npy", "images"):
        assert known in message
    raises_one_line(load_dataset, "digits", match="has no option(s) 'n_samples'", n_samples=3)
    # a misspelt option gets a "did you mean", as config keys do
    raises_one_line(load_dataset, "dsprites", match="has no option(s) 'n_sample' (did you mean n_samples?); its "
                                                   "options are: image_size, n_samples", n_sample=3)
    raises_one_line(
        load_dataset, "dsprites", match="its options are: image_size, n_samples", colour=1
    )
    raises_one_line(load_dataset, "digits", match="takes no path", path="/tmp/x.npz")
    assert load_dataset(" DIGITS ", max_samples=20).name == "digits"  # names are normalised


def test_register_custom_dataset():
    @register_dataset("toy_vectors_for_test")
    def load_toy(plan, *, width: int = 3):
        train, val, test = plan.indices(20)
        x = np.arange(20 * width, dtype=np.float32).reshape(20, width) / 100.0
        return DataSplits("toy_vectors_for_test", x[train], x[val], x[test])

    try:
        data = load_dataset("toy_vectors_for_test", width=4)
        assert data.data_shape == (4,) and data.num_examples == {"train": 16, "val": 2, "test": 2}
        raises_one_line(load_dataset, "toy_vectors_for_test", match="'depth'", depth=2)
        with pytest.raises(ValueError, match="already registered"):
            register_dataset("toy_vectors_for_test")(lambda plan: None)
    finally:
        DATASETS.pop("toy_vectors_for_test")


# -- pipelines --------------------------------------------------------------------------------


def _batches(ds) -> list[np.ndarray]:
    return [b.numpy() if not isinstance(b, tuple) else tuple(t.numpy() for t in b) for b in ds]


def test_pipeline_batches_and_order(digits):
    train = _batches(digits.pipeline("train", 64))
    assert train[0].shape == (64, 8, 8, 1) and train[-1].shape == (1437 % 64, 8, 8, 1)
    assert len(train) == 23 and all(b.dtype == np.float32 for b in train)
    assert row_multiset(*train) == row_multiset(digits.x_train)
    assert not np.array_equal(np.concatenate(train), digits.x_train)  # train is shuffled
    dropped = _batches(digits.pipeline("train", 64, drop_remainder=True))
    assert len(dropped) == 22 and all(b.shape[0] == 64 for b in dropped)
    # val / test keep their order unless asked; with_labels yields aligned (x, y).
    val = _batches(digits.pipeline("val", 50, with_labels=True))
    np.testing.assert_array_equal(np.concatenate([x for x, _ in val]), digits.x_val)
    np.testing.assert_array_equal(np.concatenate([y for _, y in val]), digits.y_val)
    assert val[0][1].dtype == np.int64
    shuffled_val = np.concatenate(_batches(digits.pipeline("val", 50, shuffle=True)))
    assert not np.array_equal(shuffled_val, digits.x_val)
    repeated = digits.pipeline("test", 100, repeat=True)
    assert sum(1 for _ in repeated.take(5)) == 5  # 180 examples, 5 batches only with repeat


def test_every_training_pipeline_runs_with_tf_data_autotuning_off(digits):
    """With autotuning on, ``fit`` over these in-memory pipelines sat idle for up to the length of
    the run before returning (benchmarks/fit_teardown.py; docs/performance.md, "tf.data
    autotuning"). The switch is an option of the dataset, so it must survive to what fit reads."""
    pipelines = {"pipeline": digits.pipeline("train", 64), "pipeline val": digits.pipeline("val", 64, with_labels=True),
                 "resumable_pipeline": digits.resumable_pipeline("train", 64, seed=0, epochs=2, start_step=3)}
    for name, ds in pipelines.items():
        assert ds.options().autotune.enabled is False, name
        assert len(_batches(ds.take(2))) == 2, name


def test_pipeline_shuffle_determinism(digits):
    a = digits.pipeline("train", 128, seed=7, with_labels=True)
    b = digits.pipeline("train", 128, seed=7, with_labels=True)
    c = digits.pipeline("train", 128, seed=8, with_labels=True)
    epoch_a1, epoch_a2 = _batches(a), _batches(a)
    epoch_b1 = _batches(b)
    np.testing.assert_array_equal(epoch_a1[0][0], epoch_b1[0][0])
    np.testing.assert_array_equal(epoch_a1[0][1], epoch_b1[0][1])
    assert not np.array_equal(epoch_a1[0][0], epoch_a2[0][0])  # reshuffled every epoch
    assert not np.array_equal(epoch_a1[0][0], _batches(c)[0][0])


def test_pipeline_errors(digits):
    raises_one_line(digits.split, "validation", match="unknown split 'validation'")
    raises_one_line(digits.pipeline, "dev", 8, match="choose one of 'train', 'val', 'test'")
    with pytest.raises(ConfigError):
        digits.pipeline("train", 0)
    unlabelled = DataSplits("u", digits.x_train, digits.x_val, digits.x_test)
    raises_one_line(unlabelled.pipeline, "train", 8, with_labels=True, match="has no labels")


# -- validate_array ---------------------------------------------------------------------------


def test_validate_array_accepts_good_data():
    validate_array(np.zeros((3, 4), np.float32), support=(0.0, 1.0))
    validate_array(np.ones((2, 5, 5), np.uint8))
    validate_array(np.zeros((2, 5, 5, 3), bool), support=(0, 1))
    validate_array([[0.5, 1.0], [0.0, 0.25]], support=(0.0, 1.0))  # closed interval


def test_validate_array_errors():
    raises_one_line(validate_array, np.array([["a", "b"]]), match="not a numeric array")
    raises_one_line(validate_array, np.zeros(5), match="rank 2 (N, D)")
    raises_one_line(validate_array, np.zeros((2, 2, 2, 2, 2)), match="rank 5")
    raises_one_line(validate_array, np.zeros((0, 4)), what="my data", match="my data is empty")
    raises_one_line(validate_array, np.zeros((3, 0)), match="no features")
    x = np.zeros((4, 3, 3), np.float32)
    x[2, 1, 0] = np.nan
    x[3, 0, 0] = np.nan
    x[3, 2, 2] = np.inf
    msg = raises_one_line(validate_array, x, match="2 NaN and 1 Inf values")
    assert "first at index (2, 1, 0)" in msg and "remove or impute" in msg
    y = np.zeros((2, 3))
    y[1, 2] = -np.inf
    raises_one_line(validate_array, y, match="0 NaN and 1 Inf values (first at index (1, 2)")
    z = np.array([[-0.3, 0.5], [1.2, 0.0]])
    msg = raises_one_line(validate_array, z, support=(0.0, 1.0))
    assert msg == (
        "data values lie in [-0.3, 1.2] but the likelihood needs [0, 1]: rescale the data or "
        "choose a Gaussian likelihood"
    )


# -- dSprites generator -----------------------------------------------------------------------


def test_dsprites_factor_grid_matches_original():
    assert dsp.FACTOR_NAMES == ("shape", "scale", "orientation", "pos_x", "pos_y")
    assert dsp.FACTOR_SIZES == (3, 6, 40, 32, 32) and dsp.NUM_COMBINATIONS == 737280
    assert dsp.GENERATOR_VERSION == "1"
    g = DSpritesGenerator(64)
    originals = [
        np.array([1.0, 2.0, 3.0]),
        np.linspace(0.5, 1, 6),
        np.linspace(0, 2 * np.pi, 40),
        np.linspace(0, 1, 32),
        np.linspace(0, 1, 32),
    ]
    for f, expected in enumerate(originals):
        classes = np.zeros((len(expected), 5), np.int64)
        classes[:, f] = np.arange(len(expected))
        np.testing.assert_array_equal(g.factor_values(classes)[:, f], expected)  # bit-exact
    orientations = g.factor_values(np.array([[0, 0, k, 0, 0] for k in (0, 39)]))[:, 2]
    assert orientations[0] == 0.0 and orientations[1] == 2 * np.pi
    assert g.factor_values([2, 5, 39, 31, 31]).tolist() == [3.0, 1.0, 2 * np.pi, 1.0, 1.0]


def test_dsprites_index_round_trip():
    g = DSpritesGenerator(32)
    sizes = np.array(dsp.FACTOR_SIZES)
    bases = dsp.NUM_COMBINATIONS // np.cumprod(sizes)  # original formula, colour factor dropped
    assert tuple(bases) == (245760, 40960, 1024, 32, 1) == dsp.FACTOR_BASES
    index = np.arange(dsp.NUM_COMBINATIONS)
    classes = g.classes_of(index)
    assert classes.shape == (737280, 5) and classes.dtype == np.int64
    np.testing.assert_array_equal(g.index_of(classes), index)
    np.testing.assert_array_equal(classes @ bases, index)
    assert (classes.max(axis=0) == sizes - 1).all()
    assert len(np.unique(classes @ np.array([1, 3, 18, 720, 23040]))) == 737280  # all distinct
    assert g.classes_of(1).tolist() == [0, 0, 0, 0, 1]  # pos_y fastest
    assert g.classes_of(32).tolist() == [0, 0, 0, 1, 0]
    assert g.classes_of(245760).tolist() == [1, 0, 0, 0, 0]
    assert g.index_of([2, 5, 39, 31, 31]) == 737279
    raises_one_line(g.index_of, [0, 6, 0, 0, 0], match="'scale'")
    raises_one_line(g.classes_of, 737280, match="out of range")


def test_dsprites_sample_factors():
    g = DSpritesGenerator(32)
    a = g.sample_factors(6000, 5)
    assert a.shape == (6000, 5) and a.dtype == np.int64
    np.testing.assert_array_equal(a, g.sample_factors(6000, np.random.default_rng(5)))
    assert not np.array_equal(a, g.sample_factors(6000, 6))
    for f, size in enumerate(dsp.FACTOR_SIZES):
        counts = np.bincount(a[:, f], minlength=size)
        assert len(counts) == size and counts.min() > 0.5 * 6000 / size


def test_dsprites_render_deterministic_binary_inside_canvas():
    classes = DSpritesGenerator().sample_factors(300, 0)
    extremes = np.array(
        [[s, 5, o, x, y] for s in range(3) for o in range(0, 40, 3) for x in (0, 31)
         for y in (0, 31)]
    )
    for size in (64, 32):
        one, two = DSpritesGenerator(size), DSpritesGenerator(size)
        imgs = one.render(classes)
        assert imgs.shape == (300, size, size) and imgs.dtype == np.uint8
        assert imgs.tobytes() == two.render(classes).tobytes()
        assert set(np.unique(imgs)) == {0, 1}
        assert imgs.reshape(300, -1).sum(axis=1).min() > 0  # every sprite is visible
        edge = one.render(extremes)
        assert edge[:, 0, :].sum() == edge[:, -1, :].sum() == 0  # no sprite touches the border
        assert edge[:, :, 0].sum() == edge[:, :, -1].sum() == 0
    single = DSpritesGenerator(64).render([0, 0, 0, 0, 0])
    assert single.shape == (64, 64)


def test_dsprites_render_matches_full_canvas_reference():
    """The windowed renderer equals a direct per-sprite evaluation on every pixel centre."""
    for size in (64, 32):
        g = DSpritesGenerator(size)
        classes = g.sample_factors(60, 11)
        values = g.factor_values(classes)
        centres = (np.arange(size) + 0.5) / size
        span = 1 - 2 * dsp.MARGIN
        expected = []
        for (shape, *_), (_, scale, theta, px, py) in zip(classes, values):
            dx = centres[None, :] - (dsp.MARGIN + px * span)
            dy = (dsp.MARGIN + py * span) - centres[:, None]
            u = (np.cos(theta) * dx + np.sin(theta) * dy) / scale
            w = (np.cos(theta) * dy - np.sin(theta) * dx) / scale
            expected.append(dsp._INSIDE[shape](u, w))
        np.testing.assert_array_equal(g.render(classes), np.array(expected, dtype=np.uint8))


def test_dsprites_factors_change_images():
    g = DSpritesGenerator(64)
    cols, rows = np.arange(64), np.arange(64)
    for shape in range(3):
        along_x = g.render(np.array([[shape, 5, 7, k, 16] for k in range(32)])).astype(float)
        mass = along_x.sum(axis=(1, 2))
        com_x = (along_x.sum(axis=1) * cols).sum(axis=1) / mass
        assert np.all(np.diff(com_x) > 0)  # moves right monotonically
        assert com_x[-1] - com_x[0] == pytest.approx(0.5 * 64, abs=1.5)
        along_y = g.render(np.array([[shape, 5, 7, 16, k] for k in range(32)])).astype(float)
        com_y = (along_y.sum(axis=2) * rows).sum(axis=1) / along_y.sum(axis=(1, 2))
        assert np.all(np.diff(com_y) > 0)  # moves down
        sizes = g.render(np.array([[shape, k, 0, 16, 16] for k in range(6)])).sum(axis=(1, 2))
        assert np.all(np.diff(sizes) > 0)  # scale increases pixel count
        turned = g.render(np.array([[shape, 5, k, 16, 16] for k in (0, 5)]))
        assert not np.array_equal(turned[0], turned[1])
    shapes = g.render(np.array([[s, 5, 0, 16, 16] for s in range(3)])).reshape(3, -1)
    assert len({row.tobytes() for row in shapes}) == 3
    # 32 x 32 samples the same geometry: about a quarter of the pixels.
    classes = g.sample_factors(200, 2)
    ratio = DSpritesGenerator(32).render(classes).sum() / g.render(classes).sum()
    assert 0.2 < ratio < 0.3


def test_dsprites_loader():
    data = load_dataset("dsprites", n_samples=400, image_size=32, seed=4)
    assert data.x_train.shape == (320, 32, 32, 1) and data.x_test.shape == (40, 32, 32, 1)
    assert data.x_train.dtype == np.float32 and data.binary is True
    assert set(np.unique(data.x_train)) == {0.0, 1.0}
    assert data.factors_train.shape == (320, 5) and data.factors_train.dtype == np.int64
    assert data.factor_names == dsp.FACTOR_NAMES and data.factor_sizes == dsp.FACTOR_SIZES
    np.testing.assert_array_equal(data.y_train, data.factors_train[:, 0])
    assert data.metadata["generator_version"] == "1" and data.metadata["image_size"] == 32
    rendered = DSpritesGenerator(32).render(data.factors_val).astype(np.float32)[..., None]
    np.testing.assert_array_equal(data.x_val, rendered)
    again = load_dataset("dsprites", n_samples=400, image_size=32, seed=4)
    np.testing.assert_array_equal(again.factors_train, data.factors_train)
    other = load_dataset("dsprites", n_samples=400, image_size=32, seed=5)
    assert not np.array_equal(other.factors_train, data.factors_train)
    quick = load_dataset("dsprites", n_samples=400, image_size=64, max_samples=30)
    assert quick.num_examples == {"train": 24, "val": 3, "test": 3}
    assert quick.data_shape == (64, 64, 1)
    raises_one_line(load_dataset, "dsprites", image_size=48, match="must be 64 or 32")
    raises_one_line(load_dataset, "dsprites", n_samples=0, match="n_samples must be a positive")


# -- keras downloads --------------------------------------------------------------------------


def test_mnist_offline_message(monkeypatch):
    import keras

    def offline():
        raise OSError("URL fetch failure on https://storage.googleapis.com/...\n[Errno -3]")

    monkeypatch.setattr(keras.datasets.mnist, "load_data", offline)
    monkeypatch.setattr(keras.datasets.fashion_mnist, "load_data", offline)
    for name in ("mnist", "fashion_mnist"):
        msg = raises_one_line(load_dataset, name, match="offline")
        for choice in ("'digits'", "'mnist_5k'", "'dsprites'", "'npz'", "'npy'", "'images'", "data.path"):
            assert choice in msg
        assert "OSError" in msg


def test_mnist_uses_official_test_split(monkeypatch):
    import keras

    rng = np.random.default_rng(0)
    xa = rng.integers(0, 256, (600, 28, 28), dtype=np.uint8)
    xb = rng.integers(0, 256, (100, 28, 28), dtype=np.uint8)
    ya, yb = rng.integers(0, 10, 600).astype(np.uint8), rng.integers(0, 10, 100).astype(np.uint8)
    monkeypatch.setattr(keras.datasets.mnist, "load_data", lambda: ((xa, ya), (xb, yb)))
    data = load_dataset("mnist", val_fraction=0.1)
    assert data.num_examples == {"train": 540, "val": 60, "test": 100}
    np.testing.assert_array_equal(data.x_test, (xb / 255.0).astype(np.float32)[..., None])
    np.testing.assert_array_equal(data.y_test, yb.astype(np.int64))
    assert data.metadata["test_split"] == "official" and data.value_range == (0.0, 1.0)
    assert row_multiset(data.x_train, data.x_val) == row_multiset((xa / 255.0).astype(np.float32))
    capped = load_dataset("mnist", max_samples=70)
    assert capped.num_examples == {"train": 54, "val": 6, "test": 10}


# -- user files -------------------------------------------------------------------------------


def test_npz_round_trip_uint8_with_labels(tmp_path):
    n = 50
    y = np.arange(n) % 7
    x = np.repeat(np.arange(n, dtype=np.uint8)[:, None, None] * 5, 10, axis=1)
    x = np.repeat(x, 12, axis=2)  # (n, 10, 12), image i filled with 5 * i
    np.savez(tmp_path / "d.npz", x=x, labels=y)
    data = load_dataset("npz", path=str(tmp_path / "d.npz"), seed=2)
    assert data.data_shape == (10, 12, 1)
    assert data.num_examples == {"train": 40, "val": 5, "test": 5}
    assert data.value_range == (0.0, 1.0) and data.metadata["scaling"] == "x / 255"
    for split in ("train", "val", "test"):
        xs, ys = data.split(split)
        index = np.round(xs[:, 0, 0, 0] * 255 / 5).astype(int)
        np.testing.assert_array_equal(ys, index % 7)
        np.testing.assert_allclose(xs[:, 3, 4, 0], index * 5 / 255.0, rtol=1e-6)
    assert row_multiset(data.x_train, data.x_val, data.x_test) == row_multiset(
        (x / 255.0).astype(np.float32)[..., None]
    )


def test_npz_float_vectors_strings_and_binary(tmp_path):
    x = np.linspace(-2.0, 3.0, 60).reshape(20, 3)
    np.savez(tmp_path / "v.npz", images=x, y=np.array(["cat", "dog"] * 10))
    data = load_dataset("npz", path=str(tmp_path / "v.npz"), val_fraction=0.0, test_fraction=0.0)
    assert data.x_train.shape == (20, 3) and data.x_train.dtype == np.float32
    assert data.value_range == (-2.0, 3.0) and data.binary is False
    assert data.metadata["class_names"] == ["cat", "dog"]
    assert row_multiset(data.x_train) == row_multiset(x.astype(np.float32))
    # uint8 data that is already {0, 1} (like the original dSprites imgs) is not divided.
    bits = np.random.default_rng(0).integers(0, 2, (30, 8, 8), dtype=np.uint8)
    factors = np.random.default_rng(1).integers(0, 4, (30, 2))
    np.savez(tmp_path / "b.npz", imgs=bits, latents_classes=factors)
    binary = load_dataset("npz", path=str(tmp_path / "b.npz"))
    assert binary.binary is True and set(np.unique(binary.x_train)) == {0.0, 1.0}
    assert binary.factor_sizes == (4, 4) and binary.factors_train.dtype == np.int64


def test_npz_official_test_split(tmp_path):
    xa = np.random.default_rng(0).random((40, 4)).astype(np.float32)
    xb = np.random.default_rng(1).random((10, 4)).astype(np.float32)
    ya, yb = np.arange(40) % 3, np.arange(10) % 3
    np.savez(tmp_path / "k.npz", x_train=xa, y_train=ya, x_test=xb, y_test=yb)
    data = load_dataset("npz", path=str(tmp_path / "k.npz"))
    assert data.num_examples == {"train": 36, "val": 4, "test": 10}
    np.testing.assert_array_equal(data.x_test, xb)
    assert data.metadata["test_split"] == "official"


def test_npz_arrays_nothing_reads_are_named(tmp_path, capsys):
    """An x_val, an x_test beside x (not x_train) or a 'target' were ignored without a word: the
    run trained and validated on splits of x alone. They are named in the metadata, and
    `vae-tf train` says so in one line."""
    from training.train import warn_unread_arrays

    rng = np.random.default_rng(0)
    x, xv = rng.random((40, 4)).astype(np.float32), rng.random((10, 4)).astype(np.float32)
    np.savez(tmp_path / "v.npz", x=x, y=np.arange(40) % 2, x_val=xv, x_test=xv, target=np.arange(40))
    data = load_dataset("npz", path=str(tmp_path / "v.npz"))
    assert data.metadata["unread_keys"] == ["x_val", "x_test", "target"]
    warn_unread_arrays(data.metadata)
    assert capsys.readouterr().err == (
        f"warning: {tmp_path / 'v.npz'} also holds 'x_val', 'x_test', 'target', which training does not read (it "
        "reads 'x', 'y'; an official test split comes only from x_train with x_test, the validation split from "
        "data.val_fraction): see docs/data.md\n")
    # labels left out: the label arrays are not "unread" by mistake; a Keras-style archive reads all four
    assert load_dataset("npz", path=str(tmp_path / "v.npz"), labels=False).metadata["unread_keys"] == [
        "x_val", "x_test", "target"]
    np.savez(tmp_path / "k.npz", x_train=x, y_train=np.arange(40) % 2, x_test=xv, y_test=np.arange(10) % 2)
    assert "unread_keys" not in load_dataset("npz", path=str(tmp_path / "k.npz")).metadata
    warn_unread_arrays(load_dataset("npz", path=str(tmp_path / "k.npz")).metadata)
    assert capsys.readouterr().err == ""


def test_channel_first_images_are_said_to_look_so(capsys):
    """(N, 3, 32, 32) is read channel-last, as 3 x 32 pixels of 32 channels (the documented rule),
    and trained without an error; `vae-tf train` now says what it read and how to fix the file."""
    from training.train import warn_channels_first

    warn_channels_first((3, 32, 32))
    assert capsys.readouterr().err == (
        "warning: the images are read as 3 x 32 pixels with 32 channels (arrays are channel-last, (N, H, W, C)); if "
        "the data are channel-first, (N, C, H, W), save them channel-last: np.moveaxis(x, 1, -1)\n")
    for fine in ((32, 32, 3), (28, 28, 1), (8, 8, 1), (64, 64, 13), (3, 4, 4), (64,), (4, 64),
                 (1, 256, 32), (4, 100, 6)):  # no warning (the last two: signals of many channels, channel-last)
        warn_channels_first(fine)
    assert capsys.readouterr().err == ""


def test_npy_round_trip(tmp_path):
    x = np.random.default_rng(0).normal(size=(30, 6, 6)).astype(np.float32)
    np.save(tmp_path / "a.npy", x)
    data = load_dataset("npy", path=str(tmp_path / "a.npy"), seed=1)
    assert data.data_shape == (6, 6, 1) and data.y_train is None
    assert data.value_range == (float(x.min()), float(x.max()))
    assert row_multiset(data.x_train, data.x_val, data.x_test) == row_multiset(x[..., None])


def test_user_file_errors(tmp_path):
    raises_one_line(load_dataset, "npz", match="needs a path: set data.path")
    raises_one_line(load_dataset, "npz", path=str(tmp_path / "missing.npz"), match="no such file")
    np.save(tmp_path / "a.npy", np.zeros((4, 2)))
    raises_one_line(load_dataset, "npz", path=str(tmp_path / "a.npy"), match="use data set 'npy'")
    raises_one_line(load_dataset, "npy", path=str(tmp_path), match="is not a file")
    np.savez(tmp_path / "wrong.npz", data=np.zeros((4, 2)), target=np.zeros(4))
    raises_one_line(
        load_dataset, "npz", path=str(tmp_path / "wrong.npz"), match="found 'data', 'target'"
    )
    (tmp_path / "corrupt.npz").write_bytes(b"not a zip file")
    raises_one_line(load_dataset, "npz", path=str(tmp_path / "corrupt.npz"), match="could not read")
    (tmp_path / "corrupt.npy").write_bytes(b"garbage")
    raises_one_line(
        load_dataset, "npy", path=str(tmp_path / "corrupt.npy"), match="re-create the file"
    )
    bad = np.zeros((10, 3))
    bad[4, 1] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    raises_one_line(load_dataset, "npy", path=str(tmp_path / "nan.npy"), match="1 NaN and 0 Inf")
    np.save(tmp_path / "empty.npy", np.zeros((0, 3)))
    raises_one_line(load_dataset, "npy", path=str(tmp_path / "empty.npy"), match="is empty")
    np.save(tmp_path / "flat.npy", np.zeros(10))
    raises_one_line(load_dataset, "npy", path=str(tmp_path / "flat.npy"), match="rank 1")
    np.save(tmp_path / "huge.npy", np.full((10, 3), 1e300))
    raises_one_line(load_dataset, "npy", path=str(tmp_path / "huge.npy"), match="beyond float32")
    np.savez(tmp_path / "short.npz", x=np.zeros((5, 2)), y=np.zeros(4, int))
    raises_one_line(
        load_dataset, "npz", path=str(tmp_path / "short.npz"), match="one row per example"
    )


def _write_png(path, value: int, size=(6, 5), mode="L"):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    colour = value if mode == "L" else (value, 255 - value, 0)
    Image.new(mode, size, colour).save(path)


def test_image_folder_round_trip(tmp_path):
    root = tmp_path / "imgs"
    for label, name in enumerate(("cats", "dogs", "owls")):
        for i in range(6):
            _write_png(root / name / f"{i}.png", 40 * label + i)
    data = load_dataset("images", path=str(root), val_fraction=0.0, test_fraction=0.5)
    assert data.metadata["class_names"] == ["cats", "dogs", "owls"]
    assert data.data_shape == (5, 6, 1) and data.num_examples == {"train": 9, "val": 0, "test": 9}
    for split in ("train", "test"):
        xs, ys = data.split(split)
        raw = np.round(xs[:, 0, 0, 0] * 255).astype(int)
        np.testing.assert_array_equal(ys, raw // 40)
        assert np.all(xs == xs[:, :1, :1, :])  # each image is a constant
    rgb = load_dataset("images", path=str(root), grayscale=False, image_size=4)
    assert rgb.data_shape == (4, 4, 3) and rgb.value_range == (0.0, 1.0)
    flat = tmp_path / "flat"
    for i in range(5):
        _write_png(flat / f"{i}.jpg", 0 if i % 2 else 255)
    unlabelled = load_dataset("images", path=str(flat), val_fraction=0.0, test_fraction=0.0)
    assert unlabelled.y_train is None and unlabelled.num_examples["train"] == 5
    assert unlabelled.binary is True  # solid black / white JPEGs decode exactly


def test_image_folder_errors(tmp_path):
    raises_one_line(load_dataset, "images", match="needs a path")
    raises_one_line(load_dataset, "images", path=str(tmp_path / "nope"), match="no such folder")
    (tmp_path / "empty").mkdir()
    raises_one_line(load_dataset, "images", path=str(tmp_path / "empty"), match="no PNG/JPEG files")
    mixed = tmp_path / "mixed"
    _write_png(mixed / "a.png", 1)
    _write_png(mixed / "cls" / "b.png", 2)
    raises_one_line(load_dataset, "images", path=str(mixed), match="both at top level")
    sizes = tmp_path / "sizes"
    for i in range(4):
        _write_png(sizes / f"{i}.png", 9)
    _write_png(sizes / "4_odd.png", 9, size=(7, 7))
    msg = raises_one_line(
        load_dataset, "images", path=str(sizes), val_fraction=0, test_fraction=0, match="4_odd.png"
    )
    assert "set the images option image_size" in msg
    # in class sub-folders the reference image is named by its path in the folder: 'cat/0.png',
    # not '0.png', which was also the name of an image of the other size in 'dog'
    classes = tmp_path / "classes"
    _write_png(classes / "cat" / "0.png", 9)
    _write_png(classes / "dog" / "0.png", 9, size=(7, 7))
    msg = raises_one_line(load_dataset, "images", path=str(classes), val_fraction=0, test_fraction=0, match="is 7x7")
    assert "but 'cat/0.png' is 6x5" in msg and "dog/0.png" in msg
    ok = load_dataset("images", path=str(sizes), image_size=5, val_fraction=0, test_fraction=0)
    assert ok.data_shape == (5, 5, 1)
    broken = tmp_path / "broken"
    _write_png(broken / "0.png", 3)
    (broken / "1.png").write_bytes(b"\x89PNG not really")
    raises_one_line(
        load_dataset, "images", path=str(broken), val_fraction=0, test_fraction=0,
        match="could not read image",
    )
    raises_one_line(
        load_dataset, "images", path=str(sizes), image_size=0, match="image_size must be"
    )


# -- lazy splits (open_dataset): same rows, values and errors as load_dataset -----------------


def _lazy_files(root):
    """One file of every user format the loaders read (and both .npz layouts)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    np.save(root / "u8.npy", rng.integers(0, 256, (300, 9, 7), dtype=np.uint8))
    np.save(root / "f64.npy", rng.normal(size=(200, 13)) * 3)
    np.save(root / "bool.npy", rng.integers(0, 2, (120, 2, 3, 2)).astype(bool))
    np.save(root / "fortran.npy", np.asfortranarray(rng.normal(size=(90, 11))))
    np.savez(root / "stored.npz", x=rng.integers(0, 256, (250, 6, 6), dtype=np.uint8),
             labels=np.array(["a", "b", "c", "d", "e"] * 50))
    np.savez_compressed(root / "compressed.npz", images=rng.normal(size=(150, 8)), y=np.arange(150) % 4)
    np.savez(root / "official.npz", x_train=rng.integers(0, 256, (200, 4, 4), dtype=np.uint8),
             y_train=np.arange(200) % 3, x_test=rng.integers(0, 256, (40, 4, 4), dtype=np.uint8),
             y_test=np.arange(40) % 3)
    np.savez(root / "factors.npz", imgs=rng.integers(0, 2, (100, 8, 8), dtype=np.uint8),
             latents_classes=rng.integers(0, 4, (100, 3)))
    for c in ("cats", "dogs"):
        (root / "imgs" / c).mkdir(parents=True)
        for i in range(15):
            Image.fromarray(rng.integers(0, 256, (5, 6), dtype=np.uint8)).save(root / "imgs" / c / f"{i}.png")


LAZY_CASES = [
    ("npy", "u8.npy", {}),
    ("npy", "u8.npy", {"seed": 3, "max_samples": 77, "val_fraction": 0.2, "test_fraction": 0.0}),
    ("npy", "f64.npy", {"seed": 1}),
    ("npy", "bool.npy", {}),
    ("npy", "fortran.npy", {}),
    ("npz", "stored.npz", {"seed": 4}),
    ("npz", "compressed.npz", {}),
    ("npz", "official.npz", {"max_samples": 120}),
    ("npz", "factors.npz", {}),
    ("images", "imgs", {"seed": 2}),
    ("images", "imgs", {"grayscale": False, "image_size": 3}),
]


@pytest.fixture(scope="module")
def lazy_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("lazy")
    _lazy_files(root)
    return root


@pytest.mark.parametrize("kind,name,kwargs", LAZY_CASES)
def test_open_dataset_reads_the_rows_load_dataset_holds(lazy_files, monkeypatch, kind, name, kwargs):
    from vae_tf.data import SplitRows, open_dataset, rows

    eager = load_dataset(kind, path=str(lazy_files / name), **kwargs)
    # Small scan blocks and read windows, so the block-wise paths run on these small files.
    monkeypatch.setattr(rows, "BLOCK_BYTES", 512)
    monkeypatch.setattr(rows, "MERGE_GAP_BYTES", 200)
    lazy = open_dataset(kind, path=str(lazy_files / name), **kwargs)
    assert lazy.value_range == eager.value_range and lazy.metadata == eager.metadata
    assert lazy.factor_sizes == eager.factor_sizes and lazy.num_examples == eager.num_examples
    assert lazy.materialise().binary == eager.binary
    parts = {s: lazy.split(s) for s in ("train", "val", "test")}
    parts["all"] = SplitRows.concat(list(parts.values()))
    for split, rows_ in parts.items():
        names = ("train", "val", "test") if split == "all" else (split,)
        x = np.concatenate([eager.split(s)[0] for s in names])
        ys = [eager.split(s)[1] for s in names]
        assert rows_.data_shape == eager.data_shape
        for chunk in (1, 7, 64, len(x) + 1):
            got = [rows_[start : start + chunk] for start in range(0, len(rows_), chunk)]
            got = np.concatenate(got) if got else rows_[:]
            assert got.dtype == np.float32 and got.shape == x.shape
            np.testing.assert_array_equal(got, x)  # exactly: same rows, same scaling
        if ys[0] is None:
            assert rows_.y is None
        else:
            np.testing.assert_array_equal(rows_.y, np.concatenate(ys))
        if split != "all" and eager.factors(split) is not None:
            np.testing.assert_array_equal(rows_.factors, eager.factors(split))


def test_open_dataset_keeps_user_files_on_disk(lazy_files):
    from vae_tf.data import open_dataset
    from vae_tf.data.files import ImageRows
    from vae_tf.data.rows import ArrayRows, NpyFileRows

    def reader(kind, name):
        return type(open_dataset(kind, path=str(lazy_files / name)).split("test").segments[0].rows)

    assert reader("npy", "u8.npy") is NpyFileRows
    assert reader("npz", "stored.npz") is NpyFileRows  # np.savez stores members uncompressed
    assert reader("npz", "official.npz") is NpyFileRows
    assert reader("images", "imgs") is ImageRows
    assert reader("npz", "compressed.npz") is ArrayRows  # cannot be read by row: in memory
    assert reader("npy", "fortran.npy") is ArrayRows  # memory-mapped: rows are not contiguous
    # Built-in data sets are in memory either way.
    assert type(open_dataset("digits").split("test").segments[0].rows) is ArrayRows


def _bad_files(root):
    bad = np.random.default_rng(0).normal(size=(50, 3))
    bad[7, 1] = np.nan
    bad[20, 0] = np.inf
    bad[33, 2] = np.nan
    np.save(root / "nan.npy", bad)
    np.savez(root / "nan.npz", x=bad)
    np.savez_compressed(root / "nanc.npz", x=bad)
    np.save(root / "huge.npy", np.full((10, 3), 1e300))
    np.save(root / "empty.npy", np.zeros((0, 3)))
    np.save(root / "flat.npy", np.zeros(10))
    np.save(root / "nofeat.npy", np.zeros((4, 0)))
    np.save(root / "strings.npy", np.array([["a", "b"]]))
    np.save(root / "objects.npy", np.array([[1, 2]], dtype=object), allow_pickle=True)
    np.savez(root / "objects.npz", x=np.array([[1, 2]], dtype=object), allow_pickle=True)
    (root / "corrupt.npy").write_bytes(b"garbage")
    np.savez(root / "short.npz", x=np.zeros((5, 2)), y=np.zeros(4, int))
    np.savez(root / "layout.npz", x_train=np.zeros((5, 2)), x_test=np.zeros((5, 3)))
    np.save(root / "tiny.npy", np.zeros((1, 2)))
    (root / "sizes").mkdir()
    from PIL import Image

    for i in range(4):
        Image.new("L", (6, 5), 9).save(root / "sizes" / f"{i}.png")
    Image.new("L", (7, 7), 9).save(root / "sizes" / "4_odd.png")


@pytest.mark.parametrize("kind,name,kwargs,fragment", [
    ("npy", "nan.npy", {}, "2 NaN and 1 Inf values (first at index (7, 1), example 7)"),
    ("npz", "nan.npz", {}, "2 NaN and 1 Inf values (first at index (7, 1), example 7)"),
    ("npz", "nanc.npz", {}, "2 NaN and 1 Inf values"),
    ("npy", "huge.npy", {}, "beyond float32"),
    ("npy", "empty.npy", {}, "is empty"),
    ("npy", "flat.npy", {}, "rank 1"),
    ("npy", "nofeat.npy", {}, "no features"),
    ("npy", "strings.npy", {}, "not a numeric array"),
    ("npy", "objects.npy", {}, "could not read"),
    ("npz", "objects.npz", {}, "could not read"),
    ("npy", "corrupt.npy", {}, "re-create the file"),
    ("npz", "short.npz", {}, "one row per example"),
    ("npz", "layout.npz", {}, "save both with the same layout"),
    ("npy", "tiny.npy", {}, "leave no training example"),
    ("images", "sizes", {"val_fraction": 0, "test_fraction": 0}, "4_odd.png"),
])
def test_open_dataset_errors_are_load_dataset_errors(tmp_path, monkeypatch, kind, name, kwargs, fragment):
    from vae_tf.data import open_dataset, rows

    _bad_files(tmp_path)
    expected = raises_one_line(load_dataset, kind, path=str(tmp_path / name), match=fragment, **kwargs)
    monkeypatch.setattr(rows, "BLOCK_BYTES", 24)  # one row per scan block: the NaNs lie in three
    assert raises_one_line(open_dataset, kind, path=str(tmp_path / name), **kwargs) == expected


def test_validate_array_block_by_block_gives_the_same_answers():
    from vae_tf.data.rows import ArrayRows

    class Blocks(ArrayRows):  # blocks of two rows
        def blocks(self):
            for start in range(0, len(self), 2):
                yield start, self.array[start : start + 2]

    x = np.random.default_rng(0).normal(size=(9, 4, 3))
    assert validate_array(Blocks(x)) == validate_array(x) == (x.min(), x.max())
    x[5, 2, 1], x[6, 0, 0], x[8, 3, 2] = np.inf, np.nan, -np.inf
    whole = raises_one_line(validate_array, x, match="1 NaN and 2 Inf values (first at index (5, 2, 1)")
    assert raises_one_line(validate_array, Blocks(x)) == whole
    msg = raises_one_line(validate_array, Blocks(np.linspace(-1, 2, 12).reshape(6, 2)), support=(0.0, 1.0))
    assert "[-1, 2]" in msg


def _mapped_kib(path) -> int:
    """Resident KiB of every mapping of ``path`` in this process (Linux ``/proc/self/smaps``)."""
    total, ours = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()
            if head and "-" in head[0] and len(head) >= 5 and ":" in head[3]:  # a mapping's header
                ours = len(head) >= 6 and head[5] == str(path)
            elif ours and line.startswith("Rss:"):
                total += int(head[1])
    return total


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/smaps"), reason="needs Linux /proc")
def test_lazy_npy_never_holds_more_than_a_chunk(tmp_path):
    """Memory does not grow with the rows: every array the reader fills holds at most one chunk
    (or one scan block), numpy never allocates more than a few chunks at once (tracemalloc, across
    data 4x larger), and no page of the file stays mapped in the process."""
    import tracemalloc

    from vae_tf.data import SplitRows, open_dataset
    from vae_tf.data import rows as rows_mod

    chunk, features = 256, 128  # float64 rows of 1 KiB
    filled = []
    original = rows_mod.NpyFileRows._read_into

    def counting(self, handle, buffer, position):
        filled.append(len(buffer))
        return original(self, handle, buffer, position)

    peaks = {}
    for n in (8_000, 32_000):
        path = tmp_path / f"x{n}.npy"
        np.save(path, np.random.default_rng(n).normal(size=(n, features)))
        filled.clear()
        tracemalloc.start()
        try:
            rows_mod.NpyFileRows._read_into = counting
            lazy = open_dataset("npy", path=str(path))
            scan_reads = len(filled)
            rows = SplitRows.concat([lazy.split(s) for s in ("train", "val", "test")])
            total = 0.0
            for start in range(0, len(rows), chunk):
                total += float(rows[start : start + chunk].sum(dtype=np.float64))
            peaks[n] = tracemalloc.get_traced_memory()[1]
        finally:
            rows_mod.NpyFileRows._read_into = original
            tracemalloc.stop()
        expected = np.load(path).astype(np.float32).sum(dtype=np.float64)
        assert np.isclose(total, expected, rtol=1e-6)  # every row was read
        assert filled[:scan_reads] and filled[scan_reads:], "the rows were not read through the reader"
        assert max(filled[:scan_reads]) <= rows_mod.BLOCK_BYTES  # the checks: a block at a time
        assert max(filled[scan_reads:]) <= max(rows_mod.BLOCK_BYTES, chunk * features * 8)
        assert sum(filled[scan_reads:]) < 2 * n * features * 8  # no row read many times over
        assert _mapped_kib(path) <= chunk * features * 8 // 1024  # nothing left mapped
    data_growth = 24_000 * features * 4  # float32 bytes of the extra rows
    # Index arrays (8 bytes a row, x3 for the permutation and its pieces) are all that grows.
    assert peaks[32_000] - peaks[8_000] < 0.1 * data_growth, peaks
    assert peaks[32_000] < rows_mod.BLOCK_BYTES + 4 * chunk * features * 8 + 32 * 32_000, peaks


# --- static binarisation (data.binarize) ---------------------------------------------------------


def test_binarized_threshold_is_the_value_above_one_half():
    data = load_dataset("digits", seed=0)
    bits = data.binarized("threshold")
    for split in ("train", "val", "test"):
        x, _ = data.split(split)
        b, _ = bits.split(split)
        np.testing.assert_array_equal(b, (x > 0.5).astype(np.float32))
    assert bits.binary and not data.binary and bits.metadata["binarized"] == "threshold"
    np.testing.assert_array_equal(bits.y_train, data.y_train)


def test_binarized_sample_draws_each_value_with_its_probability_once_per_seed():
    data = load_dataset("digits", seed=0)
    a, b, c = data.binarized("sample", seed=3), data.binarized("sample", seed=3), data.binarized("sample", seed=4)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    assert not np.array_equal(a.x_train, c.x_train)
    assert set(np.unique(a.x_train)) <= {0.0, 1.0}
    # E[bit] = value: over ~1.1 M values the mean bit is within a few standard errors of the mean value.
    x = data.x_train
    standard_error = np.sqrt(np.sum(x * (1 - x))) / x.size
    assert abs(a.x_train.mean() - x.mean()) < 5 * standard_error
    # A pixel that is always 0 or always 1 stays so.
    assert np.all(a.x_train[x == 0.0] == 0.0) and np.all(a.x_train[x == 1.0] == 1.0)


def test_binarize_refuses_text_data_an_unknown_mode_and_values_outside_zero_one():
    with pytest.raises(DataError, match="is text; binarize applies to images"):
        load_dataset("text_synthetic", seed=0, n_samples=100).binarized("sample")
    with pytest.raises(DataError, match="unknown binarize mode 'round'"):
        load_dataset("digits", seed=0).binarized("round")
    wide = dataclasses.replace(load_dataset("digits", seed=0), value_range=(-1.0, 1.0))
    with pytest.raises(DataError, match=r"not \[0, 1\]; binarize needs probabilities"):
        wide.binarized("threshold")


def test_config_binarize_gives_bits_to_training_and_evaluation():
    from training.config import load_config
    from training.train import prepare_data

    config = load_config(None, overrides=["data.binarize=threshold", "data.max_samples=200"])
    data = prepare_data(config)
    assert data.binary and set(np.unique(data.x_test)) <= {0.0, 1.0}
    with pytest.raises(ConfigError, match="data.binarize"):
        load_config(None, overrides=["data.binarize=yes"])


def test_registered_data_sets_declare_what_they_hold_and_a_loader_that_disagrees_is_caught(monkeypatch):
    """The modality a registration declares is what its loader returns (checked at every load),
    and what lets `vae-tf embed` / `evaluate` refuse a model of the other kind before loading."""
    from vae_tf.data import registry

    expected = {"digits": "image", "mnist_5k": "image", "mnist": "image", "fashion_mnist": "image",
                "dsprites": "image", "images": "image", "text_file": "text", "text_synthetic": "text",
                "wordnet": "text", "ptb": "text", "yahoo": "text", "yelp": "text", "npz": None, "npy": None}
    assert {name: registry.dataset_modality(name) for name in registry.DATASETS} == expected
    assert registry.dataset_modality("Text-Synthetic") == "text" and registry.dataset_modality("x.npz") is None
    assert load_dataset("digits", max_samples=30).modality == "image"
    assert load_dataset("text_synthetic", n_samples=40).modality == "text"
    monkeypatch.setitem(registry.DATASET_MODALITIES, "digits", "text")
    with pytest.raises(ValueError, match="registered as text but its loader returned image data"):
        load_dataset("digits", max_samples=30)
    with pytest.raises(ValueError, match="modality must be one of"):
        registry.register_dataset("sounds", modality="audio")


def test_npz_labels_that_are_not_class_indices_can_be_left_out(tmp_path):
    """NaN labels stopped an .npz from loading, with no way round but editing the file."""
    path = tmp_path / "d.npz"
    np.savez(path, x=np.random.default_rng(0).random((30, 4, 4, 1), dtype=np.float32),
             y=np.where(np.arange(30) % 2, np.nan, 1.0))
    with pytest.raises(DataError) as caught:
        load_dataset("npz", path=str(path))
    assert str(caught.value) == ("npz labels holds non-integer values; labels must be class indices; or leave them "
                                 "out: data.options.labels false (training), --no-labels (vae-tf embed)")
    data = load_dataset("npz", path=str(path), labels=False)
    assert data.y_train is None and data.y_test is None and len(data.x_train) + len(data.x_val) + len(data.x_test) == 30


def test_npz_negative_labels_and_a_labels_option_that_is_not_a_bool_are_refused_when_read(tmp_path):
    """-1 ("unlabelled") was read as a class: the linear probe fitted it, and encoder pretraining
    refused it only after the MLflow run existed; labels: "false" (a string) read the labels."""
    path = tmp_path / "d.npz"
    y = np.arange(30) % 3 - 1
    np.savez(path, x=np.random.default_rng(0).random((30, 4, 4, 1), dtype=np.float32), y=y)
    with pytest.raises(DataError) as caught:
        load_dataset("npz", path=str(path))
    assert str(caught.value) == ("npz labels holds negative values (e.g. -1); labels must be class indices >= 0; or "
                                 "leave them out: data.options.labels false (training), --no-labels (vae-tf embed)")
    np.savez(path, x=np.zeros((30, 4, 4, 1), np.float32), y=y.astype(np.float64))
    raises_one_line(load_dataset, "npz", path=str(path), match="holds negative values (e.g. -1)")
    assert load_dataset("npz", path=str(path), labels=False).y_train is None
    for value in ("false", 0, None):
        assert raises_one_line(load_dataset, "npz", path=str(path), labels=value,
                               match="npz labels must be true or false") == f"npz labels must be true or false, got {value!r}"


def test_an_npz_of_strings_is_pointed_at_text_file(tmp_path):
    path = tmp_path / "s.npz"
    np.savez(path, x=np.array(["hello world", "good bye"] * 5))
    raises_one_line(load_dataset, "npz", path=str(path),
                    match="holds strings (dtype <U11, shape (10,)): for sentences, write them one per line to a .txt "
                          "file and use data set text_file")


def test_image_folders_of_16_bit_images_are_refused_not_clipped_to_white(tmp_path):
    """`convert("L")` clips 16-bit values at 255: 98 % of a gradient's pixels read as 1.0."""
    from PIL import Image

    folder = tmp_path / "wide"
    folder.mkdir()
    for i in range(4):
        Image.fromarray(np.linspace(0, 65535, 64).reshape(8, 8).astype(np.uint16)).save(folder / f"{i}.png")
    raises_one_line(load_dataset, "images", path=str(folder), val_fraction=0, test_fraction=0,
                    match=".png' has 16-bit pixels (Pillow mode I;16), but image folders are read as 8-bit (0-255)")


def test_messages_name_the_config_keys_that_exist():
    raises_one_line(load_dataset, "dsprites", n_samples=0, match="; set data.options.n_samples (e.g. 20000)")
    raises_one_line(load_dataset, "digits", seed=1.5, match="; set the config's seed (or load_dataset's) to an int")
