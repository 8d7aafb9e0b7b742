"""gRPC contract of `vae-tf serve` with the official stubs (PredictionServiceStub, ModelServiceStub,
tf.make_tensor_proto): every method, codes and messages (reference §6-§7), on 127.0.0.1."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2, get_model_status_pb2, inference_pb2,
                                     model_management_pb2, model_pb2, model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc, regression_pb2)

from serving.client import GrpcClient, ServingRequestError
from serving.testing import export_tiny_model, running_server

MAX_MESSAGE = 512 * 1024


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    base = tmp_path_factory.mktemp("models")
    export_tiny_model(base, "vae", seed=0)
    labels = base / "labels.json"
    labels.write_text('{"labels": {"stable": 1}}')
    with running_server(base, "vae", labels_file=str(labels), grpc_max_message_bytes=MAX_MESSAGE) as server:
        channel = grpc.insecure_channel(server.grpc_target)
        yield (server, tf.saved_model.load(str(base / "vae" / "1")),
               prediction_service_pb2_grpc.PredictionServiceStub(channel), model_service_pb2_grpc.ModelServiceStub(channel))
        channel.close()


@pytest.fixture
def stub(served):
    return served[2]


def _x(n, seed=0):
    return np.random.default_rng(seed).random((n, 8, 8, 1)).astype(np.float32)


def _request(signature="encode", name="vae", version=None, label=None, **inputs):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    if signature is not None:
        request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    if label is not None:
        request.model_spec.version_label = label
    for key, value in inputs.items():
        request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
    return request


def _error(call, request):
    with pytest.raises(grpc.RpcError) as info:
        call(request, timeout=10)
    return info.value.code(), info.value.details()


def test_predict_encode_matches_the_signature(served, stub):
    _, model, *_ = served
    x = _x(4)
    response = stub.Predict(_request(x=x), timeout=10)
    assert (response.model_spec.name, response.model_spec.signature_name, response.model_spec.version.value) == (
        "vae", "encode", 1)
    local = model.signatures["encode"](x=tf.constant(x))
    assert set(response.outputs) == {"embedding", "z_mean", "z_log_var"}
    for key, proto in response.outputs.items():
        np.testing.assert_array_equal(tf.make_ndarray(proto), local[key].numpy())
    assert len(response.outputs["z_mean"].float_val) == 16  # typed fields, as TF Serving writes them


def test_predict_default_signature_filter_version_and_label(stub):
    x = _x(2, seed=1)
    response = stub.Predict(_request(signature=None, x=x), timeout=10)
    assert response.model_spec.signature_name == "serving_default" and len(response.outputs) == 3
    request = _request(version=1, x=x)
    request.output_filter.append("z_mean")
    filtered = stub.Predict(request, timeout=10)
    assert list(filtered.outputs) == ["z_mean"]
    np.testing.assert_array_equal(tf.make_ndarray(filtered.outputs["z_mean"]), tf.make_ndarray(response.outputs["z_mean"]))
    labelled = stub.Predict(_request(label="stable", x=x), timeout=10)
    assert labelled.model_spec.version.value == 1


def test_predict_casts_to_the_signature_dtype(served, stub):
    _, model, *_ = served
    x = _x(2, seed=2)
    as_double = stub.Predict(_request(x=x.astype(np.float64)), timeout=10)
    np.testing.assert_array_equal(tf.make_ndarray(as_double.outputs["z_mean"]),
                                  model.signatures["encode"](x=tf.constant(x))["z_mean"].numpy())
    seeds = np.array([[1, 2], [3, 4]])
    as_int64 = stub.Predict(_request("sample", seed=seeds.astype(np.int64)), timeout=10)
    as_float = stub.Predict(_request("sample", seed=seeds.astype(np.float32)), timeout=10)  # whole numbers
    np.testing.assert_array_equal(tf.make_ndarray(as_int64.outputs["z"]), tf.make_ndarray(as_float.outputs["z"]))


def test_decode_reconstruct_sample(stub):
    z = np.zeros((3, 4), np.float32)
    decoded = stub.Predict(_request("decode", z=z), timeout=10)
    assert {k: tuple(tf.make_ndarray(v).shape) for k, v in decoded.outputs.items()} == {
        "x_mean": (3, 8, 8, 1), "x_sample": (3, 8, 8, 1)}
    rec = stub.Predict(_request("reconstruct", x=_x(1)), timeout=10)
    assert list(rec.outputs) == ["x_mean"]
    drawn = stub.Predict(_request("sample", seed=np.array([[5, 6]] * 2, np.int32)), timeout=10)
    z = tf.make_ndarray(drawn.outputs["z"])
    np.testing.assert_array_equal(z[0], z[1])


def test_get_model_metadata(stub):
    response = stub.GetModelMetadata(get_model_metadata_pb2.GetModelMetadataRequest(
        model_spec=model_pb2.ModelSpec(name="vae"), metadata_field=["signature_def"]), timeout=10)
    assert response.model_spec.name == "vae" and response.model_spec.version.value == 1
    sigs = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(sigs)
    assert set(sigs.signature_def) == {"encode", "decode", "reconstruct", "sample", "serving_default",
                                       "__saved_model_init_op"}
    assert [d.size for d in sigs.signature_def["encode"].inputs["x"].tensor_shape.dim] == [-1, 8, 8, 1]


def test_get_model_status(served):
    models = served[3]
    response = models.GetModelStatus(get_model_status_pb2.GetModelStatusRequest(
        model_spec=model_pb2.ModelSpec(name="vae")), timeout=10)
    [status] = response.model_version_status
    assert (status.version, status.state, status.status.error_code, status.status.error_message) == (1, 30, 0, "")
    spec = model_pb2.ModelSpec(name="vae")
    spec.version.value = 5
    assert _error(models.GetModelStatus, get_model_status_pb2.GetModelStatusRequest(model_spec=spec)) == (
        grpc.StatusCode.NOT_FOUND, "Could not find version 5 of model vae")
    assert _error(models.GetModelStatus, get_model_status_pb2.GetModelStatusRequest(
        model_spec=model_pb2.ModelSpec(name="x"))) == (grpc.StatusCode.NOT_FOUND, "Could not find any versions of model x")
    assert _error(models.HandleReloadConfigRequest, model_management_pb2.ReloadConfigRequest())[0] == (
        grpc.StatusCode.UNIMPLEMENTED)


def test_a_missing_model_spec_or_name_is_invalid_argument_as_tf_serving_says(served, stub):
    """predict_impl.cc's 'Missing ModelSpec'; ServerCore::ServableRequestFromModelSpec's
    'ModelSpec has no name specified.' for the RPCs that resolve a servable through it (status
    does not: an empty name there is an unknown model)."""
    from tensorflow_serving.apis import classification_pb2, predict_pb2

    request = predict_pb2.PredictRequest()
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(_x(1)))
    assert _error(stub.Predict, request) == (grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec")
    request.model_spec.signature_name = "encode"  # a spec, but no name
    assert _error(stub.Predict, request) == (grpc.StatusCode.INVALID_ARGUMENT, "ModelSpec has no name specified.")
    no_name = model_pb2.ModelSpec(signature_name="encode")
    assert _error(stub.GetModelMetadata, get_model_metadata_pb2.GetModelMetadataRequest(
        model_spec=no_name, metadata_field=["signature_def"])) == (
        grpc.StatusCode.INVALID_ARGUMENT, "ModelSpec has no name specified.")
    assert _error(stub.Classify, classification_pb2.ClassificationRequest(model_spec=no_name)) == (
        grpc.StatusCode.INVALID_ARGUMENT, "ModelSpec has no name specified.")
    assert _error(served[3].GetModelStatus, get_model_status_pb2.GetModelStatusRequest(
        model_spec=model_pb2.ModelSpec())) == (grpc.StatusCode.NOT_FOUND, "Could not find any versions of model ")


@pytest.mark.parametrize("request_kwargs,code,message", [
    ({"name": "nope", "x": np.zeros((1, 8, 8, 1), np.float32)}, "NOT_FOUND", "Servable not found for request: Latest(nope)"),
    ({"version": 4, "x": np.zeros((1, 8, 8, 1), np.float32)}, "NOT_FOUND",
     "Servable not found for request: Specific(vae, 4)"),
    ({"label": "gold", "x": np.zeros((1, 8, 8, 1), np.float32)}, "INVALID_ARGUMENT",
     "Unrecognized servable version label: gold"),
    ({"signature": "nope", "x": np.zeros((1, 8, 8, 1), np.float32)}, "FAILED_PRECONDITION",
     'Serving signature key "nope" not found.'),
    # TensorFlow's saved_model::GetInputValues, which predict_util.cc calls after the size check
    # (tensorflow/serving 9d981c5; the older text was "input tensor alias not found in signature")
    ({"y": np.zeros((1, 8, 8, 1), np.float32)}, "INVALID_ARGUMENT",
     "Signature input alias: x(feed name: encode_x:0) not found in request and no default value provided. "
     "Inputs expected to be in the request {y}, or default input alias set: "),
    ({"x": np.zeros((1, 8, 8, 1), np.float32), "y": np.zeros(1)}, "INVALID_ARGUMENT",
     "input size does not match signature: 2!=1 len({x,y}) != len({x}). Sent extra: {y}. Missing but required: {}."),
    ({}, "INVALID_ARGUMENT",
     "input size does not match signature: 0!=1 len({}) != len({x}). Sent extra: {}. Missing but required: {x}."),
    ({"x": np.zeros((1, 64), np.float32)}, "INVALID_ARGUMENT",
     "Input x of signature encode has shape [1,64] but the signature expects [-1,8,8,1]"),
    ({"x": np.full((1, 8, 8, 1), "a")}, "INVALID_ARGUMENT",
     "Input x of signature encode needs float values but got string values; send float data"),
    ({"signature": "sample", "seed": np.array([[1.5, 2.0]])}, "INVALID_ARGUMENT",
     "Input seed of signature sample needs int32 values but got double values that are not whole numbers"),
    ({"signature": "sample", "seed": np.array([[2**40, 1]])}, "INVALID_ARGUMENT",
     "Input seed of signature sample needs int32 values but got int64 values outside its range"),
    # Integer pixels for a float input: TF Serving refuses them ("Expects arg[0] to be float but
    # uint8 is provided"); they were cast and 0-255 images encoded without a word.
    ({"x": np.full((1, 8, 8, 1), 200, np.uint8)}, "INVALID_ARGUMENT",
     "Input x of signature encode needs float values but got uint8 values; send float data scaled as the model's "
     "training data was (uint8 pixels / 255"),
    ({"x": np.ones((1, 8, 8, 1), np.int32)}, "INVALID_ARGUMENT",
     "Input x of signature encode needs float values but got int32 values; send float data"),
    ({"x": np.ones((1, 8, 8, 1), np.int64)}, "INVALID_ARGUMENT",
     "Input x of signature encode needs float values but got int64 values; send float data"),
    ({"signature": "decode", "z": np.array([[0, 1, 0, 0]], np.int32)}, "INVALID_ARGUMENT",  # a code: no pixel hint
     "Input z of signature decode needs float values but got int32 values; send float data (TF Serving refuses "
     "integer tensors here too)"),
])
def test_predict_errors(stub, request_kwargs, code, message):
    got_code, details = _error(stub.Predict, _request(**{"signature": "encode", **request_kwargs}))
    assert got_code == grpc.StatusCode[code]
    assert details.startswith(message), details


def test_malformed_tensor_protos_and_filters(stub):
    request = _request(x=_x(1))
    request.inputs["x"].tensor_content = b"\x00" * 7  # not a multiple of 4 bytes
    assert _error(stub.Predict, request) == (grpc.StatusCode.INVALID_ARGUMENT, (
        "tensor parsing error: x (its tensor_content holds 7 bytes, not the 256 of the 64 values of 4 bytes its "
        "shape [1,8,8,1] holds)"))
    # TF Serving's text stops at "tensor parsing error: x"; the reason says what to fix.
    request = _request(x=_x(1))
    request.inputs["x"].ClearField("tensor_content")
    request.inputs["x"].float_val.extend([0.5] * 70)
    assert _error(stub.Predict, request) == (grpc.StatusCode.INVALID_ARGUMENT, (
        "tensor parsing error: x (its float_val has 70 values, more than the 64 its shape [1,8,8,1] holds)"))
    request = _request(x=_x(1))
    request.inputs["x"].ClearField("tensor_content")
    request.inputs["x"].ClearField("tensor_shape")
    request.inputs["x"].float_val.extend([0.5] * 64)
    assert _error(stub.Predict, request) == (grpc.StatusCode.INVALID_ARGUMENT, (
        "tensor parsing error: x (its float_val has 64 values but it has no tensor_shape, which makes it a scalar; "
        "give its shape)"))
    request = _request(x=_x(1))
    request.inputs["x"].dtype = 1000
    assert _error(stub.Predict, request) == (grpc.StatusCode.INVALID_ARGUMENT, (
        "tensor parsing error: x (its dtype 1000 is not a TensorFlow DataType; set DT_FLOAT = 1 for images)"))
    request.inputs["x"].dtype = 0
    assert _error(stub.Predict, request) == (grpc.StatusCode.INVALID_ARGUMENT, (
        "tensor parsing error: x (its dtype is not set (DT_INVALID); set DT_FLOAT = 1 for images, DT_STRING = 7 for "
        "sentences)"))
    # half precision is read (and cast), so a malformed one is told by its own field
    half = tf.make_tensor_proto(_x(1).astype(np.float16))
    half.ClearField("tensor_content")
    half.half_val.extend([0] * 65)
    request = _request(x=_x(1))
    request.inputs["x"].CopyFrom(half)
    assert _error(stub.Predict, request) == (grpc.StatusCode.INVALID_ARGUMENT, (
        "tensor parsing error: x (its half_val has 65 values, more than the 64 its shape [1,8,8,1] holds)"))
    request = _request(x=_x(1))
    request.inputs["x"].tensor_shape.dim[0].size = 10**9  # asks for 64e9 values
    code, details = _error(stub.Predict, request)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("tensor parsing error: x")
    request = _request(x=_x(1))
    request.output_filter.append("nope")
    assert _error(stub.Predict, request) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "output tensor alias not found in signature: nope Outputs expected to be in the set {embedding,z_log_var,z_mean}.")
    request = _request(x=_x(1))
    request.output_filter.extend(["z_mean", "z_mean"])
    assert _error(stub.Predict, request) == (grpc.StatusCode.INVALID_ARGUMENT, "duplicate output tensor alias: z_mean")


def test_oversize_message_is_refused_by_grpc(stub):
    big = np.zeros((MAX_MESSAGE // 256 + 10, 8, 8, 1), np.float32)  # > the server's receive limit
    code, _ = _error(stub.Predict, _request(x=big))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert stub.Predict(_request(x=_x(1)), timeout=10).model_spec.version.value == 1  # still serving


def test_metadata_errors(stub):
    spec = model_pb2.ModelSpec(name="vae")
    assert _error(stub.GetModelMetadata, get_model_metadata_pb2.GetModelMetadataRequest(model_spec=spec)) == (
        grpc.StatusCode.INVALID_ARGUMENT, "GetModelMetadataRequest must specify at least one metadata_field")
    assert _error(stub.GetModelMetadata, get_model_metadata_pb2.GetModelMetadataRequest(
        model_spec=spec, metadata_field=["signature_def", "graph"])) == (
        grpc.StatusCode.INVALID_ARGUMENT, "Metadata field graph is not supported")
    assert _error(stub.GetModelMetadata, get_model_metadata_pb2.GetModelMetadataRequest(
        model_spec=model_pb2.ModelSpec(name="nope"), metadata_field=["signature_def"])) == (
        grpc.StatusCode.NOT_FOUND, "Servable not found for request: Latest(nope)")


def test_classify_regress_and_multi_inference(stub):
    # TF Serving with its default flags does not check the method name (server.h:
    # enable_signature_method_name_check = false); classifier.cc / regressor.cc check the
    # signature's inputs and outputs: serving_default (= encode) has one input and 3 outputs.
    spec = model_pb2.ModelSpec(name="vae")
    assert _error(stub.Classify, classification_pb2.ClassificationRequest(model_spec=spec)) == (
        grpc.StatusCode.INVALID_ARGUMENT, "Expected one or two output Tensors, found 3")
    assert _error(stub.Regress, regression_pb2.RegressionRequest(model_spec=spec)) == (
        grpc.StatusCode.INVALID_ARGUMENT, "Expected one output Tensor.")
    code, message = _error(stub.Regress, regression_pb2.RegressionRequest(
        model_spec=model_pb2.ModelSpec(name="vae", signature_name="reconstruct")))  # 1 input x, 1 output x_mean
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert message.startswith('No regression inputs found in SignatureDef: inputs {\\n  key: "x"\\n'), message
    assert _error(stub.Classify, classification_pb2.ClassificationRequest(
        model_spec=model_pb2.ModelSpec(name="vae", signature_name="nope"))) == (
        grpc.StatusCode.INVALID_ARGUMENT, "No signature was found with the name: nope")
    assert _error(stub.Classify, classification_pb2.ClassificationRequest()) == (
        grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec")
    assert _error(stub.MultiInference, inference_pb2.MultiInferenceRequest())[0] == grpc.StatusCode.UNIMPLEMENTED


def test_grpc_client(served):
    server, model, *_ = served
    client = GrpcClient(f"grpc://{server.grpc_target}", "vae")
    x = _x(3, seed=4)
    np.testing.assert_array_equal(client.encode(x)["embedding"], model.signatures["encode"](x=tf.constant(x))["embedding"])
    assert client.decode(np.zeros((2, 4)))["x_mean"].shape == (2, 8, 8, 1)
    assert client.reconstruct(x)["x_mean"].shape == (3, 8, 8, 1)
    assert client.sample(3)["x_sample"].shape == (3, 8, 8, 1)
    status = client.status()
    assert status == {"model_version_status": [{"version": "1", "state": "AVAILABLE",
                                                "status": {"error_code": "OK", "error_message": ""}}]}
    assert client.metadata()["metadata"]["signature_def"]["signature_def"]["encode"]["method_name"] == (
        "tensorflow/serving/predict")
    with pytest.raises(ServingRequestError, match="NOT_FOUND: Servable not found for request: Specific\\(vae, 3\\)"):
        GrpcClient(server.grpc_target, "vae", version=3).encode(x)
    client.close()
