"""`vae-tf embed` (local and through the server, .npz and Parquet, resumable) and `vae-tf probe`;
and the MLflow pyfunc serving every signature."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf

from serving.embed import LocalEncoder, extract_embeddings, load_source, read_embeddings
from serving.testing import export_tiny_model, running_server
from tests.conftest import assert_one_line
from training.cli import main


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
    line = capsys.readouterr().out.strip()
    assert line.startswith("linear probe accuracy: ") and "10 classes" in line


def test_embed_resumes_from_finished_chunks(base, tmp_path):
    source = load_source("digits", split="val")
    encoder = LocalEncoder(base / "vae")
    calls = {"n": 0}

    class Interrupted(Exception):
        pass

    def flaky(x):
        calls["n"] += 1
        if calls["n"] == 3:
            raise Interrupted
        return encoder(x)

    flaky.outputs, flaky.identity = encoder.outputs, encoder.identity
    out = tmp_path / "val.npz"
    with pytest.raises(Interrupted):
        extract_embeddings(source, flaky, out, chunk_size=50, batch_size=50)
    parts = sorted(p.name for p in (tmp_path / "val.npz.parts").iterdir())
    assert parts == ["chunk-000000.npz", "chunk-000001.npz", "manifest.json"] and not out.exists()
    result = extract_embeddings(source, encoder, out, chunk_size=50, batch_size=50)
    assert (result.reused_chunks, result.chunks, result.rows) == (2, -(-len(source.x) // 50), len(source.x))
    codes, labels = read_embeddings(out)
    np.testing.assert_array_equal(codes, encoder(source.x)["embedding"])
    np.testing.assert_array_equal(labels, source.y)


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


@pytest.mark.parametrize("args,message", [
    (["--model", "MISSING", "-o", "x.npz"], "no SavedModel at MISSING"),
    (["--model", "{base}/vae", "-o", "x.csv"], "must end in .npz or .parquet"),
    (["--model", "{base}/vae", "-o", "x.npz", "--outputs", "nope"], "encode has no output(s) nope"),
    (["--server", "http://127.0.0.1:{port}", "-o", "x.npz"], "cannot reach http://127.0.0.1:"),
    (["--server", "127.0.0.1:8501", "-o", "x.npz"], "needs a scheme"),
    (["--server", "{rest}", "--model-name", "other", "-o", "x.npz"], "HTTP 404: Servable not found"),
])
def test_embed_errors_are_one_line(base, server, tmp_path, capsys, monkeypatch, args, message):
    import socket

    monkeypatch.chdir(tmp_path)
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        free = sock.getsockname()[1]
    args = [a.format(base=base, port=free, rest=server.rest_url) for a in args]
    assert _embed(*args) == 2
    err = capsys.readouterr().err.strip()
    assert_one_line(err)
    assert err.startswith("error: ") and message in err, err


def test_probe_errors_are_one_line(tmp_path, capsys):
    np.savez(tmp_path / "nolabels.npz", embedding=np.zeros((10, 2), np.float32))
    assert main(["probe", str(tmp_path / "nolabels.npz")]) == 2
    assert "has no labels" in capsys.readouterr().err
    assert main(["probe", str(tmp_path / "missing.npz")]) == 2
    err = capsys.readouterr().err.strip()
    assert_one_line(err)
    assert "no such file" in err


def test_pyfunc_serves_every_signature(base, tmp_path, monkeypatch):
    import mlflow

    from training.tracking import log_saved_model, use_tracking

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    use_tracking(uri)
    mlflow.set_experiment("pyfunc-test")
    with mlflow.start_run():
        model_uri, version = log_saved_model(base / "vae" / "1", (8, 8, 1), "vae")
    assert version is not None
    model = mlflow.pyfunc.load_model("models:/vae/1")
    signatures = tf.saved_model.load(str(base / "vae" / "1")).signatures
    x = np.random.default_rng(0).random((3, 8, 8, 1)).astype(np.float32)
    encoded = model.predict(x)
    np.testing.assert_allclose(encoded["embedding"], signatures["encode"](x=tf.constant(x))["embedding"].numpy(),
                               rtol=1e-6)
    decoded = model.predict({"z": encoded["z_mean"]}, params={"signature": "decode"})
    assert set(decoded) == {"x_mean", "x_sample"} and decoded["x_mean"].shape == (3, 8, 8, 1)
    rec = model.predict(x.reshape(3, 64).tolist(), params={"signature": "reconstruct"})  # flattened rows
    np.testing.assert_allclose(rec["x_mean"], signatures["reconstruct"](x=tf.constant(x))["x_mean"].numpy(), rtol=1e-6)
    drawn = model.predict(np.array([[1, 2], [1, 2]]), params={"signature": "sample"})
    np.testing.assert_array_equal(drawn["z"][0], drawn["z"][1])
    np.testing.assert_array_equal(drawn["z"], signatures["sample"](seed=tf.constant([[1, 2], [1, 2]]))["z"].numpy())
    with pytest.raises(ValueError, match="is not served by the pyfunc model"):
        model.predict(x, params={"signature": "nope"})
    with pytest.raises(ValueError, match="whole-number seed"):
        model.predict(np.array([[1.5, 2]]), params={"signature": "sample"})
    with pytest.raises(ValueError, match=r"needs z with shape \[batch, 8\]"):
        model.predict(np.zeros((2, 3)), params={"signature": "decode"})
