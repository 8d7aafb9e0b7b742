"""Sentences as model input: the checks ``vae-tf serve`` and ``vae-tf embed`` apply to the
``DT_STRING`` inputs of a vae-tf text model (an export whose ``assets/vae_tf_model.json`` says
``"modality": "text"``).

A text model's SavedModel takes raw UTF-8 sentences and tokenises them itself
(:class:`vae_tf.models.text.TextCodec`), so TF Serving would pass it any bytes. What the model
would silently turn into a meaningless code is refused here instead, with one line naming the row
(REST 400 / gRPC ``INVALID_ARGUMENT`` in the server, :class:`~vae_tf.errors.DataError` with the
line in ``vae-tf embed``):

- a value that is not UTF-8 text (a number is already refused by the input's dtype;
  ``{"b64": ...}`` payloads are decoded first and must be UTF-8 too);
- an empty sentence: no word at all (empty, or only whitespace as the tokenizer reads it: ASCII
  space, tab, line feed, carriage return, form feed and the Unicode separators, categories Z*);
- a sentence of more than ``max_bytes`` bytes (default 64 KiB) and a request of more than
  ``max_rows`` sentences (default 1024): the model's memory grows with rows x words, and a
  request body limit alone does not bound the rows of short sentences;
- a sentence longer than the model's ``max_length`` words, **only** with ``long_text="refuse"``.
  The default, ``"truncate"``, is what the model does and what TF Serving serving the same export
  does: the first ``max_length`` words are encoded and the rest ignored. Words are counted as the
  model counts them (:func:`vae_tf.tokenize.sentence_lengths` with the export's tokenizer
  settings), so a sentence is refused exactly when the model would have cut it.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from vae_tf.errors import ConfigError

LONG_TEXT_MODES = ("truncate", "refuse")
DEFAULT_LONG_TEXT = "truncate"
DEFAULT_MAX_ROWS = 1024
DEFAULT_MAX_BYTES = 64 * 1024
_TOKENIZER_SPACE = frozenset("\t\n\f\r ")  # RE2's \s; the tokenizer also splits at Unicode separators (Z*)


class SentenceError(ValueError):
    """One bad sentence (or batch): ``message`` says what and what to do; ``row`` is the index of
    the offending sentence in the batch (None for the batch as a whole)."""

    def __init__(self, message: str, row: int | None = None):
        super().__init__(message)
        self.message, self.row = message, row


@dataclass(frozen=True)
class TextLimits:
    """The operator's choices (``vae-tf serve --long-text/--max-text-rows/--max-text-bytes``)."""

    long_text: str = DEFAULT_LONG_TEXT
    max_rows: int = DEFAULT_MAX_ROWS
    max_bytes: int = DEFAULT_MAX_BYTES

    def __post_init__(self):
        if self.long_text not in LONG_TEXT_MODES:
            raise ConfigError(f"--long-text must be one of {', '.join(LONG_TEXT_MODES)}, got {self.long_text!r}")
        for what, value in (("--max-text-rows", self.max_rows), ("--max-text-bytes", self.max_bytes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{what} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class TextPolicy:
    """The checks for one text model: its tokenizer facts (from the export) and the limits."""

    max_length: int
    lowercase: bool = True
    split_punctuation: bool = True
    limits: TextLimits = TextLimits()
    symbol_clusters: bool = True

    @classmethod
    def from_model_info(cls, info: Mapping[str, Any] | None, limits: TextLimits = TextLimits()) -> "TextPolicy | None":
        """The policy of an export's ``vae_tf_model.json`` contents; ``None`` unless it is a text
        model (then its string inputs are passed on unchecked, as TF Serving does)."""
        text = (info or {}).get("text")
        if (info or {}).get("modality") != "text" or not isinstance(text, Mapping):
            return None
        try:
            return cls(int(text["max_length"]), bool(text.get("lowercase", True)),
                       bool(text.get("split_punctuation", True)), limits,
                       bool(text.get("symbol_clusters", False)))  # absent: exported before they existed
        except (KeyError, TypeError, ValueError):
            return None

    def describe(self) -> str:
        """One line for logs and the start-up banner."""
        long_text = (f"sentences longer than {self.max_length} words are truncated to their first {self.max_length} "
                     "(--long-text refuse to refuse them)" if self.limits.long_text == "truncate" else
                     f"sentences longer than {self.max_length} words are refused")
        return (f"text model: UTF-8 sentences, {long_text}; at most {self.limits.max_rows} sentences (or rows to "
                f"decode or sample) a request and {self.limits.max_bytes} bytes a sentence")

    def check(self, values: np.ndarray) -> np.ndarray:
        """``values`` (a 1-D batch of ``bytes``/``str``) as an object array of UTF-8 ``bytes``;
        :class:`SentenceError` for the first bad one (module docstring)."""
        flat = np.asarray(values, dtype=object).reshape(-1)
        if len(flat) > self.limits.max_rows:
            raise SentenceError(f"{len(flat)} sentences in one request, more than this server's limit of "
                                f"{self.limits.max_rows}; send smaller batches (or raise --max-text-rows)")
        out = np.empty(len(flat), dtype=object)
        for row, value in enumerate(flat):
            out[row] = self.check_one(value, row)
        if self.limits.long_text == "refuse":
            self._refuse_long(out)
        return out.reshape(np.shape(values))

    def check_one(self, value, row: int) -> bytes:
        """One sentence as UTF-8 ``bytes`` (the length rule is the batch's: :meth:`check`)."""
        if isinstance(value, str):
            try:
                raw = value.encode("utf-8")
            except UnicodeEncodeError as err:
                raise SentenceError(f"row {row} is not valid Unicode text (a lone surrogate at character "
                                    f"{err.start}); send UTF-8 text", row) from None
        elif isinstance(value, (bytes, np.bytes_)):
            raw = bytes(value)
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise SentenceError(f"row {row} is not valid UTF-8 (byte {err.start}: {err.reason}); send sentences "
                                    "as UTF-8 text", row) from None
            value = text
        else:
            raise SentenceError(f"row {row} is of type {type(value).__name__}, not a sentence; send strings", row)
        if len(raw) > self.limits.max_bytes:
            raise SentenceError(f"row {row} has {len(raw)} bytes, more than this server's limit of "
                                f"{self.limits.max_bytes} bytes a sentence; send sentences, not documents (or raise "
                                "--max-text-bytes)", row)
        if is_blank(value):
            raise SentenceError(f"row {row} is empty (no word, only whitespace or nothing); send at least one word "
                                "per sentence", row)
        return raw

    def words(self, sentences) -> np.ndarray:
        """Each sentence's word count as the model's tokenizer counts it (punctuation included when
        the model splits it off); sentences that cannot exceed ``max_length`` (fewer bytes than
        that: every word is at least one byte) are not tokenized and count as 0."""
        sentences = [s.encode("utf-8") if isinstance(s, str) else bytes(s) for s in np.asarray(sentences, object)]
        words = np.zeros(len(sentences), np.int64)
        long = [i for i, s in enumerate(sentences) if len(s) > self.max_length]
        if long:
            from vae_tf.tokenize import sentence_lengths

            words[long] = sentence_lengths([sentences[i] for i in long], lowercase=self.lowercase,
                                           split_punctuation=self.split_punctuation,
                                           symbol_clusters=self.symbol_clusters).numpy()
        return words

    def count_long(self, sentences) -> int:
        """How many of ``sentences`` the model truncates (more than ``max_length`` words)."""
        return int(np.sum(self.words(sentences) > self.max_length))

    def _refuse_long(self, sentences: np.ndarray) -> None:
        words = self.words(sentences)
        too_long = np.flatnonzero(words > self.max_length)
        if too_long.size:
            row = int(too_long[0])
            raise SentenceError(f"row {row} has {int(words[row])} words, more than the model's {self.max_length} "
                                f"({too_long.size} of {len(sentences)} sentences are too long); shorten them, or let "
                                "the server truncate them (--long-text truncate)", row)


def is_blank(text: str) -> bool:
    """True when the tokenizer finds no word in ``text``: nothing but its whitespace (RE2's
    ``\\s`` and the Unicode separators, :mod:`vae_tf.tokenize`)."""
    return all(ch in _TOKENIZER_SPACE or unicodedata.category(ch).startswith("Z") for ch in text)


__all__ = ["DEFAULT_LONG_TEXT", "DEFAULT_MAX_BYTES", "DEFAULT_MAX_ROWS", "LONG_TEXT_MODES", "SentenceError",
           "TextLimits", "TextPolicy", "is_blank"]
