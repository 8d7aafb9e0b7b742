"""Text models through `vae-tf serve` (issue 17): raw sentences over TF Serving's REST API (JSON
strings, ``{"b64": ...}``, row and columnar formats) and gRPC (``string_val``), ``DT_STRING`` in
the metadata, string outputs written as TF Serving writes them, the clients, bad input as one-line
400 / INVALID_ARGUMENT, long sentences truncated (default) or refused (``--long-text refuse``),
and, end to end, a text model trained by ``vae-tf train`` and served, with REST, gRPC, the MLflow
pyfunc (through MLflow's own scoring app) and the in-process call agreeing."""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2
from tensorflow_serving.apis import get_model_metadata_pb2, model_pb2, predict_pb2, prediction_service_pb2_grpc

from serving import json_codec
from serving.client import GrpcClient, RestClient, ServingRequestError
from serving.testing import TINY_TEXT_MAX_LENGTH, drop_version, running_server
from serving.text import TextLimits
from tests.conftest import announced, assert_one_line, mlflow_store

REPO = Path(__file__).resolve().parents[1]
SENTENCES = ["the cat sat on the mat", "a dog ran", "The big red dog saw a cat", "zebra crossing"]
STRICT = TextLimits(long_text="refuse", max_rows=4, max_bytes=64)


@pytest.fixture(scope="module")
def served(text_exports, tmp_path_factory):
    """The tiny text model behind two servers: the defaults, and a strict one (long sentences
    refused, at most 4 sentences of 64 bytes a request)."""
    base = tmp_path_factory.mktemp("models")
    drop_version(text_exports, base, 1, name="text")
    with running_server(base, "text", poll_seconds=0) as server, \
            running_server(base, "text", poll_seconds=0, text_limits=STRICT) as strict:
        yield server, strict, tf.saved_model.load(str(base / "text" / "1"))


def _local(model, signature, **inputs):
    outputs = model.signatures[signature](**{k: tf.constant(v) for k, v in inputs.items()})
    return {k: v.numpy() for k, v in outputs.items()}


def _post(server, body, path="/v1/models/text:predict"):
    """(status, parsed JSON) of one REST request; ``body`` a dict or raw bytes."""
    conn = http.client.HTTPConnection("127.0.0.1", server.rest_port, timeout=60)
    try:
        conn.request("POST", path, body=body if isinstance(body, bytes) else json.dumps(body).encode())
        response = conn.getresponse()
        payload = response.read()
        assert response.getheader("Content-Type") == "application/json"
        return response.status, json.loads(payload)
    finally:
        conn.close()


def _grpc_predict(server, signature, **inputs):
    request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name="text", signature_name=signature))
    for key, value in inputs.items():
        request.inputs[key].CopyFrom(value if isinstance(value, tensor_pb2.TensorProto) else tf.make_tensor_proto(value))
    with grpc.insecure_channel(server.grpc_target) as channel:
        return prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=60)


def _grpc_error(server, signature, **inputs):
    with pytest.raises(grpc.RpcError) as info:
        _grpc_predict(server, signature, **inputs)
    return info.value.code(), info.value.details()


def _decoded(values) -> list[str]:
    return [v.decode("utf-8") for v in values]


# -- contract: metadata, formats, outputs ----------------------------------------------------------


def test_metadata_shows_dt_string_inputs_and_outputs(served):
    server, _, _ = served
    for client in (RestClient(server.rest_url, "text"), GrpcClient(server.grpc_target, "text")):
        sigs = client.metadata()["metadata"]["signature_def"]["signature_def"]
        for name in ("encode", "reconstruct", "serving_default"):
            x = sigs[name]["inputs"]["x"]
            assert x["dtype"] == "DT_STRING" and [d["size"] for d in x["tensor_shape"]["dim"]] == ["-1"]
        assert sigs["decode"]["outputs"]["text"]["dtype"] == "DT_STRING"
        assert sigs["decode"]["outputs"]["tokens"]["dtype"] == "DT_INT32"
        assert sigs["sample"]["outputs"]["text"]["dtype"] == "DT_STRING"
        assert sigs["reconstruct"]["outputs"]["text"]["dtype"] == "DT_STRING"
        client.close()


def test_rest_row_columnar_and_b64_inputs_give_the_in_process_codes(served):
    server, _, model = served
    want = _local(model, "encode", x=SENTENCES)
    status, body = _post(server, {"signature_name": "encode", "instances": SENTENCES})
    assert status == 200
    assert [sorted(row) for row in body["predictions"]] == [["embedding", "z_log_var", "z_mean"]] * len(SENTENCES)
    np.testing.assert_allclose([row["z_mean"] for row in body["predictions"]], want["z_mean"], rtol=1e-5, atol=1e-6)
    for doc in ({"signature_name": "encode", "inputs": SENTENCES}, {"signature_name": "encode", "inputs": {"x": SENTENCES}},
                # {"b64": ...} carries the UTF-8 bytes of each sentence (TF Serving's binary form)
                {"signature_name": "encode", "inputs": [{"b64": base64.b64encode(s.encode()).decode()} for s in SENTENCES]},
                {"inputs": SENTENCES}):  # encode is serving_default
        status, body = _post(server, doc)
        assert status == 200, body
        np.testing.assert_allclose(body["outputs"]["z_mean"], want["z_mean"], rtol=1e-5, atol=1e-6)
    named = [{"x": {"b64": base64.b64encode(s.encode()).decode()}} for s in SENTENCES]  # row objects, by input name
    status, body = _post(server, {"signature_name": "encode", "instances": named})
    np.testing.assert_allclose([row["z_mean"] for row in body["predictions"]], want["z_mean"], rtol=1e-5, atol=1e-6)


def test_rest_text_outputs_are_plain_json_strings(served):
    server, _, model = served
    z = np.array([[0.0, 0.0], [1.5, -2.0], [-3.0, 1.0]], np.float32)
    want = _local(model, "decode", z=z)
    status, body = _post(server, {"signature_name": "decode", "instances": z.tolist()})
    assert status == 200
    rows = body["predictions"]
    assert [row["text"] for row in rows] == _decoded(want["text"])  # strings, not {"b64": ...}
    assert all(row["text"] for row in rows)  # random weights decode to words, so the check is not vacuous
    assert [row["tokens"] for row in rows] == want["tokens"].tolist()
    assert [row["lengths"] for row in rows] == want["lengths"].tolist()
    seeds = [[1, 2], [3, 4]]
    status, body = _post(server, {"signature_name": "sample", "inputs": {"seed": seeds}})
    assert body["outputs"]["text"] == _decoded(_local(model, "sample", seed=np.array(seeds, np.int32))["text"])
    status, body = _post(server, {"signature_name": "reconstruct", "instances": SENTENCES[:2]})
    assert body["predictions"] == _decoded(_local(model, "reconstruct", x=SENTENCES[:2])["text"])  # one output: no name


def test_string_outputs_are_written_as_tf_serving_writes_them():
    """``MakeJsonFromTensors`` (util/json_tensor.cc): a DT_STRING output is a JSON string, unless its
    name ends in ``_bytes``, then ``{"b64": ...}``; rows and columns alike."""
    outputs = {"text": np.array(["café".encode(), b"a b"], dtype=object),
               "raw_bytes": np.array([b"\x00\xff", b"ok"], dtype=object)}
    columnar = json.loads(json_codec.predict_response(outputs, json_codec.COLUMNAR))
    assert columnar == {"outputs": {"raw_bytes": [{"b64": "AP8="}, {"b64": "b2s="}], "text": ["café", "a b"]}}
    rows = json.loads(json_codec.predict_response(outputs, json_codec.ROW))
    assert rows == {"predictions": [{"raw_bytes": {"b64": "AP8="}, "text": "café"},
                                    {"raw_bytes": {"b64": "b2s="}, "text": "a b"}]}


def test_grpc_string_val_in_and_out(served):
    server, _, model = served
    response = _grpc_predict(server, "encode", x=tf.make_tensor_proto([s.encode() for s in SENTENCES]))
    np.testing.assert_allclose(tf.make_ndarray(response.outputs["z_mean"]), _local(model, "encode", x=SENTENCES)["z_mean"],
                               rtol=1e-5, atol=1e-6)
    z = np.array([[0.5, -0.5], [2.0, 2.0]], np.float32)
    response = _grpc_predict(server, "decode", z=z)
    text = response.outputs["text"]
    assert text.dtype == tf.string.as_datatype_enum and list(text.string_val) == list(_local(model, "decode", z=z)["text"])
    md = get_model_metadata_pb2.GetModelMetadataRequest(model_spec=model_pb2.ModelSpec(name="text"),
                                                        metadata_field=["signature_def"])
    with grpc.insecure_channel(server.grpc_target) as channel:
        answer = prediction_service_pb2_grpc.PredictionServiceStub(channel).GetModelMetadata(md, timeout=30)
    sigs = get_model_metadata_pb2.SignatureDefMap()
    answer.metadata["signature_def"].Unpack(sigs)
    assert sigs.signature_def["encode"].inputs["x"].dtype == tf.string.as_datatype_enum


def _string_content(values, shape) -> tensor_pb2.TensorProto:
    """A DT_STRING tensor with its strings in ``tensor_content``, as C++ clients write it
    (``Tensor::AsProtoTensorContent``: every length as a varint, then the bytes)."""
    from google.protobuf.internal.encoder import _VarintBytes

    proto = tensor_pb2.TensorProto(dtype=tf.string.as_datatype_enum, tensor_content=b"".join(
        _VarintBytes(len(v)) for v in values) + b"".join(values))
    for size in shape:
        proto.tensor_shape.dim.add().size = size
    return proto


def test_grpc_strings_in_tensor_content_as_cpp_clients_send_them(served):
    """TF Serving reads a string tensor's tensor_content (C++ ``Tensor::FromProto``); the server
    answered "tensor parsing error: x" (``tf.make_ndarray`` cannot read that layout)."""
    server, _, model = served
    values = [s.encode() for s in SENTENCES]
    proto = _string_content(values, [len(values)])
    # the layout is TensorFlow's own: its C++ parser reads the same strings back
    assert tf.io.parse_tensor(proto.SerializeToString(), tf.string).numpy().tolist() == values
    response = _grpc_predict(server, "encode", x=proto)
    np.testing.assert_allclose(tf.make_ndarray(response.outputs["z_mean"]), _local(model, "encode", x=SENTENCES)["z_mean"],
                               rtol=1e-5, atol=1e-6)
    broken = _string_content(values, [len(values)])
    broken.tensor_content = broken.tensor_content[:-1]  # one byte short: TensorFlow refuses it too
    with pytest.raises(tf.errors.InvalidArgumentError):
        tf.io.parse_tensor(broken.SerializeToString(), tf.string)
    total = sum(len(v) for v in values)  # the lengths add up to every sentence's bytes
    assert _grpc_error(server, "encode", x=broken) == (grpc.StatusCode.INVALID_ARGUMENT, (
        f"tensor parsing error: x (a string tensor's tensor_content holds {total - 1} bytes after its lengths, not "
        f"the {total} they add up to)"))


def test_clients_take_and_give_strings(served):
    server, _, model = served
    want = _local(model, "encode", x=SENTENCES)["z_mean"]
    sampled = _decoded(_local(model, "sample", seed=np.array([[7, 0], [7, 1]], np.int32))["text"])
    for client in (RestClient(server.rest_url, "text"), GrpcClient(server.grpc_target, "text")):
        for x in (SENTENCES, tuple(SENTENCES), np.array(SENTENCES), [s.encode() for s in SENTENCES],
                  np.array(SENTENCES, dtype=object)):
            np.testing.assert_allclose(client.encode(x)["z_mean"], want, rtol=1e-5, atol=1e-6)
        drawn = client.sample(2, seed=7)
        assert drawn["text"].dtype == object and list(drawn["text"]) == sampled
        assert all(isinstance(t, str) for t in drawn["text"])
        assert drawn["tokens"].dtype == np.int32 and drawn["lengths"].dtype == np.int32
        assert list(client.reconstruct(SENTENCES[:1])["text"]) == _decoded(_local(model, "reconstruct", x=SENTENCES[:1])["text"])
        with pytest.raises(ServingRequestError, match="batch of sentences"):
            client.encode("one sentence")
        with pytest.raises(ServingRequestError, match="row 1 is empty") as info:
            client.encode(["fine", "  "])
        assert_one_line(str(info.value))
        client.close()


# -- bad input ---------------------------------------------------------------------------------------


BAD_REST = [
    ({"signature_name": "encode", "instances": [1.5]}, "JSON Value: 1.5 Type: Number is not of expected type: string"),
    ({"signature_name": "encode", "inputs": {"x": ["a cat", 3]}}, "JSON Value: 3 Type: Number is not of expected type"),
    ({"signature_name": "encode", "instances": [None]}, "JSON Value: null Type: Null is not of expected type: string"),
    ({"signature_name": "encode", "instances": [True]}, "Type: True is not of expected type: string"),
    ({"signature_name": "encode", "instances": [["a cat"]]}, "has shape [1,1] but the signature expects [-1] (-1: any "
                                                             "size); send a list of sentences, each one string (not a "
                                                             "list of words)"),
    ({"signature_name": "encode", "inputs": "a cat"}, "has shape [] but the signature expects [-1]"),
    # one sentence, not a list: it was told "(not a list of words)"
    ({"signature_name": "encode", "inputs": {"x": "a cat"}}, 'has shape [] but the signature expects [-1] (-1: any size); '
                                                            'send a list of sentences, even of one: ["a cat"], not "a cat"'),
    (b'{"signature_name": "encode", "instances": ["a \xff cat"]}', "row 0 is not valid UTF-8 (byte 2"),
    ({"signature_name": "encode", "instances": ["ok", {"b64": base64.b64encode(b"\xc3\x28").decode()}]},
     "row 1 is not valid UTF-8 (byte 0"),
    ({"signature_name": "encode", "instances": [{"b64": "not base64!"}]}, "Unable to base64 decode"),
    (b'{"signature_name": "encode", "instances": ["a \\ud800 cat"]}',
     "JSON Parse error: The surrogate pair in string is invalid. at offset: 46"),  # the escape's backslash
    (b'{"signature_name": "encode", "instances": ["a \\udcff cat"]}', "row 0 is not valid UTF-8"),  # ED B3 BF
    (b'{"signature_name": "encode", "instances": ["\xc2\\udc80"]}', "row 0 is not valid UTF-8"),  # C2 ED B2 80
    ({"signature_name": "encode", "instances": ["the cat", ""]}, "row 1 is empty"),
    ({"signature_name": "encode", "instances": [" \t\n\u00a0\u2003"]}, "row 0 is empty"),  # Unicode spaces too
    ({"signature_name": "reconstruct", "instances": [""]}, "Input x of signature reconstruct: row 0 is empty"),
    ({"signature_name": "encode", "instances": ["a"] * 1025}, "1025 sentences in one request, more than this server's "
                                                             "limit of 1024"),
    ({"signature_name": "decode", "instances": ["the cat"]}, "Type: String is not of expected type: float"),
    # each row of a decode or sample makes a sentence: the same row limit (5,000 seeds took 27 s)
    ({"signature_name": "sample", "inputs": {"seed": [[0, i] for i in range(1025)]}},
     "Input seed of signature sample: 1025 rows in one request, more than this server's limit of 1024 for a text model "
     "(each row makes a sentence); send smaller batches (or raise --max-text-rows)"),
    ({"signature_name": "decode", "inputs": {"z": [[0.0, 0.0]] * 1025}}, "Input z of signature decode: 1025 rows"),
]


@pytest.mark.parametrize("body, message", BAD_REST, ids=[str(i) for i in range(len(BAD_REST))])
def test_bad_rest_input_is_a_one_line_400(served, body, message):
    server, _, _ = served
    status, answer = _post(server, body)
    assert status == 400, answer
    assert message in answer["error"], answer["error"]
    assert_one_line(answer["error"])


def test_bad_grpc_input_is_one_line_invalid_argument(served):
    server, strict, _ = served
    empty_strings = tensor_pb2.TensorProto(dtype=tf.string.as_datatype_enum, tensor_shape=tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=2)]))
    cases = [
        (server, {"x": np.array([1.5, 2.5], np.float32)}, "needs string values but got float values"),
        (server, {"x": np.array([3], np.int64)}, "needs string values but got int64 values"),
        (server, {"x": tf.make_tensor_proto([b"fine", b"\xe2\x82"])}, "row 1 is not valid UTF-8"),
        (server, {"x": tf.make_tensor_proto([b"fine", b" "])}, "row 1 is empty"),
        (server, {"x": empty_strings}, "row 0 is empty"),  # shape [2], no string_val: two empty strings
        (server, {"x": tf.make_tensor_proto([[b"a cat"]])}, "has shape [1,1] but the signature expects [-1]"),
        (strict, {"x": tf.make_tensor_proto([b"a"] * 5)}, "5 sentences in one request, more than this server's limit of 4"),
        (strict, {"x": tf.make_tensor_proto([b"cat " * 20])}, "row 0 has 80 bytes, more than this server's limit of 64"),
        (strict, {"x": tf.make_tensor_proto([b"a b c d e f g"])}, "row 0 has 7 words, more than the model's 6"),
    ]
    for target, inputs, message in cases:
        code, details = _grpc_error(target, "encode", **inputs)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and message in details, (inputs, code, details)
        assert_one_line(details)


def test_long_sentences_are_truncated_by_default_and_refused_when_strict(served):
    """The model keeps a sentence's first max_length (6) words. Words are the tokenizer's: with
    punctuation split off, "the cat, the dog." is six words (the cat , the dog .) though it has
    four spaces-separated parts."""
    server, strict, model = served
    assert TINY_TEXT_MAX_LENGTH == 6
    long = "the big red dog saw a cat on the mat"
    first_six = "the big red dog saw a"
    want = _local(model, "encode", x=[first_six])["z_mean"]
    status, body = _post(server, {"signature_name": "encode", "instances": [long]})
    assert status == 200
    np.testing.assert_allclose(body["predictions"][0]["z_mean"], want[0], rtol=1e-5, atol=1e-6)
    assert not np.allclose(want, _local(model, "encode", x=["the big red dog saw"])["z_mean"])  # the 6th word counts

    status, body = _post(strict, {"signature_name": "encode", "instances": ["a cat", long]})
    assert status == 400 and "row 1 has 10 words, more than the model's 6 (1 of 2 sentences are too long)" in \
        body["error"], body
    assert_one_line(body["error"])
    status, body = _post(strict, {"signature_name": "encode", "instances": ["the cat, the dog.", first_six]})
    assert status == 200, body  # exactly 6 words each: accepted
    status, body = _post(strict, {"signature_name": "encode", "instances": ["the cat, the dog, a"]})
    assert status == 400 and "has 7 words" in body["error"], body  # the cat , the dog , a
    status, body = _post(strict, {"signature_name": "encode", "instances": ["x" * 65]})
    assert status == 400 and "row 0 has 65 bytes, more than this server's limit of 64" in body["error"]


@pytest.mark.slow
def test_serve_command_announces_and_applies_the_text_flags(text_exports, tmp_path):
    """`vae-tf serve --long-text refuse --max-text-rows 3`: the start-up lines say what is done with
    sentences, and the flags reach the checks."""
    drop_version(text_exports, tmp_path, 1, name="text")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen([sys.executable, "-m", "vae_tf_cli", "serve", "--model", str(tmp_path / "text"),
                                "--port", "0", "--rest-api-port", "0", "--long-text", "refuse", "--max-text-rows", "3"],
                               cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=(tmp_path / "stderr").open("w"),
                               text=True)
    try:
        lines = announced(process)
        assert lines["text"] == ("text model: UTF-8 sentences, sentences longer than 6 words are refused; at most 3 "
                                 "sentences (or rows to decode or sample) a request and 65536 bytes a sentence")
        # Said once: the log of the first version's loading does not repeat it.
        assert "loaded text version 1" in (tmp_path / "stderr").read_text()
        assert "text model:" not in (tmp_path / "stderr").read_text()
        client = RestClient(lines["REST"].split("/v1/")[0], "text")
        with pytest.raises(ServingRequestError, match="4 sentences in one request, more than this server's limit of 3"):
            client.encode(["a"] * 4)
        with pytest.raises(ServingRequestError, match="row 0 has 7 words, more than the model's 6"):
            client.encode(["a b c d e f g"])
        assert client.encode(["a b c d e f"])["z_mean"].shape == (1, 2)
        process.terminate()
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.slow
def test_a_text_version_swapped_in_later_says_what_it_accepts_in_the_log(text_exports, tmp_path, caplog):
    """The first version's description is `vae-tf serve`'s start-up line; a version that arrives
    while the server runs is described in the log, where the operator watching it looks."""
    from serving.model_store import ModelStore

    drop_version(text_exports, tmp_path, 1, name="text")
    store = ModelStore(tmp_path, "text", poll_seconds=0, text_limits=STRICT)
    with caplog.at_level("INFO", logger="serving.model_store"):
        store.poll()
        assert "loaded text version 1" in caplog.text and "text model" not in caplog.text
        caplog.clear()
        drop_version(text_exports, tmp_path, 2, name="text")
        store.poll()
    assert store.versions == [2]
    assert (f"text version 2 is a text model: UTF-8 sentences, sentences longer than {TINY_TEXT_MAX_LENGTH} words "
            "are refused; at most 4 sentences (or rows to decode or sample) a request and 64 bytes a sentence") in caplog.text


# -- end to end: train, export, serve, compare ----------------------------------------------------------


@contextlib.contextmanager
def _mlflow_scoring_app(model):
    """MLflow's own scoring app (what `mlflow models serve` runs) for ``model``, on uvicorn in a
    thread on a free loopback port; yields the port."""
    import uvicorn
    from mlflow.pyfunc import scoring_server

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(scoring_server.init(model), log_level="warning", log_config=None))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the scoring app did not start"
        time.sleep(0.05)
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def _invoke(port: int, doc: dict):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request("POST", "/invocations", body=json.dumps(doc), headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


@pytest.mark.slow
def test_trained_text_model_end_to_end(tmp_path):
    """`vae-tf train` on the synthetic corpus (one short epoch) -> SavedModel + MLflow pyfunc ->
    `vae-tf serve`: encode, decode, reconstruct and sample agree over REST (row and columnar),
    gRPC, the pyfunc through MLflow's scoring app and the in-process call; `saved_model_cli`
    lists DT_STRING."""
    import mlflow

    env = {**{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}, "PYTHONPATH": str(REPO),
           "TF_CPP_MIN_LOG_LEVEL": "2", "MLFLOW_TRACKING_URI": mlflow_store(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "vae_tf_cli", "train", "--config",
                           str(REPO / "training/configs/text_synthetic.yaml"), "--set", "train.epochs=1",
                           "--set", "data.options.n_samples=400", "--set", "train.batch_size=32"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    version_dir = tmp_path / "models" / "text-synthetic" / "1"
    shown = subprocess.run([str(Path(sys.executable).with_name("saved_model_cli")), "show", "--dir", str(version_dir),
                            "--all"], env=env, capture_output=True, text=True, timeout=300)
    assert shown.returncode == 0, shown.stderr[-2000:]
    for name in ("encode", "decode", "reconstruct", "sample", "serving_default"):
        assert f"signature_def['{name}']" in shown.stdout
    assert "dtype: DT_STRING" in shown.stdout

    model = tf.saved_model.load(str(version_dir))
    info = json.loads((version_dir / "assets" / "vae_tf_model.json").read_text())
    assert info["modality"] == "text" and info["text"]["long_sentences"] == "truncated to max_length words"
    max_length = info["text"]["max_length"]
    sentences = ["w1 w2 w3 w4", "w10 w20 w30", "w5 " * (max_length + 4), "unknownword w7"]
    seeds = np.array([[3, 1], [3, 2], [4, 1]], np.int32)
    z = np.array([[0.0, 0.0], [2.0, -2.0]], np.float32)
    local = {"encode": _local(model, "encode", x=sentences), "decode": _local(model, "decode", z=z),
             "reconstruct": _local(model, "reconstruct", x=sentences), "sample": _local(model, "sample", seed=seeds)}
    # The long sentence is encoded as its first max_length words (truncation, not an error).
    np.testing.assert_allclose(local["encode"]["z_mean"][2],
                               _local(model, "encode", x=[" ".join(["w5"] * max_length)])["z_mean"][0], rtol=1e-5,
                               atol=1e-6)

    def check(name, got):
        for key, want in local[name].items():
            if want.dtype == object:
                assert [g if isinstance(g, str) else g.decode() for g in np.asarray(got[key]).tolist()] == \
                    _decoded(want), (name, key)
            else:
                np.testing.assert_allclose(np.asarray(got[key], dtype=want.dtype), want, rtol=1e-5, atol=1e-5,
                                           err_msg=f"{name}/{key}")

    with running_server(tmp_path / "models", "text-synthetic") as server:
        for client in (RestClient(server.rest_url, "text-synthetic"), GrpcClient(server.grpc_target, "text-synthetic")):
            check("encode", client.encode(sentences))
            check("decode", client.decode(z))
            check("reconstruct", client.reconstruct(sentences))
            check("sample", client.sample(seeds))
            client.close()
        status, body = _post(server, {"signature_name": "encode", "instances": sentences},
                             path="/v1/models/text-synthetic:predict")
        assert status == 200
        check("encode", {k: [row[k] for row in body["predictions"]] for k in local["encode"]})
        status, body = _post(server, {"signature_name": "sample", "instances": seeds.tolist()},
                             path="/v1/models/text-synthetic:predict")
        check("sample", {k: [row[k] for row in body["predictions"]] for k in local["sample"]})

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    pyfunc = mlflow.pyfunc.load_model("models:/text-synthetic/1")
    check("encode", pyfunc.predict(sentences))
    import pandas as pd

    with pytest.raises(ValueError, match=r"^signature 'encode' needs x as one sentence per row \(a list of strings "
                                         r"or a one-column DataFrame\), got shape \[\d+, 2\]$"):
        pyfunc.predict(pd.DataFrame({"a": sentences, "b": sentences}))  # it said "shape [batch, ] (or rows of 1 values)"
    with _mlflow_scoring_app(pyfunc) as port:
        for doc in ({"inputs": sentences}, {"instances": sentences},
                    {"dataframe_split": {"columns": ["x"], "data": [[s] for s in sentences]}}):
            status, body = _invoke(port, doc)
            assert status == 200, body
            check("encode", body["predictions"])
        for name, inputs in (("decode", z), ("reconstruct", sentences), ("sample", seeds)):
            status, body = _invoke(port, {"inputs": np.asarray(inputs).tolist(), "params": {"signature": name}})
            assert status == 200, body
            check(name, body["predictions"])
        status, body = _invoke(port, {"inputs": ["w1", ""]})
        assert status == 400 and "x row 1 is empty" in body["message"], body
        status, body = _invoke(port, {"dataframe_records": [{"x": "w1"}, {"x": 3}]})
        assert status == 400 and "row 1 is of type int" in body["message"], body
