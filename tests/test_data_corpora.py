"""Tests of ``ptb``, ``yahoo``, ``yelp``: files on disk (data.path), a faked download, and the
offline message (the download is made to fail; no test touches the network)."""

from __future__ import annotations

import tarfile

import numpy as np
import pytest

from vae_tf.data import corpora, load_dataset
from vae_tf.errors import DataError

PTB = {
    "train": [" aer banknote berlitz calloway", " pierre <unk> N years old will join the board",
              " mr. <unk> is chairman of <unk> n.v.", " the dog 's bone", " u.s. stocks fell"],
    "valid": [" consumers may want to move", " the N stock"],
    "test": [" no it was n't black monday", " but while the new york stock exchange did n't fall"],
}


def make_corpus(root, corpus, parts, subdir="data"):
    folder = root / subdir
    folder.mkdir(parents=True, exist_ok=True)
    for name, key in zip(corpus.files, ("train", "valid", "test")):
        (folder / name).write_text("\n".join(parts[key]) + "\n", encoding="utf-8")
    return root


def one_line(fn, *args, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_ptb_from_path_keeps_official_splits_and_its_tokens(tmp_path):
    make_corpus(tmp_path, corpora.CORPORA["ptb"], PTB, subdir="simple-examples/data")
    data = load_dataset("ptb", path=str(tmp_path))
    assert data.num_examples == {"train": 5, "val": 2, "test": 2}
    assert sorted(data.x_train.tolist()) == sorted(s.strip() for s in PTB["train"])
    assert data.x_val.tolist() == [s.strip() for s in PTB["valid"]]  # official order
    assert data.x_test.tolist() == [s.strip() for s in PTB["test"]]
    meta = data.metadata
    assert meta["tokenizer"] == {"lowercase": False, "split_punctuation": False, "symbol_clusters": True}
    # pre-tokenised words stay words: "mr.", "n.v.", "'s", "n't", "N" and "<unk>" (not a word)
    vocab = meta["vocabulary"]
    assert {"mr.", "n.v.", "'s", "N", "u.s."} <= set(vocab) and "<unk>" not in vocab
    assert meta["n_words"]["test"] == 6 + 10 and meta["test_split"] == "official" and data.y_train is None


def test_max_samples_is_shared_among_the_official_splits(tmp_path):
    parts = {"train": [f"w{i}" for i in range(80)], "valid": [f"v{i}" for i in range(10)],
             "test": [f"t{i}" for i in range(10)]}
    make_corpus(tmp_path, corpora.CORPORA["ptb"], parts)
    data = load_dataset("ptb", path=str(tmp_path), max_samples=20, seed=2)
    assert data.num_examples == {"train": 16, "val": 2, "test": 2}
    assert set(data.x_val) <= set(parts["valid"]) and set(data.x_train) <= set(parts["train"])
    again = load_dataset("ptb", path=str(tmp_path), max_samples=20, seed=2)
    assert again.x_train.tolist() == data.x_train.tolist()


def test_yelp_labels_from_the_tab_separated_field(tmp_path):
    parts = {"train": ["4\tgreat food !", "0\tawful service", "2\tok", "10\tbest ever"],
             "valid": ["4\tnice"], "test": ["0\tbad place"]}
    make_corpus(tmp_path, corpora.CORPORA["yelp"], parts)
    data = load_dataset("yelp", path=str(tmp_path), val_fraction=0.0)
    assert data.metadata["class_names"] == ["0", "2", "4", "10"]  # numeric order
    by_text = dict(zip(data.x_train.tolist(), data.y_train.tolist()))
    assert by_text == {"great food !": 2, "awful service": 0, "ok": 1, "best ever": 3}
    assert data.x_test.tolist() == ["bad place"] and data.y_test.tolist() == [0]


def test_yahoo_without_labels(tmp_path):
    parts = {"train": ["what is the best way to learn ?", "how do i fix my car"],
             "valid": ["why is the sky blue"], "test": ["where is it"]}
    make_corpus(tmp_path, corpora.CORPORA["yahoo"], parts)
    data = load_dataset("yahoo", path=str(tmp_path))
    assert data.y_train is None and "class_names" not in data.metadata
    assert data.metadata["max_length"] == 8


def test_download_goes_through_keras_get_file(tmp_path, monkeypatch):
    import keras

    # What get_file would leave after downloading and extracting the archive.
    source = make_corpus(tmp_path / "src", corpora.CORPORA["yahoo"], {
        "train": ["a b", "c d"], "valid": ["e"], "test": ["f"]}, subdir="yahoo_data")
    archive = tmp_path / "yahoo.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(source / "yahoo_data", arcname="yahoo_data")
    calls = []

    def fake_get_file(fname, origin, extract):
        calls.append((fname, origin, extract))
        out = tmp_path / "cache" / "extracted"
        with tarfile.open(archive) as tar:
            tar.extractall(out, filter="data")
        return str(out)

    monkeypatch.setattr(keras.utils, "get_file", fake_get_file)
    data = load_dataset("yahoo")
    assert calls == [("vae_tf_yahoo.tar.gz", corpora.CORPORA["yahoo"].origin, True)]
    assert sorted(data.x_train.tolist()) == ["a b", "c d"]


@pytest.mark.parametrize("name", ["ptb", "yahoo", "yelp"])
def test_offline_message_names_the_offline_choices(monkeypatch, name):
    import keras

    def offline(**kwargs):
        raise Exception("URL fetch failure on https://example.invalid: None -- [Errno -3]\nTemporary failure")

    monkeypatch.setattr(keras.utils, "get_file", offline)
    message = one_line(load_dataset, name)
    for fragment in ("offline", "'text_synthetic'", "'wordnet'", "'text_file'", "data.path", "URL fetch failure",
                     corpora.CORPORA[name].origin):
        assert fragment in message


def test_a_web_page_instead_of_the_archive(tmp_path, monkeypatch):
    import keras

    monkeypatch.setattr(keras.utils, "get_file", lambda **kwargs: str(tmp_path / "nothing_extracted"))
    message = one_line(load_dataset, "yelp")
    assert "yelp.train.txt" in message and "data.path" in message and "delete it" in message


def test_bad_paths_and_lines(tmp_path):
    message = one_line(load_dataset, "ptb", path=str(tmp_path))
    assert "ptb.train.txt, ptb.valid.txt, ptb.test.txt" in message
    parts = {"train": ["1\tfine", "2\t  "], "valid": ["1\tx"], "test": ["1\ty"]}
    make_corpus(tmp_path / "y", corpora.CORPORA["yelp"], parts)
    assert "line 2 has a label but no text after a tab" in one_line(load_dataset, "yelp", path=str(tmp_path / "y"))
    assert "has no option" in one_line(load_dataset, "ptb", path=str(tmp_path), lowercase=True)


def test_corpora_loaders_check_text_options(tmp_path):
    make_corpus(tmp_path, corpora.CORPORA["ptb"], PTB)
    assert "vocab_size" in one_line(load_dataset, "ptb", path=str(tmp_path), vocab_size=3)
    data = load_dataset("ptb", path=str(tmp_path), vocab_size=7)
    assert len(data.metadata["vocabulary"]) == 3 and np.all(data.x_val == [s.strip() for s in PTB["valid"]])
