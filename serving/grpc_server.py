"""TF Serving's gRPC services (reference §6-§7) with the official ``tensorflow-serving-api`` stubs.

- ``tensorflow.serving.PredictionService``: ``Predict`` and ``GetModelMetadata`` as upstream
  (``predict_util.cc``, ``get_model_metadata_impl.cc``); ``Classify``/``Regress`` check the
  signature as upstream does with its default flags (``classifier.cc``, ``regressor.cc``: e.g.
  ``Expected one or two output Tensors, found 3``) and answer UNIMPLEMENTED for one that passes;
  ``MultiInference`` answers UNIMPLEMENTED.
- ``tensorflow.serving.ModelService``: ``GetModelStatus``; ``HandleReloadConfigRequest``
  answers UNIMPLEMENTED.

Inputs arrive as ``TensorProto`` (any of ``tensor_content`` or the typed ``*_val`` fields);
they are cast to the signature dtype when nothing is lost and checked against its shapes (and,
unless ``allow_non_finite``, for NaN/Inf in float inputs) before the model runs. Outputs are
written into the typed ``*_val`` fields, as TF Serving does by
default (``kAsProtoField``), so clients that read ``outputs[k].float_val`` work, and so does
``tf.make_ndarray``. Errors carry upstream's canonical code and message, cut to 1024 characters
plus ``...TRUNCATED`` (``grpc_status_util.cc``).

Connections: at most ``max_connections`` (1024; more are closed on accept), idle ones (no RPC)
get GOAWAY after ``keep_alive_seconds`` (30), and a socket that has not sent the HTTP/2 preface
within min(``keep_alive_seconds``, 5 s) is closed; gRPC core cannot close an idle connection to
admit a new one, so a flood of raw connections keeps new clients out for at most that handshake
time.

Load and faults: at most ``max_in_flight`` RPCs are admitted at once (running or waiting for a
worker thread); gRPC itself refuses the next one with RESOURCE_EXHAUSTED before it is queued,
so a burst cannot grow the queue without bound. The client's deadline is honoured: a Predict
whose deadline has passed (or whose client has gone) by the time a worker picks it up, or by
the time its inputs are parsed, is answered DEADLINE_EXCEEDED (CANCELLED) without running the
model. Any exception in a handler becomes a status; none escapes to take a worker down.
"""

from __future__ import annotations

import concurrent.futures
import functools
import logging
import os
import threading
from typing import Callable, Mapping

import grpc
import numpy as np

from serving.connections import DEFAULT_KEEP_ALIVE_SECONDS, DEFAULT_MAX_CONNECTIONS
from serving.model_store import (refuse_classify_or_regress, CLASSIFY_METHOD, DEFAULT_SIGNATURE, PREDICT_METHOD, REGRESS_METHOD, ModelStore,
                                 Servable)
from serving.status import Code, ServingError, invalid_argument, one_line
from serving.tensor_proto import DT_STRING, parse_problem, read_ndarray, write_fields

log = logging.getLogger("serving.grpc")

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_IN_FLIGHT = 128
MAX_HANDSHAKE_SECONDS = 5.0  # a client sends the HTTP/2 preface at once; a socket that does not is not a client
MAX_ERROR_CHARS = 1024

Runner = Callable[[object, Mapping[str, np.ndarray]], dict]


def _abort(context, err: ServingError) -> None:
    message = err.message if len(err.message) <= MAX_ERROR_CHARS else err.message[:MAX_ERROR_CHARS] + "...TRUNCATED"
    context.abort(grpc.StatusCode[err.code.name], message)


def _rpc(method):
    """Turn :class:`ServingError` (and anything unexpected) into a gRPC status."""

    @functools.wraps(method)
    def wrapper(self, request, context):
        try:
            return method(self, request, context)
        except ServingError as err:
            _abort(context, err)
        except RecursionError:
            _abort(context, invalid_argument("Request nested too deeply"))
        except MemoryError:
            _abort(context, ServingError(Code.RESOURCE_EXHAUSTED, "Request too large for the server's memory; send "
                                                                  "smaller batches"))
        except Exception as err:
            if isinstance(err, grpc.RpcError) or type(err).__name__ == "_AbortError":
                raise
            log.exception("internal error in %s", method.__name__)
            _abort(context, ServingError(Code.INTERNAL, f"Internal error: {one_line(err, 200)}"))

    return wrapper


def _check_still_wanted(context) -> None:
    """Refuse to spend model time on an RPC nobody waits for: its deadline has passed or its
    client cancelled. (gRPC has already told the client; this spares the worker.)"""
    if not context.is_active():
        raise ServingError(Code.CANCELLED, "The client cancelled the request before the model ran")
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        raise ServingError(Code.DEADLINE_EXCEEDED, "Deadline exceeded before the model ran; give the call a longer "
                                                   "timeout or send smaller batches")


def _spec_target(model_spec, *, named: bool = True) -> tuple[str, int | None, str | None]:
    """``(name, version, label)`` of a ``ModelSpec``; ``named``: an empty name is refused as
    ``ServerCore::ServableRequestFromModelSpec`` refuses it (every RPC that resolves a servable
    through it: not ``GetModelStatus``)."""
    if named and not model_spec.name:
        raise invalid_argument("ModelSpec has no name specified.")
    choice = model_spec.WhichOneof("version_choice")
    version = model_spec.version.value if choice == "version" else None
    label = model_spec.version_label if choice == "version_label" else None
    return model_spec.name, version, label


# -- tensors ---------------------------------------------------------------------------------


def proto_to_ndarray(alias: str, proto, max_bytes: int) -> np.ndarray:
    """``tf.make_ndarray`` with a size guard; any malformed proto -> ``tensor parsing error``."""
    try:
        count = 1
        for dim in proto.tensor_shape.dim:
            if dim.size < 0:
                raise ValueError("negative dimension")
            count *= dim.size
        if count * _itemsize(proto.dtype) > max_bytes:
            raise invalid_argument(f"tensor parsing error: {alias} (its shape asks for {count} values, more than "
                                   f"the {max_bytes}-byte message limit allows)")
        return read_ndarray(proto)
    except ServingError:
        raise
    except Exception:
        # TF Serving's words, then why (it says only the first part, which leaves the sender guessing)
        why = parse_problem(proto)
        raise invalid_argument(f"tensor parsing error: {alias}" + (f" ({why})" if why else "")) from None


@functools.lru_cache(maxsize=None)
def _itemsize(enum: int) -> int:
    """Bytes per value of DataType ``enum`` (1 for strings); unknown enums raise (-> parsing error)."""
    import tensorflow as tf

    return 1 if enum == DT_STRING else np.dtype(tf.dtypes.as_dtype(enum).as_numpy_dtype).itemsize


# -- services --------------------------------------------------------------------------------


def _prediction_servicer_base():
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    return prediction_service_pb2_grpc.PredictionServiceServicer


def _model_servicer_base():
    from tensorflow_serving.apis import model_service_pb2_grpc

    return model_service_pb2_grpc.ModelServiceServicer


class PredictionService(_prediction_servicer_base()):
    """``tensorflow.serving.PredictionService``."""

    def __init__(self, store: ModelStore, run: Runner | None = None, *, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 allow_non_finite: bool = False):
        self.store = store
        self.run: Runner = run or (lambda signature, arrays: signature.run(arrays))
        self.max_message_bytes = max_message_bytes
        self.allow_non_finite = allow_non_finite

    @_rpc
    def Predict(self, request, context):
        from tensorflow_serving.apis import predict_pb2

        _check_still_wanted(context)  # it may have waited for a worker thread
        if not request.HasField("model_spec"):  # predict_impl.cc
            raise invalid_argument("Missing ModelSpec")
        name, version, label = _spec_target(request.model_spec)
        servable = self.store.servable(name, version, label)
        signature_name = request.model_spec.signature_name or DEFAULT_SIGNATURE
        signature = servable.signatures.get(signature_name)
        if signature is None:
            raise ServingError(Code.FAILED_PRECONDITION, f'Serving signature key "{signature_name}" not found.')
        if signature.method_name not in (PREDICT_METHOD, CLASSIFY_METHOD, REGRESS_METHOD) or not signature.callable:
            # Upstream answers INTERNAL here; asking for a non-predict signature is the client's mistake.
            raise invalid_argument(f"Expected prediction signature method_name to be one of {{{PREDICT_METHOD}, "
                                   f"{CLASSIFY_METHOD}, {REGRESS_METHOD}}}. Was: {signature.method_name}")
        sent, required = set(request.inputs), set(signature.inputs)
        if len(sent) != len(required):
            raise invalid_argument(
                f"input size does not match signature: {len(sent)}!={len(required)} len({{{','.join(sorted(sent))}}}) "
                f"!= len({{{','.join(sorted(required))}}}). Sent extra: {{{','.join(sorted(sent - required))}}}. "
                f"Missing but required: {{{','.join(sorted(required - sent))}}}.")
        missing = sorted(required - sent)
        if missing:  # as many inputs as the signature's, another name: TensorFlow's GetInputValues
            signature_def = servable.signature_def_map.signature_def[signature_name]
            defaults = sorted(getattr(signature_def, "defaults", {}))
            raise invalid_argument(
                f"Signature input alias: {missing[0]}(feed name: {signature_def.inputs[missing[0]].name}) not found "
                f"in request and no default value provided. Inputs expected to be in the request "
                f"{{{','.join(sorted(sent))}}}, or default input alias set: {','.join(defaults)}")
        arrays = {alias: proto_to_ndarray(alias, request.inputs[alias], self.max_message_bytes) for alias in sorted(sent)}
        wanted = list(request.output_filter)
        for alias in wanted:
            if alias not in signature.output_names:
                raise invalid_argument(f"output tensor alias not found in signature: {alias} Outputs expected to be "
                                       f"in the set {{{','.join(signature.output_names)}}}.")
        if len(set(wanted)) != len(wanted):
            duplicate = next(a for a in wanted if wanted.count(a) > 1)
            raise invalid_argument(f"duplicate output tensor alias: {duplicate}")
        arrays = signature.prepare(arrays, allow_non_finite=self.allow_non_finite, typed=True)
        _check_still_wanted(context)  # parsing a large request takes time too
        outputs = self.run(signature, arrays)
        response = predict_pb2.PredictResponse()
        response.model_spec.name = name
        response.model_spec.signature_name = signature_name
        response.model_spec.version.value = servable.version
        for alias in wanted or sorted(outputs):
            write_fields(response.outputs[alias], outputs[alias])
        return response

    @_rpc
    def GetModelMetadata(self, request, context):
        from tensorflow_serving.apis import get_model_metadata_pb2

        if not request.HasField("model_spec"):
            raise invalid_argument("Missing ModelSpec")
        if not request.metadata_field:
            raise invalid_argument("GetModelMetadataRequest must specify at least one metadata_field")
        for field in request.metadata_field:
            if field != "signature_def":
                raise invalid_argument(f"Metadata field {field} is not supported")
        servable = self.store.servable(*_spec_target(request.model_spec))
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = servable.name
        response.model_spec.version.value = servable.version
        response.metadata["signature_def"].Pack(servable.signature_def_map)
        return response

    @_rpc
    def Classify(self, request, context):
        self._classify_or_regress("classification", request)

    @_rpc
    def Regress(self, request, context):
        self._classify_or_regress("regression", request)

    def _classify_or_regress(self, kind: str, request) -> None:
        if not request.HasField("model_spec"):
            raise invalid_argument("Missing ModelSpec")
        servable: Servable = self.store.servable(*_spec_target(request.model_spec))
        refuse_classify_or_regress(servable, request.model_spec.signature_name, kind)

    @_rpc
    def MultiInference(self, request, context):
        raise ServingError(Code.UNIMPLEMENTED, "MultiInference is not implemented by this server; use Predict")


class ModelService(_model_servicer_base()):
    """``tensorflow.serving.ModelService``."""

    def __init__(self, store: ModelStore):
        self.store = store

    @_rpc
    def GetModelStatus(self, request, context):
        from tensorflow_serving.apis import get_model_status_pb2

        if not request.HasField("model_spec"):
            raise invalid_argument("Missing ModelSpec")
        response = get_model_status_pb2.GetModelStatusResponse()
        for status in self.store.status(*_spec_target(request.model_spec, named=False)):
            entry = response.model_version_status.add(version=status.version, state=status.state)
            entry.status.error_code = status.error_code.number
            entry.status.error_message = status.error_message
        return response

    @_rpc
    def HandleReloadConfigRequest(self, request, context):
        raise ServingError(Code.UNIMPLEMENTED, "HandleReloadConfigRequest is not implemented by this server; it "
                                               "reloads versions and labels from the file system")


class GrpcServer:
    """A ``grpc.server`` with both services, bound to ``host:port`` (port 0: a free one)."""

    def __init__(self, store: ModelStore, host: str, port: int, *, run: Runner | None = None,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, threads: int | None = None,
                 max_in_flight: int = DEFAULT_MAX_IN_FLIGHT, allow_non_finite: bool = False,
                 keep_alive_seconds: float = DEFAULT_KEEP_ALIVE_SECONDS, max_connections: int = DEFAULT_MAX_CONNECTIONS):
        from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

        idle_ms = max(1, int(keep_alive_seconds * 1000))
        options = [("grpc.max_receive_message_length", int(max_message_bytes)),
                   ("grpc.max_send_message_length", int(max_message_bytes)),
                   ("grpc.so_reuseport", 0),  # a second server on a taken port must fail, not share it
                   # Connections are bounded as REST's are, with what gRPC core offers (it cannot
                   # close an idle connection to admit a new one): at most max_connections TCP
                   # connections (more are closed on accept); one with no RPC for keep_alive_seconds
                   # gets GOAWAY (clients reconnect on their next call); a socket that has not sent
                   # the HTTP/2 preface within min(keep_alive_seconds, 5 s) is closed.
                   ("grpc.max_allowed_incoming_connections", int(max_connections)),
                   ("grpc.max_connection_idle_ms", idle_ms),
                   ("grpc.server_handshake_timeout_ms", min(idle_ms, int(MAX_HANDSHAKE_SECONDS * 1000)))]
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=threads or min(32, 4 * (os.cpu_count() or 1)), thread_name_prefix="grpc")
        # maximum_concurrent_rpcs counts RPCs running plus those queued for a thread; past it gRPC
        # answers RESOURCE_EXHAUSTED ("Concurrent RPC limit exceeded!") without queueing.
        self._server = grpc.server(self._executor, options=options, maximum_concurrent_rpcs=int(max_in_flight))
        self._stopped: threading.Event | None = None
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            PredictionService(store, run, max_message_bytes=max_message_bytes, allow_non_finite=allow_non_finite),
            self._server)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(store), self._server)
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            self.port = self._server.add_insecure_port(address)
        except RuntimeError as err:
            # gRPC's text ends with advice about GRPC_VERBOSITY that only matters to gRPC itself.
            raise OSError(str(err).split("; set GRPC_VERBOSITY")[0]) from None
        if not self.port:
            raise OSError(f"no address of {address} could be bound")
        self.host = host

    def start(self) -> "GrpcServer":
        self._server.start()
        return self

    def stop(self, grace_seconds: float = 5.0) -> None:
        """Refuse new RPCs, let running ones finish within the grace period."""
        self.begin_stop(grace_seconds)
        self.wait_stopped()

    def begin_stop(self, grace_seconds: float = 5.0) -> None:
        """Refuse new RPCs from now on; running ones go on for up to ``grace_seconds``."""
        if self._stopped is None:
            self._stopped = self._server.stop(grace_seconds)

    def wait_stopped(self) -> None:
        if self._stopped is not None:
            self._stopped.wait()
        self._executor.shutdown(wait=False)


__all__ = ["DEFAULT_MAX_IN_FLIGHT", "DEFAULT_MAX_MESSAGE_BYTES", "GrpcServer", "ModelService", "PredictionService",
           "proto_to_ndarray"]
