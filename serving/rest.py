"""TF Serving's REST API (reference §2-§6) as a plain handler plus a small ASGI app on uvicorn.

:class:`RestApi` turns ``(method, raw path, body)`` into ``(HTTP status, JSON body)`` with no
web framework in between, so the routing, status codes and messages are exactly those of
``http_rest_api_handler.cc`` / ``http_rest_api_util.cc``:

- ``GET  /v1/models/{name}[/versions/{v}|/labels/{l}]``            model status
- ``GET  /v1/models/{name}[/versions/{v}|/labels/{l}]/metadata``   model metadata
- ``POST /v1/models/{name}[/versions/{v}|/labels/{l}]:predict``    predict (row or columnar)
- ``POST ...:classify`` / ``...:regress``: answered as TF Serving with its default flags checks
  a signature for them (``Expected one or two output Tensors, found 3`` for ``encode``, ...,
  :func:`serving.model_store.refuse_classify_or_regress`); one that would pass is UNIMPLEMENTED.

Paths are matched whole and case-insensitively; name and label are URL-decoded. Any other
``/v1/`` path or verb is ``400 Malformed request: <METHOD> <path>``; paths outside ``/v1/`` get
404 with the HTML page of TF Serving's HTTP layer (:data:`NOT_FOUND_PAGE`, ``text/html``, and
the connection closed after it).
``OPTIONS`` (a CORS preflight) on a ``/v1/`` path is 200, or 400 without an ``Origin`` header
holding ``http(s)://``, both with an empty body (:class:`RestApp`). Every other response is
``application/json``; errors are ``{"error": "<message>"}``.

:class:`RestApp` is the ASGI side: it reads the body (refusing more than ``max_body_bytes``
with 413 before reading it all; a ``Content-Encoding: gzip`` body is inflated, as TF Serving's
HTTP server does), runs the handler in a thread pool so the event loop keeps
accepting connections while a model runs, and answers 504 after ``timeout_seconds`` (TF
Serving's REST timeout, 30 s). :class:`RestServer` runs it on uvicorn in a background thread,
with connections bounded (:mod:`serving.connections`): an idle connection is closed after
``--keep-alive-seconds`` (30), counted from its opening or its last response, and beyond
``--max-connections`` (1024) the longest-idle one is closed to make room for the new one.

Load and faults: at most ``max_in_flight`` requests are admitted at once (being read, queued for
a worker thread, or running); one more is answered at once with ``429 {"error": ...}``
(RESOURCE_EXHAUSTED) instead of queueing without bound. A request holds its place until its
worker thread is done with it, so a timed-out request that is still running counts too. The
timeout is a per-request deadline measured from arrival: a body that has not arrived by then
gets 408, a request still waiting for a worker thread is dropped without running, and one whose
model call has not started when the deadline passes is not run.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import re
import socket
import threading
import time
import zlib
from typing import Callable, Mapping
from urllib.parse import unquote_to_bytes

import numpy as np

from serving import json_codec
from serving.connections import DEFAULT_KEEP_ALIVE_SECONDS, DEFAULT_MAX_CONNECTIONS, bounded_protocol
from serving.model_store import (refuse_classify_or_regress, CLASSIFY_METHOD, DEFAULT_SIGNATURE, PREDICT_METHOD, REGRESS_METHOD, ModelStore,
                                 Servable)
from serving.status import Code, ServingError, invalid_argument, one_line

log = logging.getLogger("serving.rest")

DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024
DEFAULT_TIMEOUT_SECONDS = 30.0
DEFAULT_MAX_IN_FLIGHT = 128
JSON_HEADERS = [(b"content-type", b"application/json")]
# A path outside /v1/ reaches none of TF Serving's handlers: its HTTP layer answers with libevent's
# error page (evhttp_server.cc: evhttp_send_error(req, HTTP_NOTFOUND, nullptr); in libevent 2.1.12
# that is ERR_FORMAT sent by evhttp_send_page_, which sets Content-Type: text/html and
# Connection: close, and the connection is closed after it), not a JSON body.
NOT_FOUND_PAGE = b"<HTML><HEAD>\n<TITLE>404 Not Found</TITLE>\n</HEAD><BODY>\n<H1>Not Found</H1>\n</BODY></HTML>\n"
_HTML_HEADERS = [(b"content-type", b"text/html"), (b"connection", b"close")]

_V1_RE = re.compile(r"/v1/.*", re.IGNORECASE | re.DOTALL)
_PREDICT_RE = re.compile(r"/v1/models/([^/:]+)(?:(?:/versions/([0-9]+))|(?:/labels/([^/:]+)))?"
                         r":(classify|regress|predict)", re.IGNORECASE)
_STATUS_RE = re.compile(r"/v1/models(?:/([^/:]+))?(?:(?:/versions/([0-9]+))|(?:/labels/([^/:]+)))?"
                        r"(?:/(metadata))?", re.IGNORECASE)
_INT64_MAX = 2**63 - 1
_ORIGIN_RE = re.compile(r"https?://")

Runner = Callable[[object, Mapping[str, np.ndarray]], dict]


def _decode_segment(text: str) -> str:
    """Percent-decoding as curl_easy_unescape does it ('+' stays '+')."""
    return unquote_to_bytes(text).decode("utf-8", "surrogateescape")


class _UnwrittenError(ServingError):
    """An error TF Serving returns before it writes the JSON error body: ``ParseModelInfo``'s
    (``http_rest_api_util.cc``) return early from ``HttpRestApiHandler::ProcessRequest``, so the
    client gets the status code and an empty body."""


class RestApi:
    """The REST handler. ``run(signature, arrays)`` executes a signature (the batcher or
    ``Signature.run``); ``allow_non_finite`` passes NaN/Inf inputs to the model as TF Serving
    does (default: 400, see :meth:`Signature.prepare`)."""

    def __init__(self, store: ModelStore, run: Runner | None = None, *, allow_non_finite: bool = False):
        self.store = store
        self.run: Runner = run or (lambda signature, arrays: signature.run(arrays))
        self.allow_non_finite = allow_non_finite
        self._metadata_cache: dict[int, tuple[Servable, bytes]] = {}

    def handle(self, method: str, path: str, body: bytes, deadline: float | None = None) -> tuple[int, bytes]:
        """``(status, body)`` for one request; ``path`` is the raw (percent-encoded) path;
        ``deadline`` (``time.monotonic()`` seconds): past it, the model is not run."""
        if not _V1_RE.fullmatch(path):
            return 404, NOT_FOUND_PAGE
        try:
            return 200, self._dispatch(method, path, body, deadline)
        except _UnwrittenError as err:
            return err.code.http_status, b""
        except ServingError as err:
            return err.code.http_status, json_codec.error_body(err.message)
        except RecursionError:
            return 400, json_codec.error_body("JSON Value nested too deeply; send tensors with fewer dimensions")
        except MemoryError:
            return 429, json_codec.error_body("Request too large for the server's memory; send smaller batches")
        except Exception as err:  # a bug: answer, log, keep the worker alive
            log.exception("internal error on %s %s", method, path)
            return 500, json_codec.error_body(f"Internal error: {one_line(err, 200)}")

    # -- routing ---------------------------------------------------------------------------

    def _dispatch(self, method: str, path: str, body: bytes, deadline: float | None = None) -> bytes:
        if method == "POST":
            match = _PREDICT_RE.fullmatch(path)
        elif method == "GET":
            match = _STATUS_RE.fullmatch(path)
        else:
            match = None
        if match is None:
            raise invalid_argument(f"Malformed request: {method} {path}")
        name, version_text, label, verb = match.groups()
        name = _decode_segment(name) if name else ""
        version = None
        if version_text is not None:
            version = int(version_text)
            if version > _INT64_MAX:
                raise _UnwrittenError(Code.INVALID_ARGUMENT, f"Failed to convert version: {version_text} to numeric.")
        if label is not None:
            label = _decode_segment(label)
        if method == "POST":
            # The verb group matches case-insensitively but is compared exactly (as upstream).
            if verb == "predict":
                return self._predict(name, version, label, body, deadline)
            handler = {"classify": self._classify, "regress": self._regress}.get(verb)
            if handler is None:
                raise invalid_argument(f"Malformed request: {method} {path}")
            return handler(name, version, label, body)
        if not name:
            raise invalid_argument("Missing model name in request.")
        if verb == "metadata":
            return self._metadata(name, version, label)
        return self._status(name, version, label)

    # -- status and metadata ---------------------------------------------------------------

    def _status(self, name: str, version: int | None, label: str | None) -> bytes:
        states = self.store.status(name, version, label)
        return json_codec.dumps({"model_version_status": [status_json(s) for s in states]})

    def _metadata(self, name: str, version: int | None, label: str | None) -> bytes:
        servable = self.store.servable(name, version, label)
        cached = self._metadata_cache.get(servable.version)
        if cached is not None and cached[0] is servable:
            return cached[1]
        body = json_codec.dumps(metadata_json(servable))
        self._metadata_cache = {**{v: c for v, c in self._metadata_cache.items() if v in self.store.versions},
                                servable.version: (servable, body)}
        return body

    # -- predict ---------------------------------------------------------------------------

    def _predict(self, name: str, version: int | None, label: str | None, body: bytes,
                 deadline: float | None = None) -> bytes:
        doc = json_codec.parse_document(body)
        signature_name = json_codec.signature_name_of(doc)
        servable = self.store.servable(name, version, label)  # one version for the whole request
        key = signature_name or DEFAULT_SIGNATURE
        signature = servable.signatures.get(key)
        if signature is None:
            raise invalid_argument(f'Serving signature name: "{key}" not found in signature def')
        if not signature.inputs:
            raise invalid_argument(f"Failed to get input map for signature: {signature_name or 'DEFAULT'}")
        if signature.method_name not in (PREDICT_METHOD, CLASSIFY_METHOD, REGRESS_METHOD) or not signature.callable:
            raise invalid_argument(f"Expected prediction signature method_name to be one of {{{PREDICT_METHOD}, "
                                   f"{CLASSIFY_METHOD}, {REGRESS_METHOD}}}. Was: {signature.method_name}")
        check_bools = b"true" in body or b"false" in body
        fmt, arrays = json_codec.tensors_from_request(doc, signature.inputs, check_bools=check_bools)
        arrays = signature.prepare(arrays, allow_non_finite=self.allow_non_finite)
        if deadline is not None and time.monotonic() > deadline:
            # Parsing a large body (or waiting for a thread) used up the time: the client has
            # been answered 504 already, so running the model would only delay other requests.
            raise ServingError(Code.DEADLINE_EXCEEDED, "Request timed out before the model ran; send smaller batches "
                                                       "or raise --rest-timeout-seconds")
        outputs = self.run(signature, arrays)
        return json_codec.predict_response(outputs, fmt)

    def _classify(self, name, version, label, body) -> bytes:
        return self._classify_or_regress("classification", name, version, label, body)

    def _regress(self, name, version, label, body) -> bytes:
        return self._classify_or_regress("regression", name, version, label, body)

    def _classify_or_regress(self, kind: str, name, version, label, body) -> bytes:
        doc = json_codec.parse_document(body)
        signature_name = json_codec.signature_name_of(doc)
        _check_examples(doc)
        servable = self.store.servable(name, version, label)
        refuse_classify_or_regress(servable, signature_name, kind)


def _check_examples(doc: Mapping) -> None:
    """The request checks of ``FillClassifyRegressRequestFromJson`` (``json_tensor.cc``): the
    context, then the examples, each a JSON object of features (``MakeExampleFromJsonObject``)."""
    if "context" in doc:
        _check_example(doc["context"])
    if "examples" not in doc:
        raise invalid_argument(f"JSON Value: {json_codec.preview(doc)} When method is classify, key 'examples' is "
                               "expected and was not found")
    examples = doc["examples"]
    if not isinstance(examples, list):
        raise invalid_argument(f"JSON Value: {json_codec.preview(doc)} Expecting 'examples' value to be an list/array")
    if not examples:
        raise invalid_argument(f"JSON Value: {json_codec.preview(doc)} 'examples' value is an empty array")
    for example in examples:
        _check_example(example)


def _check_example(example) -> None:
    """``MakeExampleFromJsonObject`` + ``AddValueToFeature``: every feature is one value or a
    list of values of one kind (int64: integers and booleans; float: numbers with a fraction or
    exponent; bytes: strings and ``{"b64": ...}``)."""
    if not isinstance(example, dict):
        raise invalid_argument(f"Example must be JSON object but got JSON {json_codec.json_type(example)}")
    for name, content in example.items():
        kind = "UNKNOWN"  # the feature's kind so far (KIND_NOT_SET)
        for value in content if isinstance(content, list) else [content]:
            kind = _feature_kind(name, value, kind)


def _feature_kind(name: str, value, kind: str) -> str:
    if value is None or isinstance(value, list) or (isinstance(value, dict) and not json_codec.is_b64_object(value)):
        raise invalid_argument(f"Feature: {name} has element with unexpected JSON type: {json_codec.json_type(value)}")
    if isinstance(value, bool):
        wanted = "int64"
    elif isinstance(value, (str, dict)):
        wanted = "bytes"
    elif isinstance(value, float) or not -(2**63) <= value < 2**64:  # rapidjson holds these as doubles
        wanted = "float"
    else:
        wanted = "int64"
    if kind not in ("UNKNOWN", wanted):
        raise invalid_argument(f"Unexpected element type in feature: {name} expecting type: {kind}")
    if isinstance(value, dict):
        json_codec.decode_b64(value)
    elif wanted == "int64" and not isinstance(value, bool) and value >= 2**63:
        raise invalid_argument(f"Feature: {name} has uint64_t element. Only int64_t is supported.")
    return wanted


def status_json(status) -> dict:
    """One ``ModelVersionStatus`` as TF Serving prints it (int64 version as a string)."""
    return {"version": str(status.version), "state": _STATE_NAMES.get(status.state, "UNKNOWN"),
            "status": {"error_code": status.error_code.name, "error_message": status.error_message}}


_STATE_NAMES = {0: "UNKNOWN", 10: "START", 20: "LOADING", 30: "AVAILABLE", 40: "UNLOADING", 50: "END"}


def metadata_json(servable: Servable) -> dict:
    """``GetModelMetadataResponse`` as the REST metadata endpoint prints it (reference §3)."""
    from google.protobuf import json_format
    from tensorflow_serving.apis import model_pb2

    spec = model_pb2.ModelSpec(name=servable.name)
    spec.version.value = servable.version
    options = {"preserving_proto_field_name": True, "always_print_fields_with_no_presence": True}
    return {"model_spec": json_format.MessageToDict(spec, **options),
            "metadata": {"signature_def": json_format.MessageToDict(servable.signature_def_map, **options)}}


# -- ASGI ------------------------------------------------------------------------------------


class RestApp:
    """ASGI application around :class:`RestApi`."""

    def __init__(self, api: RestApi, *, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
                 timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS, threads: int | None = None,
                 max_in_flight: int = DEFAULT_MAX_IN_FLIGHT):
        self.api = api
        self.max_body_bytes = int(max_body_bytes)
        self.timeout_seconds = float(timeout_seconds)
        self.max_in_flight = int(max_in_flight)
        self.executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=threads or min(32, 4 * (os.cpu_count() or 1)), thread_name_prefix="rest")
        # Touched from the event loop and from worker threads (a slot is released when the
        # thread is done), hence the lock.
        self._in_flight = 0
        self._in_flight_lock = threading.Lock()

    @property
    def in_flight(self) -> int:
        """Requests admitted and not yet finished (reading, queued or running)."""
        return self._in_flight

    def _admit(self) -> bool:
        with self._in_flight_lock:
            if self._in_flight >= self.max_in_flight:
                return False
            self._in_flight += 1
            return True

    def _release(self, *_ignored) -> None:
        with self._in_flight_lock:
            self._in_flight -= 1

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        if not self._admit():
            # Refused before the body is read: an overloaded server holds no more memory for it.
            await self._reply(send, 429, json_codec.error_body(
                f"Too many requests in flight (the server's limit is {self.max_in_flight}); retry after a short "
                "wait, or raise --max-in-flight"))
            return
        submitted: list = []
        try:
            await self._handle(scope, receive, send, submitted)
        finally:
            if not submitted:  # else the worker thread's completion releases the place
                self._release()

    async def _handle(self, scope, receive, send, submitted: list) -> None:
        """Answer one admitted request; the work sent to a worker thread is appended to
        ``submitted``."""
        # A timeout <= 0 is no deadline, as TF Serving reads --rest_api_timeout_in_ms <= 0
        # (http_rest_api_handler.cc sets RunOptions' timeout only when it is > 0).
        deadline = time.monotonic() + self.timeout_seconds if self.timeout_seconds > 0 else None
        method = scope["method"]
        path = (scope.get("raw_path") or scope["path"].encode("utf-8")).decode("latin-1").split("?", 1)[0]
        declared = _content_length(scope)
        if declared is not None and declared > self.max_body_bytes:
            await self._reply(send, 413, self._too_large(declared))
            return
        try:
            # asyncio.timeout arms one timer on this task; wait_for would wrap the read in a task.
            async with asyncio.timeout(None if deadline is None else max(deadline - time.monotonic(), 0.0)):
                body = await self._read_body(receive)
        except TimeoutError:
            # A client that never finishes its body (slowloris) must not hold a place forever.
            await self._reply(send, 408, json_codec.error_body(
                f"Request body not received within {self.timeout_seconds:g} s; send the whole body at once"))
            return
        if body is None:  # disconnected
            return
        if len(body) > self.max_body_bytes:
            await self._reply(send, 413, self._too_large(None))
            return
        if method == "OPTIONS" and _V1_RE.fullmatch(path):
            # A CORS preflight, answered as TF Serving's http_server.cc does before any routing:
            # OK when the Origin header holds http:// or https://, else FAILED_PRECONDITION
            # ("Origin header is missing in CORS preflight"), both with an empty body (the
            # handler that writes error bodies does not run). No CORS headers: TF Serving adds
            # them only with --rest_api_enable_cors_support.
            origin = (_header(scope, b"origin") or b"").decode("latin-1")
            await self._reply(send, 200 if _ORIGIN_RE.search(origin) else 400, b"")
            return
        loop = asyncio.get_running_loop()
        answer = loop.create_future()  # (status, payload), or None when the deadline passed first

        def finished(work: concurrent.futures.Future) -> None:  # in the worker thread
            self._release()
            if not work.cancelled():
                try:
                    loop.call_soon_threadsafe(_settle, answer, work)
                except RuntimeError:  # the event loop has closed (shutdown): nobody waits
                    pass

        # One future, one timer and one callback per request: fewer objects and event-loop
        # callbacks than asyncio.wait_for over asyncio.wrap_future (docs/performance.md).
        if b"gzip" in (_header(scope, b"content-encoding") or b""):
            work = self.executor.submit(self._handle_gzipped, method, path, body, deadline)
        else:
            work = self.executor.submit(self.api.handle, method, path, body, deadline)
        submitted.append(work)
        work.add_done_callback(finished)
        timer = None if deadline is None else loop.call_at(loop.time() + max(deadline - time.monotonic(), 0.0),
                                                           _settle, answer, None)
        try:
            result = await answer
        except asyncio.CancelledError:
            # uvicorn cancels the requests still running when --grace-seconds has run out: answered
            # here as gRPC answers them (UNAVAILABLE: 503, retryable), where uvicorn wrote a plain
            # "Internal Server Error" 500 and logged a traceback for each.
            work.cancel()
            with contextlib.suppress(Exception):
                await self._reply(send, 503, json_codec.error_body(
                    "the server is shutting down and its --grace-seconds ran out before this request finished; "
                    "send it again (to another replica)"))
            return
        finally:
            if timer is not None:
                timer.cancel()
        if result is None:
            # The work is cancelled if it is still queued; work already running finishes (a
            # thread cannot be interrupted) and keeps its admission until then.
            work.cancel()
            result = 504, json_codec.error_body(f"Request timed out after {self.timeout_seconds:g} s; send smaller "
                                                "batches or raise --rest-timeout-seconds")
        await self._reply(send, *result)

    def _handle_gzipped(self, method: str, path: str, body: bytes, deadline: float | None) -> tuple[int, bytes]:
        """A request whose ``Content-Encoding`` says gzip, inflated first (in the worker thread), as
        TF Serving's HTTP server does (``evhttp_request.cc``: any ``Content-Encoding`` containing
        "gzip"). A body that does not inflate is read as an empty one, as there; one that inflates
        past ``max_body_bytes`` is refused with 413 (TF Serving's cap is 100 MB)."""
        inflated = _gunzip(body, self.max_body_bytes)
        if inflated is None:
            return 413, json_codec.error_body(
                f"Request body inflates (Content-Encoding: gzip) to more than the limit of {self.max_body_bytes} "
                "bytes; send fewer instances per request or raise --rest-max-body-bytes")
        return self.api.handle(method, path, inflated, deadline)

    async def _read_body(self, receive) -> bytes | None:
        """The request body, or None if the client went away; stops early past the size limit."""
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            body += message.get("body", b"")
            if len(body) > self.max_body_bytes or not message.get("more_body"):
                return bytes(body)

    def _too_large(self, size: int | None) -> bytes:
        got = f"of {size} bytes " if size is not None else ""
        return json_codec.error_body(f"Request body {got}exceeds the limit of {self.max_body_bytes} bytes; send "
                                     "fewer instances per request or raise --rest-max-body-bytes")

    @staticmethod
    async def _reply(send, status: int, payload: bytes) -> None:
        headers = (_HTML_HEADERS if payload is NOT_FOUND_PAGE else JSON_HEADERS) + [
            (b"content-length", str(len(payload)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    @staticmethod
    async def _lifespan(receive, send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return


def _settle(answer: asyncio.Future, work: concurrent.futures.Future | None) -> None:
    """Give the waiting request its answer (in the event loop): the worker's ``(status, body)``,
    or ``None`` when called by the deadline timer; whichever comes first wins."""
    if answer.done():
        return
    if work is None:
        answer.set_result(None)
        return
    error = work.exception()
    if error is not None:
        answer.set_exception(error)
    else:
        answer.set_result(work.result())


def _gunzip(body: bytes, limit: int) -> bytes | None:
    """``body`` gzip-inflated; ``b""`` when it is not gzip or is cut short (TF Serving reads such a
    body as empty); None when it inflates to more than ``limit`` bytes."""
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        inflated = inflater.decompress(body, limit + 1)
    except zlib.error as err:
        log.warning("a gzip request body did not inflate (%s); read as an empty body, as TF Serving does", err)
        return b""
    if len(inflated) > limit:
        return None
    if not inflater.eof:
        log.warning("a gzip request body was cut short; read as an empty body, as TF Serving does")
        return b""
    return inflated


def _header(scope, name: bytes) -> bytes | None:
    """The value of the request header ``name`` (lower case), or None."""
    for key, value in scope.get("headers", ()):
        if key == name:
            return value
    return None


def _content_length(scope) -> int | None:
    for key, value in scope.get("headers", ()):
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: a free one).

    Created with ``IPPROTO_TCP`` so asyncio sets ``TCP_NODELAY`` on accepted connections (with
    ``proto=0`` it does not, and Nagle's algorithm adds 40 ms to every keep-alive response)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP,
                               flags=socket.AI_PASSIVE)
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


class RestServer:
    """uvicorn serving a :class:`RestApp` from a background thread; idle connections are closed
    after ``keep_alive_seconds`` and at most ``max_connections`` are held
    (:mod:`serving.connections`)."""

    def __init__(self, app: RestApp, host: str, port: int, *, grace_seconds: float = 5.0,
                 keep_alive_seconds: float = DEFAULT_KEEP_ALIVE_SECONDS, max_connections: int = DEFAULT_MAX_CONNECTIONS):
        import uvicorn

        self.app = app
        self.socket = bind_socket(host, port)
        self.host = host
        self.port = self.socket.getsockname()[1]
        config = uvicorn.Config(app, lifespan="on", log_config=None, log_level="warning", access_log=False,
                                server_header=False, proxy_headers=False, timeout_graceful_shutdown=grace_seconds,
                                http=bounded_protocol(max_connections), timeout_keep_alive=keep_alive_seconds,
                                # asyncio's loop, even where uvloop is installed: its socket
                                # sends release the GIL (uvloop's hold it), and side by side
                                # uvloop was no faster here (docs/performance.md).
                                loop="asyncio")
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def open_connections(self) -> int:
        """Connections the server holds now (idle or with a request in progress)."""
        return len(self._server.server_state.connections)

    def start(self, timeout: float = 30.0) -> "RestServer":
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self.socket]},
                                        name="rest-server", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the REST server did not start")
            time.sleep(0.005)
        return self

    def stop(self) -> None:
        """Stop accepting, let in-flight requests finish (up to the grace period), close."""
        self.begin_stop()
        self.wait_stopped()

    def begin_stop(self) -> None:
        """Stop accepting new connections (uvicorn closes the listener on its next tick); requests
        in flight go on. Lets the caller stop the gRPC server at the same moment."""
        self._server.should_exit = True

    def wait_stopped(self) -> None:
        """Wait for the requests in flight (up to the grace period), then release the threads."""
        if self._thread is not None:
            self._thread.join(timeout=60)
        self.app.executor.shutdown(wait=True, cancel_futures=False)
        self.socket.close()


__all__ = ["DEFAULT_MAX_BODY_BYTES", "DEFAULT_MAX_IN_FLIGHT", "DEFAULT_TIMEOUT_SECONDS", "RestApi", "RestApp",
           "RestServer", "bind_socket", "metadata_json", "status_json"]
