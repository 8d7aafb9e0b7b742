"""The data-set registry and :func:`load_dataset`, the one entry point the application calls.

A loader is a function ``loader(plan: SplitPlan, **options) -> DataSplits`` registered under a
name with :func:`register_dataset`. Its keyword parameters are its options (``path`` included
when it reads user files); :func:`load_dataset` checks the options a caller passes against that
signature, so a misspelt option is a one-line :class:`~vae_tf.errors.DataError`, not a
``TypeError``.

A loader that can keep its rows where they are (a file) registers an *opener* instead with
:func:`register_lazy_dataset`: ``opener(plan, **options) -> LazySplits``. Its eager twin (what
:func:`load_dataset` calls) is ``opener(...).materialise()``, so both read the same rows with the
same scaling; :func:`open_dataset` returns the lazy splits (``vae-tf embed`` reads them a chunk at
a time). Data sets without an opener are loaded into memory by both.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable

import numpy as np

from vae_tf.data.lazy import LazySplits
from vae_tf.data.splits import SPLIT_NAMES, DataSplits, SplitPlan
from vae_tf.data.validation import validate_array
from vae_tf.errors import DataError

DATASETS: dict[str, Callable[..., DataSplits]] = {}
#: Openers of the data sets that can stay lazy (user files): name -> opener(plan, **options).
LAZY_DATASETS: dict[str, Callable[..., LazySplits]] = {}
#: What a data set holds, where its registration says: "text" (sentences) or "image" (arrays);
#: absent where only its file tells (npz, npy).
DATASET_MODALITIES: dict[str, str] = {}
MODALITIES = ("text", "image")


def _normalise(name: str) -> str:
    return str(name).strip().lower().replace("-", "_")


def register_dataset(name: str, modality: str | None = None):
    """Decorator registering ``loader(plan: SplitPlan, **options) -> DataSplits`` as ``name``;
    ``modality`` ("text" or "image") says what it holds, so that a model of the other kind is
    refused before it loads (:func:`dataset_modality`).

    Registering a second, different function under a taken name raises ``ValueError`` (a
    programming error, not a data error).
    """
    key = _normalise(name)
    if modality is not None and modality not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES} or None, got {modality!r}")

    def decorator(loader: Callable[..., DataSplits]) -> Callable[..., DataSplits]:
        existing = DATASETS.get(key)
        if existing is not None and existing is not loader:
            raise ValueError(f"data set {key!r} is already registered by {existing.__qualname__}")
        DATASETS[key] = loader
        if modality is not None:
            DATASET_MODALITIES[key] = modality
        return loader

    return decorator


def dataset_modality(name: str) -> str | None:
    """"text" or "image" for a registered data set that declares it; None for one whose files
    decide (npz, npy) and for a name that is not registered (a path)."""
    return DATASET_MODALITIES.get(_normalise(name))


def dataset_options(name: str) -> set[str]:
    """The option names a registered data set's loader takes (empty for an unknown name)."""
    loader = DATASETS.get(_normalise(name))
    return _loader_options(loader)[0] if loader is not None else set()


def register_lazy_dataset(
    name: str,
    opener: Callable[..., LazySplits],
    loader: Callable[..., DataSplits] | None = None,
    modality: str | None = None,
) -> Callable[..., DataSplits]:
    """Register ``opener(plan, **options) -> LazySplits`` as ``name`` for :func:`open_dataset`, and
    its eager twin for :func:`load_dataset`: ``loader`` (same options) or, by default,
    ``opener(plan, **options).materialise()``. Returns the eager loader."""
    if loader is None:

        @functools.wraps(opener)
        def loader(plan: SplitPlan, **options) -> DataSplits:
            return opener(plan, **options).materialise()

    if _loader_options(loader) != _loader_options(opener):
        raise ValueError(f"the loader and the opener of {name!r} must take the same options")
    register_dataset(name, modality)(loader)
    LAZY_DATASETS[_normalise(name)] = opener
    return loader


def _loader_options(loader: Callable[..., DataSplits]) -> tuple[set[str], bool]:
    """Names of the loader's keyword options (after the plan) and whether it takes **kwargs."""
    params = list(inspect.signature(loader).parameters.values())[1:]
    names = {
        p.name
        for p in params
        if p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    }
    return names, any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def _resolve(name, *, seed, val_fraction, test_fraction, max_samples, path, options):
    """The registry key, eager loader, split plan and checked options of a request."""
    key = _normalise(name)
    loader = DATASETS.get(key)
    if loader is None:
        raise DataError(
            f"unknown data set {name!r}; choose one of: {', '.join(sorted(DATASETS))}"
        )
    plan = SplitPlan(
        seed=seed, val_fraction=val_fraction, test_fraction=test_fraction, max_samples=max_samples
    )
    accepted, any_kwargs = _loader_options(loader)
    if path is not None:
        if "path" not in accepted and not any_kwargs:
            raise DataError(
                f"data set {key!r} takes no path (got {path!r}); remove data.path or use "
                "'npz', 'npy' or 'images' to load your own files"
            )
        options["path"] = path
    unknown = sorted(set(options) - accepted) if not any_kwargs else []
    if unknown:
        import difflib

        valid = sorted(accepted - {"path"})
        close = [match for name in unknown for match in difflib.get_close_matches(name, valid, n=1)]
        hint = f" (did you mean {', '.join(close)}?)" if len(close) == len(unknown) else ""
        raise DataError(
            f"data set {key!r} has no option(s) {', '.join(map(repr, unknown))}{hint}; "
            f"its options are: {', '.join(valid) if valid else 'none'}"
        )
    return key, loader, plan, options


def check_request(name: str, *, path: str | None = None, options: dict | None = None) -> None:
    """Raise the one-line :class:`DataError` that loading ``name`` with ``path`` and ``options``
    would raise for the request itself (an unknown data set, a path it does not take, options it
    does not have), without loading anything: a config is checked before TensorFlow is imported."""
    _resolve(name, seed=0, val_fraction=0.0, test_fraction=0.0, max_samples=None, path=path,
             options=dict(options or {}))


def load_dataset(
    name: str,
    *,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    max_samples: int | None = None,
    path: str | None = None,
    **options,
) -> DataSplits:
    """Load a registered data set and cut it into train / val / test.

    Args:
        name: a key of :data:`DATASETS` (case-insensitive, ``-`` read as ``_``): ``digits``
            (embedded default), ``dsprites`` (procedural), ``mnist_5k`` (offline MNIST subset),
            ``mnist`` / ``fashion_mnist`` (Keras download), ``npz`` / ``npy`` / ``images`` (user
            files, need ``path``); text: ``text_synthetic`` (procedural), ``wordnet`` (offline),
            ``text_file`` (your sentences, needs ``path``), ``ptb`` / ``yahoo`` / ``yelp``
            (download or ``path``), see :mod:`vae_tf.data.text`.
        seed: seed of the split permutation (``np.random.default_rng(seed)``) and of any sampling
            the loader does (dSprites factors). Same seed, same arrays.
        val_fraction, test_fraction: in ``[0, 1)``, and together they must leave at least one
            training example. Where the source has an official test split (MNIST, Fashion-MNIST,
            an ``.npz`` with ``x_test``) that split is the test set, ``test_fraction`` is unused
            and validation is carved from the official training part.
        max_samples: keep at most this many examples in all (taken after the seeded
            permutation), for quick runs.
        path: file or folder for the user-data loaders; other loaders refuse it.
        **options: loader options, e.g. ``n_samples`` / ``image_size`` for ``dsprites``,
            ``vocab_size`` / ``min_count`` / ``max_length`` / ``long_sentences`` for text.

    Returns:
        :class:`DataSplits` whose every non-empty split passed :func:`validate_array`.

    Raises:
        DataError: unknown name, unknown or invalid options, bad fractions, unreadable or
            invalid data, a download that failed.
    """
    key, loader, plan, options = _resolve(
        name, seed=seed, val_fraction=val_fraction, test_fraction=test_fraction,
        max_samples=max_samples, path=path, options=options,
    )
    return _checked(key, loader(plan, **options))


def _checked(key: str, splits: DataSplits) -> DataSplits:
    """The per-split checks every eager load passes (custom loaders included)."""
    declared = DATASET_MODALITIES.get(key)
    if declared is not None and splits.modality != declared:
        raise ValueError(f"data set {key!r} is registered as {declared} but its loader returned {splits.modality} "
                         "data (metadata['modality'])")  # a programming error of the loader
    for split in SPLIT_NAMES:
        x = getattr(splits, f"x_{split}")
        if split == "train" or len(x) > 0:
            validate_array(x, what=f"{key} {split} split")
        y = getattr(splits, f"y_{split}")
        if y is not None and not np.issubdtype(np.asarray(y).dtype, np.integer):
            raise DataError(
                f"{key} y_{split} has dtype {np.asarray(y).dtype}; labels must be integer class indices"
            )
        factors = getattr(splits, f"factors_{split}")
        if factors is None:
            continue
        dtype = np.asarray(factors).dtype
        # Class indices (factor_sizes given) or continuous values (factor_sizes None, e.g. the
        # true z of text_synthetic).
        continuous = splits.factor_sizes is None and np.issubdtype(dtype, np.floating)
        if not (np.issubdtype(dtype, np.integer) or continuous):
            raise DataError(
                f"{key} factors_{split} has dtype {dtype}; factors must be integer class indices "
                "(with factor_sizes) or floats (continuous, factor_sizes None)"
            )
        if continuous and not np.all(np.isfinite(factors)):
            raise DataError(f"{key} factors_{split} has NaN or Inf values; remove those examples")
    return splits


def open_dataset(
    name: str,
    *,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    max_samples: int | None = None,
    path: str | None = None,
    **options,
) -> LazySplits:
    """The splits :func:`load_dataset` would return, kept lazy where the data set allows it.

    Same arguments, same checks and messages, same rows and values. User files (``npy``, ``npz``,
    ``images``) stay on disk: the data is checked block by block when opened, and
    ``splits.split("test")[start:stop]`` reads and converts only those rows. Other data sets
    (``digits``, ``dsprites``, ``mnist``, ...) are loaded into memory by :func:`load_dataset` and
    wrapped (:meth:`LazySplits.in_memory`); so are the text data sets (``text_file`` included:
    its vocabulary needs every training sentence), whose rows are arrays of ``str``.

    Raises:
        DataError: as :func:`load_dataset`.
    """
    key, loader, plan, options = _resolve(
        name, seed=seed, val_fraction=val_fraction, test_fraction=test_fraction,
        max_samples=max_samples, path=path, options=options,
    )
    opener = LAZY_DATASETS.get(key)
    if opener is None:
        return LazySplits.in_memory(_checked(key, loader(plan, **options)))
    # The opener checked the raw data (validate_array over every row, block by block); the
    # per-split checks of load_dataset cannot fail after it (the splits are rows of it, cast to
    # float32 within range), so they are not repeated over the converted rows here.
    return opener(plan, **options)
