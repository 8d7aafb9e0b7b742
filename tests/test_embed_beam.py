"""`vae-tf embed --runner beam`: the Apache Beam pipeline (RunInference over the export's `encode`
signature) against the single-process `vae-tf embed`, Parquet input against the signature called
directly, and the one-line errors. Needs the `beam` extra (`pip install -e '.[test,beam]'`)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("apache_beam", reason="Apache Beam is the 'beam' extra: pip install -e '.[test,beam]'")

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import tensorflow as tf  # noqa: E402

from serving.embed import load_source, read_output_metadata  # noqa: E402
from tests.conftest import ABSEIL_RECORD, assert_one_line  # noqa: E402
from vae_tf_cli import main  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

SHAPE = (8, 8, 1)  # serving.testing.TINY_DATA_SHAPE, the exports fixture's data shape


def _parts(directory) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.suffix == ".parquet")


def _encode_directly(model_dir, x: np.ndarray) -> np.ndarray:
    """The export's `encode` signature on all of ``x`` in one call (no vae-tf code in between)."""
    encode = tf.saved_model.load(str(model_dir)).signatures["encode"]
    return encode(x=tf.constant(x))["embedding"].numpy()


@pytest.mark.slow
def test_beam_on_two_workers_equals_vae_tf_embed_row_for_row(exports, tmp_path, capfd):
    rng = np.random.default_rng(7)
    data = tmp_path / "rows.npz"
    np.savez(data, x=rng.random((700,) + SHAPE, dtype=np.float32), y=rng.integers(0, 5, 700))
    common = ["embed", "--data", str(data), "--split", "all", "--model", str(exports), "--chunk-size", "96",
              "--batch-size", "32", "--outputs", "embedding,z_mean"]
    local, out = tmp_path / "local.parquet", tmp_path / "beam"
    assert main(common + ["-o", str(local)]) == 0
    assert main(common + ["--runner", "beam", "--workers", "2", "-o", str(out)]) == 0
    printed = capfd.readouterr()  # the workers write to this process's descriptors
    assert "700 rows" in printed.out and "runner:        FnApiRunner, 2 worker processes" in printed.out
    assert f"data:          every row of {data} (700), in file order; index is the row of the file" in printed.out
    # The workers import TensorFlow quietly too (vae_tf_cli.tensorflow_start; they inherit the level).
    assert not ABSEIL_RECORD.search(printed.err), printed.err[-2000:]
    # Nor Beam's own start-up lines: each worker printed "WARNING:root:apitools not found, ..." and
    # "INFO:__main__:Logging handler created." (serving.beam_worker starts them without).
    assert "apitools" not in printed.err and "Logging handler created" not in printed.err, printed.err[-2000:]
    assert _parts(out) == ["part-00000-of-00002.parquet", "part-00001-of-00002.parquet"]  # one per worker bundle

    reference = pq.read_table(local)
    table = pq.read_table(out).sort_by("index")
    assert table.schema.equals(reference.schema)
    # the same Parquet schema too (Beam wrote a list's child as `item`, pyarrow as the spec's `element`)
    assert all(pq.ParquetFile(out / part).schema.equals(pq.ParquetFile(local).schema) for part in _parts(out))
    assert table.column_names == ["embedding", "z_mean", "index", "label"]
    # Same rows, labels and float32 bits: both cut the same chunks and call the model on the same batches.
    assert table.equals(reference)
    np.testing.assert_array_equal(table["index"].to_numpy(), np.arange(700))
    source = load_source(str(data), split="all")
    np.testing.assert_array_equal(table["label"].to_numpy(), source.y)
    first = np.stack(table["embedding"].to_numpy(zero_copy_only=False)[:32])
    np.testing.assert_allclose(first, _encode_directly(exports / "2", source.x[0:32]), rtol=1e-6, atol=1e-6)

    # A rerun needs --overwrite; with one worker it writes one file and removes the two stale ones.
    assert main(common + ["--runner", "beam", "-o", str(out)]) == 2
    err = capfd.readouterr().err.strip()
    assert_one_line(err)
    assert "already holds 2 Parquet part file(s)" in err and "--overwrite" in err
    assert main(common + ["--runner", "beam", "-o", str(out), "--overwrite"]) == 0
    assert _parts(out) == ["part-00000-of-00001.parquet"]
    assert pq.read_table(out).sort_by("index").equals(reference)
    # Both say in their schema what they hold (serving.embed.output_metadata), the same way.
    local_meta, beam_meta = read_output_metadata(local), read_output_metadata(out)
    assert local_meta["model"] == beam_meta["model"] == {"model": str((exports / "2").resolve())}
    assert local_meta["outputs"] == beam_meta["outputs"] == ["embedding", "z_mean"]
    assert local_meta["index"] == beam_meta["index"] == (
        "the row's position in the input, 0-based (a file's row; a data set's train, val and test rows one after "
        "another, as it reads them)")
    assert local_meta["data"]["path"] == beam_meta["data"]["path"] == str(data)


@pytest.mark.slow
def test_importing_the_beam_pipeline_logs_no_bigquery_warning_and_other_warnings_still_show():
    """``import apache_beam`` logs "apitools not found, and bigquery client libraries are not
    available ..." where Beam's gcp extra is missing (it is: nothing here reads BigQuery); the
    launching process drops that record and no other."""
    code = ("import logging\nimport serving.beam_embed\n"
            "logging.warning('apitools not found, and bigquery client libraries are not available (again)')\n"
            "logging.warning('another warning')\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stderr.strip() == "WARNING:root:another warning", done.stderr[-2000:]
    plain = subprocess.run([sys.executable, "-c", "import apache_beam"], cwd=REPO, capture_output=True, text=True,
                           timeout=120)
    assert "apitools not found" in plain.stderr  # Beam does log it here: the check above is not vacuous


def test_a_worker_s_stderr_drops_the_traceback_of_a_user_error_and_nothing_else():
    import io

    from serving.beam_worker import UserErrorTracebacksDropped

    def written(*pieces):
        sink = io.StringIO()
        stream = UserErrorTracebacksDropped(sink)
        for piece in pieces:
            assert stream.write(piece) == len(piece)
        return sink.getvalue()

    frames = 'Traceback (most recent call last):\n  File "x.py", line 1, in read\n'
    user = frames + "vae_tf.errors.DataError: column 'x' has a NaN in row 3 [while running 'Read']\n"
    bug = frames + "ValueError: something vae-tf got wrong\n"
    assert written(user, "\n") == ""  # print(traceback, file=sys.stderr): the text, then its newline
    assert written(bug, "\n") == bug + "\n"
    assert written(user, "\n", bug, "\n") == bug + "\n"
    assert written("\n", "vae_tf.errors.DataError: not a traceback\n") == "\nvae_tf.errors.DataError: not a traceback\n"
    # A chain: the exception that ended the bundle (the last line) is what counts.
    ended_by_user_error = (frames + "KeyError: 'a'\n\nDuring handling of the above exception, another exception "
                           "occurred:\n\n" + frames + "vae_tf.errors.ConfigError: bad option\n")
    assert written(ended_by_user_error, "\n") == ""
    ended_by_bug = user + "\nDuring handling of the above exception, another exception occurred:\n\n" + bug
    assert written(ended_by_bug) == ended_by_bug
    sink = io.StringIO()
    wrapped = UserErrorTracebacksDropped(sink)
    wrapped.close()  # other attributes are the stream's own
    assert sink.closed


def test_a_worker_starts_beam_s_harness_with_keras_kept_from_libraries_no_worker_uses():
    """A local worker (``python -m serving.beam_worker``) hands its arguments to Beam's harness
    unchanged, and by then Keras' optional imports are cut as in a `vae-tf` process (the hook's
    effect on ``import keras`` is checked in tests/test_cli.py). Beam's harness is a stand-in here:
    the real one needs a runner to talk to."""
    code = ("import runpy, sys, types\n"
            "for name in ('apache_beam', 'apache_beam.runners', 'apache_beam.runners.worker'):\n"
            "    sys.modules[name] = types.ModuleType(name)\n"
            "harness = types.ModuleType('apache_beam.runners.worker.sdk_worker_main')\n"
            "harness.main = lambda argv: print(argv[1:], any(type(f).__name__ == '_KeepOptionalLibrariesOutOfKeras'\n"
            "                                               for f in sys.meta_path))\n"
            "sys.modules[harness.__name__] = sys.modules['apache_beam.runners.worker'].sdk_worker_main = harness\n"
            "sys.argv = ['beam_worker', '--worker_id=worker_1', '--logging_endpoint=localhost:1']\n"
            "runpy.run_module('serving.beam_worker', run_name='__main__')\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "['--worker_id=worker_1', '--logging_endpoint=localhost:1'] True", done.stdout


def _list_column(x: np.ndarray, fixed: bool) -> pa.Array:
    flat = pa.array(x.reshape(-1))
    width = int(np.prod(x.shape[1:]))
    if fixed:
        return pa.FixedSizeListArray.from_arrays(flat, width)
    return pa.ListArray.from_arrays(pa.array(np.arange(len(x) + 1) * width, pa.int32()), flat)


@pytest.mark.slow
def test_parquet_input_every_row_in_file_order(exports, tmp_path, capsys, monkeypatch):
    rng = np.random.default_rng(3)
    x = rng.random((230,) + SHAPE, dtype=np.float32)
    y = rng.integers(0, 4, 230)
    folder = tmp_path / "in"
    folder.mkdir()
    # Two files, sorted by name: a has two row groups (fixed_size_list), b one (list<float>).
    pq.write_table(pa.table({"x": _list_column(x[:150], True), "y": y[:150]}), folder / "a.parquet", row_group_size=100)
    pq.write_table(pa.table({"y": y[150:], "x": _list_column(x[150:], False)}), folder / "b.parquet")
    out = tmp_path / "out"
    monkeypatch.chdir(tmp_path)
    assert main(["embed", "--runner", "beam", "--data", str(folder / "*.parquet"), "--model", str(exports / "1"),
                 "-o", "out", "--chunk-size", "64", "--batch-size", "16"]) == 0
    printed = capsys.readouterr().out
    assert f"embeddings:    {out.resolve()} (230 rows" in printed  # absolute, as `vae-tf embed` prints
    assert f"data:          every row of 2 file(s) matching {folder / '*.parquet'}, files in name order" in printed
    table = pq.read_table(out).sort_by("index")
    np.testing.assert_array_equal(table["index"].to_numpy(), np.arange(230))
    np.testing.assert_array_equal(table["label"].to_numpy(), y)
    codes = np.stack(table["embedding"].to_numpy(zero_copy_only=False))
    # The model saw batches of 16 here and all rows at once there: equal up to float32 round-off.
    np.testing.assert_allclose(codes, _encode_directly(exports / "1", x), rtol=1e-5, atol=1e-6)

    # The folder itself (as Spark and Beam write Parquet) reads as its files in name order; it
    # was read as an image folder ("no PNG/JPEG files"). The one-process runner says to use Beam.
    assert main(["embed", "--runner", "beam", "--data", str(folder), "--model", str(exports / "1"), "-o", "out2",
                 "--chunk-size", "64", "--batch-size", "16"]) == 0
    assert pq.read_table(tmp_path / "out2").sort_by("index").equals(table)
    capsys.readouterr()
    assert _error(capsys, "embed", "--data", str(folder), "--model", str(exports / "1"), "-o", "o.parquet") == (
        f"error: {folder} is a folder of Parquet files, which the Beam pipeline reads: add --runner beam (or give "
        "one of its files)")
    # Columns of other names are named (--column / --label-column); "label" is found by itself.
    renamed = tmp_path / "renamed.parquet"
    pq.write_table(pa.table({"pixels": _list_column(x, True), "label": y, "klass": y[::-1]}), renamed)
    assert main(["embed", "--runner", "beam", "--data", str(renamed), "--column", "pixels", "--model",
                 str(exports / "1"), "-o", "out3", "--chunk-size", "64", "--batch-size", "16"]) == 0
    assert pq.read_table(tmp_path / "out3").sort_by("index").equals(table)
    assert main(["embed", "--runner", "beam", "--data", str(renamed), "--column", "pixels", "--label-column", "klass",
                 "--model", str(exports / "1"), "-o", "out4", "--chunk-size", "64", "--batch-size", "16"]) == 0
    np.testing.assert_array_equal(pq.read_table(tmp_path / "out4").sort_by("index")["label"].to_numpy(), y[::-1])
    capsys.readouterr()
    assert _error(capsys, "embed", "--runner", "beam", "--data", str(renamed), "--column", "pixels", "--label-column",
                  "kind", "--model", str(exports / "1"), "-o", "out5") == (
        f"error: {renamed} has no label column 'kind' (--label-column); found 'pixels', 'label', 'klass'")
    # `vae-tf probe` reads the output folder (it said "no such file"), rows sorted on index: the
    # same result as for one file of the sorted table
    pq.write_table(table, tmp_path / "one.parquet")
    assert main(["probe", "out", "--json"]) == 0
    from_folder = capsys.readouterr().out
    assert main(["probe", "one.parquet", "--json"]) == 0
    assert from_folder == capsys.readouterr().out and '"test_accuracy"' in from_folder


def _error(capsys, *argv) -> str:
    assert main(list(argv)) == 2
    err = capsys.readouterr().err.strip()
    assert_one_line(err)
    assert err.startswith("error: ")
    return err


@pytest.mark.slow
def test_bad_input_is_one_line(exports, tmp_path, capsys):
    out = str(tmp_path / "out")
    beam = ["embed", "--runner", "beam", "-o", out]
    assert "no SavedModel at" in _error(capsys, *beam, "--model", str(tmp_path / "missing"))

    def parquet(name: str, **columns) -> str:
        path = tmp_path / name
        pq.write_table(pa.table(columns), path)
        return str(path)

    good = np.zeros((4, 64), np.float32)
    nocol = parquet("nocol.parquet", pixels=_list_column(good, True))
    err = _error(capsys, *beam, "--model", str(exports), "--data", nocol)
    assert "has no data column" in err and "'pixels'" in err and err.endswith("name the column of rows with --column NAME")
    ints = parquet("ints.parquet", x=_list_column(good.astype(np.uint8), True))
    assert "holds uint8" in _error(capsys, *beam, "--model", str(exports), "--data", ints)
    short = parquet("short.parquet", x=_list_column(np.zeros((4, 60), np.float32), True))
    assert "has 60 values a row but the model takes 64" in _error(capsys, *beam, "--model", str(exports), "--data", short)
    ragged = tmp_path / "ragged.parquet"
    pq.write_table(pa.table({"x": pa.array([[0.0] * 64, [0.0] * 63 + [0.0, 0.0]], pa.list_(pa.float32()))}), ragged)
    assert "rows of 64 to 65 values" in _error(capsys, *beam, "--model", str(exports), "--data", str(ragged))
    assert "drop --split" in _error(capsys, *beam, "--model", str(exports), "--data", short, "--split", "train")
    # the default's own value given is refused too (every row was embedded into a "test" file)
    assert "drop --split, --seed" in _error(capsys, *beam, "--model", str(exports), "--data", short, "--split", "test",
                                           "--seed", "0")
    # the input's folder as the output: --overwrite replaced the input shards with their embeddings
    (tmp_path / "in").mkdir()
    pq.write_table(pa.table({"x": _list_column(good, True)}), tmp_path / "in" / "part-00000-of-00001.parquet")
    assert _error(capsys, *beam, "--model", str(exports), "--data", str(tmp_path / "in"), "-o", str(tmp_path / "in"),
                  "--overwrite").endswith("holds the input (" + str(tmp_path / "in" / "*.parquet") + "): the embeddings "
                                          "would replace the data; choose another --output")
    assert [p.name for p in (tmp_path / "in").iterdir()] == ["part-00000-of-00001.parquet"]
    # ... and only the folder read: a data set's name, or a folder above the input, is a harmless output
    from types import SimpleNamespace

    from serving.beam_embed import run_beam_embed
    from vae_tf.errors import ConfigError

    encoder = SimpleNamespace(outputs=("embedding",), version_dir=str(exports))
    (tmp_path / "above" / "in").mkdir(parents=True)
    for path, output, harmless in ((None, tmp_path / "digits", True),
                                   (str(tmp_path / "above" / "in" / "*.parquet"), tmp_path / "above", True),
                                   (str(tmp_path / "in" / "*.parquet"), tmp_path / "in", False)):
        source = SimpleNamespace(data_shape=(8, 8, 1), rows=4, keep=("index",),
                                 description={"data": "digits", **({"path": path} if path else {})})
        # a guard passed reaches the next check, the kept columns' (a clash, on purpose)
        said = "--keep-columns index" if harmless else "holds the input"
        with pytest.raises(ConfigError, match=re.escape(said)):
            run_beam_embed(source, encoder, (8, 8, 1), output)
    assert "no Parquet files match" in _error(capsys, *beam, "--model", str(exports), "--data",
                                              str(tmp_path / "none-*.parquet"))
    # a data set of the other kind, refused on the launcher (not a graph input-type traceback)
    assert "'text_synthetic' holds sentences but this model's encode takes arrays" in _error(
        capsys, *beam, "--model", str(exports), "--data", "text_synthetic", "--max-samples", "50")

    assert "give --model" in _error(capsys, *beam, "--server", "http://127.0.0.1:1")
    assert "not an .npz file" in _error(capsys, "embed", "--runner", "beam", "--model", str(exports), "-o",
                                        str(tmp_path / "e.npz"))
    assert "go with --runner beam" in _error(capsys, "embed", "--model", str(exports), "-o", out, "--workers", "2")
    # the one-process runner reads an image Parquet file too, with the same checks
    assert "has 60 values a row but the model takes 64" in _error(capsys, "embed", "--model", str(exports), "-o",
                                                                  str(tmp_path / "e.parquet"), "--data", short)
    assert "--num_workers" in _error(capsys, *beam, "--model", str(exports), "--workers", "2", "--",
                                     "--runner=DataflowRunner")
    assert not (tmp_path / "out").exists()


def test_beam_options_and_input_a_worker_cannot_read_are_one_line(exports, tmp_path, capsys):
    """Beam's own parser printed its whole usage for a bad value (126 lines), dropped a mistyped
    option with a warning (`--direct_num_worker=2` ran on one worker), and a corrupt data page
    behind a valid footer ended in a 100-line traceback."""
    x = np.random.default_rng(0).random((40, 64), dtype=np.float32)
    data = tmp_path / "x.parquet"
    pq.write_table(pa.table({"x": _list_column(x, True)}), data)
    beam = ["embed", "--runner", "beam", "--model", str(exports), "--data", str(data), "-o", str(tmp_path / "out")]
    assert _error(capsys, *beam, "--", "--direct_num_worker=2") == (
        "error: --direct_num_worker is no Beam option (did you mean --direct_num_workers?); the local runner would "
        "ignore it: check its spelling")
    assert _error(capsys, *beam, "--", "--direct_running_mode=bogus") == (
        "error: bad Beam option after --: argument --direct_running_mode: invalid choice: 'bogus' (choose from "
        "'in_memory', 'multi_threading', 'multi_processing')")
    assert _error(capsys, *beam, "--workers", "2", "--", "--direct_num_workers=3") == (
        "error: --workers and -- --direct_num_workers both set the worker processes; give one of them")
    err = _error(capsys, *beam, "--", "--runner=NoSuchRunner")
    assert err.startswith("error: Unexpected pipeline runner: NoSuchRunner. Valid values are ")
    assert err.endswith("; give one of them as --runner=NAME after --")

    # A data page overwritten behind a valid footer: the launcher reads only footers, a worker fails.
    corrupt = tmp_path / "corrupt.parquet"
    big = np.round(np.random.default_rng(1).random((400, 64)), 1).astype(np.float32)  # compresses: snappy pages
    pq.write_table(pa.table({"x": _list_column(big, True)}), corrupt, compression="snappy")
    damaged = bytearray(corrupt.read_bytes())
    damaged[200:5000] = np.random.default_rng(2).integers(0, 256, 4800, dtype=np.uint8).tobytes()
    corrupt.write_bytes(bytes(damaged))
    err = _error(capsys, "embed", "--runner", "beam", "--model", str(exports), "--data", str(corrupt), "-o",
                 str(tmp_path / "out"))
    assert err.startswith("error: a worker could not read the input: ") and err.endswith(
        "; check or re-create the input file(s)")
    assert not (tmp_path / "out").exists()


def test_a_killed_run_s_temporary_folders_are_removed_and_other_parquet_files_refused(exports, tmp_path, capsys):
    """A run killed mid-write left beam-temp-* folders; the next run into the same directory
    succeeded and left them, so pq.read_table(OUTPUT) read every row twice (or failed on a
    half-written file). And Parquet files of others in the directory were read with the output."""
    x = np.random.default_rng(0).random((30,) + SHAPE, dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "out"
    stale = out / "beam-temp-part-0123456789abcdef"
    stale.mkdir(parents=True)
    pq.write_table(pa.table({"index": np.arange(30), "embedding": _list_column(np.zeros((30, 2), np.float32), True)}),
                   stale / "0123.part.parquet")
    (stale / "0456.part.parquet").write_bytes(b"PAR1 half-written")
    args = ["embed", "--runner", "beam", "--model", str(exports), "--data", str(tmp_path / "x.npy"), "--split", "all",
            "-o", str(out)]
    assert main(args) == 0
    assert ("removed:       1 temporary folder(s) (beam-temp-*) of an earlier run that was killed; they held no "
            "output") in capsys.readouterr().out
    assert not stale.exists()
    table = pq.read_table(out)
    assert table.num_rows == 30 and sorted(table["index"].to_pylist()) == list(range(30))

    other = tmp_path / "shared"
    other.mkdir()
    pq.write_table(pa.table({"a": [1, 2]}), other / "theirs.parquet")
    assert _error(capsys, *args[:-1], str(other)) == (
        f"error: {other} holds other Parquet files (theirs.parquet), which reading the output directory would mix "
        "with the embeddings; choose an empty --output directory")


def test_an_unquoted_glob_or_a_missing_argument_says_why(exports, tmp_path, capsys):
    """A glob the shell expanded (--data rows/*.parquet): its second file began the Beam options
    and took -o with it, and argparse said only "the following arguments are required: -o"."""
    files = [str(tmp_path / f"part-{i}.parquet") for i in range(4)]
    assert _error(capsys, "embed", "--runner", "beam", "--data", *files, "--model", str(exports), "-o",
                  str(tmp_path / "out")) == (
        f"error: unexpected argument(s) {' '.join(files[1:4])} ...: quote a glob so that the shell passes it whole "
        "(--data 'rows/*.parquet'), and put Beam options after --")
    assert _error(capsys, "embed", "--model", str(exports)) == (
        "error: --output/-o is required: a .npz or .parquet file (--runner beam: a directory)")
    assert _error(capsys, "embed", "-o", str(tmp_path / "e.npz")) == (
        "error: give --model models/NAME[/VERSION] (a local export) or --server URL (a running vae-tf serve)")


def test_keep_columns_copies_input_columns_beside_each_row_s_embedding(exports, tmp_path, capsys):
    """The output's only key was `index`, the position over files in name order; a user's own key
    (an id, a partition date) was dropped. --keep-columns copies them, row for row."""
    x = np.random.default_rng(0).random((120, 64), dtype=np.float32)
    ids = [f"id-{i:03d}" for i in range(120)]
    pq.write_table(pa.table({"x": _list_column(x[:70], True), "id": ids[:70], "day": np.arange(70) % 7}),
                   tmp_path / "a.parquet", row_group_size=30)
    pq.write_table(pa.table({"x": _list_column(x[70:], True), "id": ids[70:], "day": np.arange(70, 120) % 7}),
                   tmp_path / "b.parquet")
    beam = ["embed", "--runner", "beam", "--data", str(tmp_path / "*.parquet"), "--model", str(exports / "1")]
    assert main([*beam, "-o", str(tmp_path / "out"), "--keep-columns", "id,day", "--chunk-size", "32"]) == 0
    assert "columns embedding, index, id, day;" in capsys.readouterr().out
    table = pq.read_table(tmp_path / "out").sort_by("index")
    assert table.column_names == ["embedding", "index", "id", "day"] and table.schema.field("id").type == pa.string()
    assert table["id"].to_pylist() == ids and table["day"].to_pylist() == [i % 7 for i in range(120)]
    np.testing.assert_allclose(np.stack(table["embedding"].to_numpy(zero_copy_only=False)),
                               _encode_directly(exports / "1", x.reshape((-1,) + SHAPE)), rtol=1e-5, atol=1e-6)

    out = str(tmp_path / "o2")
    assert _error(capsys, *beam, "-o", out, "--keep-columns", "id,nope") == (
        f"error: {tmp_path / 'a.parquet'} has no column 'nope' to keep (--keep-columns); found 'x', 'id', 'day'")
    pq.write_table(pa.table({"x": _list_column(x[:5], True), "index": np.arange(5)}), tmp_path / "clash.parquet")
    assert _error(capsys, "embed", "--runner", "beam", "--data", str(tmp_path / "clash.parquet"), "--model",
                  str(exports), "-o", out, "--keep-columns", "index") == (
        "error: --keep-columns index: the output has a column of that name already; rename the input column")
    np.save(tmp_path / "x.npy", x.reshape((-1,) + SHAPE))
    assert "this input has no columns" in _error(capsys, "embed", "--runner", "beam", "--data",
                                                 str(tmp_path / "x.npy"), "--model", str(exports), "-o", out,
                                                 "--keep-columns", "id")
    assert "--keep-columns goes with Parquet input on --runner beam" in _error(
        capsys, "embed", "--data", str(tmp_path / "x.npy"), "--model", str(exports), "-o", str(tmp_path / "e.npz"),
        "--keep-columns", "id")


def test_kept_columns_follow_the_sentences_a_text_table_keeps(tmp_path):
    """Rows without a sentence are skipped: the kept columns must skip them too."""
    from serving.beam_embed import ParquetSource

    texts = ["a cat", None, "", "a dog", "  ", "the end"]
    pq.write_table(pa.table({"text": texts, "id": [10, 11, 12, 13, 14, 15]}), tmp_path / "t.parquet")
    source = ParquetSource(str(tmp_path / "t.parquet"), (), 64, text=True, keep=["id"])
    (columns, sentences), = [chunk for item in source.work() for chunk in source.read(item)]
    assert list(sentences) == ["a cat", "a dog", "the end"]
    assert columns["index"].tolist() == [0, 3, 5] and columns["id"].to_pylist() == [10, 13, 15]


def test_one_process_and_the_server_read_an_image_parquet_file_as_beam_does(exports, tmp_path, capsys):
    """Parquet input of an image model was Beam's only ('add --runner beam'), through a server
    not at all. The one-process runner reads it a row group at a time (chunks of 64 across groups
    of 50 here), bit for bit as Beam embeds it, and through `vae-tf serve` too."""
    from serving.testing import running_server

    rng = np.random.default_rng(5)
    x = rng.random((230, 64), dtype=np.float32)
    y = rng.integers(0, 3, 230)
    data = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"pixels": _list_column(x, False), "label": y}), data, row_group_size=50)
    common = ["--data", str(data), "--column", "pixels", "--model", str(exports / "1"), "--chunk-size", "64",
              "--batch-size", "16"]
    assert main(["embed", *common, "-o", str(tmp_path / "one.parquet")]) == 0
    assert "(230 rows; columns embedding, index, label)" in capsys.readouterr().out
    assert main(["embed", "--runner", "beam", *common, "-o", str(tmp_path / "beam")]) == 0
    one = pq.read_table(tmp_path / "one.parquet")
    beam = pq.read_table(tmp_path / "beam").sort_by("index")
    assert one.equals(beam) and one["label"].to_pylist() == y.tolist()
    np.testing.assert_allclose(np.stack(one["embedding"].to_numpy(zero_copy_only=False)),
                               _encode_directly(exports / "1", x.reshape((-1,) + SHAPE)), rtol=1e-5, atol=1e-6)

    with running_server(exports.parent, exports.name) as server:  # serves version 2, the highest
        assert main(["embed", "--data", str(data), "--column", "pixels", "--server", server.rest_url, "--model-name",
                     exports.name, "--chunk-size", "64", "-o", str(tmp_path / "s.npz")]) == 0
    with np.load(tmp_path / "s.npz") as served:
        np.testing.assert_allclose(served["embedding"], _encode_directly(exports / "2", x.reshape((-1,) + SHAPE)),
                                   rtol=1e-5, atol=1e-6)
        assert served["index"].tolist() == list(range(230)) and served["label"].tolist() == y.tolist()
    capsys.readouterr()
    assert _error(capsys, "embed", "--data", str(tmp_path / "*.parquet"), "--model", str(exports / "1"), "-o",
                  str(tmp_path / "p.npz")) == (f"error: {tmp_path / '*.parquet'} is a pattern: the one-process runner "
                                               "reads one Parquet file; add --runner beam for several")


@pytest.mark.slow
def test_no_labels_leaves_a_label_column_out_on_every_input_and_runner(exports, tmp_path, capsys):
    """A table whose `label` column holds strings and nulls is refused (it looks like the labels);
    --no-labels embeds it without them, in one process and on Beam, and drops an .npz's labels."""
    rng = np.random.default_rng(11)
    x = rng.random((40, 64), dtype=np.float32)
    data = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"x": _list_column(x, True), "label": ["cat", None] * 20}), data)
    common = ["--data", str(data), "--model", str(exports / "1"), "--chunk-size", "16"]
    assert _error(capsys, "embed", *common, "-o", str(tmp_path / "refused.parquet")).endswith(
        "must hold integer class indices without nulls, got string with 8 null(s); fill or drop those rows, name "
        "another column with --label-column, or pass --no-labels")  # 8 in the first chunk of 16
    assert main(["embed", *common, "--no-labels", "-o", str(tmp_path / "one.parquet")]) == 0
    assert "(40 rows; columns embedding, index)" in capsys.readouterr().out
    assert main(["embed", "--runner", "beam", *common, "--no-labels", "-o", str(tmp_path / "beam")]) == 0
    one, beam = pq.read_table(tmp_path / "one.parquet"), pq.read_table(tmp_path / "beam").sort_by("index")
    assert one.column_names == ["embedding", "index"] and one.equals(beam)
    np.testing.assert_allclose(np.stack(one["embedding"].to_numpy(zero_copy_only=False)),
                               _encode_directly(exports / "1", x.reshape((-1,) + SHAPE)), rtol=1e-5, atol=1e-6)

    arrays = tmp_path / "rows.npz"
    np.savez(arrays, x=x.reshape((-1,) + SHAPE), y=np.where(np.arange(40) % 2, np.nan, 1.0))  # not class indices
    assert _error(capsys, "embed", "--data", str(arrays), "--split", "all", "--model", str(exports / "1"), "-o",
                  str(tmp_path / "b.npz")) == ("error: npz labels holds non-integer values; labels must be class indices; "
                                               "or leave them out: data.options.labels false (training), --no-labels "
                                               "(vae-tf embed)")
    for runner, out in ((), tmp_path / "a.npz"), (("--runner", "beam"), tmp_path / "a"):
        assert main(["embed", *runner, "--data", str(arrays), "--split", "all", "--model", str(exports / "1"),
                     "--no-labels", "-o", str(out)]) == 0
    with np.load(tmp_path / "a.npz") as archive:
        assert sorted(archive.files) == ["embedding", "index"]
    assert pq.read_table(tmp_path / "a").column_names == ["embedding", "index"]
    capsys.readouterr()
    assert _error(capsys, "embed", *common, "--no-labels", "--label-column", "label", "-o", str(tmp_path / "c.npz")) \
        == "error: --no-labels drops the labels that --label-column names; give one of them"


def test_small_row_groups_are_read_together_up_to_a_chunk(tmp_path):
    """A work item was one row group: a file written one row per group was 5,000 work items
    (63 rows/s, and as many one-row groups in the output). Consecutive groups of a file now make
    one item of up to --chunk-size rows; a larger group stays one item; files are not mixed."""
    from serving.beam_embed import ParquetSource

    x = np.random.default_rng(0).random((150, 64), dtype=np.float32)
    pq.write_table(pa.table({"x": _list_column(x, True)}), tmp_path / "a.parquet", row_group_size=1)
    pq.write_table(pa.table({"x": _list_column(x[:100], True)}), tmp_path / "b.parquet", row_group_size=100)
    source = ParquetSource(str(tmp_path / "*.parquet"), SHAPE, 64)
    items = source.work()
    assert [(Path(i.path).name, len(i.row_groups), i.first) for i in items] == [
        ("a.parquet", 64, 0), ("a.parquet", 64, 64), ("a.parquet", 22, 128), ("b.parquet", 1, 150)]
    read = [chunk for item in items for chunk in source.read(item)]
    np.testing.assert_array_equal(np.concatenate([c["index"] for c, _ in read]), np.arange(250))
    np.testing.assert_array_equal(np.concatenate([r for _, r in read]).reshape(250, 64), np.concatenate([x, x[:100]]))
    assert max(len(r) for _, r in read) == 64


def test_a_bad_row_is_named_by_its_row_in_its_file(tmp_path):
    """The error named the row counted over all files (1400 for row 500 of the second file)."""
    from serving.beam_embed import ParquetSource
    from vae_tf.errors import DataError

    x = np.random.default_rng(0).random((30, 64), dtype=np.float32)
    bad = x.copy()
    bad[5, 7] = np.inf
    pq.write_table(pa.table({"x": _list_column(x, True)}), tmp_path / "a.parquet")
    pq.write_table(pa.table({"x": _list_column(bad, True)}), tmp_path / "b.parquet", row_group_size=4)
    source = ParquetSource(str(tmp_path / "*.parquet"), SHAPE, 4)  # chunks of 4 rows: one row group each
    for part in source.work()[:2]:  # a.parquet and b.parquet's first row group: fine
        assert sum(len(rows) for _, rows in source.read(part)) in (30, 4)
    with pytest.raises(DataError) as said:
        list(source.read(source.work()[2]))  # b.parquet's rows 4-7
    assert str(said.value) == (f"column 'x' of {tmp_path / 'b.parquet'} has a NaN or infinite value in row 5 (index "
                               "35 over all files); remove or impute those rows before embedding them")


@pytest.mark.slow
def test_a_bad_row_found_by_a_worker_is_one_line(exports, tmp_path, capfd):
    """... on the whole of stderr (capfd: the worker processes' descriptors too): the worker that
    found it printed ~60 lines of Beam's traceback before the launcher's line (serving.beam_worker)."""
    x = np.random.default_rng(0).random((300, 64), dtype=np.float32)
    x[250, 3] = np.nan
    data = tmp_path / "nan.parquet"
    pq.write_table(pa.table({"x": _list_column(x, True)}), data, row_group_size=100)
    err = _error(capfd, "embed", "--runner", "beam", "--workers", "2", "--model", str(exports), "--data", str(data),
                 "-o", str(tmp_path / "out"))
    assert f"column 'x' of {data} has a NaN or infinite value in row 250" in err
    assert not (tmp_path / "out").exists()  # nothing half-written: Beam's temporary folders are removed too


def test_ctrl_c_during_a_beam_job_removes_its_temporary_folders(exports, tmp_path, monkeypatch):
    """A failed local job removed Beam's beam-temp-* folders (and the output folder it made); one
    interrupted by Ctrl-C left them for the next run to find."""
    import apache_beam

    out = tmp_path / "out"

    def interrupted(self, *args, **kwargs):  # the sink has made its temporary folder when Ctrl-C comes
        (out / "beam-temp-part-0123456789abcdef").mkdir(parents=True)
        raise KeyboardInterrupt

    monkeypatch.setattr(apache_beam.Pipeline, "run", interrupted)
    assert main(["embed", "--runner", "beam", "--model", str(exports), "--data", "digits", "--max-samples", "50",
                 "-o", str(out)]) == 130  # "interrupted"
    assert not out.exists()


def test_rows_outside_the_likelihoods_support_fail_on_beam_as_in_one_process(exports, tmp_path, capsys):
    """A Bernoulli model reads [0, 1]: `vae-tf embed` refused other values, the Beam job embedded
    them without a word. Both now fail with the same line, naming the first such row by its
    `index` (the row of the file with --split all and for Parquet; else the row in the split)."""
    x = np.full((40,) + SHAPE, 0.5, np.float32)
    x[5, 1, 2, 0], x[12] = 1.5, 3.0  # in the first chunk: a failure after it keeps its chunks to resume
    data = tmp_path / "scaled.npz"
    np.savez(data, x=x)
    common = ["embed", "--model", str(exports), "--data", str(data), "--split", "all", "--chunk-size", "16"]
    one = _error(capsys, *common, "-o", str(tmp_path / "e.npz"))
    assert _error(capsys, *common, "--runner", "beam", "-o", str(tmp_path / "out")) == one
    in_split = load_source(str(data), split="all").x[0:40].reshape(40, -1)
    first = int(np.flatnonzero(in_split.max(axis=1) > 1)[0])
    assert first == 5  # --split all: the file's rows in file order
    chunk = in_split[first // 16 * 16:first // 16 * 16 + 16]
    assert (f"error: row {first} of {data} (split all) has values outside [0, 1], which the model's bernoulli "
            f"likelihood reads (rows {first // 16 * 16}-{first // 16 * 16 + len(chunk) - 1} lie in "
            f"[0.5, {chunk.max():g}]); scale the data") in one
    parquet = tmp_path / "scaled.parquet"
    pq.write_table(pa.table({"x": _list_column(x.reshape(40, -1), True)}), parquet, row_group_size=16)
    err = _error(capsys, "embed", "--runner", "beam", "--model", str(exports), "--data", str(parquet),
                 "--chunk-size", "16", "-o", str(tmp_path / "out"))
    assert f"error: row 5 of {parquet} has values outside [0, 1], which the model's bernoulli likelihood reads " \
           "(rows 0-15 lie in [0.5, 3]); scale the data" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scaled.npz", "scaled.parquet"]  # nothing half-written


def test_beam_s_split_source_reads_the_rows_and_file_positions_vae_tf_embed_reads(tmp_path):
    """The Beam source of `--split all` hands its workers the same rows, in file order, and the
    same `index` (each row's row of the file) as `vae-tf embed` in one process, for a sample of
    the file too (max_samples), where the positions are not 0..n-1."""
    from serving.beam_embed import SplitSource

    x = np.random.default_rng(2).random((50,) + SHAPE).astype(np.float32)
    np.savez(tmp_path / "rows.npz", x=x, y=np.arange(50))
    source = load_source(str(tmp_path / "rows.npz"), split="all", max_samples=20)
    beam = SplitSource(source, chunk_size=8)
    chunks = [next(beam.read(c)) for c in beam.work()]
    index = np.concatenate([columns["index"] for columns, _ in chunks])
    np.testing.assert_array_equal(index, source.positions(0, 20))
    assert np.all(np.diff(index) > 0) and index.max() < 50 and not np.array_equal(index, np.arange(20))
    np.testing.assert_array_equal(np.concatenate([rows for _, rows in chunks]), x[index])
    np.testing.assert_array_equal(np.concatenate([columns["label"] for columns, _ in chunks]), index)


@pytest.mark.slow
def test_text_files_and_parquet_sentences_equal_vae_tf_embed(text_exports, tmp_path, capsys):
    """A text model on Beam: a plain and a gzip text file (blank lines skipped, ``index`` the line
    number over both files in name order) and a Parquet string column, against the single-process
    `vae-tf embed` row for row and the signature called directly."""
    import gzip

    words = ["the", "cat", "dog", "sat", "ran", "on", "a", "mat"]
    lines = ["" if i % 11 == 3 else " ".join(words[(i + k) % 8] for k in range(1 + i % 5)) for i in range(230)]
    lines[7] = lines[40] = " ".join(words + words[:1])  # 9 words: the model reads its first 6
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.txt").write_text("\n".join(lines[:150]) + "\n")
    (folder / "b.txt.gz").write_bytes(gzip.compress(("\n".join(lines[150:]) + "\n").encode()))
    common = ["--model", str(text_exports / "1"), "--chunk-size", "64", "--batch-size", "16"]
    local, out = tmp_path / "local.parquet", tmp_path / "beam"
    assert main(["embed", "--data", str(folder / "a.txt"), *common, "-o", str(local)]) == 0
    one_process = capsys.readouterr().out
    assert main(["embed", "--runner", "beam", "--data", str(folder / "a.txt"), *common, "-o", str(out)]) == 0
    kept = [i for i, line in enumerate(lines) if line]
    printed = capsys.readouterr().out
    assert f"{len([i for i in kept if i < 150])} rows" in printed
    # both runners count the sentences the model truncates (Beam with counters on its workers)
    cut = f"truncated:     2 of {len([i for i in kept if i < 150])} sentences have more than the model's 6 words"
    assert cut in one_process and cut in printed, (one_process, printed)
    assert pq.read_table(out).sort_by("index").equals(pq.read_table(local))  # same chunks, batches, bits

    both = tmp_path / "both"
    assert main(["embed", "--runner", "beam", "--data", "text", "--path", str(folder / "*.txt*"), *common, "-o",
                 str(both)]) == 0
    table = pq.read_table(both).sort_by("index")
    np.testing.assert_array_equal(table["index"].to_numpy(), kept)
    codes = np.stack(table["embedding"].to_numpy(zero_copy_only=False))
    np.testing.assert_allclose(codes, _encode_directly(text_exports / "1", np.array([lines[i] for i in kept], object)),
                               rtol=1e-5, atol=1e-6)

    texts = [line or None for line in lines]
    pq.write_table(pa.table({"label": [i % 3 for i in range(230)], "text": texts}), folder / "s.parquet",
                   row_group_size=100)
    strings = tmp_path / "strings"
    capsys.readouterr()
    assert main(["embed", "--runner", "beam", "--data", str(folder / "s.parquet"), *common, "-o", str(strings)]) == 0
    # the sentences embedded, not the table's rows (it said 230 with the blank ones)
    assert f"({len(kept)} rows in " in capsys.readouterr().out and len(kept) < 230
    table = pq.read_table(strings).sort_by("index")
    assert table.column_names == ["embedding", "index", "label"]
    np.testing.assert_array_equal(table["index"].to_numpy(), kept)
    np.testing.assert_array_equal(table["label"].to_numpy(), [i % 3 for i in kept])
    np.testing.assert_allclose(np.stack(table["embedding"].to_numpy(zero_copy_only=False)), codes, rtol=1e-5, atol=1e-6)

    (folder / "bad.txt").write_bytes(b"fine\n\xff\n")
    err = _error(capsys, "embed", "--runner", "beam", "--data", "text", "--path", str(folder / "bad.txt"), *common,
                 "-o", str(tmp_path / "bad"))
    assert "is not valid UTF-8 (line 2, byte 0" in err  # found on the launcher, before any worker starts
    (folder / "blank.txt").write_text("\n \n")  # both runners say the same of a file without a sentence
    for runner in ([], ["--runner", "beam"]):
        err = _error(capsys, "embed", *runner, "--data", str(folder / "blank.txt"), *common, "-o", str(tmp_path / "b"))
        assert err.endswith("blank.txt has no sentence (every line is blank); put one sentence per line"), err
    assert "needs --path" in _error(capsys, "embed", "--runner", "beam", "--data", "text", *common, "-o", str(out))
    assert "reads Parquet, not CSV" in _error(capsys, "embed", "--runner", "beam", "--data", str(folder / "s.csv"),
                                              *common, "-o", str(out))
