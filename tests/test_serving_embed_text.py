"""`vae-tf embed` with a text model (issue 17): sentences from a text file (.txt, .txt.gz) or a
Parquet/CSV column, locally and through the server (REST, gRPC), in file order with the input's
line/row as ``index``, resumable, in flat memory; bad input in one line."""

from __future__ import annotations

import gzip
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tensorflow as tf

from serving.embed import LocalEncoder, extract_embeddings, load_text_source, read_embeddings, read_output_metadata
from serving.testing import TINY_TEXT_MAX_LENGTH, TINY_TEXT_WORDS, drop_version, running_server
from tests.conftest import assert_one_line, interrupted_after
from vae_tf_cli import main

# Line 0 starts with a byte-order mark, lines end in \n or \r\n, blank and whitespace-only lines
# are skipped (their numbers are not in `index`), surrounding spaces are stripped.
LINES = ["\ufeffthe cat sat", "", "a dog ran on the mat\r", "   ", "  big red dog  ", "saw a cat, and a dog.", "\t",
         "the mat"]
SENTENCES = {0: "the cat sat", 2: "a dog ran on the mat", 4: "big red dog", 5: "saw a cat, and a dog.", 7: "the mat"}


@pytest.fixture(scope="module")
def base(text_exports, tmp_path_factory):
    base = tmp_path_factory.mktemp("models")
    drop_version(text_exports, base, 1, name="text")
    return base


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """The same sentences as .txt, .txt.gz, Parquet (with labels, a null and an empty string) and
    CSV (quoted commas and a quoted line break)."""
    root = tmp_path_factory.mktemp("text-inputs")
    raw = "\n".join(LINES).encode("utf-8") + b"\n"
    (root / "s.txt").write_bytes(raw)
    (root / "s.txt.gz").write_bytes(gzip.compress(raw))
    texts = [SENTENCES.get(i) if i in SENTENCES else (None if i % 2 else "") for i in range(len(LINES))]
    pq.write_table(pa.table({"id": list(range(len(LINES))), "text": texts, "label": [i % 3 for i in range(len(LINES))]}),
                   root / "s.parquet", row_group_size=3)
    rows = ['"' + (t or "").replace('"', '""') + '"' for t in texts]
    rows[7] = '"the\nmat"'  # a quoted line break stays inside the sentence (the tokenizer reads it as a space)
    (root / "s.csv").write_text("sentence,n\n" + "".join(f"{r},{i}\n" for i, r in enumerate(rows)))
    return root


def _direct(base, sentences) -> np.ndarray:
    model = tf.saved_model.load(str(base / "text" / "1"))
    return model.signatures["encode"](x=tf.constant(sentences))["embedding"].numpy()


@pytest.mark.slow
def test_text_inputs_embed_every_sentence_in_file_order(base, inputs, tmp_path, capsys):
    want = _direct(base, list(SENTENCES.values()))
    # The model reads at most TINY_TEXT_MAX_LENGTH words, punctuation split off: counted here by a
    # regular expression, not the model's tokenizer ("saw a cat, and a dog." is 8)
    long = sum(len(re.findall(r"\w+|[^\w\s]", s)) > TINY_TEXT_MAX_LENGTH for s in SENTENCES.values())
    assert long == 1
    for name in ("s.txt", "s.txt.gz", "s.parquet", "s.csv"):
        out = tmp_path / f"{name}.parquet"
        assert main(["embed", "--model", str(base / "text"), "--data", str(inputs / name), "-o", str(out),
                     "--chunk-size", "2", "--batch-size", "2"]) == 0
        printed = capsys.readouterr().out
        assert f"({len(SENTENCES)} rows; columns embedding, index" in printed
        # the model truncates silently; the summary says how many it cut
        assert (f"truncated:     {long} of {len(SENTENCES)} sentences have more than the model's {TINY_TEXT_MAX_LENGTH} "
                f"words; each is embedded from its first {TINY_TEXT_MAX_LENGTH}, as the model reads it") in printed
        table = pq.read_table(out).to_pydict()
        assert table["index"] == list(SENTENCES), name  # the line / row each sentence came from
        assert read_output_metadata(out)["index"].startswith("the line (text file) or row (table) of the input each "
                                                             "sentence came from"), name
        np.testing.assert_allclose(np.array(table["embedding"]), want, rtol=1e-5, atol=1e-6, err_msg=name)
        if name == "s.parquet":  # labels from the "label" column, of the rows embedded
            assert table["label"] == [i % 3 for i in SENTENCES]
        else:
            assert "label" not in table
    # --no-labels leaves the label column out
    out = tmp_path / "no-labels.parquet"
    assert main(["embed", "--model", str(base / "text"), "--data", str(inputs / "s.parquet"), "--no-labels", "-o",
                 str(out)]) == 0
    assert pq.read_table(out).column_names == ["embedding", "index"]
    # --split all ("every row, in the input's order") is what a text file gets: accepted, the same rows
    out = tmp_path / "all.parquet"
    assert main(["embed", "--model", str(base / "text"), "--data", str(inputs / "s.txt"), "--split", "all", "-o",
                 str(out)]) == 0
    assert pq.read_table(out).to_pydict()["index"] == list(SENTENCES)


def test_the_data_set_a_model_was_trained_on_is_read_with_its_training_options(text_exports, tmp_path, capsys):
    """`--data text_synthetic` (or no --data) for a model trained on 200 of its sentences with a
    test fraction of 0.2 and seed 3 embeds that run's test split (40 rows: the rows the model never
    trained on), not the data set's default 20,000-sentence corpus split at seed 0 with 0.1 (2,000
    rows); another data set keeps its defaults, and a split setting given wins."""
    import argparse
    import json

    from serving.embed import resolve_embed_data
    from vae_tf.data import load_dataset

    base = tmp_path / "models"
    drop_version(text_exports, base, 1, name="text")
    info_path = base / "text" / "1" / "assets" / "vae_tf_model.json"
    info = json.loads(info_path.read_text())
    info["config"] = {"seed": 3, "data": {"name": "text_synthetic", "options": {"n_samples": 200}, "test_fraction": 0.2,
                                          "val_fraction": 0.1, "max_samples": None}}
    info_path.write_text(json.dumps(info))

    def resolved(**given):
        args = argparse.Namespace(**{"data": None, "path": None, "seed": None, "val_fraction": None,
                                     "test_fraction": None, "max_samples": None, **given})
        options = resolve_embed_data(args, base / "text" / "1")
        return options, (args.data, args.seed, args.val_fraction, args.test_fraction, args.max_samples)

    assert resolved() == ({"n_samples": 200}, ("text_synthetic", 3, 0.1, 0.2, None))
    assert resolved(data="Text-Synthetic", seed=5) == ({"n_samples": 200}, ("Text-Synthetic", 5, 0.1, 0.2, None))
    assert resolved(data="wordnet") == ({}, ("wordnet", 0, 0.1, 0.1, None))
    assert resolve_embed_data(argparse.Namespace(data=None, path=None, seed=None, val_fraction=None, test_fraction=None,
                                                 max_samples=None)) == {}  # a server: digits and the defaults
    expected = load_dataset("text_synthetic", seed=3, n_samples=200, test_fraction=0.2).x_test  # the model's test rows
    for data in (["--data", "text_synthetic"], []):
        out = tmp_path / f"e{len(data)}.npz"
        assert main(["embed", "--model", str(base / "text"), *data, "-o", str(out)]) == 0
        assert f"({len(expected)} rows; columns" in capsys.readouterr().out and len(expected) == 40
        with np.load(out) as archive:
            np.testing.assert_allclose(archive["embedding"], _direct(base, list(expected)), rtol=1e-5, atol=1e-6)


def test_text_through_the_server_equals_local(base, inputs, tmp_path, capsys):
    local, rest, grpc_out = tmp_path / "l.npz", tmp_path / "r.npz", tmp_path / "g.parquet"
    args = ["embed", "--data", str(inputs / "s.txt.gz"), "--chunk-size", "3", "--batch-size", "2"]
    assert main([*args, "--model", str(base / "text"), "-o", str(local)]) == 0
    with running_server(base, "text") as server:
        assert main([*args, "--server", server.rest_url, "--model-name", "text", "-o", str(rest)]) == 0
        assert main([*args, "--server", f"grpc://{server.grpc_target}", "--model-name", "text", "-o", str(grpc_out)]) == 0
    assert "text version 1" in capsys.readouterr().out
    codes, _ = read_embeddings(local)
    np.testing.assert_array_equal(read_embeddings(rest)[0], codes)
    np.testing.assert_array_equal(read_embeddings(grpc_out)[0], codes)
    with np.load(rest) as archive:
        np.testing.assert_array_equal(archive["index"], list(SENTENCES))


def test_text_embed_resumes_from_finished_chunks(base, tmp_path):
    """An interrupted run leaves its chunks; the rerun reads the file on from the first missing one
    (a plain file seeks to a checkpoint, gzip reads on) and the result equals one clean run."""
    lines = [f"{' '.join(TINY_TEXT_WORDS[i % 5:i % 5 + 1 + i % 4])}" if i % 9 else "" for i in range(300)]
    for name, data in (("big.txt", "\n".join(lines).encode()), ("big.txt.gz", gzip.compress("\n".join(lines).encode()))):
        path = tmp_path / name
        path.write_bytes(data)
        encoder = LocalEncoder(base / "text")
        flaky, Interrupted = interrupted_after(encoder, 4)
        out = tmp_path / f"{name}.npz"
        with pytest.raises(Interrupted):
            extract_embeddings(load_text_source(str(path)), flaky, out, chunk_size=40, batch_size=40)
        source = load_text_source(str(path))
        result = extract_embeddings(source, encoder, out, chunk_size=40, batch_size=40)
        kept = [i for i, line in enumerate(lines) if line]
        assert (result.reused_chunks, result.rows) == (3, len(kept))
        clean = extract_embeddings(load_text_source(str(path)), encoder, tmp_path / f"clean-{name}.npz", chunk_size=40,
                                   batch_size=40)
        assert clean.reused_chunks == 0
        with np.load(out) as resumed, np.load(clean.output) as whole:
            np.testing.assert_array_equal(resumed["embedding"], whole["embedding"])
            np.testing.assert_array_equal(resumed["index"], kept)


def test_a_dictionary_encoded_sentence_column_is_read_as_its_strings():
    """pandas writes a category column dictionary-encoded; it was refused as "not sentences"."""
    from serving.text_rows import batch_rows

    plain = pa.array(["a cat", None, " ", "a dog", "a cat"])
    labels = pa.array([1, 2, 3, 4, 5])
    want = [(10, "a cat", 1), (13, "a dog", 4), (14, "a cat", 5)]
    assert batch_rows(plain, labels, 10, "col", "labels") == want
    assert batch_rows(plain.dictionary_encode(), labels, 10, "col", "labels") == want
    with pytest.raises(Exception, match="holds dictionary<values=int64"):
        batch_rows(pa.array([1, 2]).dictionary_encode(), None, 0, "col")


@pytest.mark.slow
def test_text_embed_memory_does_not_grow_with_the_lines(tmp_path):
    """tracemalloc's peak while embedding a text file 4x longer stays flat: the job holds a chunk of
    sentences and checkpoints (one per 4096 sentences), never the file."""
    import tracemalloc

    class Encoder:  # numpy only, so the measure is the embedding job's, not TensorFlow's
        outputs, identity, text = ["embedding"], {"model": "length"}, True

        def __call__(self, x):
            return {"embedding": np.array([[len(s)] for s in x], np.float32)}

    peaks = {}
    for n in (20_000, 80_000):
        path = tmp_path / f"s{n}.txt"
        path.write_text("".join(f"sentence number {i} of the file with some words\n" for i in range(n)))
        tracemalloc.start()
        try:
            result = extract_embeddings(load_text_source(str(path)), Encoder(), tmp_path / f"e{n}.npz",
                                        chunk_size=1000, batch_size=250)
            peaks[n] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert result.rows == n
        with np.load(tmp_path / f"e{n}.npz") as archive:
            assert archive["embedding"][-1, 0] == len(f"sentence number {n - 1} of the file with some words")
    # The file grows by 60 000 lines (~3 MiB as text, ~6 MiB as Python strings); the peak may not.
    assert peaks[80_000] - peaks[20_000] < 256 * 1024, peaks
    assert peaks[80_000] < 2 * 1024 * 1024, peaks


@pytest.mark.parametrize("name, data, said", [
    # Windows Notepad's "Unicode": UTF-16 with \r\n, whose \r byte sits before a NUL, not before \n
    ("notepad.txt", "the cat sat\r\nthe dog ran\r\n".encode("utf-16"), "is UTF-16 (little-endian) text"),
    ("packed.txt", b"\x1f\x8b\x08\x00\r\x03\x00\n", "is gzip-compressed; name it .txt.gz"),
    ("program.txt", b"\x7fELF\x02\r\x00\x01\n", "looks binary (a NUL byte on line 1)"),
    ("latin1.txt", b"caf\xe9\rcr\xeape\n", "is not valid UTF-8 (line 1"),
])
def test_a_text_file_that_is_not_utf8_text_is_named_as_such_before_its_carriage_returns(tmp_path, name, data, said):
    """Each of these holds a \r byte: they were all told to convert old Mac OS line endings with
    tr, which leaves them as broken as they were (vae-tf train named them right)."""
    from serving.text_rows import scan_text_file
    from vae_tf.errors import DataError

    (tmp_path / name).write_bytes(data)
    with pytest.raises(DataError, match=re.escape(said)) as err:
        scan_text_file(tmp_path / name)
    assert "carriage return" not in str(err.value)


def test_a_servers_refusal_of_a_request_row_names_the_file_line_it_came_from(tmp_path):
    """`vae-tf embed --server` with a server that refuses long sentences said "row 227 has 132
    words": a row of its request, not of the file (the sentence was on line 229)."""
    from serving.client import ServingRequestError

    lines = ["a cat sat", "", "the dog ran", "a bird flew", "", "", "one two three four five six", "a fish swam"]
    (tmp_path / "corpus.txt").write_text("\n".join(lines) + "\n")

    class RefusingServer:  # what RemoteEncoder raises for the server's 400
        outputs, identity, text = ["embedding"], {"server": "http://127.0.0.1:1", "model_name": "text"}, True

        def __call__(self, x):
            for i, sentence in enumerate(x):
                if len(str(sentence).split()) > 5:
                    raise ServingRequestError(f"Input x of signature encode: row {i} has 6 words, more than the "
                                              "model's max_length of 5", 400)
            return {"embedding": np.zeros((len(x), 2), np.float32)}

    source = load_text_source(str(tmp_path / "corpus.txt"))
    with pytest.raises(ServingRequestError) as err:
        extract_embeddings(source, RefusingServer(), tmp_path / "e.npz", chunk_size=4, batch_size=2)
    # sentences: 0 a cat (line 1), 1 the dog (3), 2 a bird (4), 3 one two ... (7): the second request's row 1
    assert str(err.value) == ("Input x of signature encode: row 1 has 6 words, more than the model's max_length of 5 "
                              f"(the request's row 1 is line 7 of {tmp_path / 'corpus.txt'})")
    assert err.value.code == 400


def _error(capsys, *argv) -> str:
    assert main(list(argv)) == 2
    err = capsys.readouterr().err.strip()
    assert_one_line(err)
    return err


@pytest.mark.slow
def test_bad_text_input_is_one_line(base, exports, tmp_path, capsys, monkeypatch):
    model = ["--model", str(base / "text"), "-o", str(tmp_path / "out.npz")]
    (tmp_path / "bad.txt").write_bytes(b"fine\nalso fine\nnot \xff fine\n")
    assert "is not valid UTF-8 (line 3, byte 4 of the line" in _error(capsys, "embed", "--data", str(tmp_path / "bad.txt"), *model)
    (tmp_path / "nul.txt").write_bytes(b"fine\n\x00\x01\n")
    assert "looks binary (a NUL byte on line 2)" in _error(capsys, "embed", "--data", str(tmp_path / "nul.txt"), *model)
    (tmp_path / "cr.txt").write_bytes(b"the cat sat\rthe dog ran\r")
    assert "ends its lines with a carriage return alone" in _error(capsys, "embed", "--data", str(tmp_path / "cr.txt"),
                                                                   *model)
    (tmp_path / "mixed.txt").write_bytes(b"the cat sat\r\nthe dog ran\nthe bird\rflew\r")  # files joined by cat
    assert "has a carriage return alone (\\r, an old Mac OS line ending) in line 3" in _error(
        capsys, "embed", "--data", str(tmp_path / "mixed.txt"), *model)
    (tmp_path / "packed.txt").write_bytes(gzip.compress(b"the cat\nthe dog\n"))  # a .gz under a plain name
    assert _error(capsys, "embed", "--data", str(tmp_path / "packed.txt"), *model).endswith(
        "packed.txt is gzip-compressed; name it .txt.gz (vae-tf embed decompresses .gz files)")
    (tmp_path / "wide.txt").write_bytes("the cat\nthe dog\n".encode("utf-16"))
    assert "is UTF-16 (little-endian) text" in _error(capsys, "embed", "--data", str(tmp_path / "wide.txt"), *model)
    (tmp_path / "blank.txt").write_text("\n  \n\n")
    assert "has no sentence" in _error(capsys, "embed", "--data", str(tmp_path / "blank.txt"), *model)
    assert "no such file" in _error(capsys, "embed", "--data", str(tmp_path / "missing.txt"), *model)
    (tmp_path / "ok.txt").write_text("the cat\n")
    assert "drop --split" in _error(capsys, "embed", "--data", str(tmp_path / "ok.txt"), "--split", "train", *model)
    # the defaults' own values given: refused too (an explicit --split test embedded every sentence)
    assert _error(capsys, "embed", "--data", str(tmp_path / "ok.txt"), "--split", "test", "--test-fraction", "0.1",
                  *model).endswith("embedded whole, in file order; drop --split, --test-fraction")
    assert "a text file has one sentence per line" in _error(capsys, "embed", "--data", str(tmp_path / "ok.txt"),
                                                               "--column", "text", *model)
    pq.write_table(pa.table({"a": ["x"], "b": ["y"], "n": [1.5]}), tmp_path / "two.parquet")
    assert "which column holds the sentences?" in _error(capsys, "embed", "--data", str(tmp_path / "two.parquet"), *model)
    assert "has no column 'nope'" in _error(capsys, "embed", "--data", str(tmp_path / "two.parquet"), "--column", "nope",
                                            *model)
    assert "holds double, not sentences" in _error(capsys, "embed", "--data", str(tmp_path / "two.parquet"),
                                                   "--column", "n", *model)
    # a CSV column of numbers, read as text, was embedded as the sentences "0", "1", ... without a
    # word; said (not refused: a CSV's types are guessed from its first rows, and sentences may
    # start with numbers)
    (tmp_path / "ids.csv").write_text("id,text\n0,the cat\n1,the dog\n")
    assert main(["embed", "--data", str(tmp_path / "ids.csv"), "--column", "id", "--model", str(base / "text"), "-o",
                 str(tmp_path / "ids.npz")]) == 0
    assert (f"warning: column 'id' of {tmp_path / 'ids.csv'} looks like int64 (from its first rows), not sentences; "
            "its values are embedded as text: if that is not the sentence column, give it with --column NAME (its "
            "columns are id (int64), text (string))") in capsys.readouterr().err
    assert "must hold integer class indices" in _error(capsys, "embed", "--data", str(tmp_path / "two.parquet"),
                                                       "--column", "a", "--label-column", "b", *model)
    # Data of the other kind, refused in one line before a row reaches the model (the graph's own
    # error is a many-line input-type mismatch)
    assert "'digits' holds images/arrays but this model's encode takes sentences" in _error(
        capsys, "embed", "--data", "digits", *model)
    (tmp_path / "folder").mkdir()
    assert "is a folder, but this text model reads sentences" in _error(
        capsys, "embed", "--data", str(tmp_path / "folder"), *model)
    image_model = ["--model", str(exports), "-o", str(tmp_path / "out.npz")]
    assert "holds sentences but this model's encode takes arrays" in _error(
        capsys, "embed", "--data", str(tmp_path / "ok.txt"), *image_model)
    # a registered data set says what it holds: refused before it loads (no corpus generated)
    from vae_tf.data import text_synthetic

    monkeypatch.setattr(text_synthetic.SyntheticTextGenerator, "sample", lambda *a, **k: pytest.fail("generated"))
    assert "'text_synthetic' holds sentences but this model's encode takes arrays" in _error(
        capsys, "embed", "--data", "text_synthetic", *image_model)
    assert not (tmp_path / "out.npz.parts").exists()  # every one refused before a chunk
