"""Word tokenisation shared by the text data sets and the text models, in TensorFlow ops only.

The same functions turn sentences into tokens when a data set builds its vocabulary and inside
the model (and so inside the exported SavedModel, where no Python runs at serving time), so the
data and the model cannot disagree about what a token is.

Two settings, recorded by every text data set in ``metadata["tokenizer"]`` and passed as keyword
arguments to every function here:

- ``lowercase`` (default True): Unicode lower-case mapping of ``tf.strings.lower(...,
  encoding="utf-8")`` (non-ASCII letters are lower-cased too: ``"ÉTÉ" -> "été"``,
  ``"ΣΟΦΙΑ" -> "σοφια"``; a word-final capital sigma becomes the final form ``ς``, as Unicode's
  lower-casing, and Python's ``str.lower``, do: ``"ΟΔΟΣ" -> "οδος"``). No Unicode normalisation (NFC/NFKC) is applied: core TensorFlow has no op
  for it, so ``"é"`` written as one code point and as ``e`` + combining accent are different
  tokens.
- ``split_punctuation`` (default True): every Unicode punctuation (category P) and symbol
  (category S) character becomes a token of its own (``"Hello, world!" -> hello , world !``),
  except the apostrophe (``'`` and ``’``) inside a word: ``it's`` and ``don't`` stay one token,
  while an apostrophe at the start or end of a word is split off (``'quoted'`` -> ``' quoted '``).
  The literal ``<unk>`` (how corpora such as Penn Treebank mark rare words) is kept whole.
- ``symbol_clusters`` (default True; data sets record it): with ``split_punctuation``, a
  punctuation or symbol token keeps the characters that bind to it: combining marks and
  variation selectors, emoji skin-tone modifiers, tag characters and zero-width-joined symbols,
  and a pair of regional indicators is one flag, so ``"I ❤️ NY 👍🏽 🇫🇷"`` gives the tokens
  ``i ❤️ ny 👍🏽 🇫🇷``. Without it (models and data sets made before it existed, whose metadata
  lacks the key) a U+FE0F or U+200D became a token of its own and ``🇫🇷`` two.
  Pre-tokenised corpora (Penn Treebank, Yahoo, Yelp, the synthetic corpus) set it False: their
  tokens are exactly their whitespace-separated words.

Whitespace (ASCII and Unicode separators such as no-break space) is collapsed to one space and
stripped at both ends, so a sentence's tokens are its space-separated parts after
:func:`normalize`, and :func:`normalize` is idempotent.

Every vocabulary starts with the four special tokens :data:`SPECIALS` at fixed ids:
``PAD = "<pad>"`` (0), ``UNK = "<unk>"`` (1, every token outside the vocabulary), ``BOS =
"<bos>"`` (2), ``EOS = "<eos>"`` (3). :func:`build_vocabulary` returns the words only, most
frequent first; :func:`full_vocabulary` puts the specials in front.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import numpy as np
import tensorflow as tf

from vae_tf.errors import ConfigError

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
#: The special tokens, in id order: ``full_vocabulary(words)[i]`` for ``i`` in 0..3.
SPECIALS: tuple[str, ...] = (PAD, UNK, BOS, EOS)

# RE2 patterns. A separator is punctuation except the two apostrophes, or a symbol; `<unk>` is
# tried first so it survives whole (RE2 alternation is leftmost-first).
_SEPARATOR = r"(<unk>|[^\P{P}'\x{2019}]|\pS)"
# With `symbol_clusters`, a separator keeps what binds to it: combining marks and variation
# selectors (category M: the U+FE0F of "❤️", a keycap's U+20E3), skin-tone modifiers
# (U+1F3FB-1F3FF), tag characters (U+E0020-E007F, subdivision flags) and zero-width-joined
# symbols ("👨‍👩‍👧"); and a pair of regional indicators is one flag ("🇫🇷").
_BINDS = r"[\p{M}\x{1F3FB}-\x{1F3FF}\x{E0020}-\x{E007F}]"
_CLUSTER_SEPARATOR = (r"(<unk>|[\x{1F1E6}-\x{1F1FF}]{2}|(?:[^\P{P}'\x{2019}]|\pS)(?:" + _BINDS
                      + r"|\x{200D}\pS)*)")
_SPACE = r"[\s\p{Z}]"
_LEADING_APOSTROPHES = r"(^|" + _SPACE + r")(['\x{2019}]+)"
_TRAILING_APOSTROPHES = r"(['\x{2019}]+)(" + _SPACE + r"|$)"

# Sentences tokenised per eager call when counting words: bounds the memory of one RaggedTensor.
_CHUNK = 65536


def normalize(strings, *, lowercase: bool = True, split_punctuation: bool = True,
              symbol_clusters: bool = True) -> tf.Tensor:
    """Normalise a string tensor in graph: optionally lower-case, optionally space out
    punctuation, collapse whitespace to single spaces and strip the ends (module docstring).

    Args:
        strings: a ``tf.string`` tensor of any shape (or anything ``tf.convert_to_tensor``
            makes one of), UTF-8.

    Returns:
        A ``tf.string`` tensor of the same shape.
    """
    s = tf.convert_to_tensor(strings, dtype=tf.string)
    if lowercase:
        s = tf.strings.lower(s, encoding="utf-8")
    if split_punctuation:
        s = tf.strings.regex_replace(s, _CLUSTER_SEPARATOR if symbol_clusters else _SEPARATOR, r" \1 ")
        s = tf.strings.regex_replace(s, _LEADING_APOSTROPHES, r"\1\2 ")
        s = tf.strings.regex_replace(s, _TRAILING_APOSTROPHES, r" \1\2")
    s = tf.strings.regex_replace(s, _SPACE + "+", " ")
    return tf.strings.strip(s)


def split_tokens(strings, *, lowercase: bool = True, split_punctuation: bool = True,
                 symbol_clusters: bool = True) -> tf.RaggedTensor:
    """The tokens of each sentence: :func:`normalize`, then split at spaces.

    Args:
        strings: a 1-D ``tf.string`` tensor ``[N]`` of raw sentences.

    Returns:
        A ``tf.RaggedTensor`` ``[N, None]`` of ``tf.string`` tokens (an empty row for a sentence
        with no tokens).
    """
    normalized = normalize(strings, lowercase=lowercase, split_punctuation=split_punctuation,
                           symbol_clusters=symbol_clusters)
    # sep=None: an empty string has no tokens (sep=" " would give one empty token).
    return tf.strings.split(normalized)


def sentence_lengths(strings, *, lowercase: bool = True, split_punctuation: bool = True,
                     symbol_clusters: bool = True) -> tf.Tensor:
    """Number of tokens of each sentence, int64 ``[N]`` (specials not counted: no ``<bos>`` /
    ``<eos>`` is added here)."""
    return split_tokens(strings, lowercase=lowercase, split_punctuation=split_punctuation,
                        symbol_clusters=symbol_clusters).row_lengths()


def truncate(strings, max_length: int, *, lowercase: bool = True, split_punctuation: bool = True,
             symbol_clusters: bool = True) -> tf.Tensor:
    """Each sentence as its first ``max_length`` tokens, normalised and joined by single spaces
    (a sentence with fewer tokens comes back normalised, otherwise unchanged); in graph.
    :func:`split_tokens` of the result gives exactly those tokens."""
    tokens = split_tokens(strings, lowercase=lowercase, split_punctuation=split_punctuation,
                          symbol_clusters=symbol_clusters)
    return tf.strings.reduce_join(tokens[:, :max_length], axis=1, separator=" ")


def _chunks(sentences) -> Iterable[np.ndarray]:
    arr = np.asarray(sentences, dtype=object).reshape(-1)
    for start in range(0, len(arr), _CHUNK):
        yield arr[start : start + _CHUNK]


def word_counts(sentences, *, lowercase: bool = True, split_punctuation: bool = True,
                symbol_clusters: bool = True) -> Counter:
    """How often each token occurs in ``sentences`` (a sequence of Python ``str``), tokenised by
    :func:`split_tokens` eagerly, a chunk of sentences at a time. Keys are ``str``."""
    counts: Counter = Counter()
    for chunk in _chunks(sentences):
        if len(chunk) == 0:
            continue
        tokens = split_tokens(tf.constant(chunk.tolist(), dtype=tf.string), lowercase=lowercase,
                              split_punctuation=split_punctuation, symbol_clusters=symbol_clusters)
        counts.update(tokens.flat_values.numpy().tolist())
    return Counter({token.decode("utf-8"): n for token, n in counts.items()})


def vocabulary_from_counts(counts: Counter, max_size: int | None = None, min_count: int = 1) -> list[str]:
    """The vocabulary :func:`build_vocabulary` returns, from token counts already made."""
    if max_size is not None and (isinstance(max_size, bool) or not isinstance(max_size, (int, np.integer))
                                 or max_size < 0):
        raise ConfigError(f"max_size must be a non-negative integer or None, got {max_size!r}")
    if isinstance(min_count, bool) or not isinstance(min_count, (int, np.integer)) or min_count < 1:
        raise ConfigError(f"min_count must be a positive integer, got {min_count!r}")
    kept = [(token, n) for token, n in counts.items() if n >= min_count and token not in SPECIALS]
    kept.sort(key=lambda item: (-item[1], item[0]))
    words = [token for token, _ in kept]
    return words if max_size is None else words[: int(max_size)]


def build_vocabulary(sentences, max_size: int | None = None, min_count: int = 1, *,
                     lowercase: bool = True, split_punctuation: bool = True,
                     symbol_clusters: bool = True) -> list[str]:
    """The vocabulary of ``sentences``: its tokens (by :func:`split_tokens`, the model's own
    tokeniser) that occur at least ``min_count`` times, most frequent first, ties in order of
    the token (Python ``str`` order, i.e. by Unicode code points), at most ``max_size`` of them.

    The special tokens are excluded (a literal ``<unk>`` in a corpus is counted as the unknown
    token, not as a word); :func:`full_vocabulary` puts them in front.

    Args:
        sentences: a sequence of Python ``str`` (e.g. a data set's ``x_train``).
        max_size: most words to keep (specials not counted), or None for all.
        min_count: fewest occurrences a word needs.

    Returns:
        ``list[str]`` of distinct words.
    """
    counts = word_counts(sentences, lowercase=lowercase, split_punctuation=split_punctuation,
                         symbol_clusters=symbol_clusters)
    return vocabulary_from_counts(counts, max_size=max_size, min_count=min_count)


def full_vocabulary(words: Iterable[str]) -> list[str]:
    """``[PAD, UNK, BOS, EOS] + words``: the id -> token table of a model (ids 0..3 fixed)."""
    words = list(words)
    clash = sorted(set(words) & set(SPECIALS))
    if clash:
        raise ConfigError(f"the vocabulary holds the special token(s) {clash}; remove them, they get fixed ids")
    return list(SPECIALS) + words
