"""Text data sets: sentences in, a vocabulary and a maximum length out; and ``text_file``.

The contract every text data set keeps (what the text models rely on):

- ``x_train`` / ``x_val`` / ``x_test``: 1-D NumPy arrays of dtype object holding Python ``str``,
  one raw sentence each (the model tokenises them itself, with :mod:`vae_tf.tokenize`);
  ``data_shape == ()``; ``value_range is None``; ``binary is False``;
- ``y_*``: int64 labels where the source has them; ``factors_*`` where it has ground truth;
- ``metadata["modality"] == "text"``;
- ``metadata["vocabulary"]``: the words of the **training split only** (special tokens excluded),
  most frequent first, ties in ``str`` order (:func:`vae_tf.tokenize.build_vocabulary`), at most
  ``vocab_size - 4`` of them and each seen at least ``min_count`` times; the model's id table is
  ``vae_tf.tokenize.full_vocabulary(vocabulary)`` (``<pad>``, ``<unk>``, ``<bos>``, ``<eos>`` at
  ids 0-3 first);
- ``metadata["max_length"]``: no sentence of any split has more tokens than this (``<bos>`` /
  ``<eos>`` not counted). With the ``max_length`` option, longer sentences are dropped or
  truncated per ``long_sentences``; without it, it is the longest sentence of all splits and
  nothing is dropped;
- ``metadata["tokenizer"]``: ``{"lowercase": bool, "split_punctuation": bool, "symbol_clusters": True}``, the keyword
  arguments of every :mod:`vae_tf.tokenize` function; the model must tokenise with the same.

Also in the metadata: ``vocab_size`` (``len(vocabulary) + 4``, the size of the id table actually
built; ``vocab_size_option`` the option, which ``min_count`` can leave unreached), ``min_count``, ``long_sentences``, ``n_long`` (sentences dropped or truncated, per split),
``n_words`` (tokens per split after that), ``unk_rate`` (fraction of each split's tokens outside
the vocabulary), ``n_train`` / ``n_val`` / ``n_test``, the split plan and the source.

TensorFlow is imported only when a text data set is loaded (the tokeniser is TensorFlow ops).
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vae_tf.data.registry import register_dataset
from vae_tf.data.splits import SPLIT_NAMES, DataSplits, SplitPlan
from vae_tf.data.validation import GZIP_MAGIC, exception_cause, is_int, validate_text, wide_unicode_encoding
from vae_tf.errors import DataError

LONG_SENTENCES = ("drop", "truncate")
#: Ids 0-3 of every vocabulary (``vae_tf.tokenize.SPECIALS``), counted in ``vocab_size``.
NUM_SPECIALS = 4


@dataclass(frozen=True)
class TextOptions:
    """The vocabulary, length and tokenizer options of the text data sets that build their vocabulary
    from their sentences (text_file, wordnet, ptb, yahoo, yelp; text_synthetic fixes them), checked
    by :meth:`check`.

    Attributes:
        vocab_size: size of the model's whole token table, the 4 special tokens included (as
            Keras' ``TextVectorization(max_tokens=...)`` counts), so at most ``vocab_size - 4``
            words; None keeps every word seen ``min_count`` times.
        min_count: fewest occurrences in the training split a word needs to get an id.
        max_length: most tokens a sentence may have, or None (the longest sentence sets it).
        long_sentences: ``"drop"`` a longer sentence, or ``"truncate"`` it to its first
            ``max_length`` tokens (the sentence is then stored as those tokens, normalised and
            joined by spaces, which the tokeniser reads back as exactly those tokens).
        lowercase, split_punctuation, symbol_clusters: the tokeniser settings
            (:mod:`vae_tf.tokenize`; ``symbol_clusters`` false tokenises as vae-tf did before
            2026-12-07, which a run or model of then is rebuilt with).
    """

    vocab_size: int | None = None
    min_count: int = 1
    max_length: int | None = None
    long_sentences: str = "drop"
    lowercase: bool = True
    split_punctuation: bool = True
    symbol_clusters: bool = True

    def check(self, name: str) -> TextOptions:
        if self.vocab_size is not None and (not is_int(self.vocab_size) or self.vocab_size <= NUM_SPECIALS):
            raise DataError(
                f"{name} vocab_size must be an integer > {NUM_SPECIALS} (it counts the 4 special "
                f"tokens and at least one word) or null, got {self.vocab_size!r}"
            )
        if not is_int(self.min_count) or self.min_count < 1:
            raise DataError(f"{name} min_count must be a positive integer, got {self.min_count!r}")
        if self.max_length is not None and (not is_int(self.max_length) or self.max_length < 1):
            raise DataError(
                f"{name} max_length must be a positive integer (tokens per sentence) or null, "
                f"got {self.max_length!r}"
            )
        if self.long_sentences not in LONG_SENTENCES:
            raise DataError(
                f"{name} long_sentences must be 'drop' or 'truncate', got {self.long_sentences!r}"
            )
        for key in ("lowercase", "split_punctuation", "symbol_clusters"):
            if not isinstance(getattr(self, key), (bool, np.bool_)):
                raise DataError(f"{name} {key} must be true or false, got {getattr(self, key)!r}")
        return self

    @property
    def tokenizer(self) -> dict:
        return {"lowercase": bool(self.lowercase), "split_punctuation": bool(self.split_punctuation),
                "symbol_clusters": bool(self.symbol_clusters)}


@dataclass(frozen=True)
class TextPart:
    """The sentences of one split before the length rule, with their labels and factors."""

    sentences: np.ndarray
    y: np.ndarray | None = None
    factors: np.ndarray | None = None

    def take(self, index: np.ndarray) -> TextPart:
        return TextPart(
            self.sentences[index],
            None if self.y is None else self.y[index],
            None if self.factors is None else self.factors[index],
        )


def sentence_array(sentences) -> np.ndarray:
    """A 1-D object array of ``str`` (the text ``x_*`` layout)."""
    arr = np.empty(len(sentences), dtype=object)
    arr[:] = list(sentences)
    return arr


def random_parts(plan: SplitPlan, sentences, y=None, factors=None) -> dict[str, TextPart]:
    """Cut one pool of sentences (no official split) by ``plan.indices``."""
    whole = TextPart(sentence_array(sentences), y, factors)
    return dict(zip(SPLIT_NAMES, (whole.take(idx) for idx in plan.indices(len(whole.sentences)))))


def _apply_length_rule(name: str, split: str, part: TextPart, options: TextOptions,
                       max_length: int) -> tuple[TextPart, int]:
    """Drop or truncate the sentences of ``part`` longer than ``max_length`` tokens."""
    from vae_tf import tokenize  # noqa: PLC0415 - TensorFlow only when text is loaded

    if len(part.sentences) == 0:
        return part, 0
    lengths = tokenize.sentence_lengths(part.sentences.tolist(), **options.tokenizer).numpy()
    long = np.flatnonzero(lengths > max_length)
    if len(long) == 0:
        return part, 0
    if options.long_sentences == "drop":
        kept = part.take(np.flatnonzero(lengths <= max_length))
        if split == "train" and len(kept.sentences) == 0:
            raise DataError(
                f"all {len(lengths)} training sentences of {name} have more than max_length="
                f"{max_length} tokens; raise max_length or set long_sentences: truncate"
            )
        return kept, len(long)
    cut = [s.decode("utf-8") for s in
           tokenize.truncate(part.sentences[long].tolist(), max_length, **options.tokenizer).numpy()]
    sentences = part.sentences.copy()
    sentences[long] = cut
    return TextPart(sentences, part.y, part.factors), len(long)


def text_splits(name: str, plan: SplitPlan, parts: dict[str, TextPart], options: TextOptions,
                metadata: dict, factor_names: tuple[str, ...] | None = None) -> DataSplits:
    """The text :class:`DataSplits` of ``parts`` (train / val / test sentences): the length rule
    applied to every split, the vocabulary counted on the training split (module docstring)."""
    from vae_tf import tokenize  # noqa: PLC0415

    options = options.check(name)
    parts = dict(parts)
    for split, part in parts.items():
        if split == "train" or len(part.sentences):
            validate_text(part.sentences, what=f"{name} {split} split")
    max_length = options.max_length
    n_long = dict.fromkeys(SPLIT_NAMES, 0)
    length_p99 = None
    if max_length is None:
        lengths = [tokenize.sentence_lengths(p.sentences.tolist(), **options.tokenizer).numpy()
                   for p in parts.values() if len(p.sentences)]
        max_length = int(max(int(a.max()) for a in lengths))
        # what most sentences need: a few very long lines set max_length for all (training.train warns)
        length_p99 = int(np.ceil(np.percentile(np.concatenate(lengths), 99)))
    else:
        for split in SPLIT_NAMES:
            parts[split], n_long[split] = _apply_length_rule(name, split, parts[split], options, max_length)
    counts = {s: tokenize.word_counts(parts[s].sentences.tolist(), **options.tokenizer) for s in SPLIT_NAMES}
    max_words = None if options.vocab_size is None else options.vocab_size - NUM_SPECIALS
    vocabulary = tokenize.vocabulary_from_counts(counts["train"], max_size=max_words, min_count=options.min_count)
    if not vocabulary:
        commonest = max(counts["train"].values(), default=0)
        raise DataError(f"{name}: no word of the training split occurs min_count={options.min_count} times (the "
                        f"commonest occurs {commonest}); lower data.options.min_count")
    known = set(vocabulary)
    n_words = {s: int(sum(c.values())) for s, c in counts.items()}
    unk_rate = {
        s: (float(sum(n for t, n in c.items() if t not in known) / n_words[s]) if n_words[s] else 0.0)
        for s, c in counts.items()
    }
    return DataSplits(
        name=name,
        **{f"x_{s}": parts[s].sentences for s in SPLIT_NAMES},
        **{f"y_{s}": parts[s].y for s in SPLIT_NAMES},
        **{f"factors_{s}": parts[s].factors for s in SPLIT_NAMES},
        factor_names=factor_names,
        value_range=None,
        binary=False,
        metadata={
            **metadata,
            "modality": "text",
            "vocabulary": vocabulary,
            "max_length": int(max_length),
            **({} if length_p99 is None else {"length_p99": length_p99}),
            "tokenizer": options.tokenizer,
            "long_sentences": options.long_sentences,
            "vocab_size": len(vocabulary) + NUM_SPECIALS,
            "vocab_size_option": options.vocab_size,
            "min_count": int(options.min_count),
            "n_long": n_long,
            "n_words": n_words,
            "unk_rate": unk_rate,
            **plan.as_metadata(),
            **{f"n_{s}": int(len(parts[s].sentences)) for s in SPLIT_NAMES},
        },
    )


# -- text_file --------------------------------------------------------------------------------


def read_sentences(path) -> list[str]:
    """The non-blank lines of a UTF-8 text file (``.gz``: gzip-compressed), each stripped of
    surrounding whitespace; a leading byte-order mark is ignored. One-line DataErrors for a
    missing, empty, binary (NUL bytes) or undecodable file, naming the file and the line."""
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"no such file: {str(p)!r} (data.path); check the path")
    if p.is_dir():
        raise DataError(f"{str(p)!r} is a folder; data set 'text_file' needs one .txt or .txt.gz file")
    try:
        raw = p.read_bytes()
        if p.suffix.lower() == ".gz":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        cause = exception_cause(exc)
        raise DataError(f"could not read {str(p)!r} ({cause}); check the file (a .gz must be gzip)") from None
    wide = wide_unicode_encoding(raw[:4])
    if wide:
        raise DataError(f"{str(p)!r} is {wide} text (its byte-order mark says so); text_file reads UTF-8: "
                        "re-save it as UTF-8")
    if raw[:2] == GZIP_MAGIC:  # a compressed file under a plain name
        raise DataError(f"{str(p)!r} is gzip-compressed; name it .txt.gz (text_file decompresses .gz files)")
    nul = raw.find(b"\x00")
    if nul >= 0:
        line = raw.count(b"\n", 0, nul) + 1
        raise DataError(
            f"{str(p)!r} looks binary (a NUL byte on line {line}); text_file reads UTF-8 text, "
            "one sentence per line"
        )
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1)
        raise DataError(
            f"{str(p)!r} is not valid UTF-8 (line {line}, byte {column} of the line: {exc.reason}); re-save it as "
            "UTF-8 (e.g. iconv -f latin1 -t utf-8 when it is Latin-1)"
        ) from None
    # Lines end at "\n" only (str.splitlines would also cut at form feeds and U+2028).
    sentences = [line.strip() for line in text.split("\n")]
    lone = next((i for i, s in enumerate(sentences) if "\r" in s), None)
    if lone is not None:
        raise lone_carriage_return(repr(str(p)), lone)
    sentences = [s for s in sentences if s]
    if not sentences:
        raise DataError(f"{str(p)!r} is empty (no non-blank line); put one sentence per line")
    return sentences


def lone_carriage_return(where: str, line: int) -> DataError:
    """The error for a line (0-based) holding a carriage return alone: old Mac OS line endings,
    or a file of such lines joined to one with \\n endings, whose lines would read as one sentence."""
    said = ("ends its lines with a carriage return alone (\\r, old Mac OS line endings)" if line == 0 else
            f"has a carriage return alone (\\r, an old Mac OS line ending) in line {line + 1}")
    return DataError(f"{where} {said}, which would join lines into one sentence; convert them to \\n (e.g. "
                     "tr '\\r' '\\n' < in > out)")


@register_dataset("text_file", modality="text")
def load_text_file(
    plan: SplitPlan,
    *,
    path: str | None = None,
    vocab_size: int | None = None,
    min_count: int = 1,
    max_length: int | None = None,
    long_sentences: str = "drop",
    lowercase: bool = True,
    split_punctuation: bool = True,
    symbol_clusters: bool = True,
) -> DataSplits:
    """Your sentences, one per line, from a UTF-8 ``.txt`` or gzip-compressed ``.txt.gz`` file.

    Blank lines are skipped and each line is stripped of surrounding whitespace; a byte-order
    mark is ignored; lines end at ``\\n`` (``\\r\\n`` works too). Random split by ``plan``; no
    labels. Duplicate lines are kept (they are your data).

    Options (:class:`TextOptions`): ``vocab_size`` (whole token table, 4 specials included),
    ``min_count``, ``max_length`` (tokens), ``long_sentences`` (default ``"drop"``: a sentence
    longer than ``max_length`` is left out; ``"truncate"`` keeps its first ``max_length``
    tokens), ``lowercase`` and ``split_punctuation`` (set both false for a file that is already
    tokenised), ``symbol_clusters``.

    Returns:
        text :class:`DataSplits` (module docstring).
    """
    if path is None:
        raise DataError(
            "data set 'text_file' needs a path: set data.path to a UTF-8 .txt or .txt.gz file "
            "with one sentence per line"
        )
    options = TextOptions(vocab_size, min_count, max_length, long_sentences, lowercase, split_punctuation,
                          symbol_clusters)
    options.check("text_file")
    sentences = read_sentences(path)
    return text_splits("text_file", plan, random_parts(plan, sentences), options,
                       {"source": str(Path(path).expanduser()), "n_lines": len(sentences),
                        "test_split": "random"})
