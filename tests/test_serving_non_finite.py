"""NaN and ±Infinity in float inputs (issue 19, item 1): refused by default over REST (400) and gRPC
(INVALID_ARGUMENT) with one line naming the input, the first bad position and the value, for every
signature with a float input (`encode` pixels, `decode` latents, `reconstruct`);
`--allow-non-finite` restores TF Serving's pass-through; `vae-tf embed` refuses such rows too."""

from __future__ import annotations

import http.client
import json

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from serving.embed import EmbedSource, LocalEncoder, extract_embeddings
from serving.model_store import first_non_finite
from serving.testing import export_tiny_model, running_server
from tests.conftest import assert_one_line
from vae_tf_cli import main
from vae_tf.errors import DataError

TOKENS = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}  # what Python's json writes and clients send


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    base = tmp_path_factory.mktemp("models")
    export_tiny_model(base, "vae", seed=0)
    return base


@pytest.fixture(scope="module")
def strict(base):
    with running_server(base, "vae") as server:
        yield server


@pytest.fixture(scope="module")
def lenient(base):
    with running_server(base, "vae", allow_non_finite=True) as server:
        yield server


@pytest.fixture(scope="module")
def model(base):
    return tf.saved_model.load(str(base / "vae" / "1"))


def _rest(server, doc) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", server.rest_port, timeout=30)
    try:
        conn.request("POST", "/v1/models/vae:predict", body=json.dumps(doc, allow_nan=True).encode())
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def _grpc(server, signature, **inputs):
    with grpc.insecure_channel(server.grpc_target) as channel:
        request = predict_pb2.PredictRequest()
        request.model_spec.name, request.model_spec.signature_name = "vae", signature
        for key, value in inputs.items():
            request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
        return prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)


def _poisoned(shape, bad: dict, seed=0, dtype=np.float32) -> np.ndarray:
    x = np.random.default_rng(seed).random(shape).astype(dtype)
    for index, value in bad.items():
        x[index] = value
    return x


def _expected(alias, signature, index, value, count, size) -> str:
    """The message built from what the test planted (position, value, count), not from the server."""
    where = "(" + ", ".join(map(str, index)) + ")"
    return (f"Input {alias} of signature {signature} has a non-finite value {value} at index {where} ({count} of "
            f"{size} values are NaN or infinite); send finite numbers, or start the server with --allow-non-finite "
            "to pass them to the model")


# Planted values: several per case, so "first" means first in row-major order, not first planted.
CASES = [
    ("encode", "x", (3, 8, 8, 1), {(2, 0, 0, 0): np.inf, (1, 5, 6, 0): np.nan, (1, 7, 0, 0): -np.inf},
     (1, 5, 6, 0), "NaN"),
    ("reconstruct", "x", (1, 8, 8, 1), {(0, 7, 7, 0): -np.inf}, (0, 7, 7, 0), "-Infinity"),
    ("decode", "z", (4, 4), {(3, 1): np.nan, (2, 3): np.inf}, (2, 3), "Infinity"),
]


@pytest.mark.parametrize("signature,alias,shape,bad,first,token", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("layout", ["instances", "inputs"])
def test_rest_refuses_non_finite_values_with_their_position(strict, signature, alias, shape, bad, first, token, layout):
    x = _poisoned(shape, bad)
    doc = {"signature_name": signature, layout: x.tolist()}
    status, body = _rest(strict, doc)
    assert status == 400
    assert_one_line(body["error"])
    assert body["error"] == _expected(alias, signature, first, token, len(bad), x.size)
    # The refusal costs the server nothing: the same request made finite is answered.
    assert _rest(strict, {"signature_name": signature, layout: np.nan_to_num(x, posinf=0.5, neginf=0.5).tolist()})[0] == 200


@pytest.mark.parametrize("signature,alias,shape,bad,first,token", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_grpc_refuses_non_finite_values_with_their_position(strict, signature, alias, shape, bad, first, token, dtype):
    x = _poisoned(shape, bad, dtype=dtype)  # float64 tensors are cast to the signature's float32 first
    with pytest.raises(grpc.RpcError) as info:
        _grpc(strict, signature, **{alias: x})
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == _expected(alias, signature, first, token, len(bad), x.size)


def test_default_signature_and_integer_inputs_are_unaffected(strict):
    x = _poisoned((1, 8, 8, 1), {(0, 0, 0, 0): np.nan})
    status, body = _rest(strict, {"instances": x.tolist()})  # serving_default = encode
    assert status == 400 and "Input x of signature serving_default has a non-finite value NaN at index (0, 0, 0, 0)" \
        in body["error"]
    # An int32 input cannot hold NaN: TF Serving's own type error, unchanged (rapidjson's writer
    # refuses to quote NaN, hence the empty value; tests/test_serving_rest.py).
    status, body = _rest(strict, {"signature_name": "sample", "inputs": [[float("nan"), 1]]})
    assert (status, body["error"]) == (400, "JSON Value:  Type: Number is not of expected type: int32")
    assert _rest(strict, {"signature_name": "sample", "inputs": [[1, 2]]})[0] == 200


@pytest.mark.parametrize("signature,alias,shape,bad,first,token", CASES, ids=[c[0] for c in CASES])
def test_allow_non_finite_passes_them_to_the_model_like_tf_serving(lenient, model, signature, alias, shape, bad,
                                                                     first, token):
    x = _poisoned(shape, bad)
    want = {k: v.numpy() for k, v in model.signatures[signature](**{alias: tf.constant(x)}).items()
            if k != "x_sample"}  # a random draw: differs from call to call
    status, body = _rest(lenient, {"signature_name": signature, "inputs": x.tolist()})
    assert status == 200
    outputs = body["outputs"] if isinstance(body["outputs"], dict) else {"x_mean": body["outputs"]}
    for key, value in want.items():  # NaN where the model puts NaN: assert_array_equal treats NaN == NaN
        np.testing.assert_array_equal(np.asarray(outputs[key], np.float32), value)
    response = _grpc(lenient, signature, **{alias: x})
    for key, value in want.items():
        np.testing.assert_array_equal(tf.make_ndarray(response.outputs[key]), value)


def test_first_non_finite_agrees_with_argwhere():
    """Position, value and count against an independent search (np.argwhere is row-major)."""
    rng = np.random.default_rng(7)
    for trial in range(200):
        shape = tuple(rng.integers(1, 6, rng.integers(1, 5)))
        dtype = rng.choice([np.float16, np.float32, np.float64])
        # Half the trials near the dtype's largest value, so that sums of finite values overflow.
        scale = float(np.finfo(dtype).max) / 2 if trial % 2 else 1.0
        x = (rng.uniform(-1, 1, size=shape) * scale).astype(dtype)
        flat = x.reshape(-1)
        planted = rng.choice(flat.size, rng.integers(0, min(4, flat.size) + 1), replace=False)
        flat[planted] = rng.choice([np.nan, np.inf, -np.inf], len(planted))
        found = first_non_finite(x)
        if len(planted) == 0:
            assert found is None
            continue
        first = tuple(int(i) for i in np.argwhere(~np.isfinite(x))[0])
        index, value, count = found
        assert (index, count) == (first, len(planted))
        assert repr(value) == repr(float(x[first]))
    assert first_non_finite(np.full((2, 3), np.finfo(np.float32).max, np.float32)) is None  # sum overflows
    assert first_non_finite(np.array([[1, 2]], np.int32)) is None
    assert first_non_finite(np.zeros((0, 4), np.float32)) is None


# -- vae-tf embed ------------------------------------------------------------------------------


def test_embed_refuses_non_finite_rows_before_encoding_them(base, tmp_path, lenient):
    x = _poisoned((50, 8, 8, 1), {(37, 2, 5, 0): -np.inf, (44, 0, 0, 0): np.nan})
    source = EmbedSource(x, None, {"data": "mine", "split": "test"})
    calls = []

    class Encoder:
        outputs, identity = ["embedding"], {"model": "counting"}

        def __call__(self, rows):
            calls.append(len(rows))
            return {"embedding": rows.reshape(len(rows), -1)[:, :2]}

    with pytest.raises(DataError) as info:
        extract_embeddings(source, Encoder(), tmp_path / "out.npz", chunk_size=20, batch_size=10)
    message = str(info.value)
    assert_one_line(message)
    assert message == ("row 37 of mine (split test) has a non-finite value -Infinity at index (37, 2, 5, 0) (1 NaN/Inf "
                       "values in rows 20-39); remove or impute those rows before embedding them")
    assert calls == [10, 10]  # chunk 0 (rows 0-19) was encoded; chunk 1 was refused before the model saw it
    # The same through a server that would pass NaN to the model, and through a local SavedModel.
    from serving.embed import RemoteEncoder

    for encoder in (RemoteEncoder(lenient.rest_url, "vae"), LocalEncoder(base / "vae")):
        with pytest.raises(DataError, match=r"^row 37 of mine \(split test\) has a non-finite value -Infinity"):
            extract_embeddings(source, encoder, tmp_path / "again.npz", chunk_size=50, overwrite=True)


def test_embed_cli_names_the_file_and_the_row(base, tmp_path, capsys):
    bad = np.random.default_rng(0).random((40, 8, 8)).astype(np.float32)
    bad[12, 1, 6] = np.inf
    path = tmp_path / "bad.npy"
    np.save(path, bad)
    assert main(["embed", "--data", str(path), "--split", "all", "--model", str(base / "vae"),
                 "-o", str(tmp_path / "out.npz")]) == 2
    err = capsys.readouterr().err.strip()
    assert_one_line(err)
    assert err.startswith(f"error: npy data in {str(path)!r} contains 0 NaN and 1 Inf values (first at index "
                          "(12, 1, 6), example 12)"), err
    assert not (tmp_path / "out.npz").exists() and not (tmp_path / "out.npz.parts").exists()
