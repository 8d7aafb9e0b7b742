"""Clients for a TF-Serving-compatible server: ours (``vae-tf serve``) or the official image.

Both speak only TF Serving's public API (REST ``/v1/models/...`` and the
``tensorflow.serving`` gRPC services), so they work unchanged against ``tensorflow/serving``.

>>> from serving.client import RestClient, GrpcClient
>>> client = RestClient("http://127.0.0.1:8501", "vae")            # doctest: +SKIP
>>> client.encode(x)["embedding"]                  # float32 [B, latent_dim]  # doctest: +SKIP
>>> client.decode(z)["x_mean"]; client.reconstruct(x)["x_mean"]            # doctest: +SKIP
>>> client.sample(16, seed=0)["x_mean"]          # 16 seed rows [[0, 0], [0, 1], ...]  # doctest: +SKIP
>>> GrpcClient("127.0.0.1:8500", "vae", version=2).encode(x)             # doctest: +SKIP

A text model takes and gives sentences: ``encode`` / ``reconstruct`` take a list (or array) of
``str`` (``bytes`` are sent as they are: UTF-8, or ``{"b64": ...}`` over REST when they are not),
and text outputs come back as object arrays of ``str`` from both clients:

>>> client.encode(["the cat sat on the mat", "a dog ran"])["embedding"]     # doctest: +SKIP
>>> client.sample(2, seed=0)["text"]          # array(['w1 w2 ...', '...'], dtype=object)  # doctest: +SKIP

Every signature method returns ``{output name: np.ndarray}`` with the output dtypes of the
signature (``DT_STRING``: ``str``, or ``bytes`` for an output named ``*_bytes`` as TF Serving
base64-encodes those); :meth:`metadata` and :meth:`status` return the JSON dicts of the REST API (the gRPC
client converts its protos to the same shape). ``version=`` or ``label=`` pins a version.
Errors from the server raise :class:`ServingRequestError` (one line: code and TF Serving's
message); an unreachable server raises it too, saying so.
"""

from __future__ import annotations

import base64
import http.client
import json
import socket
import threading
from typing import Any, Mapping
from urllib.parse import quote, urlsplit

import numpy as np

from vae_tf.errors import VaeTfError

DEFAULT_TIMEOUT = 30.0
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024


class ServingRequestError(VaeTfError):
    """The server refused a request (``code``: HTTP status or gRPC code name) or could not be
    reached (``code`` None)."""

    def __init__(self, message: str, code: int | str | None = None):
        super().__init__(message)
        self.code = code


def _model_input(x) -> np.ndarray:
    """``x`` as an ``encode`` / ``reconstruct`` input: sentences (``str``/``bytes`` entries) as an
    object array of UTF-8 ``bytes``, anything else as float32; an integer NumPy array with values
    above 1 (0-255 pixels, which the model would encode without a word) is refused."""
    if isinstance(x, (str, bytes)):
        raise ServingRequestError("give a batch of sentences, e.g. encode(['a sentence']), not one string")
    arr = x if isinstance(x, np.ndarray) else np.asarray(x)
    if arr.dtype.kind in "US" or (arr.dtype == object and arr.size and isinstance(arr.flat[0], (str, bytes))):
        objects = np.asarray(x, dtype=object)  # from the list itself: NumPy's "S" dtype drops trailing NULs
        flat = [v.encode("utf-8") if isinstance(v, str) else bytes(v) for v in objects.reshape(-1)]
        out = np.empty(len(flat), dtype=object)
        out[:] = flat
        return out.reshape(objects.shape)
    if isinstance(x, np.ndarray) and x.dtype.kind in "iu" and x.size and x.max() > 1:  # 0-255 pixels, surely
        raise ServingRequestError(f"give images as floats scaled as the model's training data was (uint8 pixels / 255 "
                                  f"for a model of [0, 1] images), not {x.dtype} values up to {x.max()}")
    return np.asarray(x, dtype=np.float32)


def _json_tensor(arr: np.ndarray):
    """A tensor as TF Serving's JSON: numbers as they are, strings as JSON strings when they are
    UTF-8 and ``{"b64": ...}`` objects when they are not (``g3doc/api_rest.md``)."""
    if arr.dtype != object and arr.dtype.kind not in "SU":
        return arr.tolist()

    def one(value):
        if isinstance(value, str):
            return value
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return {"b64": base64.b64encode(bytes(value)).decode("ascii")}

    return np.vectorize(one, otypes=[object])(arr).tolist()


def _string_output(values, name: str) -> np.ndarray:
    """A ``DT_STRING`` output (gRPC: ``bytes``; REST: JSON strings, ``{"b64": ...}`` for outputs
    named ``*_bytes``) as an object array of ``str``, or of ``bytes`` for ``*_bytes`` outputs: the
    same from both clients."""
    def one(value):
        if isinstance(value, dict):
            value = base64.b64decode(value.get("b64", ""))
        if isinstance(value, bytes) and not name.endswith("_bytes"):
            value = value.decode("utf-8", "replace")
        return value

    return np.vectorize(one, otypes=[object])(np.array(values, dtype=object))


def _seed_rows(seeds, seed: int) -> np.ndarray:
    if isinstance(seeds, (int, np.integer)):
        return np.stack([np.full(int(seeds), seed), np.arange(int(seeds))], axis=1).astype(np.int32)
    return np.asarray(seeds, dtype=np.int32)


class _SignatureMethods:
    """encode / decode / reconstruct / sample on top of ``predict``."""

    def predict(self, inputs: Mapping[str, Any], signature_name: str = "serving_default") -> dict[str, np.ndarray]:
        raise NotImplementedError

    def encode(self, x) -> dict[str, np.ndarray]:
        """``{embedding, z_mean, ...}`` of images ``x: [B, *data_shape]``, or of a text model's
        sentences ``x: [B]`` (a list of ``str``)."""
        return self.predict({"x": _model_input(x)}, "encode")

    def decode(self, z) -> dict[str, np.ndarray]:
        """``{x_mean, x_sample}`` of codes ``z: [B, latent_dim]`` (text: ``{text, tokens, lengths}``,
        the greedy decode)."""
        return self.predict({"z": np.asarray(z, dtype=np.float32)}, "decode")

    def reconstruct(self, x) -> dict[str, np.ndarray]:
        """``{x_mean}``: decode(encode(x)) with the posterior mean (text: ``{text}``)."""
        return self.predict({"x": _model_input(x)}, "reconstruct")

    def sample(self, seeds, *, seed: int = 0) -> dict[str, np.ndarray]:
        """``{z, x_mean, x_sample}`` (text: ``{z, text, tokens, lengths}``), one sample per seed row;
        ``seeds`` is an ``int32[n, 2]`` array, or a count ``n`` (rows ``[seed, 0] ... [seed, n-1]``)."""
        return self.predict({"seed": _seed_rows(seeds, seed)}, "sample")


class RestClient(_SignatureMethods):
    """TF Serving REST client over keep-alive ``http.client`` connections (one per thread).

    Args:
        url: ``http://host:8501`` (``https://`` works too).
        model_name: ``MODEL_NAME`` of the server.
        version / label: pin a version (``/versions/N``) or a label (``/labels/L``).
        timeout: seconds per request.
    """

    def __init__(self, url: str = "http://127.0.0.1:8501", model_name: str = "model", *, version: int | None = None,
                 label: str | None = None, timeout: float = DEFAULT_TIMEOUT):
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ServingRequestError(f"bad server URL {url!r}: use http://HOST:PORT")
        if version is not None and label is not None:
            raise ServingRequestError("give a version or a label, not both")
        self.url = f"{parts.scheme}://{parts.netloc}"
        self._https = parts.scheme == "https"
        self._host, self._port = parts.hostname, parts.port or (443 if self._https else 80)
        self.model_name = model_name
        self.version, self.label = version, label
        self.timeout = timeout
        self._local = threading.local()
        self._output_dtypes: dict[str, dict[str, np.dtype]] = {}
        base = f"/v1/models/{quote(model_name, safe='')}"
        if version is not None:
            base += f"/versions/{int(version)}"
        elif label is not None:
            base += f"/labels/{quote(label, safe='')}"
        self._base = base

    # -- HTTP --------------------------------------------------------------------------------

    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            conn = cls(self._host, self._port, timeout=self.timeout)
            conn.connect()
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._local.conn = conn
        return conn

    def _request(self, method: str, path: str, body: bytes | None = None) -> Any:
        for attempt in (0, 1):  # one retry on a keep-alive connection the server closed
            try:
                conn = self._connection()
                headers = {"Content-Type": "application/json"} if body is not None else {}
                conn.request(method, path, body=body, headers=headers)
                response = conn.getresponse()
                payload = response.read()
                break
            except (ConnectionError, http.client.HTTPException, OSError) as err:
                self.close()
                if attempt or isinstance(err, (ConnectionRefusedError, socket.timeout)):
                    raise ServingRequestError(f"cannot reach {self.url} ({type(err).__name__}: {err}); start the "
                                              "server (vae-tf serve) or check the URL") from None
        if response.status != 200:
            try:
                message = json.loads(payload)["error"]
            except (ValueError, KeyError, TypeError):
                message = payload.decode("utf-8", "replace").strip() or response.reason
            raise ServingRequestError(f"{self.url}{path}: HTTP {response.status}: {message}", response.status)
        return json.loads(payload)

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # -- API ---------------------------------------------------------------------------------

    def status(self) -> dict:
        return self._request("GET", self._base)

    def metadata(self) -> dict:
        return self._request("GET", self._base + "/metadata")

    def _outputs_of(self, signature_name: str) -> dict[str, np.dtype]:
        if signature_name not in self._output_dtypes:
            sigs = self.metadata()["metadata"]["signature_def"]["signature_def"]
            self._output_dtypes = {name: {key: _NP_DTYPES.get(info.get("dtype"), np.dtype(np.float32))
                                          for key, info in sig.get("outputs", {}).items()}
                                   for name, sig in sigs.items()}
            if signature_name not in self._output_dtypes:
                raise ServingRequestError(f"model {self.model_name!r} has no signature {signature_name!r}; it has "
                                          f"{', '.join(sorted(sigs))}")
        return self._output_dtypes[signature_name]

    def predict(self, inputs: Mapping[str, Any], signature_name: str = "serving_default") -> dict[str, np.ndarray]:
        """Columnar predict; ``{output: array}``."""
        body = json.dumps({"signature_name": signature_name,
                           "inputs": {k: _json_tensor(np.asarray(v)) for k, v in inputs.items()}}).encode()
        outputs = self._request("POST", self._base + ":predict", body)["outputs"]
        dtypes = self._outputs_of(signature_name)
        if not isinstance(outputs, dict) or set(outputs) != set(dtypes):
            if len(dtypes) != 1:
                raise ServingRequestError(f"unexpected response from {self.url}: outputs {type(outputs).__name__}")
            outputs = {next(iter(dtypes)): outputs}
        return {k: _string_output(v, k) if dtypes.get(k) == object else np.asarray(v, dtype=dtypes.get(k, np.float32))
                for k, v in outputs.items()}


_NP_DTYPES = {"DT_FLOAT": np.dtype(np.float32), "DT_DOUBLE": np.dtype(np.float64), "DT_INT32": np.dtype(np.int32),
              "DT_INT64": np.dtype(np.int64), "DT_BOOL": np.dtype(np.bool_), "DT_UINT8": np.dtype(np.uint8),
              "DT_HALF": np.dtype(np.float16), "DT_STRING": np.dtype(object)}


class GrpcClient(_SignatureMethods):
    """TF Serving gRPC client (``PredictionServiceStub``, ``ModelServiceStub``).

    Args:
        target: ``host:8500`` (a ``grpc://`` prefix is accepted).
        model_name / version / label / timeout: as for :class:`RestClient`.
        max_message_bytes: receive/send limit of the channel (gRPC's default is 4 MB).
    """

    def __init__(self, target: str = "127.0.0.1:8500", model_name: str = "model", *, version: int | None = None,
                 label: str | None = None, timeout: float = DEFAULT_TIMEOUT,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES):
        import grpc
        from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

        if version is not None and label is not None:
            raise ServingRequestError("give a version or a label, not both")
        self.target = target.split("://", 1)[1] if "://" in target else target
        self.model_name, self.version, self.label, self.timeout = model_name, version, label, timeout
        options = [("grpc.max_receive_message_length", max_message_bytes),
                   ("grpc.max_send_message_length", max_message_bytes)]
        self._channel = grpc.insecure_channel(self.target, options=options)
        self._predict = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self._models = model_service_pb2_grpc.ModelServiceStub(self._channel)

    def _spec(self, spec, signature_name: str = "") -> None:
        spec.name = self.model_name
        if signature_name:
            spec.signature_name = signature_name
        if self.version is not None:
            spec.version.value = int(self.version)
        elif self.label is not None:
            spec.version_label = self.label

    def _call(self, method, request):
        import grpc

        try:
            return method(request, timeout=self.timeout)
        except grpc.RpcError as err:
            code = err.code()
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED) and "connect" in str(
                    err.details()).lower():
                raise ServingRequestError(f"cannot reach {self.target} ({err.details()}); start the server "
                                          "(vae-tf serve) or check the address", code.name) from None
            raise ServingRequestError(f"{self.target}: {code.name}: {err.details()}", code.name) from None

    def predict(self, inputs: Mapping[str, Any], signature_name: str = "serving_default") -> dict[str, np.ndarray]:
        from tensorflow_serving.apis import predict_pb2

        from serving.tensor_proto import read_ndarray, write_content

        request = predict_pb2.PredictRequest()
        self._spec(request.model_spec, signature_name)
        for key, value in inputs.items():
            array = np.asarray(value)
            if array.dtype == object and not all(isinstance(v, (str, bytes)) for v in array.reshape(-1)):
                import tensorflow as tf  # mixed objects: TensorFlow's conversion (and its error)

                request.inputs[key].CopyFrom(tf.make_tensor_proto(array))
            else:
                write_content(request.inputs[key], array)  # as tf.make_tensor_proto, without its type inference
        response = self._call(self._predict.Predict, request)
        outputs = {key: read_ndarray(proto) for key, proto in response.outputs.items()}
        return {key: _string_output(value, key) if value.dtype == object else value for key, value in outputs.items()}

    def metadata(self) -> dict:
        from google.protobuf import json_format
        from tensorflow_serving.apis import get_model_metadata_pb2

        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        self._spec(request.model_spec)
        response = self._call(self._predict.GetModelMetadata, request)
        signatures = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signatures)
        options = {"preserving_proto_field_name": True, "always_print_fields_with_no_presence": True}
        return {"model_spec": json_format.MessageToDict(response.model_spec, **options),
                "metadata": {"signature_def": json_format.MessageToDict(signatures, **options)}}

    def status(self) -> dict:
        from google.protobuf import json_format
        from tensorflow_serving.apis import get_model_status_pb2

        request = get_model_status_pb2.GetModelStatusRequest()
        self._spec(request.model_spec)
        response = self._call(self._models.GetModelStatus, request)
        return json_format.MessageToDict(response, preserving_proto_field_name=True,
                                         always_print_fields_with_no_presence=True)

    def close(self) -> None:
        self._channel.close()


def connect(server: str, model_name: str = "model", **kwargs) -> RestClient | GrpcClient:
    """A client for ``http(s)://...`` (REST) or ``grpc://...`` (gRPC)."""
    scheme = server.split("://", 1)[0].lower() if "://" in server else ""
    if scheme == "grpc":
        return GrpcClient(server, model_name, **kwargs)
    if scheme in ("http", "https"):
        return RestClient(server, model_name, **kwargs)
    raise ServingRequestError(f"server {server!r} needs a scheme: http://HOST:8501 (REST) or grpc://HOST:8500 (gRPC)")


__all__ = ["GrpcClient", "RestClient", "ServingRequestError", "connect"]
