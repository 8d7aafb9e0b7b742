"""Sample quality without Inception weights: the Fréchet classifier distance ``fd_classifier``
and the kernel classifier distance ``kid_classifier`` (metrics.md §8).

FID needs Inception-V3 ImageNet weights, which every implementation downloads at run time; this
package works offline. So, as is common practice on MNIST, the Fréchet distance is computed on
the penultimate-layer features of a **small classifier trained on the same data set**:

    FD(μ₁, Σ₁; μ₂, Σ₂) = ‖μ₁ − μ₂‖² + Tr(Σ₁ + Σ₂ − 2 (Σ₁ Σ₂)^{1/2})

and, on the same features, the kernel distance of Bińkowski et al. 2018 (KID's definition: the
unbiased MMD² with the cubic polynomial kernel k(x, y) = (xᵀy/d + 1)³, averaged over 100 random
subsets of 1 000 per side, as torch-fidelity and clean-fid compute it).

Neither is **FID** or KID: they are not comparable with published FIDs (or KIDs), nor across
package versions or classifier specs. FD is also biased in n (Chong & Forsyth 2020), so compare
FDs only at the same n; the kernel distance's estimate is unbiased in n (its spread is not). In
both, compare the same kind of samples (decoder means or ancestral draws, in the classifier's
input range) with the same classifier (same cache key).

The classifier (architecture, seed, epochs, optimiser pinned in :class:`FDClassifierSpec`) is
trained deterministically on the training split, its test accuracy recorded, and cached under
``<cache_dir>/<dataset>-<hash>/`` where the hash covers the spec, the training data and the
Keras / TensorFlow versions. A cache entry is written into a temporary directory and renamed into
place, so a crash never leaves a half-written classifier.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import uuid
import warnings
from pathlib import Path

import numpy as np
import scipy.linalg

from vae_tf.errors import DataError
from vae_tf.metrics._checks import positive_int

#: Bump when the architecture or the training procedure changes: it is part of the cache key.
FD_CLASSIFIER_VERSION = 1
#: Default cache root.
DEFAULT_CACHE_DIR = Path("~/.cache/vae_tf/fd_classifier")
#: Penultimate-layer width (the feature space of the distance).
FEATURE_DIM = 128
#: Samples per side (metrics.md §8: 10 000 generated vs the 10 000 test images).
FD_NUM_SAMPLES = 10000
#: The kernel distance's subsets (metrics.md §8; torch-fidelity's and clean-fid's defaults).
KID_NUM_SUBSETS = 100
KID_SUBSET_SIZE = 1000
_MODEL_FILE = "model.keras"
_INFO_FILE = "info.json"
#: Classifiers this process has loaded, by cache directory, with :func:`_stamp` of the entry (a
#: retrained entry is a new directory and a new ``info.json``): the children of a suite, evaluated
#: one after another, share one model (loaded once, its feature pass traced once) instead of
#: loading and tracing one each.
_IN_PROCESS: dict[Path, tuple[tuple[int, ...], FDClassifier]] = {}


def _stamp(entry: Path) -> tuple[int, ...]:
    """Inodes and modification times of a cache entry's directory and ``info.json``."""
    folder, info = entry.stat(), (entry / _INFO_FILE).stat()
    return folder.st_ino, folder.st_mtime_ns, info.st_ino, info.st_mtime_ns


# --- the distance -------------------------------------------------------------------------------

def feature_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (``np.cov(rowvar=False)``, divisor n − 1) of ``(n, D)`` features, float64."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise DataError(f"features must be (n >= 2, D), got shape {f.shape}")
    return f.mean(axis=0), np.atleast_2d(np.cov(f, rowvar=False))


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet distance between N(μ₁, Σ₁) and N(μ₂, Σ₂) (Dowson & Landau 1982; Heusel et al. 2017):

        ‖μ₁ − μ₂‖² + Tr(Σ₁) + Tr(Σ₂) − 2 Tr((Σ₁ Σ₂)^{1/2})

    ``scipy.linalg.sqrtm`` without the deprecated ``disp`` argument; when the square root is not
    finite, 1e-6·I is added to both covariances; an imaginary part (numerical error) is dropped
    only if |imag(diag)| < 1e-3, the pytorch-fid convention, else a DataError is raised.
    Scalars are accepted for the 1-D case: FD = (μ₁ − μ₂)² + (σ₁ − σ₂)².
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise DataError(f"Fréchet distance needs means (D,) and covariances (D, D) of one D; got "
                        f"{mu1.shape}, {s1.shape}, {mu2.shape}, {s2.shape}")
    diff = mu1 - mu2
    with warnings.catch_warnings():
        # Singular products are common (dead ReLU features); the finiteness check below is the
        # documented remedy, so SciPy's "matrix is singular" warning adds nothing.
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        covmean = scipy.linalg.sqrtm(s1 @ s2)
        if not np.all(np.isfinite(covmean)):
            offset = np.eye(len(s1)) * 1e-6
            covmean = scipy.linalg.sqrtm((s1 + offset) @ (s2 + offset))
    if np.iscomplexobj(covmean):
        imag = np.abs(np.diagonal(covmean).imag)
        if not np.all(imag < 1e-3):
            raise DataError(f"the covariance square root has an imaginary part up to {imag.max():.3g}; "
                            "use more samples (n well above the feature dimension)")
        covmean = covmean.real
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean))


def kernel_distance(features1, features2, *, num_subsets: int = KID_NUM_SUBSETS,
                    subset_size: int = KID_SUBSET_SIZE, seed: int = 0) -> tuple[float, float, int]:
    """Kernel distance (KID's estimator, Bińkowski et al. 2018) between two ``(n, D)`` feature sets.

    For each of ``num_subsets`` subsets, m = min(``subset_size``, n₁, n₂) rows are drawn without
    replacement from each side (independently, from a ``seed``-determined generator) and the
    unbiased MMD² with k(x, y) = (xᵀy/D + 1)³ is computed:

        Σ_{i≠j} k(xᵢ, xⱼ) / (m(m − 1)) + Σ_{i≠j} k(yᵢ, yⱼ) / (m(m − 1)) − 2 Σ_{i,j} k(xᵢ, yⱼ) / m²

    Returns ``(mean, std, m)`` over the subsets (the estimate can be slightly negative when the
    two sets come from one distribution). When m is both sets' size, every subset is the whole of
    both: one estimate, std NaN (no spread was measured). Float64 throughout.
    """
    f1, f2 = np.asarray(features1, np.float64), np.asarray(features2, np.float64)
    if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1]:
        raise DataError(f"kernel distance needs two (n, D) feature arrays of one D; got {f1.shape} and "
                        f"{f2.shape}")
    positive_int("num_subsets", num_subsets)
    positive_int("subset_size", subset_size)
    m = min(subset_size, len(f1), len(f2))
    if m < 2:
        raise DataError(f"kernel distance needs at least 2 examples per side, got {len(f1)} and {len(f2)}")
    d = f1.shape[1]
    rng = np.random.default_rng(seed)

    def kernel(a, b):  # (aᵀb/D + 1)³, cubed by two in-place products: NumPy's `** 3` is ~6x slower
        k = a @ b.T
        k /= d
        k += 1.0
        cube = k * k
        cube *= k
        return cube

    def within(a):  # mean of k(aᵢ, aⱼ) over i ≠ j
        k = kernel(a, a)
        return (k.sum() - np.trace(k)) / (m * (m - 1))

    if m == len(f1) == len(f2):  # every "subset" is the whole of both sets
        return float(within(f1) + within(f2) - 2.0 * kernel(f1, f2).mean()), float("nan"), int(m)
    estimates = np.empty(num_subsets)
    for i in range(num_subsets):
        x = f1[rng.choice(len(f1), m, replace=False)]
        y = f2[rng.choice(len(f2), m, replace=False)]
        estimates[i] = within(x) + within(y) - 2.0 * kernel(x, y).mean()
    return float(estimates.mean()), float(estimates.std()), int(m)


# --- the classifier -----------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class FDClassifierSpec:
    """Everything that defines the feature extractor (part of the cache key).

    Images ``(H, W, C)``: Conv(32, 3x3, ReLU) → MaxPool 2 → Conv(64, 3x3, ReLU) → MaxPool 2 →
    (MaxPool 2 while the side exceeds 8) → Flatten → Dense(128, ReLU) = features → Dense(classes).
    Vectors (or tiny images): Dense(256, ReLU) → Dense(128, ReLU) = features → Dense(classes).
    Glorot-uniform weights seeded from ``seed``; Adam(``learning_rate``); ``epochs`` passes in a
    ``seed``-determined order, batch ``batch_size``; no dropout or augmentation.
    """

    epochs: int = 10
    batch_size: int = 128
    learning_rate: float = 1e-3
    seed: int = 0
    feature_dim: int = FEATURE_DIM
    version: int = FD_CLASSIFIER_VERSION


def _build_classifier(data_shape: tuple[int, ...], num_classes: int, spec: FDClassifierSpec):
    import keras  # noqa: PLC0415

    counter = iter(range(1000))

    def init():
        return keras.initializers.GlorotUniform(seed=spec.seed * 1000 + next(counter))

    inputs = keras.Input(data_shape, name="x")
    h = inputs
    is_image = len(data_shape) == 3 and min(data_shape[:2]) >= 4
    if is_image:
        side = min(data_shape[:2])
        for filters in (32, 64):
            h = keras.layers.Conv2D(filters, 3, padding="same", activation="relu", kernel_initializer=init())(h)
            h = keras.layers.MaxPooling2D(2)(h)
            side //= 2
        while side > 8:
            h = keras.layers.MaxPooling2D(2)(h)
            side //= 2
        h = keras.layers.Flatten()(h)
    else:
        h = keras.layers.Flatten()(h)
        h = keras.layers.Dense(256, activation="relu", kernel_initializer=init())(h)
    features = keras.layers.Dense(spec.feature_dim, activation="relu", kernel_initializer=init(), name="features")(h)
    logits = keras.layers.Dense(num_classes, kernel_initializer=init(), name="logits")(features)
    return keras.Model(inputs, logits, name="fd_classifier")


def _cache_key(data, spec: FDClassifierSpec) -> str:
    import keras  # noqa: PLC0415
    import tensorflow as tf  # noqa: PLC0415

    h = hashlib.sha256()
    h.update(json.dumps({"spec": dataclasses.asdict(spec), "name": data.name, "shape": list(data.data_shape),
                         "keras": keras.__version__, "tensorflow": tf.__version__}, sort_keys=True).encode())
    h.update(np.ascontiguousarray(data.x_train, dtype=np.float32).tobytes())
    h.update(np.ascontiguousarray(data.y_train, dtype=np.int64).tobytes())
    return h.hexdigest()[:16]


class FDClassifier:
    """A trained classifier used as the feature extractor of :func:`fd_classifier`.

    Attributes:
        path: its cache directory; ``info``: the JSON facts (data set, spec, cache key, test
        accuracy, number of classes, versions).
    """

    def __init__(self, model, info: dict, path: Path | None = None):
        import keras  # noqa: PLC0415

        self.model = model
        self.info = dict(info)
        self.path = path
        self._features = keras.Model(model.inputs, model.get_layer("features").output)

    @property
    def test_accuracy(self) -> float:
        return float(self.info["test_accuracy"])

    def features(self, x, batch_size: int = 1024) -> np.ndarray:
        """Penultimate-layer features, float64 ``(n, 128)``."""
        x = np.asarray(x, dtype=np.float32)
        expected = tuple(self.info["data_shape"])
        if tuple(x.shape[1:]) != expected:
            raise DataError(f"fd_classifier expects examples of shape {expected}, got {tuple(x.shape[1:])}")
        return np.asarray(self._features.predict(x, batch_size=batch_size, verbose=0), dtype=np.float64)


def _train(data, spec: FDClassifierSpec) -> tuple[object, dict]:
    import keras  # noqa: PLC0415

    y_train = np.asarray(data.y_train, dtype=np.int64)
    num_classes = int(y_train.max()) + 1
    model = _build_classifier(data.data_shape, num_classes, spec)
    model.compile(optimizer=keras.optimizers.Adam(spec.learning_rate),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    rng = np.random.default_rng(spec.seed)
    x_train = np.asarray(data.x_train, dtype=np.float32)
    for _ in range(spec.epochs):  # our own seeded order: no global seeds needed
        order = rng.permutation(len(x_train))
        model.fit(x_train[order], y_train[order], batch_size=spec.batch_size, epochs=1, shuffle=False, verbose=0)
    if data.y_test is not None and len(data.x_test):
        x_eval, y_eval, split = data.x_test, data.y_test, "test"
    elif data.y_val is not None and len(data.x_val):
        x_eval, y_eval, split = data.x_val, data.y_val, "val"
    else:
        x_eval, y_eval, split = x_train, y_train, "train"
    logits = model.predict(np.asarray(x_eval, np.float32), batch_size=1024, verbose=0)
    accuracy = float(np.mean(np.argmax(logits, axis=1) == np.asarray(y_eval)))
    info = {"dataset": data.name, "data_shape": list(data.data_shape), "num_classes": num_classes,
            "spec": dataclasses.asdict(spec), "test_accuracy": accuracy, "accuracy_split": split,
            "num_train": int(len(x_train)), "keras": keras.__version__}
    return model, info


def load_or_train_fd_classifier(data, *, cache_dir=None, spec: FDClassifierSpec | None = None,
                                retrain: bool = False) -> FDClassifier:
    """The feature classifier for data set ``data`` (a :class:`vae_tf.data.DataSplits` with
    labels): loaded from ``<cache_dir>/<data.name>-<key>/`` when present, else trained with
    ``spec`` (default :class:`FDClassifierSpec`), evaluated on the test split and cached.

    ``cache_dir`` defaults to ``~/.cache/vae_tf/fd_classifier``. ``retrain=True`` ignores (and
    replaces) an existing entry.
    """
    import keras  # noqa: PLC0415

    if data.y_train is None:
        raise DataError(f"data set {data.name!r} has no labels; fd_classifier needs a labelled data set "
                        "to train its feature classifier")
    if len(np.unique(data.y_train)) < 2:
        raise DataError("fd_classifier needs at least two classes in the training labels")
    spec = spec or FDClassifierSpec()
    positive_int("spec.epochs", spec.epochs)
    root = Path(cache_dir if cache_dir is not None else DEFAULT_CACHE_DIR).expanduser()
    key = _cache_key(data, spec)
    final = root / f"{data.name}-{key}"
    if final.is_dir() and (final / _INFO_FILE).is_file() and not retrain:
        stamp = _stamp(final)
        loaded = _IN_PROCESS.get(final.resolve())
        if loaded is None or loaded[0] != stamp:
            info = json.loads((final / _INFO_FILE).read_text())
            loaded = stamp, FDClassifier(keras.models.load_model(final / _MODEL_FILE, compile=False), info, final)
            _IN_PROCESS[final.resolve()] = loaded
        return loaded[1]

    model, info = _train(data, spec)
    info["cache_key"] = key
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-{data.name}-{key}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        model.save(tmp / _MODEL_FILE)
        (tmp / _INFO_FILE).write_text(json.dumps(info, indent=2, sort_keys=True))
        if retrain and final.exists():
            shutil.rmtree(final)
        classifier = FDClassifier(model, info, final)
        try:
            os.rename(tmp, final)
        except OSError:  # another process cached the same key first: keep theirs
            pass
        else:
            _IN_PROCESS[final.resolve()] = (_stamp(final), classifier)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # nothing left once renamed; a failed write goes
    return classifier


def fd_classifier(generated, reference, classifier: FDClassifier, *, max_samples: int | None = FD_NUM_SAMPLES,
                  equal_n: bool = True, kid_seed: int = 0) -> dict:
    """Fréchet and kernel classifier distances between ``generated`` and ``reference`` examples.

    Both sets are cut to ``max_samples`` (default 10 000) and, with ``equal_n``, to the same n
    (FD is biased in n). Features are the classifier's penultimate layer; statistics in float64.
    The kernel distance (:func:`kernel_distance`, subsets drawn from ``kid_seed``) uses the same
    features.

    Returns:
        ``{"fd_classifier", "kid_classifier", "kid_classifier_std", "kid_subset_size",
        "num_generated", "num_reference", "classifier_test_accuracy", "classifier_key"}``.
    """
    generated, reference = np.asarray(generated, np.float32), np.asarray(reference, np.float32)
    n_gen, n_ref = len(generated), len(reference)
    if max_samples is not None:
        n_gen, n_ref = min(n_gen, max_samples), min(n_ref, max_samples)
    if equal_n:
        n_gen = n_ref = min(n_gen, n_ref)
    if min(n_gen, n_ref) < 2:
        raise DataError("fd_classifier needs at least 2 generated and 2 reference examples")
    f_gen, f_ref = classifier.features(generated[:n_gen]), classifier.features(reference[:n_ref])
    mu1, s1 = feature_statistics(f_gen)
    mu2, s2 = feature_statistics(f_ref)
    kid, kid_std, kid_m = kernel_distance(f_gen, f_ref, seed=kid_seed)
    return {"fd_classifier": frechet_distance(mu1, s1, mu2, s2), "kid_classifier": kid,
            "kid_classifier_std": kid_std, "kid_subset_size": kid_m, "num_generated": int(n_gen),
            "num_reference": int(n_ref), "classifier_test_accuracy": classifier.test_accuracy,
            "classifier_key": classifier.info.get("cache_key")}


__all__ = [
    "DEFAULT_CACHE_DIR",
    "FD_CLASSIFIER_VERSION",
    "FDClassifier",
    "FDClassifierSpec",
    "KID_NUM_SUBSETS",
    "KID_SUBSET_SIZE",
    "fd_classifier",
    "feature_statistics",
    "frechet_distance",
    "kernel_distance",
    "load_or_train_fd_classifier",
]
