"""Tests of the text data-set contract (vae_tf.data.text) and of ``text_file``."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from vae_tf.data import load_dataset, open_dataset, validate_array
from vae_tf.errors import DataError


def one_line_error(fn, *args, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert message and "\n" not in message, message
    return message


def write(path, lines, *, compress=False, encoding="utf-8"):
    data = "\n".join(lines).encode(encoding) if isinstance(lines, list) else lines
    path.write_bytes(gzip.compress(data) if compress else data)
    return str(path)


def assert_text_contract(data):
    """What the text models rely on (vae_tf.data.text module docstring)."""
    for split in ("train", "val", "test"):
        x = getattr(data, f"x_{split}")
        assert x.ndim == 1 and x.dtype == object and all(type(s) is str for s in x)
    assert data.data_shape == () and data.value_range is None and data.binary is False
    meta = data.metadata
    assert meta["modality"] == "text" and data.modality == "text"
    vocab = meta["vocabulary"]
    assert isinstance(vocab, list) and len(set(vocab)) == len(vocab)
    assert not set(vocab) & {"<pad>", "<unk>", "<bos>", "<eos>"}
    assert set(meta["tokenizer"]) == {"lowercase", "split_punctuation", "symbol_clusters"}
    json.dumps(meta)  # JSON-serialisable, for run tracking and the export's assets
    from vae_tf import tokenize

    for split in ("train", "val", "test"):
        x = getattr(data, f"x_{split}")
        if len(x):
            lengths = tokenize.sentence_lengths(x.tolist(), **meta["tokenizer"]).numpy()
            assert lengths.max() <= meta["max_length"] and lengths.min() >= 1


SENTENCES = [f"Sentence number {i} is here, ok." for i in range(40)] + [
    "ÉTÉ à Zürich — très « bien »",
    "one two three four five six seven eight nine ten eleven twelve",
]


def test_text_file_round_trip_and_contract(tmp_path):
    lines = ["", "  "] + [s + "  " for s in SENTENCES] + ["", "\t"]
    data = load_dataset("text_file", path=write(tmp_path / "s.txt", lines), seed=0)
    assert_text_contract(data)
    assert data.num_examples == {"train": 34, "val": 4, "test": 4}
    # Blank lines skipped, the rest stripped, each sentence exactly once over the splits.
    got = sorted(np.concatenate([data.x_train, data.x_val, data.x_test]).tolist())
    assert got == sorted(SENTENCES)
    assert data.metadata["n_lines"] == len(SENTENCES) and data.y_train is None
    # No max_length: the longest sentence sets it (12 words, nothing dropped).
    assert data.metadata["max_length"] == 12 and data.metadata["n_long"] == {"train": 0, "val": 0, "test": 0}
    same = load_dataset("text_file", path=str(tmp_path / "s.txt"), seed=0)
    other = load_dataset("text_file", path=str(tmp_path / "s.txt"), seed=1)
    assert same.x_test.tolist() == data.x_test.tolist() and other.x_test.tolist() != data.x_test.tolist()


def test_gzip_crlf_and_bom_read_like_plain_text(tmp_path):
    plain = load_dataset("text_file", path=write(tmp_path / "a.txt", SENTENCES))
    raw = ("\ufeff" + "\r\n".join(SENTENCES) + "\r\n").encode("utf-8")
    packed = load_dataset("text_file", path=write(tmp_path / "a.txt.gz", raw, compress=True))
    for split in ("train", "val", "test"):
        assert getattr(packed, f"x_{split}").tolist() == getattr(plain, f"x_{split}").tolist()
    assert packed.metadata["vocabulary"] == plain.metadata["vocabulary"]


def test_vocabulary_from_the_training_split_only(tmp_path):
    # "common" in every line; "rare<i>" once each, so a rare word of a val/test line is unknown.
    lines = [f"common rare{i}" for i in range(50)]
    data = load_dataset("text_file", path=write(tmp_path / "v.txt", lines), seed=3)
    vocab = data.metadata["vocabulary"]
    train_words = {w for s in data.x_train for w in s.split()}
    held_out = {w for s in np.concatenate([data.x_val, data.x_test]) for w in s.split()} - {"common"}
    assert set(vocab) == train_words and not held_out & set(vocab)
    assert vocab[0] == "common" and vocab[1:] == sorted(vocab[1:])  # most frequent, then ties by token
    # unk rate: val/test have one known and one unknown word per sentence; train has none unknown
    assert data.metadata["unk_rate"] == {"train": 0.0, "val": 0.5, "test": 0.5}
    assert data.metadata["n_words"]["train"] == 2 * len(data.x_train)
    assert data.metadata["vocab_size"] == len(vocab) + 4


def test_vocab_size_counts_the_specials_and_min_count(tmp_path):
    path = write(tmp_path / "c.txt", ["a a a b b c"] * 10 + ["d"])
    data = load_dataset("text_file", path=path, vocab_size=6, val_fraction=0.0, test_fraction=0.0)
    assert data.metadata["vocabulary"] == ["a", "b"] and data.metadata["vocab_size"] == 6
    data = load_dataset("text_file", path=path, min_count=11, val_fraction=0.0, test_fraction=0.0)
    assert data.metadata["vocabulary"] == ["a", "b"]  # a 30, b 20, c 10, d 1


def test_long_sentences_drop_or_truncate(tmp_path):
    lines = ["w " * k for k in range(1, 21)]  # 1..20 tokens
    path = write(tmp_path / "l.txt", lines)
    dropped = load_dataset("text_file", path=path, max_length=5, val_fraction=0.2, test_fraction=0.2)
    kept = np.concatenate([dropped.x_train, dropped.x_val, dropped.x_test])
    assert sorted(len(s.split()) for s in kept) == [1, 2, 3, 4, 5]
    assert sum(dropped.metadata["n_long"].values()) == 15 and dropped.metadata["max_length"] == 5
    assert_text_contract(dropped)
    cut = load_dataset("text_file", path=path, max_length=5, long_sentences="truncate",
                       val_fraction=0.2, test_fraction=0.2)
    allx = np.concatenate([cut.x_train, cut.x_val, cut.x_test])
    assert sorted(len(s.split()) for s in allx) == [1, 2, 3, 4] + [5] * 16
    assert sum(cut.metadata["n_long"].values()) == 15 and cut.num_examples == dropped.num_examples | {
        "train": 12, "val": 4, "test": 4}
    assert_text_contract(cut)
    message = one_line_error(load_dataset, "text_file", path=write(tmp_path / "long.txt", ["a b c"] * 5),
                             max_length=2, val_fraction=0.0, test_fraction=0.0)
    assert "max_length=2" in message and "truncate" in message

    # What `vae-tf train` says and logs of it: 15 of the 20 lines are longer than 5 words
    import io

    from training.train import text_params, warn_long_sentences

    for data, rule, what, fix in ((dropped, "drop", "dropped", "long_sentences=truncate"),
                                  (cut, "truncate", "truncated", "keep them whole")):
        stream = io.StringIO()
        warn_long_sentences(data.metadata, stream)
        line = stream.getvalue()
        assert line.count("\n") == 1 and line.startswith(f"warning: {what} 15 of 20 sentences longer than "
                                                         "max_length=5 words (train ") and fix in line
        params = text_params(data.metadata)
        assert sum(params[f"data.n_long.{s}"] for s in ("train", "val", "test")) == 15
        assert params["data.max_length"] == 5 and params["data.long_sentences"] == rule
        assert params["data.vocab_size"] == len(data.metadata["vocabulary"]) + 4  # <pad>, <unk>, <bos>, <eos>
        assert all(0.0 <= params[f"data.unk_rate.{s}"] <= 1.0 for s in ("train", "val", "test"))
    stream = io.StringIO()
    warn_long_sentences(load_dataset("text_file", path=path).metadata, stream)  # no max_length: nothing dropped
    assert stream.getvalue() == ""  # (and 1..20 words: no long tail either)

    # One 200-word line among 199 of 5 words sets max_length without the option: said, with what
    # 99 % of the sentences need (np.percentile of 199 fives and one 200 is 5)
    tail = load_dataset("text_file", path=write(tmp_path / "tail.txt", ["a b c d e"] * 199 + ["w " * 200]))
    assert tail.metadata["max_length"] == 200 and tail.metadata["length_p99"] == 5
    stream = io.StringIO()
    warn_long_sentences(tail.metadata, stream)
    assert stream.getvalue() == ("warning: max_length is 200 words, the longest sentence's, but 99 % of the sentences "
                                 "have at most 5: batches are padded to 200; set data.options.max_length (e.g. 5) to "
                                 "drop or truncate the few long ones\n")
    assert "length_p99" not in dropped.metadata  # max_length given: nothing set by a long tail


def test_train_warns_when_many_training_words_are_unknown_and_says_why(tmp_path):
    """A vocabulary that leaves most words as <unk> trained without a word said (the run params
    held the rate): the model then writes <unk> and its perplexity looks good. Above 10 % of the
    training split's words, `vae-tf train` says so, and whether min_count or vocab_size did it."""
    import io

    from training.train import warn_unknown_words

    # 30 sentences of 6 distinct words each: every word occurs once, except "common" (30 times)
    lines = [f"common w{i}a w{i}b w{i}c w{i}d w{i}e" for i in range(30)]
    path = write(tmp_path / "rare.txt", lines)

    def said(**options) -> str:
        data = load_dataset("text_file", path=path, val_fraction=0.0, test_fraction=0.0, **options)
        stream = io.StringIO()
        warn_unknown_words(data.metadata, stream)
        return stream.getvalue()

    assert said() == ""  # every training word is in the vocabulary
    # min_count=2: only "common" is kept, 5 of each 6 training words are <unk>
    assert said(min_count=2, vocab_size=1000) == (
        "warning: 83.3 % of the training words are outside the vocabulary of 5 tokens (written <unk>): the model "
        "learns <unk> as a word, writes it, and perplexity counts it as one; only 1 word occurs min_count=2 times "
        "(vocab_size 1000 asked): lower data.options.min_count\n")
    # vocab_size=14: "common" and 9 others of the 150 rare words; 141 of the 180 words are <unk>
    assert said(vocab_size=14).startswith(f"warning: {100 * 141 / 180:.1f} % of the training words are outside the "
                                          "vocabulary of 14 tokens")
    assert said(vocab_size=14).endswith("; raise data.options.vocab_size\n")


def test_pipelines_batch_strings(tmp_path):
    import tensorflow as tf

    data = load_dataset("text_file", path=write(tmp_path / "p.txt", SENTENCES))
    batch = next(iter(data.pipeline("train", 8, shuffle=False)))
    assert batch.dtype == tf.string and batch.shape == (8,)
    assert [b.decode("utf-8") for b in batch.numpy()] == data.x_train[:8].tolist()
    seen = [b.decode("utf-8") for x in data.resumable_pipeline("train", 8, seed=1, epochs=1) for b in x.numpy()]
    assert sorted(seen) == sorted(data.x_train.tolist())  # Unicode survives the round trip
    resumed = [b.decode("utf-8") for x in data.resumable_pipeline("train", 8, seed=1, epochs=1, start_step=2)
               for b in x.numpy()]
    assert resumed == seen[16:]


def test_open_dataset_holds_text_in_memory(tmp_path):
    path = write(tmp_path / "o.txt", SENTENCES)
    eager = load_dataset("text_file", path=path)
    lazy = open_dataset("text_file", path=path)
    rows = lazy.split("test")
    assert rows.data_shape == () and rows[0:len(rows)].tolist() == eager.x_test.tolist()
    assert lazy.metadata["modality"] == "text" and lazy.materialise().x_train.tolist() == eager.x_train.tolist()


@pytest.mark.parametrize("content,fragment", [
    (b"", "is empty"),
    (b"\n  \n\t\n", "is empty"),
    (b"fine line\nanother\x00binary\n", "looks binary (a NUL byte on line 2)"),
    # the byte within its line, as `vae-tf embed` counts it ("bad " is 4 bytes: it was 22, the file's)
    (b"ok\nstill ok\nbad \xff\xfe here\n", "not valid UTF-8 (line 3, byte 4 of the line: invalid start byte); "
                                            "re-save it as UTF-8 (e.g. iconv -f latin1"),
    # a .gz under a plain name (was: "looks binary"); mtime=0 gives every xdist worker the same bytes, so
    # the same test id (gzip stamps the time: workers collecting a second apart disagreed, and xdist stopped)
    (gzip.compress(b"the cat\nthe dog\n", mtime=0), "is gzip-compressed; name it .txt.gz"),
    # Windows' Notepad / PowerShell save UTF-16: named as such, not called binary for its NUL bytes
    (b"\xff\xfe" + "the cat\nthe dog\n".encode("utf-16-le"), "is UTF-16 (little-endian) text"),
    (b"\xfe\xff" + "the cat\n".encode("utf-16-be"), "is UTF-16 (big-endian) text"),
    ("the cat\n".encode("utf-32"), "is UTF-32 (little-endian) text"),
    # old Mac OS line endings: read as one sentence of every line (it failed as "only 1 examples")
    (b"the cat sat\rthe dog ran\ra bird flew\r", "ends its lines with a carriage return alone (\\r, old Mac OS "
                                                "line endings), which would join lines into one sentence; convert them"),
    # ... and such lines after \r\n or \n ones (files joined by cat): they were one 857-word sentence
    (b"the cat sat\r\nthe dog ran\r\na bird\rflew off\rfar\n", "has a carriage return alone (\\r, an old Mac OS "
                                                               "line ending) in line 3, which would join lines"),
])
def test_text_file_bad_files(tmp_path, content, fragment):
    path = write(tmp_path / "bad.txt", content)
    message = one_line_error(load_dataset, "text_file", path=path)
    assert fragment in message and "bad.txt" in message


def test_text_file_bad_paths_and_options(tmp_path):
    assert "needs a path" in one_line_error(load_dataset, "text_file")
    assert "no such file" in one_line_error(load_dataset, "text_file", path=str(tmp_path / "nope.txt"))
    assert "is a folder" in one_line_error(load_dataset, "text_file", path=str(tmp_path))
    (tmp_path / "x.txt.gz").write_bytes(b"not gzip")
    assert "gzip" in one_line_error(load_dataset, "text_file", path=str(tmp_path / "x.txt.gz"))
    good = write(tmp_path / "g.txt", SENTENCES)
    for options, fragment in (({"vocab_size": 4}, "vocab_size"), ({"min_count": 0}, "min_count"),
                              ({"max_length": 0}, "max_length"), ({"long_sentences": "cut"}, "long_sentences"),
                              ({"lowercase": "yes"}, "lowercase"), ({"vocab": 10}, "has no option")):
        assert fragment in one_line_error(load_dataset, "text_file", path=good, **options)
    # A min_count no word reaches: said with the option to change (was "a text model needs a vocabulary")
    message = one_line_error(load_dataset, "text_file", path=good, min_count=100_000)
    assert "no word of the training split occurs min_count=100000 times" in message
    assert "lower data.options.min_count" in message


@pytest.mark.parametrize("x,fragment", [
    (np.array(["fine", 3], dtype=object), "not str (first: entry 1, a int)"),
    (np.array(["fine", b"bytes"], dtype=object), "decode bytes"),
    (np.array(["fine", "  ", ""], dtype=object), "2 empty or whitespace-only sentences (first: entry 1)"),
    (np.array([], dtype=object), "holds no sentences"),
    (np.array(["ok", "bad \udcff"], dtype=object), "entry 1 is not valid Unicode"),
    (np.array([["a"], ["b"]], dtype=object), "not a numeric array"),
])
def test_validate_array_checks_text(x, fragment):
    message = one_line_error(validate_array, x, what="my text")
    assert fragment in message and "my text" in message


def test_validate_array_text_ok_and_likelihood_support():
    assert validate_array(np.array(["a sentence", "another"], dtype=object)) is None
    assert validate_array(["a list", "of str"]) is None
    message = one_line_error(validate_array, np.array(["a"], dtype=object), support=(0.0, 1.0))
    assert "sentences" in message and "text model" in message


def test_custom_text_loader_with_float_factors_passes_checks():
    from vae_tf.data import DATASETS, register_dataset
    from vae_tf.data.splits import DataSplits

    @register_dataset("test_tiny_text")
    def tiny(plan):
        x = np.array(["a b", "c d", "e f"], dtype=object)
        f = np.zeros((3, 2), np.float32)
        return DataSplits("test_tiny_text", x, x[:0], x[:0], factors_train=f, factors_val=f[:0],
                          factors_test=f[:0], value_range=None, metadata={"modality": "text"})

    try:
        assert load_dataset("test_tiny_text").factors_train.dtype == np.float32
    finally:
        DATASETS.pop("test_tiny_text")
