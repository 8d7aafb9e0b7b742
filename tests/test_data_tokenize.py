"""Tests of vae_tf.tokenize: the in-graph tokeniser the text data sets and models share."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from vae_tf import tokenize
from vae_tf.errors import ConfigError


def norm(text: str, **kwargs) -> str:
    return tokenize.normalize(tf.constant([text]), **kwargs).numpy()[0].decode("utf-8")


@pytest.mark.parametrize("raw,expected", [
    ("Hello, World!", "hello , world !"),
    ("  many   spaces\tand\ttabs\n", "many spaces and tabs"),
    ("It's 'quoted', dogs' bones", "it's ' quoted ' , dogs ' bones"),
    ("don’t ‘curly’", "don’t ‘ curly ’"),
    ("a<unk>b <UNK>", "a <unk> b <unk>"),
    ("$5.00 + 3 = 50%", "$ 5 . 00 + 3 = 50 %"),
    ("well-known (rare) «quote» \"x\"", "well - known ( rare ) « quote » \" x \""),
    ("x\u00a0\u00a0y\u2003z", "x y z"),                     # no-break and em spaces are spaces
    ("日本語のテキスト。", "日本語のテキスト 。"),           # CJK punctuation splits, letters stay
    ("", ""),
])
def test_normalize_by_hand(raw, expected):
    assert norm(raw) == expected


@pytest.mark.parametrize("raw,expected", [
    ("ÉTÉ À ZÜRICH", "été à zürich"),                      # Latin-1 letters kept and lowered
    ("ΣΟΦΙΑ Δ", "σοφια δ"),                                 # Greek
    ("ΟΔΟΣ ΣΑ ΟΔΟΣ", "ΟΔΟΣ ΣΑ ΟΔΟΣ".lower()),                # word-final sigma: ς, as Python's str.lower
    ("МОСКВА", "москва"),                                   # Cyrillic
    ("ŁÓDŹ ǅ", "łódź ǆ"),                                   # Latin Extended, a titlecase digraph
    ("Straße", "straße"),                                   # ß has no single-letter upper case
])
def test_normalize_lowercases_unicode(raw, expected):
    assert norm(raw) == expected
    assert norm(raw, lowercase=False) == " ".join(raw.split())


def tokens(text: str, **kwargs) -> list[str]:
    return [t.decode("utf-8") for t in tokenize.split_tokens(tf.constant([text]), **kwargs).to_list()[0]]


# Code points written out: what binds to a symbol (Unicode emoji sequences, UTS #51).
HEART, VS16, ZWJ, THUMB, TONE = "\u2764", "\ufe0f", "\u200d", "\U0001f44d", "\U0001f3fd"
FR = "\U0001f1eb\U0001f1f7"  # regional indicators F, R
FAMILY = ZWJ.join(["\U0001f468", "\U0001f469", "\U0001f467"])
ENGLAND = "\U0001f3f4" + "".join(chr(0xE0000 + ord(c)) for c in "gbeng") + "\U000e007f"


@pytest.mark.parametrize("raw,clusters,split", [
    (f"I {HEART}{VS16} NY", ["i", HEART + VS16, "ny"], ["i", HEART, VS16, "ny"]),
    (f"great {THUMB}{TONE}!", ["great", THUMB + TONE, "!"], ["great", THUMB, TONE, "!"]),
    (f"vive la {FR}", ["vive", "la", FR], ["vive", "la", FR[0], FR[1]]),
    (f"family {FAMILY}", ["family", FAMILY], ["family", "\U0001f468", ZWJ, "\U0001f469", ZWJ, "\U0001f467"]),
    (f"go {ENGLAND} go", ["go", ENGLAND, "go"], ["go", ENGLAND[0], ENGLAND[1:], "go"]),
    (f"{THUMB}{THUMB} {FR}{FR}", [THUMB, THUMB, FR, FR], [THUMB, THUMB, *FR, *FR]),  # no joiner: apart
    ("1\ufe0f\u20e3 caf\u00e9 e\u0301", ["1\ufe0f\u20e3", "caf\u00e9", "e\u0301"],  # marks on letters: as before
     ["1\ufe0f\u20e3", "caf\u00e9", "e\u0301"]),
])
def test_a_symbol_keeps_what_binds_to_it(raw, clusters, split):
    """A variation selector, a skin tone, a zero-width joiner were tokens of their own and a flag
    two ("❤ ️", "🇫 🇷"): in the vocabulary, counted against max_length, decoded apart."""
    assert tokens(raw) == clusters
    assert tokens(raw, symbol_clusters=False) == split  # the tokenizer of earlier models and data sets
    assert tokenize.sentence_lengths([raw]).numpy().tolist() == [len(clusters)]
    assert norm(norm(raw)) == norm(raw)


def test_normalize_settings_and_idempotence():
    raw = "Hello, World!  It's  ÉTÉ."
    assert norm(raw, split_punctuation=False) == "hello, world! it's été."
    assert norm(raw, lowercase=False, split_punctuation=False) == "Hello, World! It's ÉTÉ."
    for kwargs in ({}, {"split_punctuation": False}, {"lowercase": False}):
        once = norm(raw, **kwargs)
        assert norm(once, **kwargs) == once


def test_split_tokens_and_lengths():
    sentences = ["The cat, sat.", "", "one"]
    tokens = tokenize.split_tokens(sentences)
    assert isinstance(tokens, tf.RaggedTensor)
    assert [[t.decode() for t in row] for row in tokens.to_list()] == [["the", "cat", ",", "sat", "."], [], ["one"]]
    assert tokenize.sentence_lengths(sentences).numpy().tolist() == [5, 0, 1]
    assert tokenize.sentence_lengths(sentences, split_punctuation=False).numpy().tolist() == [3, 0, 1]


def test_truncate_keeps_the_first_tokens():
    out = tokenize.truncate(["A b, c d", "Short"], 3).numpy().tolist()
    assert out == [b"a b ,", b"short"]
    assert tokenize.sentence_lengths([o.decode() for o in out]).numpy().tolist() == [3, 1]


def test_tokeniser_runs_in_a_saved_model_without_python(tmp_path):
    module = tf.Module()
    module.tokens = tf.function(
        lambda s: tokenize.split_tokens(s).to_tensor(default_value=tokenize.PAD),
        input_signature=[tf.TensorSpec([None], tf.string)],
    )
    tf.saved_model.save(module, str(tmp_path / "m"))
    loaded = tf.saved_model.load(str(tmp_path / "m"))
    got = loaded.tokens(tf.constant(["Über, alles!", "x"])).numpy().tolist()
    assert got == [["über".encode(), b",", b"alles", b"!"], [b"x", b"<pad>", b"<pad>", b"<pad>"]]


def test_build_vocabulary_order_ties_min_count_and_size():
    sentences = ["b a a", "c b a", "d", "z y"]
    # counts: a 3, b 2, c 1, d 1, y 1, z 1 -> by count, then by token
    assert tokenize.build_vocabulary(sentences) == ["a", "b", "c", "d", "y", "z"]
    assert tokenize.build_vocabulary(sentences, min_count=2) == ["a", "b"]
    assert tokenize.build_vocabulary(sentences, max_size=3) == ["a", "b", "c"]
    assert tokenize.build_vocabulary(sentences, max_size=0) == []
    # Unicode: ties ordered by code point ("e" < "f" < "é"), tokens lower-cased first
    assert tokenize.build_vocabulary(["É f e"]) == ["e", "f", "é"]
    assert tokenize.build_vocabulary(["É f e"], lowercase=False) == ["e", "f", "É"]


def test_build_vocabulary_excludes_specials_and_counts_like_the_model():
    sentences = ["<unk> <unk> <unk> word, word", "<pad> <bos>"]
    # With punctuation splitting "<pad>" is "<", "pad", ">" (not special); "<unk>" stays whole.
    assert tokenize.build_vocabulary(sentences) == ["<", ">", "word", ",", "bos", "pad"]
    assert tokenize.build_vocabulary(sentences, split_punctuation=False) == ["word", "word,"]
    # Counting a large corpus in chunks gives the counts of one pass.
    many = [f"w{i % 7} w{i % 3}" for i in range(70_000)]
    counts = tokenize.word_counts(many)
    expected = {}
    for s in many:
        for t in s.split():
            expected[t] = expected.get(t, 0) + 1
    assert dict(counts) == expected


def test_full_vocabulary_and_fixed_special_ids():
    assert tokenize.SPECIALS == ("<pad>", "<unk>", "<bos>", "<eos>")
    table = tokenize.full_vocabulary(["the", "cat"])
    assert table == ["<pad>", "<unk>", "<bos>", "<eos>", "the", "cat"]
    assert [table.index(t) for t in (tokenize.PAD, tokenize.UNK, tokenize.BOS, tokenize.EOS)] == [0, 1, 2, 3]
    with pytest.raises(ConfigError):
        tokenize.full_vocabulary(["the", "<eos>"])


@pytest.mark.parametrize("kwargs", [{"max_size": -1}, {"max_size": 1.5}, {"min_count": 0}, {"min_count": True}])
def test_build_vocabulary_rejects_bad_sizes(kwargs):
    with pytest.raises(ConfigError):
        tokenize.build_vocabulary(["a"], **kwargs)


@pytest.mark.slow
def test_tokenize_does_not_import_models():
    import subprocess
    import sys

    code = "import sys, vae_tf.tokenize; print(any(m.startswith('vae_tf.models') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_word_counts_of_numpy_object_arrays():
    arr = np.array(["a b", "b"], dtype=object)
    assert dict(tokenize.word_counts(arr)) == {"a": 1, "b": 2}
