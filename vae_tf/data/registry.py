"""The data-set registry and :func:`load_dataset`, the one entry point the application calls.

A loader is a function ``loader(plan: SplitPlan, **options) -> DataSplits`` registered under a
name with :func:`register_dataset`. Its keyword parameters are its options (``path`` included
when it reads user files); :func:`load_dataset` checks the options a caller passes against that
signature, so a misspelt option is a one-line :class:`~vae_tf.errors.DataError`, not a
``TypeError``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import numpy as np

from vae_tf.data.splits import SPLIT_NAMES, DataSplits, SplitPlan
from vae_tf.data.validation import validate_array
from vae_tf.errors import DataError

DATASETS: dict[str, Callable[..., DataSplits]] = {}


def _normalise(name: str) -> str:
    return str(name).strip().lower().replace("-", "_")


def register_dataset(name: str):
    """Decorator registering ``loader(plan: SplitPlan, **options) -> DataSplits`` as ``name``.

    Registering a second, different function under a taken name raises ``ValueError`` (a
    programming error, not a data error).
    """
    key = _normalise(name)

    def decorator(loader: Callable[..., DataSplits]) -> Callable[..., DataSplits]:
        existing = DATASETS.get(key)
        if existing is not None and existing is not loader:
            raise ValueError(f"data set {key!r} is already registered by {existing.__qualname__}")
        DATASETS[key] = loader
        return loader

    return decorator


def _loader_options(loader: Callable[..., DataSplits]) -> tuple[set[str], bool]:
    """Names of the loader's keyword options (after the plan) and whether it takes **kwargs."""
    params = list(inspect.signature(loader).parameters.values())[1:]
    names = {
        p.name
        for p in params
        if p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    }
    return names, any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


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
            (embedded default), ``dsprites`` (procedural), ``mnist`` / ``fashion_mnist`` (Keras
            download), ``npz`` / ``npy`` / ``images`` (user files, need ``path``).
        seed: seed of the split permutation (``np.random.default_rng(seed)``) and of any sampling
            the loader does (dSprites factors). Same seed, same arrays.
        val_fraction, test_fraction: in ``[0, 1)``, and together they must leave at least one
            training example. Where the source has an official test split (MNIST, Fashion-MNIST,
            an ``.npz`` with ``x_test``) that split is the test set, ``test_fraction`` is unused
            and validation is carved from the official training part.
        max_samples: keep at most this many examples in all (taken after the seeded
            permutation), for quick runs.
        path: file or folder for the user-data loaders; other loaders refuse it.
        **options: loader options, e.g. ``n_samples`` / ``image_size`` for ``dsprites``.

    Returns:
        :class:`DataSplits` whose every non-empty split passed :func:`validate_array`.

    Raises:
        DataError: unknown name, unknown or invalid options, bad fractions, unreadable or
            invalid data, a download that failed.
    """
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
        valid = sorted(accepted - {"path"})
        raise DataError(
            f"data set {key!r} has no option(s) {', '.join(map(repr, unknown))}; "
            f"its options are: {', '.join(valid) if valid else 'none'}"
        )
    splits = loader(plan, **options)
    for split in SPLIT_NAMES:
        x = getattr(splits, f"x_{split}")
        if split == "train" or len(x) > 0:
            validate_array(x, what=f"{key} {split} split")
        for kind in ("y", "factors"):
            arr = getattr(splits, f"{kind}_{split}")
            if arr is not None and not np.issubdtype(np.asarray(arr).dtype, np.integer):
                raise DataError(
                    f"{key} {kind}_{split} has dtype {np.asarray(arr).dtype}; "
                    "labels and factors must be integer class indices"
                )
    return splits
