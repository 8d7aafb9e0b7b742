"""Train / validation / test splits: the container loaders return and the seeded split plan.

:class:`DataSplits` holds NumPy arrays (float32 data, int64 labels and factors) and turns a split
into a ``tf.data.Dataset``. TensorFlow is imported only inside :meth:`DataSplits.pipeline`, so
loading and validating data stays cheap.

:class:`SplitPlan` is how a loader turns "N examples" into three index arrays: one seeded
permutation (``np.random.default_rng(seed)``), optionally truncated to ``max_samples``, cut into
test, validation and training parts. Loaders index their raw arrays with it *before* converting
to float32, so ``max_samples`` also bounds the memory a quick run needs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from vae_tf.data.validation import is_int
from vae_tf.errors import ConfigError, DataError

SPLIT_NAMES = ("train", "val", "test")

#: Batches prepared ahead of the training step. The data are in memory and a batch is one copy,
#: so two are enough to keep the step from ever waiting on the input.
PREFETCH_BATCHES = 2


def static_pipeline(dataset):
    """``dataset`` with tf.data's autotuning turned off.

    The pipelines here gather in-memory arrays, where autotuning has nothing to gain, and with it
    on (TensorFlow 2.21) every ``Model.fit`` call over such a dataset waited, idle, after its last
    batch while its iterator was torn down, for longer the longer the call: 2.2 s after a
    3-second epoch, 17.9 s after 23 s of training (benchmarks/fit_teardown.py; docs/performance.md,
    "tf.data autotuning").
    """
    import tensorflow as tf  # noqa: PLC0415

    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.with_options(options)


def _apportion(total: int, weights: np.ndarray, caps: np.ndarray) -> np.ndarray:
    """Share ``total`` among classes in proportion to ``weights`` by the largest-remainder rule,
    no class above its cap (``sum(caps) >= total``). Ties in the remainder go to the lower
    index, so the answer is deterministic."""
    weights = np.asarray(weights, dtype=np.float64)
    caps = np.asarray(caps, dtype=np.int64)
    quota = total * weights / max(weights.sum(), 1.0)
    share = np.minimum(np.floor(quota).astype(np.int64), caps)
    while share.sum() < total:
        open_ = np.flatnonzero(share < caps)
        # Largest remainder first; lexsort's last key is the primary one, the index breaks ties.
        order = open_[np.lexsort((open_, -(quota[open_] - share[open_])))]
        for c in order[: total - int(share.sum())]:
            share[c] += 1
    return share


@dataclass(frozen=True)
class SplitPlan:
    """How to cut a data set into train / val / test, reproducibly.

    Attributes:
        seed: seed of ``np.random.default_rng`` that draws the permutation.
        val_fraction: fraction of the (possibly truncated) examples that go to validation.
        test_fraction: fraction that goes to test; ignored where the source has an official test
            split (see :meth:`indices_with_official_test`).
        max_samples: keep at most this many examples in all (after the permutation), or ``None``.

    A fraction ``f > 0`` always yields at least one example; ``f == 0`` yields an empty split.
    """

    seed: int = 0
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    max_samples: int | None = None

    def __post_init__(self):
        if not is_int(self.seed):
            raise DataError(f"seed must be an integer, got {self.seed!r}; set the config's seed (or load_dataset's) to an int")
        for key in ("val_fraction", "test_fraction"):
            value = getattr(self, key)
            ok = isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(
                value, bool
            )
            if not ok or not (0.0 <= float(value) < 1.0) or math.isnan(float(value)):
                raise DataError(f"{key} must be a number in [0, 1), got {value!r}; fix data.{key}")
        if float(self.val_fraction) + float(self.test_fraction) >= 1.0:
            total = float(self.val_fraction) + float(self.test_fraction)
            raise DataError(
                f"val_fraction + test_fraction = {total:.4g} leaves no training data; "
                "make their sum smaller than 1"
            )
        if self.max_samples is not None and (not is_int(self.max_samples) or self.max_samples < 1):
            raise DataError(
                f"max_samples must be a positive integer or null, got {self.max_samples!r}; "
                "fix data.max_samples"
            )

    @staticmethod
    def _count(fraction: float, n: int) -> int:
        if fraction <= 0:
            return 0
        return max(1, int(round(fraction * n)))

    def _check_train(self, n_train: int, n_total: int) -> None:
        if n_train < 1:
            raise DataError(
                f"only {n_total} examples: val_fraction={self.val_fraction} and "
                f"test_fraction={self.test_fraction} leave no training example; "
                "lower the fractions, raise max_samples or provide more data"
            )

    def indices(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Return ``(train, val, test)`` int64 index arrays into ``n`` examples.

        One permutation by ``seed``; the first ``max_samples`` of it are kept; test takes the
        first ``round(test_fraction * m)``, validation the next ``round(val_fraction * m)``,
        training the rest (in permuted order).
        """
        if n < 1:
            raise DataError("the data set is empty; provide at least one example")
        perm = np.random.default_rng(self.seed).permutation(n).astype(np.int64)
        if self.max_samples is not None:
            perm = perm[: int(self.max_samples)]
        m = len(perm)
        n_test = self._count(float(self.test_fraction), m)
        n_val = self._count(float(self.val_fraction), m)
        self._check_train(m - n_test - n_val, m)
        return perm[n_test + n_val :], perm[n_test : n_test + n_val], perm[:n_test]

    def indices_with_official_test(
        self, n_pool: int, n_test: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Return ``(train, val, test)`` where test indexes the source's official test set.

        ``train`` and ``val`` index the official training pool (validation is carved from it by
        ``val_fraction``; ``test_fraction`` is not used). The test set keeps its official order.
        With ``max_samples`` the cap is shared between pool and test in proportion to their
        official sizes (MNIST: 6 : 1) and the test subset is drawn by the same seeded generator.
        """
        if n_pool < 1:
            raise DataError("the training pool is empty; provide at least one training example")
        rng = np.random.default_rng(self.seed)
        perm = rng.permutation(n_pool).astype(np.int64)
        test = np.arange(n_test, dtype=np.int64)
        if self.max_samples is not None:
            cap = int(self.max_samples)
            keep_test = min(n_test, int(round(cap * n_test / (n_pool + n_test))))
            if n_test > 0 and cap > 1:
                keep_test = max(1, keep_test)
            perm = perm[: max(0, cap - keep_test)]
            test = np.sort(rng.permutation(n_test)[:keep_test]).astype(np.int64)
        m = len(perm)
        n_val = self._count(float(self.val_fraction), m)
        self._check_train(m - n_val, m)
        return perm[n_val:], perm[:n_val], test

    def indices_with_official_splits(
        self, n_train: int, n_val: int, n_test: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Return ``(train, val, test)`` indexing the source's official train / validation / test
        parts (each into its own part); ``val_fraction`` and ``test_fraction`` are not used.

        Training examples come in a seeded permuted order, validation and test in their official
        order. With ``max_samples`` the cap is shared among the three parts in proportion to their
        official sizes (largest remainder), each part's subset drawn by the same seeded generator.
        """
        sizes = np.array([n_train, n_val, n_test], dtype=np.int64)
        if n_train < 1:
            raise DataError("the official training part is empty; provide at least one training example")
        rng = np.random.default_rng(self.seed)
        train = rng.permutation(n_train).astype(np.int64)
        val, test = np.arange(n_val, dtype=np.int64), np.arange(n_test, dtype=np.int64)
        if self.max_samples is not None and int(self.max_samples) < sizes.sum():
            keep = _apportion(int(self.max_samples), sizes, sizes)
            self._check_train(int(keep[0]), int(self.max_samples))
            train = train[: keep[0]]
            val = np.sort(rng.permutation(n_val)[: keep[1]]).astype(np.int64)
            test = np.sort(rng.permutation(n_test)[: keep[2]]).astype(np.int64)
        return train, val, test

    def stratified_indices(self, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Return ``(train, val, test)`` int64 index arrays in which every class keeps its share.

        The totals are those of :meth:`indices` for ``m = min(N, max_samples)`` examples
        (``round(test_fraction * m)`` test, ``round(val_fraction * m)`` validation, the rest
        training). Each total is shared among the classes in proportion to their sizes by the
        largest-remainder rule (Hamilton apportionment; a tie in the remainders goes to the
        smaller label), so a class of ``n_c`` kept examples gets ``floor`` or ``ceil`` of
        ``fraction * n_c`` in each split: e.g. 500 per class and fractions 0.1 give exactly
        50 / 50 / 400 per class. ``max_samples`` is shared the same way among the classes.

        Which examples of a class go where is drawn from one seeded permutation
        (``np.random.default_rng(seed)``), and each split lists its examples in that permuted
        order, so classes are interleaved.
        """
        labels = np.asarray(labels)
        n = len(labels)
        if n < 1:
            raise DataError("the data set is empty; provide at least one example")
        perm = np.random.default_rng(self.seed).permutation(n).astype(np.int64)
        classes, inverse = np.unique(labels, return_inverse=True)
        # Each class's examples in permuted order.
        members = [perm[inverse[perm] == c] for c in range(len(classes))]
        sizes = np.array([len(m) for m in members], dtype=np.int64)
        m = min(n, int(self.max_samples)) if self.max_samples is not None else n
        keep = _apportion(m, sizes, sizes)
        n_test = self._count(float(self.test_fraction), m)
        n_val = self._count(float(self.val_fraction), m)
        self._check_train(m - n_test - n_val, m)
        test = _apportion(n_test, keep, keep)
        val = _apportion(n_val, keep, keep - test)
        parts: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
        for c, idx in enumerate(members):
            t, v, k = int(test[c]), int(val[c]), int(keep[c])
            parts["test"].append(idx[:t])
            parts["val"].append(idx[t : t + v])
            parts["train"].append(idx[t + v : k])
        position = np.empty(n, dtype=np.int64)
        position[perm] = np.arange(n, dtype=np.int64)

        def in_permuted_order(pieces):
            joined = np.concatenate(pieces).astype(np.int64)
            return joined[np.argsort(position[joined], kind="stable")]

        return tuple(in_permuted_order(parts[s]) for s in SPLIT_NAMES)

    def as_metadata(self) -> dict:
        return {
            "seed": int(self.seed),
            "val_fraction": float(self.val_fraction),
            "test_fraction": float(self.test_fraction),
            "max_samples": None if self.max_samples is None else int(self.max_samples),
        }


@dataclass(frozen=True)
class DataSplits:
    """A data set cut into train / val / test, ready for a VAE.

    Attributes:
        name: registry name of the data set (``"digits"``, ``"dsprites"``, ...).
        x_train, x_val, x_test: float32 arrays; images are ``(N, H, W, C)`` (``C = 1`` for
            grayscale), plain vectors ``(N, D)``. Text: 1-D object arrays ``(N,)`` of Python
            ``str``, one raw sentence each (see :mod:`vae_tf.data.text`). ``x_val``/``x_test``
            may have ``N = 0`` when their fraction is 0.
        y_train, y_val, y_test: int64 class labels ``(N,)`` where the source has them, else None.
        factors_train, factors_val, factors_test: ground-truth factors ``(N, n_factors)``, else
            None: int64 class indices (dSprites; ``factor_sizes`` given) or float32 continuous
            values (the true z of ``text_synthetic``; ``factor_sizes`` None).
        factor_names, factor_sizes: names and number of classes of each factor, else None.
        value_range: the interval the values lie in (declared by the loader, e.g. ``(0, 1)``
            after dividing by 255; observed min/max for float user data); None for text.
        binary: True when every value is exactly 0 or 1 (False for text).
        metadata: JSON-serialisable facts about the source (origin, scaling, seed, split sizes,
            generator version ...), for run tracking. ``metadata["modality"]`` is ``"text"`` for
            text data sets (with ``vocabulary``, ``max_length``, ``tokenizer``); images have no
            ``modality`` key.
        ground_truth: for a data set with a generator of its own, a function returning its
            ``vae_tf.metrics.disentanglement.GroundTruthData`` (what the sampling-based
            disentanglement scores need: sample factors, render them); else None. The data set
            knows its generator, so the metrics never name a data set.
    """

    name: str
    x_train: np.ndarray
    x_val: np.ndarray
    x_test: np.ndarray
    y_train: np.ndarray | None = None
    y_val: np.ndarray | None = None
    y_test: np.ndarray | None = None
    factors_train: np.ndarray | None = None
    factors_val: np.ndarray | None = None
    factors_test: np.ndarray | None = None
    factor_names: tuple[str, ...] | None = None
    factor_sizes: tuple[int, ...] | None = None
    value_range: tuple[float, float] | None = (0.0, 1.0)
    binary: bool = False
    metadata: dict = field(default_factory=dict)
    ground_truth: object = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        for split in SPLIT_NAMES:
            x = getattr(self, f"x_{split}")
            for kind in ("y", "factors"):
                other = getattr(self, f"{kind}_{split}")
                if other is not None and len(other) != len(x):
                    raise DataError(
                        f"{self.name}: {kind}_{split} has {len(other)} rows but x_{split} has "
                        f"{len(x)}; give one {kind} row per example"
                    )

    def binarized(self, mode: str, seed: int = 0) -> "DataSplits":
        """These splits with every value made 0 or 1, once (static binarisation), so a Bernoulli
        likelihood is a normalised density on them and IW-NLL is a real NLL.

        Args:
            mode: ``"threshold"`` (1 where the value is > 0.5) or ``"sample"`` (each value an
                independent Bernoulli draw with that probability, Salakhutdinov & Murray 2008),
                drawn once per split from ``np.random.default_rng([seed, split index])``.
            seed: seed of the ``"sample"`` draws; same seed, same bits.

        Raises:
            DataError: text data, values outside [0, 1], or an unknown mode.
        """
        if mode not in ("threshold", "sample"):
            raise DataError(f"unknown binarize mode {mode!r}; use 'threshold', 'sample' or 'none'")
        if self.modality == "text":
            raise DataError(f"{self.name} is text; binarize applies to images in [0, 1], drop data.binarize")
        low, high = self.value_range if self.value_range is not None else (None, None)
        if low is None or low < 0.0 or high > 1.0:
            raise DataError(f"{self.name} values lie in {self.value_range}, not [0, 1]; "
                            "binarize needs probabilities, rescale the data or drop data.binarize")
        arrays = {}
        for index, split in enumerate(SPLIT_NAMES):
            x = getattr(self, f"x_{split}")
            if mode == "threshold":
                bits = x > 0.5
            else:
                bits = np.random.default_rng([seed, index]).random(x.shape, dtype=np.float32) < x
            arrays[f"x_{split}"] = bits.astype(np.float32)
        metadata = {**self.metadata, "binarized": mode if mode == "threshold" else f"sample (seed {seed})"}
        return replace(self, **arrays, value_range=(0.0, 1.0), binary=True, metadata=metadata)

    @property
    def modality(self) -> str:
        """``"text"`` or ``"image"`` (``metadata["modality"]``; absent means image)."""
        return str(self.metadata.get("modality", "image"))

    @property
    def data_shape(self) -> tuple[int, ...]:
        """Shape of one example, ``x_train.shape[1:]`` (``()`` for text: one string)."""
        return tuple(int(d) for d in self.x_train.shape[1:])

    @property
    def num_examples(self) -> dict[str, int]:
        """Number of examples per split, ``{"train": ..., "val": ..., "test": ...}``."""
        return {s: int(len(getattr(self, f"x_{s}"))) for s in SPLIT_NAMES}

    def _check_split(self, name: str) -> str:
        if name not in SPLIT_NAMES:
            raise DataError(
                f"unknown split {name!r}; choose one of {', '.join(repr(s) for s in SPLIT_NAMES)}"
            )
        return name

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray | None]:
        """Return ``(x, y)`` of split ``"train"``, ``"val"`` or ``"test"`` (``y`` may be None)."""
        name = self._check_split(name)
        return getattr(self, f"x_{name}"), getattr(self, f"y_{name}")

    def factors(self, name: str) -> np.ndarray | None:
        """Return the factor class indices of a split, or None when the source has none."""
        return getattr(self, f"factors_{self._check_split(name)}")

    def pipeline(
        self,
        split: str,
        batch_size: int,
        *,
        shuffle: bool | None = None,
        seed: int = 0,
        drop_remainder: bool = False,
        repeat: bool = False,
        with_labels: bool = False,
    ):
        """Return a ``tf.data.Dataset`` of batches of one split.

        ``from_tensor_slices(x)`` (``(x, y)`` with ``with_labels``) -> ``cache()`` ->
        ``shuffle(len(x), seed=seed, reshuffle_each_iteration=True)`` (by default for ``"train"``
        only: ``shuffle=None`` means True for train, False otherwise) -> ``repeat()`` (when asked)
        -> ``batch(batch_size, drop_remainder)`` -> ``prefetch(2)``, with tf.data's autotuning off
        (:func:`static_pipeline`). The order of every epoch is a deterministic function of ``seed``.
        """
        import tensorflow as tf  # noqa: PLC0415 - keep `import vae_tf.data` free of TensorFlow

        name = self._check_split(split)
        if not is_int(batch_size) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
        x, y = self.split(name)
        if with_labels:
            if y is None:
                raise DataError(
                    f"data set {self.name!r} has no labels; call pipeline(..., with_labels=False) "
                    "or use a labelled data set"
                )
            ds = tf.data.Dataset.from_tensor_slices((x, y))
        else:
            ds = tf.data.Dataset.from_tensor_slices(x)
        ds = ds.cache()
        if (name == "train") if shuffle is None else shuffle:
            ds = ds.shuffle(max(1, len(x)), seed=int(seed), reshuffle_each_iteration=True)
        if repeat:
            ds = ds.repeat()
        ds = ds.batch(int(batch_size), drop_remainder=bool(drop_remainder))
        return static_pipeline(ds.prefetch(PREFETCH_BATCHES))

    def steps_per_epoch(self, split: str, batch_size: int) -> int:
        """Batches in one pass over a split (the last one may be smaller)."""
        return max(1, math.ceil(len(self.split(split)[0]) / int(batch_size)))

    def resumable_pipeline(self, split: str, batch_size: int, *, seed: int, epochs: int, start_step: int = 0):
        """Batches of ``epochs`` passes over a split, in one ``tf.data.Dataset``, that can start
        at any step: what crash-safe training resumes from.

        Epoch ``e`` visits every example once, in the order
        ``tf.random.experimental.stateless_shuffle(range(n), seed=[seed, e])``: a pure function of
        ``(seed, e)``, so the data-iterator position is just the global step. ``start_step`` skips
        that many batches (indices only; no data is read for them). Each epoch has
        :meth:`steps_per_epoch` batches and its last batch may be smaller. The examples are held
        in memory and gathered batch by batch (the ``cache()`` of :meth:`pipeline`, without
        the shuffle buffer whose state could not be restored), then prefetched, with tf.data's
        autotuning off (:func:`static_pipeline`).
        """
        import tensorflow as tf  # noqa: PLC0415

        for what, value, low in (("batch_size", batch_size, 1), ("epochs", epochs, 0), ("start_step", start_step, 0)):
            if not is_int(value) or value < low:
                raise ConfigError(f"{what} must be an integer >= {low}, got {value!r}")
        x, _ = self.split(self._check_split(split))
        n = len(x)
        if n == 0:
            raise DataError(f"the {split} split of {self.name!r} is empty; nothing to train on")
        examples = tf.constant(x)
        seed_t = tf.constant(int(seed), tf.int64)

        def epoch_batches(epoch):
            order = tf.random.experimental.stateless_shuffle(tf.range(n, dtype=tf.int64), seed=tf.stack([seed_t, epoch]))
            return tf.data.Dataset.from_tensor_slices(order).batch(int(batch_size))

        ds = tf.data.Dataset.range(int(epochs)).flat_map(epoch_batches).skip(int(start_step))
        ds = ds.map(lambda idx: tf.gather(examples, idx))  # a copy per batch, run ahead by the prefetch
        return static_pipeline(ds.prefetch(PREFETCH_BATCHES))
