"""REST contract of `vae-tf serve` (TF Serving's API, ../shared/reference/tf-serving-api.md §2-§6):
every route and format, status codes, messages and headers, on 127.0.0.1 with a free port."""

from __future__ import annotations

import base64
import http.client
import json
import math
import socket

import numpy as np
import pytest
import tensorflow as tf

from serving.client import RestClient, ServingRequestError
from serving.testing import export_tiny_model, running_server


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    base = tmp_path_factory.mktemp("models")
    export_tiny_model(base, "vae", seed=0)
    labels = base / "labels.yaml"
    labels.write_text("labels: {stable: 1}\n")
    with running_server(base, "vae", labels_file=str(labels), rest_max_body_bytes=256 * 1024) as server:
        yield server, tf.saved_model.load(str(base / "vae" / "1"))


@pytest.fixture
def rest(served):
    server, _ = served
    conn = http.client.HTTPConnection("127.0.0.1", server.rest_port, timeout=30)
    yield Requester(conn)
    conn.close()


class Requester:
    def __init__(self, conn):
        self.conn = conn

    def __call__(self, method, path, body=None, raw=False):
        if body is not None and not isinstance(body, bytes):
            body = json.dumps(body).encode()
        self.conn.request(method, path, body=body)
        response = self.conn.getresponse()
        payload = response.read()
        assert response.getheader("Content-Type") == "application/json"
        if raw:
            return response.status, payload
        return response.status, json.loads(payload) if payload else None


def _x(n, seed=0):
    return np.random.default_rng(seed).random((n, 8, 8, 1)).astype(np.float32)


def _local(model, name, **inputs):
    return {k: v.numpy() for k, v in model.signatures[name](**{k: tf.constant(v) for k, v in inputs.items()}).items()}


# -- status and metadata ----------------------------------------------------------------------


def test_status_routes(rest):
    expected = {"model_version_status": [{"version": "1", "state": "AVAILABLE",
                                          "status": {"error_code": "OK", "error_message": ""}}]}
    for path in ("/v1/models/vae", "/v1/models/vae/versions/1", "/v1/models/vae/labels/stable", "/V1/MODELS/vae"):
        assert rest("GET", path) == (200, expected), path
    assert rest("GET", "/v1/models/nope") == (404, {"error": "Could not find any versions of model nope"})
    assert rest("GET", "/v1/models/vae/versions/7") == (404, {"error": "Could not find version 7 of model vae"})
    # TF Serving's status ignores a label, known or not (GetModelStatusWithModelSpec), and lists every version
    assert rest("GET", "/v1/models/vae/labels/gold") == (200, expected)
    assert rest("GET", "/v1/models/nope/labels/stable") == (404, {"error": "Could not find any versions of model nope"})
    assert rest("GET", "/v1/models/vae/labels/gold/metadata") == (
        400, {"error": "Unrecognized servable version label: gold"})  # metadata resolves the label
    assert rest("GET", "/v1/models") == (400, {"error": "Missing model name in request."})


def test_metadata_lists_every_signature_def(rest):
    status, body = rest("GET", "/v1/models/vae/metadata")
    assert status == 200
    assert body["model_spec"] == {"name": "vae", "signature_name": "", "version": "1"}
    sigs = body["metadata"]["signature_def"]["signature_def"]  # the doubled key of SignatureDefMap
    assert set(sigs) == {"encode", "decode", "reconstruct", "sample", "serving_default", "__saved_model_init_op"}
    x = sigs["encode"]["inputs"]["x"]
    assert x["dtype"] == "DT_FLOAT" and x["name"] == "encode_x:0"
    assert x["tensor_shape"] == {"dim": [{"size": "-1", "name": ""}, {"size": "8", "name": ""},
                                         {"size": "8", "name": ""}, {"size": "1", "name": ""}], "unknown_rank": False}
    assert set(sigs["encode"]["outputs"]) == {"embedding", "z_mean", "z_log_var"}
    assert sigs["encode"]["method_name"] == "tensorflow/serving/predict"
    assert sigs["sample"]["inputs"]["seed"]["dtype"] == "DT_INT32"
    assert sigs["__saved_model_init_op"]["outputs"]["__saved_model_init_op"]["tensor_shape"]["unknown_rank"] is True
    assert rest("GET", "/v1/models/vae/versions/1/metadata")[1] == body
    assert rest("GET", "/v1/models/vae/labels/stable/metadata")[1] == body
    assert rest("GET", "/v1/models/nope/metadata") == (404, {"error": "Servable not found for request: Latest(nope)"})
    assert rest("GET", "/v1/models/vae/versions/2/metadata") == (
        404, {"error": "Servable not found for request: Specific(vae, 2)"})


# -- predict ----------------------------------------------------------------------------------


def test_row_format_several_outputs_and_default_signature(rest, served):
    _, model = served
    x = _x(3)
    status, body = rest("POST", "/v1/models/vae:predict", {"instances": x.tolist()})  # serving_default = encode
    assert status == 200 and len(body["predictions"]) == 3
    local = _local(model, "encode", x=x)
    for i, row in enumerate(body["predictions"]):
        assert set(row) == {"embedding", "z_mean", "z_log_var"}
        for key, value in row.items():
            np.testing.assert_array_equal(np.asarray(value, np.float32), local[key][i])  # exact float32 values


def test_row_format_one_output_omits_the_name(rest, served):
    _, model = served
    x = _x(2, seed=1)
    status, body = rest("POST", "/v1/models/vae/versions/1:predict", {"signature_name": "reconstruct",
                                                                       "instances": x.tolist()})
    assert status == 200
    np.testing.assert_array_equal(np.asarray(body["predictions"], np.float32), _local(model, "reconstruct", x=x)["x_mean"])
    # Objects naming the one input are accepted too.
    status, named = rest("POST", "/v1/models/vae:predict", {"signature_name": "reconstruct",
                                                            "instances": [{"x": row} for row in x.tolist()]})
    assert status == 200 and named == body


def test_columnar_format(rest, served):
    _, model = served
    seeds = [[1, 2], [3, 4], [1, 2]]
    status, body = rest("POST", "/v1/models/vae/labels/stable:predict",
                        {"signature_name": "sample", "inputs": {"seed": seeds}})
    assert status == 200 and set(body["outputs"]) == {"z", "x_mean", "x_sample"}
    local = _local(model, "sample", seed=np.asarray(seeds, np.int32))
    for key, value in body["outputs"].items():
        np.testing.assert_array_equal(np.asarray(value, np.float32), local[key])
    assert body["outputs"]["z"][0] == body["outputs"]["z"][2]  # one sample per seed row, reproducible
    z = np.asarray(body["outputs"]["z"], np.float32)
    status, decoded = rest("POST", "/v1/models/vae:predict", {"signature_name": "decode", "inputs": z.tolist()})
    assert status == 200 and set(decoded["outputs"]) == {"x_mean", "x_sample"}
    status, rec = rest("POST", "/v1/models/vae:predict", {"signature_name": "reconstruct", "inputs": _x(1).tolist()})
    assert status == 200 and np.asarray(rec["outputs"]).shape == (1, 8, 8, 1)  # one output: no name


def test_batch_of_64_and_ints_for_floats(rest, served):
    _, model = served
    x = (_x(64) > 0.5).astype(np.int64)  # JSON ints are accepted for a float input
    status, body = rest("POST", "/v1/models/vae:predict", {"signature_name": "encode", "inputs": {"x": x.tolist()}})
    assert status == 200
    np.testing.assert_array_equal(np.asarray(body["outputs"]["z_mean"], np.float32),
                                  _local(model, "encode", x=x.astype(np.float32))["z_mean"])


def test_nan_and_infinity_tokens(rest):
    x = _x(1).tolist()
    x[0][0][0][0] = float("nan")
    x[0][1][0][0] = float("-inf")
    body = json.dumps({"signature_name": "encode", "inputs": x}).encode()
    assert b"NaN" in body and b"-Infinity" in body  # the tokens TF Serving reads and writes
    status, payload = rest("POST", "/v1/models/vae:predict", body)
    # Read, then refused by default (tests/test_serving_non_finite.py: positions, gRPC, --allow-non-finite).
    assert status == 400 and payload["error"].startswith("Input x of signature encode has a non-finite value NaN at "
                                                         "index (0, 0, 0, 0) (2 of 64 values")
    from serving.json_codec import COLUMNAR, predict_response

    written = predict_response({"z": np.array([[np.nan, np.inf, -np.inf, 1.5]], np.float32)}, COLUMNAR)
    assert written == b'{"outputs": [[NaN, Infinity, -Infinity, 1.5]]}'


def test_client_signature_methods(served):
    server, model = served
    client = RestClient(server.rest_url, "vae")
    x = _x(5, seed=3)
    encoded = client.encode(x)
    np.testing.assert_array_equal(encoded["embedding"], _local(model, "encode", x=x)["embedding"])
    assert encoded["embedding"].dtype == np.float32
    assert client.decode(encoded["z_mean"])["x_mean"].shape == (5, 8, 8, 1)
    assert client.reconstruct(x)["x_mean"].shape == (5, 8, 8, 1)
    drawn = client.sample(4, seed=7)
    np.testing.assert_array_equal(drawn["z"], _local(model, "sample", seed=np.array([[7, i] for i in range(4)],
                                                                                     np.int32))["z"])
    assert client.status()["model_version_status"][0]["state"] == "AVAILABLE"
    assert client.metadata()["model_spec"]["version"] == "1"
    assert RestClient(server.rest_url, "vae", label="stable").encode(x)["z_mean"].shape == (5, 4)
    with pytest.raises(ServingRequestError, match="HTTP 404: Servable not found for request: Latest\\(other\\)"):
        RestClient(server.rest_url, "other").encode(x)
    # 0-255 pixels were sent as floats and encoded without a word (the gRPC server refuses them as TF Serving does)
    with pytest.raises(ServingRequestError) as refused:
        client.encode((x * 255).astype(np.uint8))
    assert str(refused.value).startswith("give images as floats scaled as the model's training data was (uint8 pixels "
                                         "/ 255 for a model of [0, 1] images), not uint8 values up to ")
    binary = (x > 0.5).astype(np.uint8)  # 0/1 images of a binary data set are the model's own values: sent
    np.testing.assert_allclose(client.encode(binary)["z_mean"], client.encode(binary.astype(np.float32))["z_mean"])


# -- client mistakes: 4xx with TF Serving's messages, never a 500 ----------------------------------
#
# Each expected text names where it comes from, checked against tensorflow/serving at commit
# 9d981c5 (master, 2026-07-30; docs/serving.md, "Where each error text comes from"):
JT = "tensorflow_serving/util/json_tensor.cc"  # the REST JSON <-> tensor code
HANDLER = "tensorflow_serving/model_servers/http_rest_api_handler.cc"
UTIL = "tensorflow_serving/model_servers/http_rest_api_util.cc"
MANAGER = "tensorflow_serving/core/basic_manager.cc + core/manager.h (ServableRequest::DebugString)"
CORE = "tensorflow_serving/model_servers/server_core.cc"
CLASSIFIER = "tensorflow_serving/servables/tensorflow/classifier.cc (default flags: server.h)"
REGRESSOR = "tensorflow_serving/servables/tensorflow/regressor.cc (default flags: server.h)"
RAPIDJSON = "rapidjson include/rapidjson/error/en.h (GetParseError_En), quoted by ParseJson in " + JT
DTYPE = JT + " TypeError; the type name is TensorFlow's DataTypeString (tensorflow/core/framework/types.cc)"
QUOTED = JT + "; the quoted document as rapidjson's PrettyWriter writes it, objects on one line (ours)"
OURS = "ours: a project rule, not TF Serving's"

BAD_REQUESTS = [
    # (body, status, exact message, source)
    ({"signature_name": "nope", "instances": [[1]]}, 400, 'Serving signature name: "nope" not found in signature def',
     HANDLER + " GetInfoMap"),
    ({"signature_name": 3, "instances": [[1]]}, 400,
     "JSON Value: {\"signature_name\": 3, \"instances\": [[1]]} not formatted correctly. 'signature_name' key must be "
     "a string value.", QUOTED + " FormatSignatureError"),
    ({"signature_name": "__saved_model_init_op", "instances": [[1]]}, 400,
     "Failed to get input map for signature: __saved_model_init_op", JT + " FillPredictRequestFromJson"),
    ({"signature_name": "encode"}, 400, "Missing 'inputs' or 'instances' key", JT + " FillPredictRequestFromJson"),
    ({"instances": [[1]], "inputs": [[1]]}, 400,
     "JSON Value: {\"instances\": [[1]], \"inputs\": [[1]]} Not formatted correctly expecting only one of 'inputs' or "
     "'instances' keys to exist ", QUOTED + " FillPredictRequestFromJson"),
    ({"instances": []}, 400, "JSON Value: {\"instances\": []} No values in 'instances' array",
     QUOTED + " FillPredictRequestFromJson"),
    # "Expecting", since tensorflow/serving a0a9d14 (2020) fixed the "Excepting" typo.
    ({"instances": {"x": 1}}, 400, "JSON Value: {\"instances\": {\"x\": 1}} Expecting 'instances' to be an list/array",
     QUOTED + " FillPredictRequestFromJson"),
    ({"signature_name": "encode", "inputs": {"y": [[1]]}}, 400, "Missing named input: x in 'inputs' object.",
     JT + " FillTensorMapFromInputsMap"),
    ({"signature_name": "encode", "instances": [{"y": 1}]}, 400,
     "Failed to process element: 0 key: y of 'instances' list. Error: INVALID_ARGUMENT: JSON object: does not have "
     "named input: y", JT + " FillTensorMapFromInstancesList + AddInstanceItem (absl::Status::ToString)"),
    ({"signature_name": "encode", "instances": [[[[0.5]] * 8] * 8, [1, 2]]}, 400,
     "Failed to process element: 1 of 'instances' list. Error: INVALID_ARGUMENT: Expecting tensor size: 64 but got: 2",
     JT + " AddInstanceItem"),
    ({"signature_name": "encode", "instances": [[0.5] * 64]}, 400,
     "Input x of signature encode has shape [1,64] but the signature expects [-1,8,8,1] (-1: any size); send a batch "
     "of examples, each of shape [8,8,1]", OURS + " (TF Serving runs the model and relays TensorFlow's shape error)"),
    ({"signature_name": "encode", "inputs": [[[["a"]] * 8] * 8]}, 400,
     'JSON Value: "a" Type: String is not of expected type: float', DTYPE),
    ({"signature_name": "encode", "inputs": [[[[True]] * 8] * 8]}, 400,
     "JSON Value: true Type: True is not of expected type: float", DTYPE),
    # TF Serving converts any JSON number for a float input (GetFloat: 1e39 becomes inf; the
    # precision check went in tensorflow/serving 57dac6c, 2021); refusing the inf is ours.
    ({"signature_name": "encode", "inputs": [[[[1e39]] * 8] * 8]}, 400,
     "Input x of signature encode has a non-finite value Infinity at index (0, 0, 0, 0) (64 of 64 values are NaN or "
     "infinite); send finite numbers, or start the server with --allow-non-finite to pass them to the model",
     OURS + " (serving/model_store.py, --allow-non-finite)"),
    ({"signature_name": "sample", "inputs": {"seed": [[1.5, 2]]}}, 400,
     "JSON Value: 1.5 Type: Number is not of expected type: int32", DTYPE),
    ({"signature_name": "sample", "inputs": {"seed": [[float("nan"), 2]]}}, 400,
     "JSON Value:  Type: Number is not of expected type: int32",  # rapidjson's Writer refuses to write NaN
     DTYPE),
    ({"signature_name": "sample", "instances": [[1, 2], [3]]}, 400,
     "Failed to process element: 1 of 'instances' list. Error: INVALID_ARGUMENT: Expecting tensor size: 2 but got: 1",
     JT + " AddInstanceItem"),
    ({"signature_name": "sample", "inputs": [[1, 2], [3]]}, 400,
     "Encountered list at unexpected size: 1 at level: 1 expected size: 2", JT + " FillTensorProto"),
    ({"signature_name": "sample", "inputs": [[1, [2]]]}, 400, "Encountered list at unexpected level: 2 expected < 2",
     JT + " FillTensorProto"),
    ({"signature_name": "sample", "inputs": [[1, 2, 3]]}, 400,
     "Input seed of signature sample has shape [1,3] but the signature expects [-1,2] (-1: any size); send a batch of "
     "examples, each of shape [2]", OURS),
    ({"signature_name": "sample", "inputs": [[2**40, 1]]}, 400,
     "JSON Value: 1099511627776 Type: Number is not of expected type: int32", DTYPE + " (rapidjson IsInt: int32 only)"),
    ([1, 2], 400, "JSON Value: [1, 2] Is not object", JT + " ParseJson; rapidjson PrettyWriter kFormatSingleLineArray"),
]


@pytest.mark.parametrize("body,status,message,source", BAD_REQUESTS, ids=[m[:40] for _, _, m, _ in BAD_REQUESTS])
def test_bad_predict_requests(rest, body, status, message, source):
    got_status, got = rest("POST", "/v1/models/vae:predict", json.dumps(body, allow_nan=True).encode())
    assert (got_status, got["error"]) == (status, message), source


def test_ints_and_out_of_range_numbers_for_a_float_input_are_converted_as_tf_serving_does(rest, served):
    """JSON numbers for a float input are cast as C++ casts them (json_tensor.cc AddValueToTensor:
    GetFloat), precision lost silently: 16777217 is read as 16777216.0 (g3doc/api_rest.md,
    "Floating Point Precision")."""
    _, model = served
    x = np.full((1, 8, 8, 1), 16777217, dtype=np.int64)
    status, body = rest("POST", "/v1/models/vae:predict", {"signature_name": "encode", "inputs": x.tolist()})
    assert status == 200
    want = _local(model, "encode", x=np.full((1, 8, 8, 1), 16777216.0, np.float32))["z_mean"]
    np.testing.assert_array_equal(np.asarray(body["outputs"]["z_mean"], np.float32), want)


ROUTING = [
    # (method, path, body, status, message, source); a message ending in "..." is a prefix.
    ("POST", "/v1/models/vae:predict", b"", 400, "JSON Parse error: The document is empty", JT + " ParseJson"),
    ("POST", "/v1/models/vae:predict", b"  \n ", 400, "JSON Parse error: The document is empty. at offset: 4",
     RAPIDJSON),
    ("POST", "/v1/models/vae:predict", b"{\"instances\": [1, 2", 400,
     "JSON Parse error: Missing a comma or ']' after an array element. at offset: 19", RAPIDJSON),
    ("POST", "/v1/models/vae:predict", b"{bad}", 400, "JSON Parse error: Missing a name for object member. at offset: 1",
     RAPIDJSON),
    # ParseJson's kParseStopWhenDoneFlag: whatever follows the first complete value is not read.
    ("POST", "/v1/models/vae:predict", b"{\"a\": 1} x", 400, "Missing 'inputs' or 'instances' key",
     JT + " ParseJson + FillPredictRequestFromJson"),
    ("POST", "/v1/models/vae:predict", b"\xff\xfe\x00", 400, "JSON Parse error: Invalid value. at offset: 0", RAPIDJSON),
    # rapidjson parses any depth (kParseIterativeFlag); Python's parser cannot, so this one is ours.
    ("POST", "/v1/models/vae:predict", b"[" * 100000 + b"]" * 100000, 400,
     "JSON Parse error: The document is nested too deeply; send tensors with fewer dimensions", OURS),
    ("POST", "/v1/models/nope:predict", b"{\"instances\": [1]}", 404, "Servable not found for request: Latest(nope)",
     MANAGER),
    ("POST", "/v1/models/vae/versions/9:predict", b"{\"instances\": [1]}", 404,
     "Servable not found for request: Specific(vae, 9)", MANAGER),
    # ParseModelInfo fails before ProcessRequest writes the JSON error body: status, empty body.
    ("POST", "/v1/models/vae/versions/99999999999999999999:predict", b"{}", 400, None, UTIL + " ParseModelInfo; "
     + HANDLER + " ProcessRequest"),
    ("POST", "/v1/models/vae/labels/gold:predict", b"{\"instances\": [1]}", 400,
     "Unrecognized servable version label: gold", CORE),
    ("POST", "/v1/models/..%2F..%2Fetc:predict", b"{\"instances\": [1]}", 404,
     "Servable not found for request: Latest(../../etc)", MANAGER + "; name decoded by " + UTIL + " DecodeArg"),
    ("POST", "/v1/models/%2Ftmp%2Fvae:predict", b"{\"instances\": [1]}", 404,
     "Servable not found for request: Latest(/tmp/vae)", MANAGER + "; name decoded by " + UTIL + " DecodeArg"),
    ("GET", "/v1/models/vae:predict", None, 400, "Malformed request: GET /v1/models/vae:predict", HANDLER),
    ("POST", "/v1/models/vae", b"{}", 400, "Malformed request: POST /v1/models/vae", HANDLER),
    ("PUT", "/v1/models/vae:predict", b"{}", 400, "Malformed request: PUT /v1/models/vae:predict", HANDLER),
    ("GET", "/v1/models/vae/versions/1/labels/stable", None, 400,
     "Malformed request: GET /v1/models/vae/versions/1/labels/stable", HANDLER + " (path regexes in " + UTIL + ")"),
    ("GET", "/v1/whatever", None, 400, "Malformed request: GET /v1/whatever", HANDLER),
    # Default flags: the method name is not checked, the signature's inputs and outputs are
    # (serving_default = encode: input x, outputs embedding, z_log_var, z_mean).
    ("POST", "/v1/models/vae:classify", b"{\"examples\": [{\"a\": 1}]}", 400,
     "Expected one or two output Tensors, found 3", CLASSIFIER + " PreProcessClassification"),
    ("POST", "/v1/models/vae:regress", b"{\"examples\": [{\"a\": 1}]}", 400, "Expected one output Tensor.",
     REGRESSOR + " PreProcessRegression"),
    ("POST", "/v1/models/vae:classify", b"{\"examples\": [{}], \"signature_name\": \"reconstruct\"}", 400,
     'No classification inputs found in SignatureDef: inputs {\\n  key: "x"\\n...',
     CLASSIFIER + " (the SignatureDef's DebugString; line breaks written as \\n: ours)"),
    ("POST", "/v1/models/vae:classify", b"{\"examples\": [{}], \"signature_name\": \"nope\"}", 400,
     "No signature was found with the name: nope", CLASSIFIER + " GetClassificationSignatureDef"),
    ("POST", "/v1/models/vae:regress", b"{}", 400,
     "JSON Value: {} When method is classify, key 'examples' is expected and was not found",
     JT + " FillClassifyRegressRequestFromJson"),
    ("POST", "/v1/models/vae:classify", b"{\"examples\": [{\"a\": [1, 2.5]}]}", 400,
     "Unexpected element type in feature: a expecting type: int64", JT + " AddValueToFeature"),
    ("POST", "/v1/models/vae:classify", b"{\"examples\": [{\"a\": [[1]]}]}", 400,
     "Feature: a has element with unexpected JSON type: Array", JT + " AddValueToFeature"),
    ("POST", "/v1/models/vae:classify", b"{\"examples\": [3]}", 400, "Example must be JSON object but got JSON Number",
     JT + " MakeExampleFromJsonObject"),
]


@pytest.mark.parametrize("method,path,body,status,message,source", ROUTING, ids=[r[1][:40] + str(r[4])[:30] for r in ROUTING])
def test_routing_and_parse_errors(rest, method, path, body, status, message, source):
    got_status, payload = rest(method, path, body, raw=True)
    if message is None:
        assert (got_status, payload) == (status, b""), source
        return
    got = json.loads(payload)["error"]
    assert got_status == status and "\n" not in got, (got_status, got, source)
    if message.endswith("..."):
        assert got.startswith(message[:-3]), (got, source)
    else:
        assert got == message, (got, source)


def test_a_cors_preflight_is_answered_as_tf_serving_answers_it(served):
    """OPTIONS was "Malformed request". TF Serving (model_servers/http_server.cc) answers a
    preflight before routing: OK when the Origin header holds http(s)://, else
    FAILED_PRECONDITION (400); the body is empty either way (its error-writing handler does not
    run for OPTIONS)."""
    server, _ = served

    def preflight(path, headers):
        conn = http.client.HTTPConnection("127.0.0.1", server.rest_port, timeout=30)
        try:
            conn.request("OPTIONS", path, headers=headers)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    asked = {"Origin": "https://app.example.com", "Access-Control-Request-Method": "POST"}
    assert preflight("/v1/models/vae:predict", asked) == (200, b"")
    assert preflight("/v1/anything/at/all", {"Origin": "http://localhost:3000"}) == (200, b"")
    assert preflight("/v1/models/vae:predict", {}) == (400, b"")
    assert preflight("/v1/models/vae:predict", {"Origin": "null"}) == (400, b"")
    assert preflight("/elsewhere", asked) == (404, LIBEVENT_404)  # no handler: libevent's page


# libevent 2.1.12's evhttp_send_error(req, 404, NULL), which TF Serving's HTTP layer calls for a
# path no handler takes (evhttp_server.cc): its ERR_FORMAT with the reason "Not Found", sent by
# evhttp_send_page_ with "Content-Type: text/html" and "Connection: close".
LIBEVENT_404 = (b"<HTML><HEAD>\n<TITLE>404 Not Found</TITLE>\n</HEAD><BODY>\n<H1>Not Found</H1>\n"
                b"</BODY></HTML>\n")


def test_paths_outside_v1_get_the_html_404_page_of_tf_servings_http_layer(served):
    """It was 404 with an empty body labelled application/json, on which a client's
    ``response.json()`` throws; TF Serving sends libevent's page as text/html and closes."""
    server, _ = served
    for method, path, body in [("GET", "/", None), ("GET", "/healthz", None), ("POST", "/v2/models/vae:predict", b"{}")]:
        with socket.create_connection(("127.0.0.1", server.rest_port), timeout=30) as sock:
            sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body or b'')}\r\n\r\n".encode()
                         + (body or b""))
            answer = b""
            while chunk := sock.recv(65536):  # the server closes the connection after the page
                answer += chunk
        head, _, page = answer.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
        assert lines[0] == "HTTP/1.1 404 Not Found" and page == LIBEVENT_404, path
        assert (headers["content-type"], headers["connection"]) == ("text/html", "close")


def test_oversize_body_is_refused_and_the_server_keeps_serving(served, rest):
    server, _ = served
    big = json.dumps({"instances": _x(600).tolist()}).encode()  # ~1 MB > the 256 KiB limit of this server
    assert len(big) > 256 * 1024
    conn = http.client.HTTPConnection("127.0.0.1", server.rest_port, timeout=30)
    try:
        conn.request("POST", "/v1/models/vae:predict", body=big)
        response = conn.getresponse()
        body = json.loads(response.read())
    except (BrokenPipeError, ConnectionResetError):  # the server may close before reading it all
        body, response = None, None
    finally:
        conn.close()
    if response is not None:
        assert response.status == 413 and "exceeds the limit of 262144 bytes" in body["error"]
    assert rest("GET", "/v1/models/vae")[0] == 200


def test_a_gzip_body_is_inflated_as_tf_serving_inflates_it(served, rest):
    """TF Serving's HTTP server inflates a body whose Content-Encoding contains "gzip"
    (``evhttp_request.cc``); the server read the compressed bytes as JSON ("Invalid value")."""
    import gzip

    server, model = served
    x = _x(3)
    doc = {"signature_name": "encode", "instances": x.tolist()}
    plain = rest("POST", "/v1/models/vae:predict", doc)
    assert plain[0] == 200
    for encoding in ("gzip", "x-gzip", "gzip, deflate"):
        rest.conn.request("POST", "/v1/models/vae:predict", body=gzip.compress(json.dumps(doc).encode()),
                          headers={"Content-Encoding": encoding})
        response = rest.conn.getresponse()
        assert (response.status, json.loads(response.read())) == plain, encoding
    want = _local(model, "encode", x=x)["z_mean"]
    np.testing.assert_allclose([row["z_mean"] for row in plain[1]["predictions"]], want, rtol=1e-5, atol=1e-6)

    def gzipped(body):
        rest.conn.request("POST", "/v1/models/vae:predict", body=body, headers={"Content-Encoding": "gzip"})
        response = rest.conn.getresponse()
        return response.status, json.loads(response.read())

    # A body that does not inflate (not gzip, or cut short) is read as an empty body, as there.
    empty = rest("POST", "/v1/models/vae:predict", b"")
    assert empty[0] == 400
    assert gzipped(json.dumps(doc).encode()) == empty
    assert gzipped(gzip.compress(json.dumps(doc).encode())[:-12]) == empty
    # The body limit (256 KiB on this server) holds for what the body inflates to.
    status, body = gzipped(gzip.compress(b" " * (300 * 1024) + json.dumps(doc).encode()))
    assert status == 413 and body["error"] == (
        "Request body inflates (Content-Encoding: gzip) to more than the limit of 262144 bytes; send fewer "
        "instances per request or raise --rest-max-body-bytes")
    assert rest("GET", "/v1/models/vae")[0] == 200


# -- the fast JSON paths change nothing ---------------------------------------------------------

FAST_PATH_BODIES = [
    b'{"signature_name": "encode", "instances": [[1.5, 2, -3e-5, 0.1]]}',
    b'  {"inputs": {"x": [[1, 2]], "y": [true, false, null]}}  ',
    b'{"a": 1, "a": [2]}',                                # duplicate keys: the last one
    b'{"a": -0.0, "b": -0, "c": 1E5, "d": 18446744073709551615, "e": "\\u00e9\\n"}',
    b'{"a": -9223372036854775809}',                       # below int64: orjson would read a double
    b'{"a": 18446744073709551616}',                       # beyond uint64
    b'{"a": 1e400}', b'{"a": [1e-400, -1e-400, 4.9e-324, 2.2250738585072014e-308, 0.30000000000000004]}',
    b'{"a": [NaN, Infinity, -Infinity]}',
    b'{"a": 1} trailing bytes', b'{"a": 1}{"b": 2}', b'\xef\xbb\xbf{"a": 1}',
    b'{"s": "\\ud800"}', b'{"s": "\xff\xfe"}', b'[1, 2]', b'"text"', b'{"a": [1, 2}', b'{"a" 1}',
    b'[' * 3000 + b']' * 3000, b'{"a": ' + b'[' * 3000 + b']' * 3000 + b'}',
    b'{"a": 0e400}',                                      # orjson reads 0.0, rapidjson refuses it
    b'{"a": [12345678901234567890.5, 1.00000000000000000001, 1e-12345678901234567890]}',  # long digit runs, no integer
    b'{"a": "12345678901234567890 e999"}',               # digits and exponents inside a string
]


def test_orjson_parsing_changes_no_document_and_no_message(monkeypatch):
    """parse_document takes orjson only where it gives what the json path gives: every body,
    valid or not, has the same outcome (document or status and message) with the fast path and
    with the json path alone; and the fast path really runs for plain numeric bodies."""
    from serving import json_codec
    from serving.status import ServingError

    def outcome(body):
        try:
            return "document", repr(json_codec.parse_document(body))
        except ServingError as err:
            return err.code.name, err.message

    fast = [outcome(body) for body in FAST_PATH_BODIES]
    assert json_codec._fast_document(FAST_PATH_BODIES[0]) == json.loads(FAST_PATH_BODIES[0])
    monkeypatch.setattr(json_codec, "_fast_document", lambda body: None)
    assert fast == [outcome(body) for body in FAST_PATH_BODIES]


TOO_BIG = "JSON Parse error: Number too big to be stored in double. at offset: "


@pytest.mark.parametrize("body, outcome", [
    # rapidjson 1.1 Reader::ParseNumber (reader.h), without kParseFullPrecisionFlag, as TF Serving
    # parses: a positive exponent beyond 308 minus the (negative) count of fraction digits read is
    # refused at the number's first byte, whatever its value ...
    (b'{"a": 1e308}', 1e308), (b'{"a": 1e309}', TOO_BIG + "6"), (b'{"a": 1E+400}', TOO_BIG + "6"),
    (b'{"a": 0.1e309}', 1e308), (b'{"a": 0.01e310}', 1e308), (b'{"a": 0e309}', TOO_BIG + "6"),
    (b'{"a": -1e400}', TOO_BIG + "6"),                  # at the minus sign
    (b'{"a": 1e-400}', 0.0), (b'{"a": 1e0000000000308}', 1e308),
    # 17 significant digits are read into the significand, the integer part's first one not
    # counted (16 through the int64 fast path, one more, the rest skipped): 308 + 17 = 325
    (b'{"a": 1.2345678901234567890e325}', math.inf), (b'{"a": 1.2345678901234567890e326}', TOO_BIG + "6"),
    # ... a value that fits the exponent rule but not a double is infinity (18 x 10^307) ...
    (b'{"a": 1.8e308}', math.inf), (b'{"a": 0.10e310}', math.inf),
    # ... and integer digits beyond uint64 go on in a double, refused when it has reached
    # DBL_MAX / 10 before one more digit: 10^308 (309 digits) passes (an int, as Python reads it;
    # a float input converts it), 2 x 10^308 does not.
    (b'{"a": 1' + b'0' * 308 + b'}', 10**308), (b'{"a": 2' + b'0' * 308 + b'}', TOO_BIG + "6"),
    (b'{"a": ' + b'9' * 400 + b'}', TOO_BIG + "6"),
    # anywhere in the document, keys the server ignores included; not in strings; not after the
    # first complete value (kParseStopWhenDoneFlag); whichever error comes first
    (b'{"instances": ["w1"], "x": 1e400}', TOO_BIG + "27"), (b'{"a": "1e400"}', "1e400"),
    (b'{"a": 1} 1e400', 1), (b'{"a": 1e400', TOO_BIG + "6"),
    (b'{"a" 1, "b": 1e400}', "JSON Parse error: Missing a colon after a name of object member. at offset: 5"),
    (b'{"s": "\\ud800", "a": 1e400}', "JSON Parse error: The surrogate pair in string is invalid. at offset: 7"),
    (b'{"a": 1e400, "s": "\\ud800"}', TOO_BIG + "6"),
])
def test_numbers_too_big_for_a_double_stop_the_parse_as_in_rapidjson(body, outcome):
    """Python's parser reads 1e400 as inf, 0e400 as 0.0 and a 400-digit integer exactly; the
    server passed them on (or failed later, without an offset)."""
    from serving import json_codec
    from serving.status import ServingError

    if isinstance(outcome, str) and outcome.startswith("JSON Parse error"):
        with pytest.raises(ServingError) as said:
            json_codec.parse_document(body)
        assert said.value.message == outcome
    else:
        value = json_codec.parse_document(body)["a"]
        assert value == outcome and type(value) is type(outcome)


def test_a_number_too_big_in_an_ignored_key_is_a_400(rest):
    body = json.dumps({"signature_name": "encode", "instances": _x(1).tolist()}).encode()[:-1] + b', "x": 1e400}'
    status, answer = rest("POST", "/v1/models/vae:predict", body)
    assert (status, answer["error"]) == (400, TOO_BIG + str(body.index(b"1e400")))


def test_escaped_lone_surrogates_are_read_as_rapidjson_1_1_reads_them():
    """A high half alone stops the parse at its backslash; a low half alone is kept as the three
    bytes UTF-8 gives its code point (rapidjson 1.1's Encode), never as the raw byte that the
    surrogateescape decoding of a body's non-UTF-8 bytes would alias it to; a pair is its
    character; an escaped backslash is no escape. Offsets count the request's bytes."""
    from serving import json_codec
    from serving.status import ServingError

    def strings(body):
        doc = json_codec.parse_document(body)
        return [v.encode("utf-8", "surrogateescape") for v in doc["a"]]

    assert strings(b'{"a": ["\xc2\\udc80"]}') == [b"\xc2\xed\xb2\x80"]  # not the valid b"\xc2\x80"
    assert strings(b'{"a": ["\\udfff", "\\ud83d\\ude00\xff", "\\\\ud800"]}') == [
        b"\xed\xbf\xbf", "\U0001F600".encode() + b"\xff", b"\\ud800"]
    for body, offset in ((b'{"a": ["\\ud800"]}', 8), (b'{"a": ["\\ud83d x"]}', 8),
                         (b'{"a": ["\\udc80", "\\ud800"]}', 18),  # after a kept low half: request offsets
                         (b'{"a": ["\\ud800"], "b": }', 8)):  # before a later syntax error
        with pytest.raises(ServingError, match=rf"^JSON Parse error: The surrogate pair in string is invalid\. "
                                               rf"at offset: {offset}$"):
            json_codec.parse_document(body)
    with pytest.raises(ServingError, match=r"^JSON Parse error: Invalid value\. at offset: 27$"):
        json_codec.parse_document(b'{"a": "\\udc80\\udc80", "b": ]}')  # offsets after kept low halves
    assert json_codec.parse_document(b'{"a": ["x"]} \\ud800') == {"a": ["x"]}  # after the value: not read


@pytest.mark.parametrize("text, expected", [
    ("dzEyIHc3", b"w12 w7"),
    ("dzEy\nIHc3\n", b"w12 w7"),                        # wrapped, as the base64 tool writes it
    (" dzEy\tIHc3 ", b"w12 w7"),                          # any ASCII whitespace, anywhere
    ("dzEyIHc", b"w12 w"), ("dzEyIHc=", b"w12 w"), ("dzEyIHc.", b"w12 w"),  # padding: none, '=', '.'
    ("dzEyIHc==", None), ("QUJD=", None),                # padding must be what the length needs
    ("Q", None), ("dz=EyIHc3", None), ("not base64!", None), ("dzEyIHc3\u00e9", None),
])
def test_b64_values_decode_as_absl_base64_unescape_decodes_them(text, expected):
    """TF Serving decodes {"b64": ...} with absl::Base64Unescape, which skips whitespace and
    accepts missing padding (a client's wrapped or unpadded base64 is answered, not refused)."""
    from serving import json_codec
    from serving.status import ServingError

    if expected is None:
        with pytest.raises(ServingError, match="^Unable to base64 decode$"):
            json_codec.decode_b64({"b64": text})
    else:
        assert json_codec.decode_b64({"b64": text}) == expected == base64.b64decode("dzEyIHc3")[:len(expected)]


def _as_float32(value):
    if isinstance(value, list):
        return [_as_float32(v) for v in value]
    if isinstance(value, dict):
        return {k: _as_float32(v) for k, v in value.items()}
    return float(np.float32(value)) if isinstance(value, float) else value


def test_numeric_outputs_written_by_orjson_read_back_as_the_json_path_writes_them():
    """Both formats, one and several outputs: the orjson body reads back (as float32) to what the
    json path writes, with float32 values as their shortest text (0.1, not 0.10000000149011612;
    TF Serving writes 0.1 too, and other values with other digits: docs/serving.md, Differences);
    outputs holding NaN keep the NaN token."""
    from serving import json_codec

    rng = np.random.default_rng(0)
    z = rng.normal(size=(3, 4)).astype(np.float32)
    z[0, 0] = 0.1
    several = {"z": z, "n": np.array([1, -2, 2**40], np.int64), "b": np.array([[True], [False], [True]])}
    cases = [(several, json_codec.ROW), (several, json_codec.COLUMNAR), ({"z": z}, json_codec.ROW),
             ({"z": z}, json_codec.COLUMNAR), ({"d": rng.normal(size=(2, 2))}, json_codec.ROW)]
    fast = [json_codec.predict_response(outputs, fmt) for outputs, fmt in cases]
    assert b"0.1," in fast[0] and b"0.10000000149011612" not in fast[0]
    nan = {"z": np.array([[np.nan, 1.0]], np.float32)}
    assert b"NaN" in json_codec.predict_response(nan, json_codec.ROW)
    slow = [json_codec.predict_response(outputs, fmt, use_orjson=False) for outputs, fmt in cases]
    assert b"0.10000000149011612" in slow[0]
    for (outputs, fmt), got, want in zip(cases, fast, slow):
        assert _as_float32(json.loads(got)) == _as_float32(json.loads(want)), (sorted(outputs), fmt)
