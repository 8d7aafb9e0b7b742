"""The text VAE papers' corpora, downloaded with ``keras.utils.get_file`` when online.

- ``ptb``: the Penn Treebank language-modelling files of Mikolov et al. (2010), from the RNNLM
  toolkit's ``simple-examples.tgz`` (``data/ptb.{train,valid,test}.txt``): 42,068 / 3,370 /
  3,761 sentences, lower-cased, numbers as ``N``, rare words as ``<unk>``, 10k words. Used by
  Bowman et al. (2016) and most sentence-VAE papers.
- ``yahoo``, ``yelp``: the Yahoo Answers and Yelp review corpora of Yang et al. (2017) as
  prepared by He et al. (2019) (jxhe/vae-lagging-encoder, ``prepare_data.py``: one Google Drive
  archive each holding ``{yahoo,yelp}_data/{name}.{train,valid,test}.txt``; 100k / 10k / 10k
  documents each). Yelp lines are ``label<TAB>text`` (the review rating): when the first line
  of the training file has a tab, every line of the three files must be ``label<TAB>text``, and
  the labels are mapped to 0.. in sorted (numeric where possible) order, names in
  ``metadata["class_names"]``.

All three are pre-tokenised: their tokeniser settings are ``lowercase: false``,
``split_punctuation: false`` (tokens are the space-separated words, ``<unk>`` is the unknown
token). The official splits are used (``val_fraction`` / ``test_fraction`` are not);
``max_samples`` is shared among them in proportion to their sizes. Nothing is downloaded with the
``path`` option: a folder holding the three files (searched recursively, so the extracted archive
works). Downloads are cached by Keras in ``~/.keras/datasets``. Offline, a one-line
:class:`~vae_tf.errors.DataError` names the offline choices.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vae_tf.data.builtin import OFFLINE_TEXT_CHOICES
from vae_tf.data.registry import register_dataset
from vae_tf.data.splits import SPLIT_NAMES, DataSplits, SplitPlan
from vae_tf.data.text import TextOptions, TextPart, read_sentences, sentence_array, text_splits
from vae_tf.data.validation import exception_cause
from vae_tf.errors import DataError

_DRIVE = "https://drive.usercontent.google.com/download?id={}&export=download&confirm=t"


@dataclass(frozen=True)
class Corpus:
    """Where a corpus comes from and which files hold its official splits."""

    name: str
    origin: str
    archive: str  # file name in the Keras cache
    files: tuple[str, str, str]  # train, validation, test
    source: str


CORPORA = {
    "ptb": Corpus(
        "ptb", "http://www.fit.vutbr.cz/~imikolov/rnnlm/simple-examples.tgz", "vae_tf_ptb.tgz",
        ("ptb.train.txt", "ptb.valid.txt", "ptb.test.txt"),
        "Penn Treebank, Mikolov et al. 2010 (RNNLM toolkit simple-examples.tgz)",
    ),
    "yahoo": Corpus(
        "yahoo", _DRIVE.format("13azGlTuGdzWLCmgDmQPmvb_jcexVWX7i"), "vae_tf_yahoo.tar.gz",
        ("yahoo.train.txt", "yahoo.valid.txt", "yahoo.test.txt"),
        "Yahoo Answers, Yang et al. 2017, as prepared by He et al. 2019 (jxhe/vae-lagging-encoder)",
    ),
    "yelp": Corpus(
        "yelp", _DRIVE.format("1FT49oLNV8syhmGXEgiK6XTjEfMNqqEJJ"), "vae_tf_yelp.tar.gz",
        ("yelp.train.txt", "yelp.valid.txt", "yelp.test.txt"),
        "Yelp reviews, Yang et al. 2017, as prepared by He et al. 2019 (jxhe/vae-lagging-encoder)",
    ),
}


def _find(root: Path, corpus: Corpus) -> dict[str, Path] | None:
    found = {}
    for split, name in zip(SPLIT_NAMES, corpus.files):
        hits = sorted(root.rglob(name)) if root.is_dir() else []
        if not hits:
            return None
        found[split] = hits[0]
    return found


def corpus_files(corpus: Corpus, path: str | None) -> dict[str, Path]:
    """The three files of ``corpus``: under ``path``, or downloaded (and cached) by Keras."""
    files_list = ", ".join(corpus.files)
    if path is not None:
        root = Path(path).expanduser()
        found = _find(root, corpus)
        if found is None:
            raise DataError(
                f"{str(root)!r} does not hold {files_list} (data.path of {corpus.name!r}); point it "
                f"at the folder with those files, or drop data.path to download them"
            )
        return found
    try:
        import keras  # noqa: PLC0415 - TensorFlow only when a corpus is asked for

        folder = keras.utils.get_file(fname=corpus.archive, origin=corpus.origin, extract=True)
    except Exception as exc:  # no network, proxy, refused: the cause goes in the message
        raise DataError(
            f"could not download {corpus.name!r} from {corpus.origin} with keras.utils.get_file "
            f"(offline?) [{exception_cause(exc)}]; {OFFLINE_TEXT_CHOICES}"
        ) from None
    found = _find(Path(folder), corpus)
    if found is None:
        archive = Path(folder).parent / corpus.archive
        raise DataError(
            f"the download of {corpus.name!r} ({archive}) is not an archive holding {files_list} "
            f"(a web page instead?); delete it and retry, or fetch {corpus.origin} by hand, "
            "extract it and set data.path to the folder"
        )
    return found


def read_part(path: Path, labelled: bool | None) -> tuple[list[str], list[str] | None]:
    """Sentences (and raw labels for ``label<TAB>text`` lines) of one file; ``labelled=None``:
    labelled when its first line has a tab, and then every line must."""
    lines = read_sentences(path)
    if labelled is None:
        labelled = "\t" in lines[0]
    if not labelled:
        return lines, None
    labels, sentences = [], []
    for i, line in enumerate(lines):
        label, _, text = line.partition("\t")
        if not text.strip():
            raise DataError(
                f"{str(path)!r}: non-blank line {i + 1} has a label but no text after a tab "
                "(labelled files hold 'label<TAB>text' on every line); fix or remove it"
            )
        labels.append(label.strip())
        sentences.append(text.strip())
    return sentences, labels


def _label_order(labels: set[str]) -> list[str]:
    try:
        return sorted(labels, key=float)
    except ValueError:
        return sorted(labels)


def load_corpus(name: str, plan: SplitPlan, path: str | None, options: TextOptions) -> DataSplits:
    corpus = CORPORA[name]
    options = options.check(name)
    files = corpus_files(corpus, path)
    train_sentences, train_labels = read_part(files["train"], None)
    raw = {"train": (train_sentences, train_labels)}
    for split in ("val", "test"):
        raw[split] = read_part(files[split], train_labels is not None)
    labelled = train_labels is not None
    class_names = _label_order({lab for _, labs in raw.values() for lab in labs}) if labelled else None
    index = {lab: i for i, lab in enumerate(class_names or [])}
    keep = dict(zip(SPLIT_NAMES, plan.indices_with_official_splits(*(len(raw[s][0]) for s in SPLIT_NAMES))))
    parts = {}
    for split in SPLIT_NAMES:
        sentences, labels = raw[split]
        y = np.array([index[lab] for lab in labels], dtype=np.int64) if labelled else None
        parts[split] = TextPart(sentence_array(sentences), y).take(keep[split])
    metadata = {"source": corpus.source, "origin": corpus.origin, "files": {s: str(f) for s, f in files.items()},
                "test_split": "official"}
    if labelled:
        metadata["class_names"] = class_names
    return text_splits(name, plan, parts, options, metadata)


def _register(name: str, summary: str):
    def loader(plan: SplitPlan, *, path: str | None = None, vocab_size: int | None = None,
               min_count: int = 1, max_length: int | None = None, long_sentences: str = "drop") -> DataSplits:
        options = TextOptions(vocab_size, min_count, max_length, long_sentences, lowercase=False,
                              split_punctuation=False)
        return load_corpus(name, plan, path, options)

    loader.__name__ = loader.__qualname__ = f"load_{name}"
    loader.__doc__ = (
        f"{summary} (:mod:`vae_tf.data.corpora`): downloaded with ``keras.utils.get_file`` or read "
        "from ``path``; official splits; text :class:`DataSplits` (:mod:`vae_tf.data.text`). Options "
        "``vocab_size``, ``min_count``, ``max_length``, ``long_sentences`` as for every text data set."
    )
    return register_dataset(name, modality="text")(loader)


load_ptb = _register("ptb", "Penn Treebank (Mikolov et al. 2010)")
load_yahoo = _register("yahoo", "Yahoo Answers (Yang et al. 2017; He et al. 2019's files)")
load_yelp = _register("yelp", "Yelp reviews with ratings as labels (Yang et al. 2017; He et al. 2019's files)")
