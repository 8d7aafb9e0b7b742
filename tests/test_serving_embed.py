"""`vae-tf embed` (local and through the server, .npz and Parquet, resumable) and `vae-tf probe`;
and the MLflow pyfunc serving every signature."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tensorflow as tf

from serving.embed import (
    EmbedSource,
    LocalEncoder,
    extract_embeddings,
    load_source,
    read_embeddings,
    read_output_metadata,
)
from serving.testing import export_tiny_model, running_server
from tests.conftest import assert_one_line, interrupted_after
from vae_tf.errors import DataError
from vae_tf_cli import main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    base = tmp_path_factory.mktemp("models")
    export_tiny_model(base, "vae", seed=0, latent_dim=8)
    return base


@pytest.fixture(scope="module")
def server(base):
    with running_server(base, "vae") as running:
        yield running


def _embed(*args):
    return main(["embed", "--data", "digits", "--split", "test", *args])


def test_embed_through_the_server_and_locally_is_identical(base, server, tmp_path, capsys, digits):
    local, rest, grpc_out = tmp_path / "local.npz", tmp_path / "rest.parquet", tmp_path / "grpc.npz"
    assert _embed("--model", str(base / "vae"), "-o", str(local), "--chunk-size", "64", "--batch-size", "32") == 0
    out = capsys.readouterr().out
    assert f"embeddings:    {local}" in out and "columns embedding, index, label" in out
    assert _embed("--server", server.rest_url, "--model-name", "vae", "-o", str(rest), "--chunk-size", "64",
                  "--batch-size", "32") == 0
    assert "version 1" in capsys.readouterr().out
    assert _embed("--server", f"grpc://{server.grpc_target}", "--model-name", "vae", "-o", str(grpc_out),
                  "--chunk-size", "1000", "--batch-size", "32", "--outputs", "embedding,z_mean") == 0
    pq.write_table(pa.table({"embedding": [1.0]}), tmp_path / "nothing.parquet")  # another writer's file
    codes_local, labels_local = read_embeddings(local)
    codes_rest, labels_rest = read_embeddings(rest)
    codes_grpc, labels_grpc = read_embeddings(grpc_out)
    x_test, y_test = digits.split("test")
    assert codes_local.shape == (len(x_test), 8) and codes_local.dtype == np.float32
    np.testing.assert_array_equal(codes_rest, codes_local)
    np.testing.assert_array_equal(codes_grpc, codes_local)
    np.testing.assert_array_equal(labels_local, y_test)
    np.testing.assert_array_equal(labels_rest, y_test)
    np.testing.assert_array_equal(labels_grpc, y_test)
    direct = tf.saved_model.load(str(base / "vae" / "1")).signatures["encode"](x=tf.constant(x_test[:32]))
    np.testing.assert_allclose(codes_local[:32], direct["embedding"].numpy(), rtol=1e-6, atol=1e-6)
    with np.load(grpc_out) as archive:
        assert sorted(archive.files) == ["embedding", "index", "label", "z_mean"]
        np.testing.assert_array_equal(archive["index"], np.arange(len(x_test)))
    assert not (tmp_path / "local.npz.parts").exists()  # chunk files are removed once assembled
    # The Parquet output says what it holds: which model and version, which outputs, what `index` is.
    meta = read_output_metadata(rest)
    assert meta["model"] == {"server": server.rest_url, "model_name": "vae", "version": 1}
    assert meta["outputs"] == ["embedding"] and meta["data"]["data"] == "digits" and meta["data"]["split"] == "test"
    assert meta["index"].startswith("the row's position in the 'test' split of the input") and "seed 0" in meta["index"]
    assert meta["writer"].startswith("vae-tf ") and read_output_metadata(tmp_path / "nothing.parquet") is None


def test_probe_reports_above_chance_accuracy(base, tmp_path, capsys):
    train, test = tmp_path / "train.npz", tmp_path / "test.parquet"
    assert _embed("--model", str(base / "vae"), "-o", str(test)) == 0
    assert main(["embed", "--data", "digits", "--split", "train", "--model", str(base / "vae"), "-o", str(train)]) == 0
    capsys.readouterr()
    assert main(["probe", str(train), "--test", str(test), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["num_classes"] == 10 and result["num_test"] == 180
    assert result["test_accuracy"] > 3 * result["majority_accuracy"]  # far above chance (~0.1)
    assert main(["probe", str(train)]) == 0
    printed = capsys.readouterr()
    line = printed.out.strip()
    assert line.startswith("linear probe accuracy: ") and "10 classes" in line and printed.err == ""
    # a test part too small to hold every class cannot be stratified: said (it fell back silently)
    assert main(["probe", str(train), "--test-fraction", "0.005"]) == 0
    printed = capsys.readouterr()
    assert "/ 8 test rows, 10 classes" in printed.out
    assert printed.err.startswith("warning: the split is not stratified (The test_size = 8 should be greater or equal "
                                  "to the number of classes = 10)")


def _killed_after_two_chunks(base, tmp_path):
    """``(source, encoder, output)`` of an embedding run of digits' val split (chunks of 50)
    killed while it encoded its third chunk."""
    source = load_source("digits", split="val")
    encoder = LocalEncoder(base / "vae")
    flaky, Interrupted = interrupted_after(encoder, 3)
    out = tmp_path / "val.npz"
    with pytest.raises(Interrupted):
        extract_embeddings(source, flaky, out, chunk_size=50, batch_size=50)
    return source, encoder, out


def test_embed_resumes_from_finished_chunks(base, tmp_path):
    source, encoder, out = _killed_after_two_chunks(base, tmp_path)
    parts = sorted(p.name for p in (tmp_path / "val.npz.parts").iterdir())
    assert parts == ["chunk-000000.npz", "chunk-000001.npz", "manifest.json"] and not out.exists()
    result = extract_embeddings(source, encoder, out, chunk_size=50, batch_size=50)
    assert (result.reused_chunks, result.chunks, result.rows) == (2, -(-len(source.x) // 50), len(source.x))
    codes, labels = read_embeddings(out)
    np.testing.assert_array_equal(codes, encoder(source.x[:])["embedding"])
    np.testing.assert_array_equal(labels, source.y)


def test_a_resume_after_the_input_file_changed_is_refused(base, tmp_path, capsys):
    """The manifest recorded the path and the row count only: an .npy rewritten with the same
    shape between a kill and the rerun was resumed, its first chunks embeddings of the old rows."""
    import os

    x = np.random.default_rng(0).random((120, 8, 8), dtype=np.float32)
    data = tmp_path / "x.npy"
    np.save(data, x)
    source = load_source("npy", path=str(data), split="all")
    encoder = LocalEncoder(base / "vae")
    flaky, Interrupted = interrupted_after(encoder, 2)
    out = tmp_path / "x.parquet"
    with pytest.raises(Interrupted):
        extract_embeddings(source, flaky, out, chunk_size=50, batch_size=50)
    np.save(data, x[::-1])  # same shape, other rows
    stat = os.stat(data)
    os.utime(data, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a later time, however coarse the clock
    same = ("--chunk-size", "50", "--batch-size", "50")
    assert _embed("--model", str(base / "vae"), "--data", str(data), "--split", "all", "-o", str(out), *same) == 2
    err = capsys.readouterr().err.strip()
    assert_one_line(err)
    assert err == (f"error: {out}.parts holds chunks of an earlier content of the input (a file's size or "
                   "modification time has changed since); pass --overwrite to embed it anew")
    # other settings are named
    assert _embed("--model", str(base / "vae"), "--data", str(data), "--split", "all", "-o", str(out),
                  "--chunk-size", "40", "--batch-size", "50") == 2
    assert "other settings (--chunk-size, input file contents); rerun" in capsys.readouterr().err
    assert _embed("--model", str(base / "vae"), "--data", str(data), "--split", "all", "-o", str(out),
                  "--overwrite") == 0


def test_chunks_of_a_version_that_did_not_record_the_input_files_resume(base, tmp_path):
    """A .parts folder left by the vae-tf before the input fingerprint has no "input" in its
    manifest: it resumes as it would have (it was refused as if the input had changed)."""
    source, encoder, out = _killed_after_two_chunks(base, tmp_path)
    manifest = tmp_path / "val.npz.parts" / "manifest.json"
    written = json.loads(manifest.read_text())
    assert written["input"] is None  # a registered data set: no files of the user's
    del written["input"]
    manifest.write_text(json.dumps(written))
    assert extract_embeddings(source, encoder, out, chunk_size=50, batch_size=50).reused_chunks == 2


def test_embed_refuses_to_mix_settings(base, tmp_path, capsys):
    out = tmp_path / "e.npz"
    parts = tmp_path / "e.npz.parts"
    parts.mkdir()
    (parts / "manifest.json").write_text(json.dumps({"format": 1, "chunk_size": 7}))
    assert _embed("--model", str(base / "vae"), "-o", str(out)) == 2
    err = capsys.readouterr().err.strip()
    assert_one_line(err)
    assert "other settings" in err and "--overwrite" in err
    assert _embed("--model", str(base / "vae"), "-o", str(out), "--overwrite") == 0


@pytest.fixture(scope="module")
def data_files(tmp_path_factory):
    """An unlabelled .npy and a labelled .npz (stored by np.savez) of 8x8 uint8 images."""
    root = tmp_path_factory.mktemp("embed-data")
    rng = np.random.default_rng(3)
    np.save(root / "x.npy", rng.integers(0, 256, (230, 8, 8), dtype=np.uint8))
    np.savez(root / "xy.npz", x=rng.integers(0, 256, (170, 8, 8), dtype=np.uint8), labels=np.arange(170) % 4)
    return root


def test_the_summary_of_every_row_of_a_data_set_says_how_its_rows_are_ordered(data_files):
    """`--split all` of a registered data set gives its train, val and test rows one after another
    (not the order of its own source, e.g. load_digits()); the summary said "in its order"."""
    from serving.embed import split_summary

    digits = load_source("digits", split="all")
    assert split_summary(digits, len(digits.x), as_trained=False) == (
        "every row of digits (1797): its train, val and test rows one after another, index that position")
    own = load_source(str(data_files / "x.npy"), split="all", max_samples=100)
    assert split_summary(own, len(own.x), as_trained=False) == (
        f"every row of {data_files / 'x.npy'} (100; max_samples 100), in file order; index is the row of the file")


@pytest.mark.parametrize("name", ["x.npy", "xy.npz"])
def test_file_embeddings_equal_the_eager_loaders_for_every_split(base, data_files, tmp_path, name):
    """The lazy source (rows read a chunk at a time) writes exactly what embedding the arrays of
    load_dataset writes (what vae-tf embed did before it was lazy), for every split."""
    from vae_tf.data import load_dataset

    encoder = LocalEncoder(base / "vae")
    eager = load_dataset(name.split(".")[1], path=str(data_files / name), seed=1)
    for split in ("train", "val", "test", "all"):
        source = load_source(str(data_files / name), split=split, seed=1)
        if split == "all":  # every row of the file, in file order (the file read independently of the loaders)
            stored = np.load(data_files / name)
            pixels, labels = (stored, None) if name.endswith(".npy") else (stored["x"], stored["labels"])
            x, y = (pixels[..., None] / 255.0).astype(np.float32), labels
            np.testing.assert_array_equal(source.positions(0, len(x)), np.arange(len(x)))
        else:
            x, y = eager.split(split)
        np.testing.assert_array_equal(source.x[:], x)
        if y is not None:
            np.testing.assert_array_equal(source.y, y)
        old = EmbedSource(x, y, source.description)
        lazy_out, eager_out = tmp_path / f"{split}-lazy.npz", tmp_path / f"{split}-eager.npz"
        extract_embeddings(source, encoder, lazy_out, chunk_size=37, batch_size=16, outputs=("embedding", "z_mean"))
        extract_embeddings(old, encoder, eager_out, chunk_size=37, batch_size=16, outputs=("embedding", "z_mean"))
        with np.load(lazy_out) as got, np.load(eager_out) as want:
            assert sorted(got.files) == sorted(want.files) == sorted(
                ["embedding", "z_mean", "index"] + ([] if y is None else ["label"]))
            for key in want.files:
                np.testing.assert_array_equal(got[key], want[key])
            assert len(got["embedding"]) == len(x)


def test_split_all_embeds_a_file_in_file_order_with_index_its_row(base, tmp_path, capsys):
    """`--split all` embedded train, then val, then test: the file's rows shuffled, with `index`
    the position in that concatenation, so a user joining the output on `index` to their own
    file's rows matched the wrong rows. It now embeds every row in file order (an .npz's x_test
    after its x_train) and `index` is the row of the file; of a sample (max_samples), the sampled
    rows in file order."""
    rng = np.random.default_rng(5)
    x, x_test = rng.random((60, 8, 8, 1)).astype(np.float32), rng.random((15, 8, 8, 1)).astype(np.float32)
    y, y_test = np.arange(60) % 3, np.arange(15) % 3 + 3
    np.savez(tmp_path / "official.npz", x_train=x, y_train=y, x_test=x_test, y_test=y_test)
    out = tmp_path / "all.npz"
    assert _embed("--model", f"{base}/vae", "--data", str(tmp_path / "official.npz"), "--split", "all",
                  "--chunk-size", "16", "-o", str(out)) == 0
    printed = capsys.readouterr().out
    assert f"data:          every row of {tmp_path / 'official.npz'} (75), in file order; index is the row of the file" \
        in printed, printed
    every, labels = np.concatenate([x, x_test]), np.concatenate([y, y_test])
    with np.load(out) as got:
        np.testing.assert_array_equal(got["index"], np.arange(75))
        np.testing.assert_array_equal(got["label"], labels)
        np.testing.assert_allclose(got["embedding"], LocalEncoder(base / "vae")(every)["embedding"], rtol=1e-5,
                                   atol=1e-6)
    # The default split of a file that is not the model's training data: its test split, said so
    assert main(["embed", "--model", f"{base}/vae", "--data", str(tmp_path / "official.npz"),
                 "-o", str(tmp_path / "test.npz")]) == 0
    n_test = len(np.load(tmp_path / "test.npz")["index"])
    assert 0 < n_test < 75
    assert (f"data:          split test of {tmp_path / 'official.npz'}: {n_test} of its 75 rows (seed 0, val/test "
            "fractions 0.1/0.1); --split all embeds every row") in capsys.readouterr().out
    source = load_source(str(tmp_path / "official.npz"), split="all", max_samples=30)
    index = source.positions(0, len(source.x))
    assert len(index) == len(source.x) and np.all(np.diff(index) > 0) and index[-1] < 75
    np.testing.assert_array_equal(source.x[:], every[index])
    np.testing.assert_array_equal(source.y, labels[index])


def test_embed_of_a_bad_file_is_the_loaders_one_line_error(base, tmp_path, capsys):
    from vae_tf.data import load_dataset

    bad = np.random.default_rng(0).random((40, 8, 8))
    bad[29, 3, 4] = np.nan
    np.save(tmp_path / "bad.npy", bad)
    with pytest.raises(Exception) as info:
        load_dataset("npy", path=str(tmp_path / "bad.npy"))
    for split in ("test", "all"):
        assert main(["embed", "--data", str(tmp_path / "bad.npy"), "--split", split, "--model", str(base / "vae"),
                     "-o", str(tmp_path / "out.npz")]) == 2
        err = capsys.readouterr().err.strip()
        assert_one_line(err)
        assert err == f"error: {info.value}" and "1 NaN and 0 Inf values (first at index (29, 3, 4)" in err
    assert not (tmp_path / "out.npz.parts").exists()  # refused before any chunk


def test_embed_memory_does_not_grow_with_the_rows(tmp_path, monkeypatch):
    """tracemalloc's peak while embedding --split all of a .npy file 4x larger grows by the row
    indices (8 bytes a row), not by the data (4 KiB a row as float32); no read from the file
    takes more than one chunk of rows."""
    import tracemalloc

    from vae_tf.data import rows as rows_mod

    monkeypatch.setattr(rows_mod, "BLOCK_BYTES", 64 * 1024)  # both files span many scan blocks

    class Encoder:  # numpy only, so the measure is the embedding job's, not TensorFlow's
        outputs, identity = ["embedding"], {"model": "mean"}

        def __call__(self, x):
            return {"embedding": x.reshape(len(x), 16, -1).mean(axis=2)}

    chunk = 128
    largest = []
    original = rows_mod.NpyFileRows.take

    def counting_take(self, rows):
        largest.append(len(rows))
        return original(self, rows)

    peaks = {}
    for n in (2_000, 8_000):
        path = tmp_path / f"x{n}.npy"
        np.save(path, np.random.default_rng(n).integers(0, 256, (n, 32, 32), dtype=np.uint8))
        largest.clear()
        rows_mod.NpyFileRows.take = counting_take
        tracemalloc.start()
        try:
            result = extract_embeddings(load_source(str(path), split="all"), Encoder(), tmp_path / f"e{n}.npz",
                                        chunk_size=chunk, batch_size=64)
            peaks[n] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
            rows_mod.NpyFileRows.take = original
        assert result.rows == n and largest and max(largest) <= chunk
        codes, _ = read_embeddings(tmp_path / f"e{n}.npz")
        assert codes.shape == (n, 16)
    growth = peaks[8_000] - peaks[2_000]
    assert growth < 0.05 * 6_000 * 32 * 32 * 4, peaks  # eager: > 2x the float32 growth
    assert peaks[8_000] < 2 * 1024 * 1024, peaks  # a few chunks (512 KiB as float32); the data: 32 MiB


@pytest.mark.parametrize("args,message", [
    (["--model", "MISSING", "-o", "x.npz"], "no SavedModel at MISSING"),
    (["--model", "{base}/vae", "-o", "x.csv"], "must end in .npz or .parquet"),
    (["--model", "{base}/vae", "-o", "x.npz", "--outputs", "nope"], "encode has no output(s) nope"),
    (["--model", "{base}/vae", "-o", "x.parquet", "--outputs", "embedding,z_mean,embedding"],
     "--outputs names ['embedding'] more than once"),
    (["--server", "http://127.0.0.1:{port}", "-o", "x.npz"], "cannot reach http://127.0.0.1:"),
    (["--server", "127.0.0.1:8501", "-o", "x.npz"], "needs a scheme"),
    (["--server", "{rest}", "--model-name", "other", "-o", "x.npz"],
     "HTTP 404: Servable not found for request: Latest(other) (the server serves no model named 'other': give "
     "the name it serves with --model-name"),
    (["--server", "grpc://{grpc}", "-o", "x.npz"],  # no --model-name: TF Serving's default name, model
     "NOT_FOUND: Servable not found for request: Latest(model) (the server serves no model named 'model'"),
])
def test_embed_errors_are_one_line(base, server, tmp_path, capsys, monkeypatch, args, message):
    import socket

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MODEL_NAME", raising=False)  # the name --server uses without --model-name
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        free = sock.getsockname()[1]
    args = [a.format(base=base, port=free, rest=server.rest_url, grpc=server.grpc_target) for a in args]
    assert _embed(*args) == 2
    err = capsys.readouterr().err.strip()
    assert_one_line(err)
    assert err.startswith("error: ") and message in err, err


def test_a_path_embed_cannot_read_is_named_with_the_inputs_the_model_can_take(base, text_exports, tmp_path, capsys,
                                                                                monkeypatch):
    """An existing file of a kind embed does not read was called an "unknown data set" followed by
    the registry; a missing file offered a text model .npz/.npy files and image folders."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.log").write_text("the cat sat\n")
    image, text = ["--model", f"{base}/vae"], ["--model", str(text_exports)]
    for model, data, said in [
        (image, "notes.log", "'notes.log' is not a kind of file vae-tf embed reads for this image model; give an "
                             ".npz/.npy file or an image folder, or a registered name (digits, "),
        (image, "missing", "unknown data set or missing file 'missing'; give an .npz/.npy file or an image folder "
                           "that exists, or a registered name (digits, "),
        (text, "notes.log", "'notes.log' is not a kind of file vae-tf embed reads for this text model; give a "
                            ".txt/.txt.gz file (one sentence per line) or a .parquet/.csv file with a column of "
                            "sentences, or a registered name ("),
        (text, "missing", "unknown data set or missing file 'missing'; give a .txt/.txt.gz file (one sentence per "
                          "line) or a .parquet/.csv file with a column of sentences that exists, or a registered name ("),
    ]:
        assert main(["embed", *model, "--data", data, "-o", "e.npz"]) == 2
        err = capsys.readouterr().err.strip()
        assert_one_line(err)
        assert err.startswith(f"error: {said}"), err
        names = err.rsplit("(", 1)[1]
        assert ("text_synthetic" in names and "digits" not in names) if model is text else \
            ("digits" in names and "text_synthetic" not in names), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.log"]


def test_data_of_another_shape_or_a_folder_for_output_is_refused_before_anything_is_written(base, tmp_path, capsys):
    """Rows of another shape than the model's failed deep in the graph (a 200-line traceback) and
    left the output's .parts folder behind; an existing folder as -o failed after encoding."""
    np.savez(tmp_path / "small.npz", x=np.zeros((20, 4, 4, 1), np.float32))
    assert _embed("--model", f"{base}/vae", "--data", str(tmp_path / "small.npz"), "-o", str(tmp_path / "e.npz")) == 2
    err = capsys.readouterr().err.strip()
    assert_one_line(err)
    assert "has rows of shape (4, 4, 1) but the model encodes (8, 8, 1)" in err
    (tmp_path / "adir.npz").mkdir()
    assert _embed("--model", f"{base}/vae", "-o", str(tmp_path / "adir.npz"), "--overwrite") == 2
    assert "adir.npz is a folder; give -o a file name" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir.npz", "small.npz"]  # no output, no .parts
    # values outside the support of the model's (Bernoulli) likelihood, which training refuses
    big = np.full((20, 8, 8, 1), 0.5, np.float32)
    big[13, 2, 3, 0], big[17] = 1.5, 160.0
    np.savez(tmp_path / "big.npz", x=big)
    assert _embed("--model", f"{base}/vae", "--data", str(tmp_path / "big.npz"), "--split", "all",
                  "-o", str(tmp_path / "b.npz")) == 2
    err = capsys.readouterr().err.strip()
    assert_one_line(err)
    # with --split all, "row" is the row of the file, as the output's `index` column is
    assert f"row 13 of {tmp_path / 'big.npz'} (split all) has values outside [0, 1], which the model's " \
           "bernoulli likelihood reads (rows 0-19 lie in [0.5, 160]); scale the data" in err
    # of a split, the row in the split (the splits are shuffled), as in that output's `index` column
    assert _embed("--model", f"{base}/vae", "--data", str(tmp_path / "big.npz"), "--split", "train",
                  "-o", str(tmp_path / "b.npz")) == 2
    in_split = load_source(str(tmp_path / "big.npz"), split="train").x[:]
    first = min(np.flatnonzero(in_split.reshape(len(in_split), -1).max(axis=1) > 1))
    assert f"row {first} of {tmp_path / 'big.npz'} (split train) has values outside [0, 1]" in capsys.readouterr().err
    # no output, and no .parts folder: a run that failed before its first chunk has nothing to resume
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir.npz", "big.npz", "small.npz"]
    # a file given twice (it said "unknown data set 'good.npz'" of a file that exists)
    np.savez(tmp_path / "good.npz", x=np.full((20, 8, 8, 1), 0.5, np.float32))
    assert _embed("--model", f"{base}/vae", "--data", str(tmp_path / "good.npz"), "--path", str(tmp_path / "big.npz"),
                  "-o", str(tmp_path / "g.npz")) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: --data {tmp_path / 'good.npz'} is a file and --path {tmp_path / 'big.npz'} another; give the file "
        "alone (--data FILE), or the kind and the file (--data npz --path FILE)")
    # the input as the output: --overwrite, which "exists" offers, replaced the data with its embeddings
    good = tmp_path / "good.npz"
    before = good.read_bytes()
    assert _embed("--model", f"{base}/vae", "--data", str(good), "--split", "all", "-o", str(good), "--overwrite") == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: {good} is the input file: the embeddings would replace the data; choose another --output")
    assert good.read_bytes() == before


def test_string_labels_keep_their_names_in_the_output(base, tmp_path):
    """An .npz of string labels is written with their codes (0, 1, ...): the names were in no
    output, so the label column could not be read back."""
    import pyarrow.parquet as pq

    from serving.embed import read_output_metadata

    names = np.array(["dog", "cat", "emu", "cat"] * 5)
    np.savez(tmp_path / "s.npz", x=np.full((20, 8, 8, 1), 0.5, np.float32), y=names)
    out = tmp_path / "s.parquet"
    assert _embed("--model", f"{base}/vae", "--data", str(tmp_path / "s.npz"), "--split", "all", "-o", str(out)) == 0
    meta = read_output_metadata(out)["data"]
    assert meta["class_names"] == ["cat", "dog", "emu"]  # sorted, as the codes are given
    labels = pq.read_table(out).to_pydict()["label"]
    assert [meta["class_names"][c] for c in labels] == list(names)
    with pytest.raises(DataError, match=r"s\.npz is not a Parquet file: only a \.parquet output"):
        read_output_metadata(tmp_path / "s.npz")
    # ... but they are not part of what a resumed run must match: a run interrupted before they
    # were recorded (its manifest without them) resumes
    source = load_source(str(tmp_path / "s.npz"), split="all")
    encoder = LocalEncoder(base / "vae")
    flaky, Interrupted = interrupted_after(encoder, 3)
    with pytest.raises(Interrupted):
        extract_embeddings(source, flaky, tmp_path / "r.npz", chunk_size=5, batch_size=5)
    manifest = json.loads((tmp_path / "r.npz.parts" / "manifest.json").read_text())
    assert "class_names" not in manifest["source"] and "class_names" in source.description
    assert extract_embeddings(source, encoder, tmp_path / "r.npz", chunk_size=5, batch_size=5).reused_chunks == 2


def test_probe_errors_are_one_line(tmp_path, capsys):
    np.savez(tmp_path / "nolabels.npz", embedding=np.zeros((10, 2), np.float32))
    assert main(["probe", str(tmp_path / "nolabels.npz")]) == 2
    assert "has no labels" in capsys.readouterr().err
    assert main(["probe", str(tmp_path / "missing.npz")]) == 2
    err = capsys.readouterr().err.strip()
    assert_one_line(err)
    assert "no such file" in err
    for column in ("label", "index"):  # a probe on the labels themselves scored 1.0
        assert main(["probe", str(tmp_path / "nolabels.npz"), "--column", column]) == 2
        assert f"--column {column} is the row's" in capsys.readouterr().err


def test_probe_reads_a_list_column_that_pandas_or_spark_wrote_and_refuses_ragged_or_empty_codes(tmp_path, capsys):
    """A ``list<float>`` column (pandas' lists of floats, Spark's ``array<float>``) crashed the
    probe with NumPy's "setting an array element with a sequence" traceback."""
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 40)
    codes = (rng.normal(size=(80, 3)) + 3 * labels[:, None]).astype(np.float32)  # separable: far apart means
    lists = pa.array([row.tolist() for row in codes], pa.list_(pa.float32()))
    pq.write_table(pa.table({"embedding": lists, "label": labels}), tmp_path / "lists.parquet")
    read, read_labels = read_embeddings(tmp_path / "lists.parquet")
    np.testing.assert_array_equal(read, codes)
    np.testing.assert_array_equal(read_labels, labels)
    assert main(["probe", str(tmp_path / "lists.parquet")]) == 0
    assert "accuracy" in capsys.readouterr().out
    bad = {"ragged": (pa.array([[0.0, 1.0]] * 79 + [[0.0]], pa.list_(pa.float32())),
                      "column 'embedding' has lists of different lengths (2 in row 0, 1 in row 79); every row's"),
           "nulls": (pa.array([[0.0, 1.0]] * 5 + [None] * 75, pa.list_(pa.float32())),
                     "column 'embedding' is empty (null) in row 5 (75 rows are); drop or fill those rows"),
           "words": (pa.array(["a"] * 80), "'embedding' holds object values, not numbers; name an encode output")}
    for name, (column, said) in bad.items():
        pq.write_table(pa.table({"embedding": column, "label": labels}), tmp_path / f"{name}.parquet")
        assert main(["probe", str(tmp_path / f"{name}.parquet")]) == 2
        err = capsys.readouterr().err.strip()
        assert_one_line(err)
        assert said in err, err


def test_pyfunc_serves_every_signature(base, tmp_path, monkeypatch, capfd):
    import mlflow

    from training.tracking import log_saved_model, use_tracking

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", raising=False)  # a library caller's process
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    use_tracking(uri)
    mlflow.set_experiment("pyfunc-test")
    capfd.readouterr()
    with mlflow.start_run():
        model_uri, version = log_saved_model(base / "vae" / "1", (8, 8, 1), "vae")
    assert version is not None
    # logging copies the SavedModel through MLflow's download code: no "Downloading artifacts" bar
    assert "Downloading artifacts" not in capfd.readouterr().err
    assert "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR" not in os.environ  # the caller's environment as it was
    model = mlflow.pyfunc.load_model("models:/vae/1")
    signatures = tf.saved_model.load(str(base / "vae" / "1")).signatures
    x = np.random.default_rng(0).random((3, 8, 8, 1)).astype(np.float32)
    encoded = model.predict(x)
    np.testing.assert_allclose(encoded["embedding"], signatures["encode"](x=tf.constant(x))["embedding"].numpy(),
                               rtol=1e-6)
    decoded = model.predict({"z": encoded["z_mean"]}, params={"signature": "decode"})
    assert set(decoded) == {"x_mean", "x_sample"} and decoded["x_mean"].shape == (3, 8, 8, 1)
    import pandas as pd

    # a column of arrays, one per row: MLflow's dataframe_records [{"x": [...]}, ...] (it said "got [3, 1]")
    for cells in (list(x.reshape(3, 64)), [row.tolist() for row in x]):
        np.testing.assert_array_equal(model.predict(pd.DataFrame({"x": cells}))["embedding"], encoded["embedding"])
    rec = model.predict(x.reshape(3, 64).tolist(), params={"signature": "reconstruct"})  # flattened rows
    np.testing.assert_allclose(rec["x_mean"], signatures["reconstruct"](x=tf.constant(x))["x_mean"].numpy(), rtol=1e-6)
    drawn = model.predict(np.array([[1, 2], [1, 2]]), params={"signature": "sample"})
    np.testing.assert_array_equal(drawn["z"][0], drawn["z"][1])
    np.testing.assert_array_equal(drawn["z"], signatures["sample"](seed=tf.constant([[1, 2], [1, 2]]))["z"].numpy())
    with pytest.raises(ValueError, match="is not served by the pyfunc model"):
        model.predict(x, params={"signature": "nope"})
    with pytest.raises(ValueError, match="whole-number seed"):
        model.predict(np.array([[1.5, 2]]), params={"signature": "sample"})
    # Seeds past int32 were wrapped (2**32 + 5 drew seed 5's sample), as floats or integers
    for seeds in (np.array([[2**32 + 5, 7]]), np.array([[2.0**31, 7.0]]), [[-2**31 - 1, 7]]):
        with pytest.raises(ValueError, match=r"^signature 'sample' needs seed values that fit int32 "
                                             r"\(\[-2147483648, 2147483647\]\), got -?\d+$"):
            model.predict(seeds, params={"signature": "sample"})
    assert model.predict([[2**31 - 1, -2**31]], params={"signature": "sample"})["z"].shape == (1, 8)
    with pytest.raises(ValueError, match=r"^signature 'encode' needs a batch of x: send a list of rows \(e\.g\. "
                                         r"\[value\]\), not a single value$"):
        model.predict(np.float32(0.5))  # it said "got no x rows"
    with pytest.raises(ValueError, match=r"^signature 'encode' got no x rows; send at least one$"):
        model.predict(np.zeros((0, 8, 8, 1), np.float32))  # NumPy's "cannot reshape array of size 0"
    with pytest.raises(ValueError, match=r"needs z with shape \[batch, 8\]"):
        model.predict(np.zeros((2, 3)), params={"signature": "decode"})
    # NaN / Inf came back as ordinary-looking codes, 0-255 pixels were encoded as if in [0, 1]
    bad = x.copy()
    bad[1, 2, 3, 0] = np.nan
    with pytest.raises(ValueError, match=r"signature 'encode': x row 1 has NaN or Inf values \(1 of 3 rows do\); "
                                         r"send finite numbers"):
        model.predict(bad)
    with pytest.raises(ValueError, match=r"signature 'reconstruct': x row 0 has values outside \[0, 1\], which the "
                                         r"model's bernoulli likelihood reads"):
        model.predict(x * 255.0, params={"signature": "reconstruct"})
    with pytest.raises(ValueError, match=r"signature 'decode': z row 1 has NaN or Inf values"):
        model.predict({"z": np.stack([np.zeros(8), np.full(8, np.inf)])}, params={"signature": "decode"})
    assert model.predict({"z": np.full((1, 8), 40.0)}, params={"signature": "decode"})["x_mean"].shape == (1, 8, 8, 1)
    # a tensor of another name was taken as the input (as TF Serving refuses it: "Missing named input")
    with pytest.raises(ValueError, match=r"^input has tensor\(s\) 'y' but this signature takes 'x'; send \{'x': \.\.\.\} "):
        model.predict({"y": x})
    # ... and a tensor beside the one it takes was dropped without a word
    with pytest.raises(ValueError, match=r"^input has tensor\(s\) 'y' that this signature does not take \(it takes "
                                         r"'x' alone\); leave them out"):
        model.predict({"x": x, "y": x})


def test_the_pyfunc_model_file_runs_without_mlflows_type_hint_advice():
    """MLflow executes training/pyfunc_model.py wherever the model is logged or loaded; defining
    the model there printed MLflow's yellow "Add type hints to the `predict` method" warning to
    every user of `mlflow.pyfunc.load_model`. Other warnings still show."""
    import runpy
    import warnings

    warnings.onceregistry.clear()  # MLflow shows that advice "once" a process
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        namespace = runpy.run_path(str(REPO / "training" / "pyfunc_model.py"))
        warnings.warn("another warning", UserWarning)
    messages = [str(w.message) for w in shown]
    assert "VaeTfSavedModel" in namespace and "another warning" in messages
    assert not [m for m in messages if "type hints" in m], messages


def test_a_users_file_is_the_trained_data_when_it_is_the_same_file(tmp_path, monkeypatch):
    """The model's split settings apply to its own file (any spelling of its path), not to
    another file with the same loader."""
    from serving.embed import _same_data

    np.save(tmp_path / "mine.npy", np.zeros((4, 2, 2, 1), np.float32))
    np.save(tmp_path / "other.npy", np.zeros((4, 2, 2, 1), np.float32))
    trained = {"name": "npy", "path": str(tmp_path / "mine.npy")}
    monkeypatch.chdir(tmp_path)
    assert _same_data(trained, "mine.npy", None) and _same_data(trained, "npy", "./mine.npy")
    assert not _same_data(trained, "other.npy", None) and not _same_data(trained, "npy", None)
    assert _same_data({"name": "digits"}, "digits", None) and not _same_data({"name": "digits"}, "mnist", None)


def test_a_categorical_familys_category_is_written_as_the_integers_the_signature_gives(tmp_path, capsys):
    """`--outputs embedding,category` wrote the int32 category as float32 (3.0, 6.0, ...) in both
    .npz and Parquet, though the signature, the clients and the pyfunc give int32."""
    import pyarrow.parquet as pq

    export_tiny_model(tmp_path / "models", "gc", latent={"family": "gaussian_categorical", "latent_dim": 2,
                                                         "categories": 5})
    npz, parquet = tmp_path / "gc.npz", tmp_path / "gc.parquet"
    for out in (npz, parquet):
        assert _embed("--model", str(tmp_path / "models" / "gc"), "-o", str(out), "--outputs", "embedding,category",
                      "--chunk-size", "100", "--batch-size", "32") == 0
    with np.load(npz) as archive:
        category, embedding, index = archive["category"], archive["embedding"], archive["index"]
    assert category.dtype == np.int32 and embedding.dtype == np.float32 and category.shape == (len(index),)
    table = pq.read_table(parquet)
    assert str(table.schema.field("category").type) == "int32"
    np.testing.assert_array_equal(table.column("category").to_numpy(), category)
    from vae_tf.data import load_dataset

    rows = load_dataset("digits", seed=0).x_test[index[:40]]
    served = tf.saved_model.load(str(tmp_path / "models" / "gc" / "1")).signatures["encode"](x=tf.constant(rows))
    np.testing.assert_array_equal(served["category"].numpy(), category[:40])
    assert len(np.unique(category)) > 1  # the comparison is not one constant

    # Chunks an earlier vae-tf wrote with a float32 category (manifest format 1) are not resumed
    # into this layout: .npz got a float64 column and Parquet failed to assemble.
    source, encoder = load_source("digits", split="test"), LocalEncoder(tmp_path / "models" / "gc")
    for out in (npz, parquet):
        out.unlink()  # a killed run leaves no output, only its chunks
        flaky, Interrupted = interrupted_after(encoder, 2)
        with pytest.raises(Interrupted):
            extract_embeddings(source, flaky, out, outputs=("embedding", "category"), chunk_size=100, batch_size=100,
                               overwrite=True)
        manifest = out.with_name(out.name + ".parts") / "manifest.json"
        written = json.loads(manifest.read_text())
        assert written["format"] == 2
        manifest.write_text(json.dumps({**written, "format": 1}))
        capsys.readouterr()
        assert _embed("--model", str(tmp_path / "models" / "gc"), "-o", str(out), "--outputs", "embedding,category",
                      "--chunk-size", "100", "--batch-size", "100") == 2
        err = capsys.readouterr().err.strip()
        assert_one_line(err)
        assert err == (f"error: {manifest.parent} holds chunks of another layout (format 1, this vae-tf writes 2: the "
                       "category as int32, not float32); pass --overwrite to embed it anew")
        # the same with another setting changed too: no settings would resume it, so it says the layout
        assert _embed("--model", str(tmp_path / "models" / "gc"), "-o", str(out), "--outputs", "embedding,category",
                      "--chunk-size", "50", "--batch-size", "100") == 2
        assert "holds chunks of another layout (format 1" in capsys.readouterr().err
        # the same chunks in this layout resume
        manifest.write_text(json.dumps(written))
        assert _embed("--model", str(tmp_path / "models" / "gc"), "-o", str(out), "--outputs", "embedding,category",
                      "--chunk-size", "100", "--batch-size", "100") == 0
