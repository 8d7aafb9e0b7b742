"""Hostile input for `vae-tf serve` (issue #8): thousands of hypothesis-generated REST requests
(paths, methods, JSON and non-JSON bodies) and gRPC requests (random model specs and
TensorProtos: wrong dtypes, huge or negative shapes, NaN/Inf, content of the wrong length,
undecodable bytes). No request may get a 5xx, crash or hang the server, and the server must
answer correctly afterwards. Nothing a request carries is ever unpickled.

Deterministic (``derandomize=True``) and bounded: a few thousand requests in all, one server."""

from __future__ import annotations

import ast
import collections
import http.client
import json
import math
import pickle
import re
from pathlib import Path
from urllib.parse import quote

import grpc
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from serving.client import GrpcClient, RestClient
from serving.testing import export_tiny_model, running_server

REST_EXAMPLES = 1500
GRPC_EXAMPLES = 1500
RAW_GRPC_EXAMPLES = 300
SPEC_EXAMPLES = 300
MAX_BODY = 256 * 1024
MAX_MESSAGE = 256 * 1024

BURST_EXAMPLES = 300  # per protocol, in the self-contained health check at the end

FUZZ = settings(deadline=None, derandomize=True, database=None, print_blob=False,
                suppress_health_check=list(HealthCheck))


def fuzz(examples: int) -> settings:
    return settings(FUZZ, max_examples=examples)

# gRPC codes that map to a 4xx (reference §6); every other non-OK code is a 5xx.
CLIENT_ERROR_CODES = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION,
                      grpc.StatusCode.NOT_FOUND, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.OUT_OF_RANGE}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    base = tmp_path_factory.mktemp("models")
    export_tiny_model(base, "vae", seed=0)
    labels = base / "labels.yaml"
    labels.write_text("labels: {stable: 1}\n")
    with running_server(base, "vae", labels_file=str(labels), rest_max_body_bytes=MAX_BODY,
                        grpc_max_message_bytes=MAX_MESSAGE, poll_seconds=0) as server:
        yield server, tf.saved_model.load(str(base / "vae" / "1"))


@pytest.fixture(scope="module", autouse=True)
def no_unpickling():
    """Any unpickling while the fuzz runs fails the test (a request must never reach pickle)."""
    calls = []
    originals = {name: getattr(pickle, name) for name in ("load", "loads")}

    def trap(name):
        def refuse(*args, **kwargs):
            calls.append(name)
            raise AssertionError(f"pickle.{name} called while serving fuzzed requests")
        return refuse

    for name in originals:
        setattr(pickle, name, trap(name))
    yield calls
    for name, original in originals.items():
        setattr(pickle, name, original)
    assert calls == []


# -- REST ----------------------------------------------------------------------------------------

NAMES = ["vae", "VAE", "nope", "", "..", "%2e%2e", "..%2f..%2fetc", "%2Fetc%2Fpasswd", "vae%00", "%ff%fe", "v%25ae"]
SIGNATURES = ["encode", "decode", "reconstruct", "sample", "serving_default", "__saved_model_init_op", "nope", ""]
KEYS = ["signature_name", "instances", "inputs", "x", "z", "seed", "b64", "examples", "context", ""]

finite = st.floats(allow_nan=False, allow_infinity=False, width=32)
numbers = st.one_of(finite, st.floats(), st.integers(-2**70, 2**70), st.sampled_from([0, 1, -1, 2**31, 2**63, 1e39]))
scalars = st.one_of(numbers, st.booleans(), st.none(), st.text(max_size=8), st.builds(lambda s: {"b64": s}, st.text(max_size=8)))
json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=5), st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=6)), inner, max_size=4)),
    max_leaves=40)


@st.composite
def tensors(draw):
    """Nested lists near the signatures' shapes ([-1,8,8,1], [-1,4], [-1,2]), sometimes ragged."""
    shape = draw(st.sampled_from([[1, 8, 8, 1], [2, 8, 8, 1], [1, 4], [3, 4], [2, 2], [1, 64], [0], [1, 8, 8], [2, 3]]))
    values = draw(st.one_of(st.just("uniform"), st.just("ints"), st.just("special"), st.just("ragged")))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    arr = rng.random(shape)
    if values == "ints":
        return rng.integers(-5, 5, shape).tolist()
    if values == "special" and arr.size:
        flat = arr.reshape(-1)
        flat[rng.integers(0, flat.size, 3)] = draw(st.sampled_from([math.nan, math.inf, -math.inf, 1e39, -0.0]))
    out = arr.tolist()
    if values == "ragged" and shape and shape[0] and isinstance(out[0], list):
        out[-1] = out[-1][:-1] or [out[-1]]
    return out


@st.composite
def predict_documents(draw):
    doc = {}
    if draw(st.booleans()):
        doc["signature_name"] = draw(st.one_of(st.sampled_from(SIGNATURES), st.integers(), st.none()))
    layout = draw(st.sampled_from(["instances", "inputs", "inputs_named", "both", "none", "random"]))
    tensor = draw(st.one_of(tensors(), json_values))
    if layout == "instances":
        doc["instances"] = tensor
    elif layout == "inputs":
        doc["inputs"] = tensor
    elif layout == "inputs_named":
        doc["inputs"] = {draw(st.sampled_from(["x", "z", "seed", "y"])): tensor}
    elif layout == "both":
        doc["instances"], doc["inputs"] = tensor, tensor
    elif layout == "random":
        doc.update(draw(st.dictionaries(st.sampled_from(KEYS), json_values, max_size=3)))
    return json.dumps(doc, allow_nan=True).encode()


SIGNATURE_INPUTS = {"encode": ("x", [8, 8, 1]), "reconstruct": ("x", [8, 8, 1]), "serving_default": ("x", [8, 8, 1]),
                    "decode": ("z", [4]), "sample": ("seed", [2])}


@st.composite
def plausible_documents(draw):
    """Well-formed requests for a real signature, with hostile values: NaN, ±Inf, -0.0, the
    float32 limits, big and negative seeds, empty and large batches, row or columnar format."""
    signature = draw(st.sampled_from(sorted(SIGNATURE_INPUTS)))
    alias, row_shape = SIGNATURE_INPUTS[signature]
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    rows = draw(st.sampled_from([1, 1, 2, 5, 64]))
    if alias == "seed":
        values = rng.integers(-2**31, 2**31 - 1, [rows] + row_shape).tolist()
    else:
        flat = rng.normal(0, draw(st.sampled_from([1.0, 1e3, 1e30])), rows * int(np.prod(row_shape)))
        for i in draw(st.lists(st.integers(0, flat.size - 1), max_size=4)):
            flat[i] = draw(st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 3.4028234e38, 1e-45]))
        values = flat.reshape([rows] + row_shape).tolist()
    if draw(st.booleans()):
        doc = {"signature_name": signature, "instances": values}
    else:
        doc = {"signature_name": signature, "inputs": {alias: values} if draw(st.booleans()) else values}
    return json.dumps(doc, allow_nan=True).encode()


bodies = st.one_of(predict_documents(), plausible_documents(), json_values.map(lambda v: json.dumps(v, allow_nan=True).encode()),
                   st.binary(max_size=300), st.just(b""), st.just(b"[" * 50000), st.just(b"{\"instances\": [" * 3000))


@st.composite
def rest_paths(draw):
    name = draw(st.one_of(st.sampled_from(NAMES), st.text(max_size=10).map(lambda t: quote(t, safe=""))))
    path = f"/v1/models/{name}" if draw(st.integers(0, 9)) else draw(st.sampled_from(["/v1/models", "/v1/", "/v2/x", "/"]))
    which = draw(st.sampled_from(["", "version", "label", "both", "junk"]))
    if which in ("version", "both"):
        path += "/versions/" + draw(st.one_of(st.sampled_from(["1", "0", "2", "01", "99999999999999999999"]),
                                              st.text("0123456789-", max_size=25)))
    if which in ("label", "both"):
        path += "/labels/" + quote(draw(st.one_of(st.sampled_from(["stable", "canary", ".."]), st.text(max_size=6))),
                                    safe="")
    if which == "junk":
        path += quote(draw(st.text(max_size=12)), safe="/:%")
    path += draw(st.sampled_from([":predict", ":predict", ":classify", ":regress", "/metadata", "", ":PREDICT", ":x"]))
    return path


class RestConnection:
    """One keep-alive connection, reopened when the server closes it (after 413, 429, ...)."""

    def __init__(self, port: int):
        self.port = port
        self.conn = None

    def request(self, method: str, path: str, body: bytes | None):
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            try:
                self.conn.request(method, path, body=body)
                response = self.conn.getresponse()
                payload = response.read()
            except (ConnectionError, http.client.HTTPException):
                self.conn.close()
                self.conn = None
                if attempt:
                    raise
                continue
            if response.will_close:
                self.conn.close()
                self.conn = None
            return response, payload


@pytest.fixture(scope="module")
def rest(served):
    connection = RestConnection(served[0].rest_port)
    yield connection
    if connection.conn is not None:
        connection.conn.close()


def _check_rest_answer(response, payload, path) -> int:
    """Assert a well-formed non-5xx answer; its HTTP status."""
    assert response.status < 500, (path, response.status, payload[:300])
    if not path.lower().startswith("/v1/"):
        assert response.status == 404 and payload.startswith(b"<HTML><HEAD>\n<TITLE>404 Not Found</TITLE>")
        assert (response.getheader("Content-Type"), response.getheader("Connection")) == ("text/html", "close")
        return
    assert response.getheader("Content-Type") == "application/json"
    if not payload:  # TF Serving's one bodiless error: a version beyond int64 (ParseModelInfo)
        version = re.search(r"/versions/([0-9]+)", path, re.IGNORECASE)
        assert response.status == 400 and version and int(version.group(1)) > 2**63 - 1, (path, response.status)
        return response.status
    body = json.loads(payload)
    assert isinstance(body, dict)
    if response.status != 200:
        assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"], body
        assert "\n" not in body["error"] and "Traceback" not in body["error"], body
    return response.status


@pytest.mark.slow
@fuzz(REST_EXAMPLES)
@given(method=st.sampled_from(["POST", "POST", "POST", "GET", "PUT", "DELETE"]), path=rest_paths(), body=bodies)
def test_rest_fuzz_never_5xx(rest, method, path, body):
    response, payload = rest.request(method, path, body if method != "GET" else None)
    _check_rest_answer(response, payload, path)


@pytest.mark.slow
@fuzz(REST_EXAMPLES // 3)
@given(body=st.one_of(predict_documents(), plausible_documents()))
def test_rest_fuzz_predict_bodies_on_the_real_route(rest, body):
    """The same documents aimed at the one route that runs the model, so they get past routing."""
    response, payload = rest.request("POST", "/v1/models/vae:predict", body)
    _check_rest_answer(response, payload, "/v1/models/vae:predict")


# -- gRPC ----------------------------------------------------------------------------------------

DIMS = st.one_of(st.integers(-3, 10), st.sampled_from([2**31, 2**40, 2**62, 2**63 - 1, -2**63, 8, 64]))
DTYPES = st.one_of(st.sampled_from([1, 1, 1, 2, 3, 7, 9, 10, 19, 14, 8, 20, 21, 101]), st.integers(0, 200))


@st.composite
def tensor_protos(draw):
    proto = tensor_pb2.TensorProto(dtype=draw(DTYPES))
    near = draw(st.booleans())
    dims = draw(st.sampled_from([[1, 8, 8, 1], [2, 4], [1, 2], [3, 8, 8, 1]])) if near else draw(
        st.lists(DIMS, max_size=7))
    proto.tensor_shape.CopyFrom(tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in dims], unknown_rank=draw(st.booleans()) and
        not draw(st.booleans())))
    count = int(np.prod([max(d, 0) for d in dims])) if dims and all(0 <= d <= 512 for d in dims) else 4
    off_by = draw(st.sampled_from([0, 0, 0, -1, 1, 3]))
    content = draw(st.sampled_from(["bytes", "float", "double", "int", "int64", "string", "bool", "half", "none",
                                    "mixed"]))
    n = max(count + off_by, 0) if count <= 4096 else draw(st.integers(0, 8))
    special = st.sampled_from([math.nan, math.inf, -math.inf, 0.0, 1e39, -1e-45])
    if content == "bytes":
        size = n * draw(st.sampled_from([1, 2, 4, 8])) + draw(st.sampled_from([0, 0, 1, 3]))
        proto.tensor_content = draw(st.binary(min_size=min(size, 64), max_size=min(size, 64))) * (size // 64 + 1)
        proto.tensor_content = proto.tensor_content[:size]
    elif content in ("float", "double", "mixed"):
        values = np.random.default_rng(n).random(n).tolist()
        for i in draw(st.lists(st.integers(0, max(n - 1, 0)), max_size=3)):
            if values:
                values[i] = draw(special)
        (proto.double_val if content == "double" else proto.float_val).extend(values)
        if content == "mixed":
            proto.int_val.extend(range(draw(st.integers(0, 5))))
    elif content == "int":
        proto.int_val.extend(draw(st.lists(st.integers(-2**31, 2**31 - 1), min_size=min(n, 20), max_size=min(n, 20))))
    elif content == "int64":
        proto.int64_val.extend(draw(st.lists(st.integers(-2**63, 2**63 - 1), max_size=20)))
    elif content == "string":
        proto.string_val.extend(draw(st.lists(st.binary(max_size=10), max_size=20)))
    elif content == "bool":
        proto.bool_val.extend(draw(st.lists(st.booleans(), max_size=20)))
    elif content == "half":
        proto.half_val.extend(draw(st.lists(st.integers(0, 2**16 - 1), max_size=20)))
    return proto


@st.composite
def model_specs(draw):
    spec = model_pb2.ModelSpec(name=draw(st.one_of(st.sampled_from(["vae", "vae", "vae", "", "nope", "../vae",
                                                                     "/etc/passwd", "vae/1"]), st.text(max_size=8))))
    spec.signature_name = draw(st.one_of(st.sampled_from(SIGNATURES), st.text(max_size=6)))
    choice = draw(st.sampled_from(["none", "none", "version", "label"]))
    if choice == "version":
        spec.version.value = draw(st.one_of(st.sampled_from([1, 0, -1, 2]), st.integers(-2**63, 2**63 - 1)))
    elif choice == "label":
        spec.version_label = draw(st.one_of(st.sampled_from(["stable", "canary", ""]), st.text(max_size=6)))
    return spec


@st.composite
def predict_requests(draw):
    request = predict_pb2.PredictRequest(model_spec=draw(model_specs()))
    for alias in draw(st.lists(st.one_of(st.sampled_from(["x", "z", "seed"]), st.text(max_size=4)), max_size=3,
                               unique=True)):
        request.inputs[alias].CopyFrom(draw(tensor_protos()))
    request.output_filter.extend(draw(st.lists(st.sampled_from(["z_mean", "embedding", "x_mean", "z", "nope", ""]),
                                               max_size=3)))
    return request


@st.composite
def plausible_predict_requests(draw):
    """A real signature and input of the right shape, in a dtype that may need a cast, as
    ``tensor_content`` or typed values, with NaN/Inf and sometimes a byte or value too few or
    too many."""
    signature = draw(st.sampled_from(sorted(SIGNATURE_INPUTS)))
    alias, row_shape = SIGNATURE_INPUTS[signature]
    rows = draw(st.sampled_from([0, 1, 2, 7]))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    dtype = draw(st.sampled_from([np.float32, np.float64, np.int32, np.int64, np.float16, np.uint8]))
    values = rng.normal(0, 10, [rows] + row_shape)
    if values.size and np.dtype(dtype).kind == "f":
        values.reshape(-1)[rng.integers(0, values.size, 2)] = draw(st.sampled_from([math.nan, math.inf, -math.inf]))
    if np.dtype(dtype).kind != "f":
        values = np.nan_to_num(values)
    proto = tf.make_tensor_proto(values.astype(dtype))
    if draw(st.booleans()):  # typed fields instead of tensor_content
        proto = tensor_pb2.TensorProto(dtype=proto.dtype, tensor_shape=proto.tensor_shape)
        field = {np.float32: "float_val", np.float64: "double_val", np.int64: "int64_val",
                 np.float16: "half_val"}.get(dtype, "int_val")
        flat = values.astype(dtype).reshape(-1)
        getattr(proto, field).extend(flat.view(np.uint16).tolist() if dtype is np.float16 else flat.tolist())
    cut = draw(st.sampled_from([0, 0, 0, 1, -1]))
    if cut and proto.tensor_content:
        proto.tensor_content = proto.tensor_content[:-1] if cut > 0 else proto.tensor_content + b"\0"
    request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name="vae", signature_name=signature))
    request.inputs[alias].CopyFrom(proto)
    return request


@pytest.fixture(scope="module")
def channel(served):
    with grpc.insecure_channel(served[0].grpc_target, options=[("grpc.max_send_message_length", 64 * 2**20)]) as ch:
        yield ch


def _check_grpc(call, request) -> str:
    """Call; assert OK or a client-error code with a one-line message; the code's name."""
    try:
        call(request, timeout=60)
        return "OK"
    except grpc.RpcError as err:
        assert err.code() in CLIENT_ERROR_CODES, (err.code(), err.details(), str(request)[:400])
        assert err.details() and "\n" not in err.details(), err.details()
        return err.code().name


@pytest.mark.slow
@fuzz(GRPC_EXAMPLES)
@given(request=st.one_of(predict_requests(), plausible_predict_requests()))
def test_grpc_fuzz_predict_never_5xx(channel, request):
    _check_grpc(prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict, request)


@fuzz(SPEC_EXAMPLES)
@given(spec=model_specs(), fields=st.lists(st.sampled_from(["signature_def", "graph", ""]), max_size=2))
def test_grpc_fuzz_metadata_and_status_never_5xx(channel, spec, fields):
    _check_grpc(prediction_service_pb2_grpc.PredictionServiceStub(channel).GetModelMetadata,
                get_model_metadata_pb2.GetModelMetadataRequest(model_spec=spec, metadata_field=fields))
    _check_grpc(model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus,
                get_model_status_pb2.GetModelStatusRequest(model_spec=spec))


@pytest.mark.slow
@fuzz(RAW_GRPC_EXAMPLES)
@given(data=st.one_of(st.binary(max_size=200), predict_requests().map(lambda r: r.SerializeToString()[:-1])))
def test_grpc_fuzz_undecodable_messages(channel, data):
    """Bytes that are not a PredictRequest: gRPC answers INTERNAL before any handler runs, as
    TF Serving's C++ gRPC does ("Failed to parse request"); the server must simply go on."""
    predict = channel.unary_unary("/tensorflow.serving.PredictionService/Predict",
                                  request_serializer=lambda b: b, response_deserializer=lambda b: b)
    try:
        predict(data, timeout=60)
    except grpc.RpcError as err:
        if err.code() == grpc.StatusCode.INTERNAL:
            assert "deserializing request" in err.details(), err.details()
        else:
            assert err.code() in CLIENT_ERROR_CODES, (err.code(), err.details())


# -- afterwards ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_server_is_healthy_after_a_fuzz_burst(served):
    """Self-contained (it passes alone or after the tests above): a burst of hostile predict
    requests over both protocols, then both still give the in-process answer and nothing is
    left in flight."""
    server, model = served
    answers = collections.Counter()
    rest = RestConnection(server.rest_port)
    with grpc.insecure_channel(server.grpc_target, options=[("grpc.max_send_message_length", 64 * 2**20)]) as ch:
        predict = prediction_service_pb2_grpc.PredictionServiceStub(ch).Predict

        @fuzz(BURST_EXAMPLES)
        @given(body=st.one_of(predict_documents(), plausible_documents()),
               request=st.one_of(predict_requests(), plausible_predict_requests()))
        def burst(body, request):
            response, payload = rest.request("POST", "/v1/models/vae:predict", body)
            answers["rest", _check_rest_answer(response, payload, "/v1/models/vae:predict")] += 1
            answers["grpc", _check_grpc(predict, request)] += 1

        burst()
    if rest.conn is not None:
        rest.conn.close()
    # The burst really ran (hypothesis did not stop early) and did not all bounce off the
    # parser: some requests ran the model and were answered.
    assert sum(n for (protocol, _), n in answers.items() if protocol == "rest") >= BURST_EXAMPLES, answers
    assert answers["rest", 200] >= 20 and answers["grpc", "OK"] >= 20, answers
    _assert_healthy(server, model, "vae", np.random.default_rng(7).random((3, 8, 8, 1)).astype(np.float32))


def _assert_healthy(server, model, name: str, x) -> None:
    """Both protocols give the in-process codes of ``x``, the version is AVAILABLE, nothing is in flight."""
    want = model.signatures["encode"](x=tf.constant(x))["z_mean"].numpy()
    for client in (RestClient(server.rest_url, name), GrpcClient(server.grpc_target, name)):
        np.testing.assert_allclose(client.encode(x)["z_mean"], want, rtol=1e-5, atol=1e-6)
        assert client.status()["model_version_status"][0]["state"] == "AVAILABLE"
        client.close()
    assert server.rest.app.in_flight == 0


def test_request_handling_code_has_no_pickle_or_eval():
    """Static guard for the modules a request passes through: no unpickling or code loading."""
    forbidden_modules = {"pickle", "cPickle", "dill", "cloudpickle", "joblib", "marshal", "shelve"}
    forbidden_builtins = {"eval", "exec", "compile", "__import__"}
    root = Path(__file__).resolve().parents[1] / "serving"
    for name in ("rest.py", "connections.py", "grpc_server.py", "json_codec.py", "model_store.py", "batching.py",
                 "status.py", "text.py"):
        tree = ast.parse((root / name).read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                assert not {m.split(".")[0] for m in modules} & forbidden_modules, (name, modules)
            if isinstance(node, ast.Call):
                func = node.func
                assert not (isinstance(func, ast.Name) and func.id in forbidden_builtins), (name, ast.unparse(node))
                if isinstance(func, ast.Attribute) and func.attr in ("load", "loads"):
                    # json.loads / orjson.loads (request bodies), and the SavedModel loader /
                    # Servable.load / yaml.safe_load (the operator's model directory and labels
                    # file, at poll time) are the only loads allowed.
                    text = ast.unparse(func)
                    assert text in ("json.loads", "orjson.loads", "tf.compat.v1.saved_model.loader.load",
                                    "Servable.load", "yaml.safe_load"), (name, text)
                for keyword in node.keywords:
                    assert keyword.arg != "allow_pickle", (name, ast.unparse(node))


# -- a text model ----------------------------------------------------------------------------------
# The same guarantees for sentences (issue 17): strings of any Unicode, bytes that are not UTF-8
# (raw in the JSON, in {"b64": ...} and in string_val), escaped lone surrogates, empty and blank
# sentences, numbers, nulls and nesting where sentences belong, wrong dtypes, batches past the
# limit. Valid sentences must be answered 200; nothing may be a 5xx.

TEXT_REST_EXAMPLES = 500
TEXT_GRPC_EXAMPLES = 500
TEXT_MAX_ROWS = 16


@pytest.fixture(scope="module")
def text_served(text_exports, tmp_path_factory):
    from serving.testing import drop_version
    from serving.text import TextLimits

    base = tmp_path_factory.mktemp("text-models")
    drop_version(text_exports, base, 1, name="text")
    with running_server(base, "text", rest_max_body_bytes=MAX_BODY, grpc_max_message_bytes=MAX_MESSAGE, poll_seconds=0,
                        text_limits=TextLimits(max_rows=TEXT_MAX_ROWS, max_bytes=200)) as server:
        yield server, tf.saved_model.load(str(base / "text" / "1"))


WORDS = ["the", "cat", "sat", "on", "a", "mat", "zebra", "Dog", "ÉTÉ", "don't", "<unk>", "<eos>", ",", "!"]
sentences = st.one_of(st.lists(st.sampled_from(WORDS), min_size=0, max_size=12).map(" ".join), st.text(max_size=40),
                      st.text(alphabet=" \t\n\u00a0\u2003\u2028", max_size=4), st.just("x" * 250))
sentence_values = st.one_of(sentences, sentences, st.binary(max_size=12).map(lambda b: {"b64": base64_text(b)}),
                            st.text(max_size=6).map(lambda t: {"b64": t}), numbers, st.booleans(), st.none(),
                            st.lists(sentences, max_size=2), st.dictionaries(st.sampled_from(["x", "b64", "y"]),
                                                                             sentences, max_size=2))


def base64_text(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode()


def is_valid_sentence(value) -> bool:
    from serving.text import is_blank

    return isinstance(value, str) and not is_blank(value) and len(value.encode()) <= 200


@st.composite
def text_documents(draw):
    """(body, expect_200): a predict document for the text model; expect_200 when it is a
    well-formed encode/reconstruct request of valid sentences within the limits."""
    signature = draw(st.sampled_from(["encode", "encode", "reconstruct", "serving_default", "decode", "sample", "nope"]))
    rows = draw(st.lists(sentence_values, min_size=0, max_size=TEXT_MAX_ROWS + 2))
    layout = draw(st.sampled_from(["instances", "inputs", "inputs_named", "instances_named"]))
    doc = {"signature_name": signature}
    if layout == "instances":
        doc["instances"] = rows
    elif layout == "inputs":
        doc["inputs"] = rows
    elif layout == "inputs_named":
        doc["inputs"] = {"x": rows}
    else:
        doc["instances"] = [{"x": r} for r in rows]
    good = (signature in ("encode", "reconstruct", "serving_default") and 0 < len(rows) <= TEXT_MAX_ROWS
            and all(is_valid_sentence(r) for r in rows))
    return json.dumps(doc, allow_nan=True).encode(), good


@st.composite
def raw_text_bodies(draw):
    """Bytes inside JSON strings that JSON alone cannot express: invalid UTF-8, escaped surrogates."""
    pieces = draw(st.lists(st.one_of(st.binary(max_size=8).map(lambda b: b.replace(b'"', b"").replace(b"\\", b"")),
                                     st.sampled_from([b"\\ud800", b"\\udc80", b"\\ud83d\\ude00", b"\\u0000", b"\xff",
                                                      b"\xc3\x28", b"\xe2\x82", b"caf\xc3\xa9", b" "])),
                           min_size=1, max_size=5))
    return b'{"signature_name": "encode", "instances": ["' + b"".join(pieces) + b'"]}'


def _text_rest(server, body):
    conn = http.client.HTTPConnection("127.0.0.1", server.rest_port, timeout=60)
    try:
        conn.request("POST", "/v1/models/text:predict", body=body)
        response = conn.getresponse()
        return response, response.read()
    finally:
        conn.close()


@pytest.mark.slow
@fuzz(TEXT_REST_EXAMPLES)
@given(document=text_documents())
def test_text_rest_fuzz_never_5xx_and_valid_sentences_answered(text_served, document):
    body, good = document
    response, payload = _text_rest(text_served[0], body)
    status = _check_rest_answer(response, payload, "/v1/models/text:predict")
    if good:
        assert status == 200, (body[:300], payload[:300])


@fuzz(TEXT_REST_EXAMPLES // 2)
@given(body=raw_text_bodies())
def test_text_rest_fuzz_raw_bytes_in_strings(text_served, body):
    response, payload = _text_rest(text_served[0], body)
    status = _check_rest_answer(response, payload, "/v1/models/text:predict")
    try:
        text = json.loads(body)["instances"][0]
        valid = is_valid_sentence(text) and text.encode("utf-8")
    except (ValueError, UnicodeError):
        valid = False
    assert (status == 200) == bool(valid), (body, status, payload[:300])


@st.composite
def text_tensor_protos(draw):
    """An ``x`` for the text model: string_val of arbitrary bytes (or of valid sentences), shapes
    near [-1], sometimes another dtype or a count that does not match the shape."""
    rows = draw(st.integers(0, TEXT_MAX_ROWS + 2))
    shape = draw(st.sampled_from([[rows], [rows], [rows], [1, rows], [], [2, 2]]))
    proto = tensor_pb2.TensorProto(dtype=draw(st.sampled_from([7, 7, 7, 7, 1, 9, 3, 0, 99])))
    proto.tensor_shape.CopyFrom(tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in shape]))
    count = rows + draw(st.sampled_from([0, 0, 0, -1, 1]))
    values = st.one_of(sentences.map(lambda s: s.encode("utf-8", "surrogatepass")), st.binary(max_size=16))
    proto.string_val.extend(draw(st.lists(values, min_size=max(count, 0), max_size=max(count, 0))))
    if draw(st.integers(0, 9)) == 0:
        proto.float_val.extend([1.0] * rows)
    return proto


@pytest.mark.slow
@fuzz(TEXT_GRPC_EXAMPLES)
@given(proto=text_tensor_protos(), signature=st.sampled_from(["encode", "reconstruct", "serving_default", "decode"]))
def test_text_grpc_fuzz_never_5xx_and_valid_sentences_answered(text_served, proto, signature):
    server, _ = text_served
    request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name="text", signature_name=signature))
    request.inputs["x"].CopyFrom(proto)
    with grpc.insecure_channel(server.grpc_target) as channel:
        code = _check_grpc(prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict, request)

    def valid(raw: bytes) -> bool:
        try:
            return is_valid_sentence(raw.decode("utf-8"))
        except UnicodeDecodeError:
            return False

    dims = [d.size for d in proto.tensor_shape.dim]
    good = (signature != "decode" and proto.dtype == 7 and len(dims) == 1 and 0 < dims[0] <= TEXT_MAX_ROWS
            and len(proto.string_val) == dims[0] and not proto.float_val and all(valid(v) for v in proto.string_val))
    if good:
        assert code == "OK", (code, proto)


def test_text_server_is_healthy_after_the_fuzz(text_served):
    server, model = text_served
    _assert_healthy(server, model, "text", ["the cat sat on the mat", "ÉTÉ, don't!", "zebra"])
