"""Tests of ``wordnet`` on tiny data files written here in WordNet 3.0's format (wndb(5WN)); the
real files are used only by the last test, when installed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vae_tf.data import load_dataset
from vae_tf.data import wordnet as wn
from vae_tf.errors import DataError

HEADER = (
    "  1 This software and database is being provided to you, the LICENSEE, by  \n"
    "  2 Princeton University under the following license.  \n"
    "  3   \n"
)
# offset lex_filenum ss_type w_cnt(hex) word lex_id ... p_cnt ptrs ... | gloss
NOUN = HEADER + (
    '00015388 05 n 01 animal 0 002 @ 00004475 n 0000 ~ 01313093 n 0000 | a living organism; '
    '"animals move"; "the dog is an animal"  \n'
    '02084071 05 n 02 dog 0 domestic_dog 0 001 @ 02083346 n 0000 | a domesticated canid; '
    '"the dog barked all night"  \n'
    '04203889 06 n 01 shopping 0 001 @ 03076708 n 0000 | the commodities purchased from stores; '
    '"she loaded her shopping into the car  \n'
)
VERB = HEADER + (
    '01835496 38 v 01 travel 0 001 @ 01831531 v 0000 01 + 02 00 | change location; '
    '"the dog barked all night"; "We travelled to Rome, Italy"  \n'
)
ADJ = HEADER + '00001740 00 a 01 able 0 000 | (usually followed by `to\') having the means; "able to swim"  \n'
ADV = HEADER + '00001837 02 r 01 a_cappella 0 000 | without musical accompaniment  \n'

EXAMPLES = {  # sentence -> lexicographer file of its first occurrence (noun, verb, adj, adv)
    "animals move": 5, "the dog is an animal": 5, "the dog barked all night": 5,
    "she loaded her shopping into the car": 6, "We travelled to Rome, Italy": 38, "able to swim": 0,
}
DEFINITIONS = {
    "a living organism": 5, "a domesticated canid": 5, "the commodities purchased from stores": 6,
    "change location": 38, "(usually followed by `to') having the means": 0,
    "without musical accompaniment": 2,
}


@pytest.fixture
def wordnet_dir(tmp_path) -> Path:
    for name, text in zip(wn.DATA_FILES, (NOUN, VERB, ADJ, ADV)):
        (tmp_path / name).write_text(text, encoding="utf-8")
    return tmp_path


def everything(data):
    x = np.concatenate([data.x_train, data.x_val, data.x_test]).tolist()
    y = np.concatenate([data.y_train, data.y_val, data.y_test]).tolist()
    return dict(zip(x, y)), x


def test_examples_labels_and_deduplication(wordnet_dir):
    data = load_dataset("wordnet", path=str(wordnet_dir), val_fraction=0.0, test_fraction=0.0)
    by_sentence, x = everything(data)
    assert by_sentence == EXAMPLES and len(x) == len(set(x))  # the repeated example kept once
    assert data.metadata["n_examples"] == 7 and data.metadata["n_distinct"] == 6
    assert data.metadata["class_names"][5] == "noun.animal" and len(data.metadata["class_names"]) == 45
    assert data.y_train.dtype == np.int64 and data.metadata["modality"] == "text"
    assert "the" in data.metadata["vocabulary"] and "rome" in data.metadata["vocabulary"]


def test_glosses_option_adds_the_definitions(wordnet_dir):
    data = load_dataset("wordnet", path=str(wordnet_dir), glosses=True, val_fraction=0.0, test_fraction=0.0)
    by_sentence, _ = everything(data)
    assert by_sentence == {**EXAMPLES, **DEFINITIONS}
    assert data.metadata["n_definitions"] == 6


def test_split_gloss_by_hand():
    assert wn.split_gloss('on the back of a horse; "he rode"; "managed to escape" ') == (
        "on the back of a horse", ["he rode", "managed to escape"])
    assert wn.split_gloss("no examples at all") == ("no examples at all", [])
    assert wn.split_gloss('def; "open quote runs to the end ') == ("def", ["open quote runs to the end"])


def test_absent_files_say_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setattr(wn, "DEFAULT_DIR", str(tmp_path / "no-wordnet"))
    message = str(pytest.raises(DataError, load_dataset, "wordnet").value)
    assert "\n" not in message and "apt-get install wordnet-base" in message and "data.path" in message
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / "data.noun").write_text(NOUN)
    message = str(pytest.raises(DataError, load_dataset, "wordnet", path=str(tmp_path / "partial")).value)
    assert "data.verb, data.adj, data.adv" in message and "apt-get install wordnet-base" in message


def test_malformed_data_line_is_named(wordnet_dir):
    (wordnet_dir / "data.adv").write_text(HEADER + "this is not a synset line\n")
    message = str(pytest.raises(DataError, load_dataset, "wordnet", path=str(wordnet_dir)).value)
    assert "data.adv" in message and "line 4" in message and "\n" not in message


def test_seeded_split(wordnet_dir):
    a = load_dataset("wordnet", path=str(wordnet_dir), glosses=True, seed=1, val_fraction=0.25, test_fraction=0.25)
    b = load_dataset("wordnet", path=str(wordnet_dir), glosses=True, seed=1, val_fraction=0.25, test_fraction=0.25)
    assert a.x_test.tolist() == b.x_test.tolist() and a.num_examples == {"train": 6, "val": 3, "test": 3}
    assert not set(a.x_test) & set(a.x_train)


@pytest.mark.skipif(not Path(wn.DEFAULT_DIR, "data.noun").is_file(), reason="wordnet-base not installed")
def test_installed_wordnet_counts():
    data = load_dataset("wordnet", seed=0)
    assert data.metadata["n_examples"] == 48345 and data.metadata["n_distinct"] == 48230
    assert sum(data.num_examples.values()) == 48230
