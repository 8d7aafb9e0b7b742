"""Reliability of `vae-tf serve` (issue #8, service half): sustained concurrent load with a hot
swap, faults raised inside the model, deadlines, bounded admission (429 / RESOURCE_EXHAUSTED),
graceful drain, path tricks and symbolic links, and the default bind address.

Every server binds 127.0.0.1 on free ports and is stopped by its test. No timing is asserted:
slow or blocked model calls are steered by a marker in the first pixel of the input and by
events, so each assertion is about what the server answered, not about how fast."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_service_pb2_grpc

from serving.client import GrpcClient, RestClient, ServingRequestError
from serving.model_store import ModelStore
from serving.server import ModelServer, ServerConfig
from serving.testing import drop_version, running_server
from tests.conftest import assert_one_line

CLIENTS_PER_PROTOCOL = 16
REQUESTS_PER_CLIENT = 100  # CI size; benchmarks/serving_load.py runs 2000


def _x(n, seed=0, marker=None):
    x = np.random.default_rng(seed).random((n, 8, 8, 1)).astype(np.float32)
    if marker is not None:
        x[0, 0, 0, 0] = marker
    return x


def _local_encode(path: Path, x: np.ndarray) -> np.ndarray:
    return tf.saved_model.load(str(path)).signatures["encode"](x=tf.constant(x))["z_mean"].numpy()


def _grpc_request(x, signature="encode", name="vae"):
    request = predict_pb2.PredictRequest()
    request.model_spec.name, request.model_spec.signature_name = name, signature
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(x))
    return request


def _rest_predict(port: int, x, timeout: float = 30.0, path: str = "/v1/models/vae:predict"):
    """(status, JSON body) of one REST encode on a fresh connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", path, body=json.dumps({"signature_name": "encode", "inputs": x.tolist()}))
        response = conn.getresponse()
        assert response.getheader("Content-Type") == "application/json"
        payload = response.read()
        return response.status, json.loads(payload) if payload else None
    finally:
        conn.close()


class ModelFaults:
    """Wraps the loaded encode function of a running server. The first pixel of a request picks
    what happens inside the model call: a TensorFlow error, a Python error, a wait on an event,
    or the real computation. Every call's marker is recorded (to prove what ran)."""

    RAISE = {
        10.0: lambda: tf.errors.InternalError(None, None, "injected internal failure\n  graph stack trace line"),
        11.0: lambda: tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor (injected)"),
        12.0: lambda: tf.errors.InvalidArgumentError(None, None, "injected invalid argument"),
        13.0: lambda: RuntimeError("injected bug"),
        14.0: lambda: MemoryError(),
    }
    BLOCK = 30.0

    def __init__(self, monkeypatch, server: ModelServer, signature: str = "encode"):
        target = server.store.servable("vae").signatures[signature]
        self._real = target._function
        self.calls: list[float] = []
        self.gate = threading.Event()
        self._lock = threading.Lock()
        monkeypatch.setattr(target, "_function", self)

    def __call__(self, **inputs):
        marker = float(np.asarray(inputs["x"]).reshape(-1)[0])
        with self._lock:
            self.calls.append(marker)
        if marker in self.RAISE:
            raise self.RAISE[marker]()
        if marker == self.BLOCK:
            assert self.gate.wait(60), "the test never opened the gate"
        return self._real(**inputs)

    def wait_for_calls(self, marker: float, count: int = 1, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while self.calls.count(marker) < count:
            assert time.monotonic() < deadline, f"the model never saw {count} call(s) with marker {marker}"
            time.sleep(0.01)


def _in_background(fn, *args):
    """Run ``fn`` in a thread; ``result()`` joins and returns its value or raises its error."""
    box = {}

    def target():
        try:
            box["value"] = fn(*args)
        except BaseException as err:  # noqa: BLE001 - handed back to the test
            box["error"] = err

    thread = threading.Thread(target=target, daemon=True)
    thread.start()

    def result(timeout=60):
        thread.join(timeout)
        assert not thread.is_alive(), f"{fn.__name__} did not finish"
        if "error" in box:
            raise box["error"]
        return box["value"]

    return result


def _grpc_call(target: str, x, timeout: float = 30.0):
    """(code name, response or details) of one gRPC encode on its own channel."""
    with grpc.insecure_channel(target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        try:
            return "OK", stub.Predict(_grpc_request(x), timeout=timeout)
        except grpc.RpcError as err:
            return err.code().name, err.details()


# -- sustained load with a hot swap ------------------------------------------------------------


@pytest.mark.slow
def test_load_with_hot_swap_has_no_5xx_and_no_wrong_answer(exports, tmp_path):
    """16 REST + 16 gRPC clients, each sending requests back to back, while version 2 is dropped
    in. Every answer must equal the in-process answer of version 1 or 2 for that input, a client
    that has seen version 2 must never see version 1 again, and nothing may fail."""
    inputs = [_x(1 + i % 4, seed=i) for i in range(8)]  # batch sizes 1..4
    _load_with_hot_swap(exports, tmp_path, "vae", inputs)


@pytest.mark.slow
def test_text_model_load_with_hot_swap_has_no_5xx_and_no_wrong_answer(text_exports, tmp_path):
    """The same with a text model: batches of 1..4 sentences (known and unknown words, one
    longer than the model's max_length, so truncated) over REST (JSON strings) and gRPC
    (``string_val``)."""
    words = ["the", "cat", "sat", "on", "a", "mat", "zebra", "big", "red", "dog"]
    rng = np.random.default_rng(0)
    inputs = [[" ".join(rng.choice(words, size=1 + (i + j) % 9)) for j in range(1 + i % 4)] for i in range(8)]
    _load_with_hot_swap(text_exports, tmp_path, "text", inputs)


def _load_with_hot_swap(exports: Path, tmp_path: Path, name: str, inputs: list) -> None:
    drop_version(exports, tmp_path, 1, name=name)
    encoders = {v: tf.saved_model.load(str(exports / str(v))).signatures["encode"] for v in (1, 2)}
    expected = {v: [encoders[v](x=tf.constant(x))["z_mean"].numpy() for x in inputs] for v in (1, 2)}
    assert not np.allclose(expected[1][0], expected[2][0])
    with running_server(tmp_path, name, poll_seconds=0.05) as server:
        done = {"count": 0}
        lock = threading.Lock()
        failures, wrong, regressions = [], [], []
        seen = {1: 0, 2: 0}
        give_up = time.monotonic() + 300  # a safety net against a hang, not a timing assertion

        def client_loop(kind: str, index: int):
            client = RestClient(server.rest_url, name) if kind == "rest" else GrpcClient(server.grpc_target, name)
            latest, sent = 0, 0
            # Until this client has sent its share *and* seen the new version (so every client
            # crosses the swap), within the safety net.
            while (sent < REQUESTS_PER_CLIENT or latest < 2) and time.monotonic() < give_up:
                i = (index + sent) % len(inputs)
                sent += 1
                try:
                    z = client.encode(inputs[i])["z_mean"]
                except ServingRequestError as err:
                    failures.append((kind, index, err.code, str(err)))
                    continue
                version = next((v for v in (1, 2) if z.shape == expected[v][i].shape
                                and np.allclose(z, expected[v][i], rtol=1e-5, atol=1e-6)), None)
                with lock:
                    done["count"] += 1
                    if version is None:
                        wrong.append((kind, index, i))
                        continue
                    seen[version] += 1
                if version < latest:
                    regressions.append((kind, index, sent))
                latest = max(latest, version)
            client.close()

        threads = [threading.Thread(target=client_loop, args=(kind, i))
                   for kind in ("rest", "grpc") for i in range(CLIENTS_PER_PROTOCOL)]
        for thread in threads:
            thread.start()
        total = 2 * CLIENTS_PER_PROTOCOL * REQUESTS_PER_CLIENT
        while done["count"] < total // 5 and any(t.is_alive() for t in threads):
            time.sleep(0.01)
        drop_version(exports, tmp_path, 2, name=name)  # the hot swap, under load
        for thread in threads:
            thread.join()
        status = RestClient(server.rest_url, name).status()["model_version_status"]
        in_flight = server.rest.app.in_flight
    assert failures == []  # no 5xx, and no other error either
    assert wrong == []  # every answer is exactly one version's answer for that input
    assert regressions == []  # the swap is atomic per client
    assert done["count"] >= total and seen[1] > 0 and seen[2] >= 2 * CLIENTS_PER_PROTOCOL
    assert [(s["version"], s["state"]) for s in status] == [("2", "AVAILABLE"), ("1", "END")]
    assert in_flight == 0


# -- faults inside the model -------------------------------------------------------------------


def test_errors_raised_inside_the_model_never_take_a_worker_down(exports, tmp_path, monkeypatch):
    """TensorFlow and Python errors raised mid-request get their canonical code and one line, on
    pools of two worker threads each; afterwards both protocols still answer correctly."""
    drop_version(exports, tmp_path, 1)
    # (marker, HTTP status, gRPC code, start of the message)
    cases = [(10.0, 500, "INTERNAL", "injected internal failure"),
             (11.0, 429, "RESOURCE_EXHAUSTED", "OOM when allocating tensor (injected)"),
             (12.0, 400, "INVALID_ARGUMENT", "injected invalid argument"),
             (13.0, 500, "INTERNAL", "Internal error: injected bug"),
             (14.0, 429, "RESOURCE_EXHAUSTED", "Request too large for the server's memory")]
    with running_server(tmp_path, "vae", rest_threads=2, grpc_threads=2) as server:
        faults = ModelFaults(monkeypatch, server)
        for round_ in range(3):  # more faults than threads: a dead worker would show
            for marker, http_status, code, message in cases:
                status, body = _rest_predict(server.rest_port, _x(2, seed=round_, marker=marker))
                assert status == http_status and body["error"].startswith(message), (marker, status, body)
                assert_one_line(body["error"])
                got_code, details = _grpc_call(server.grpc_target, _x(2, seed=round_, marker=marker))
                assert (got_code, details.startswith(message)) == (code, True), (marker, got_code, details)
                assert_one_line(details)
        assert len(faults.calls) == 3 * len(cases) * 2  # every fault really ran inside the model
        x = _x(3, seed=9)
        want = _local_encode(exports / "1", x)
        for _ in range(4):  # more requests than threads, all answered correctly
            status, body = _rest_predict(server.rest_port, x)
            assert status == 200 and np.allclose(body["outputs"]["z_mean"], want, rtol=1e-5, atol=1e-6)
            code, response = _grpc_call(server.grpc_target, x)
            assert code == "OK" and np.allclose(tf.make_ndarray(response.outputs["z_mean"]), want, rtol=1e-5, atol=1e-6)


def test_a_graph_error_is_400_and_the_server_keeps_serving(tmp_path):
    """A real error raised by a TensorFlow op inside the graph (check_numerics on NaN input)."""

    class Checked(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
        def predict(self, x):
            return {"y": tf.debugging.check_numerics(x, "input has NaN or Inf") * 2.0}

    module = Checked()
    tf.saved_model.save(module, str(tmp_path / "checked" / "1"), signatures={"serving_default": module.predict})
    # allow_non_finite: NaN must reach the graph here (by default the server refuses it before).
    with running_server(tmp_path, "checked", allow_non_finite=True) as server:
        good = {"x": np.array([[1.0, 2.0, 3.0, 4.0]], np.float32)}
        bad = b'{"inputs": [[1.0, NaN, 3.0, 4.0]]}'
        for _ in range(3):
            conn = http.client.HTTPConnection("127.0.0.1", server.rest_port, timeout=30)
            conn.request("POST", "/v1/models/checked:predict", body=bad)
            response = conn.getresponse()
            body = json.loads(response.read())
            conn.close()
            assert response.status == 400 and body["error"].startswith("input has NaN or Inf"), body
            assert_one_line(body["error"])
            client = RestClient(server.rest_url, "checked")
            assert client.predict(good)["y"].tolist() == [[2.0, 4.0, 6.0, 8.0]]
        with grpc.insecure_channel(server.grpc_target) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name="checked"))
            request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([[np.inf, 0, 0, 0]], np.float32)))
            with pytest.raises(grpc.RpcError) as info:
                stub.Predict(request, timeout=30)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert info.value.details().startswith("input has NaN or Inf")
            request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([[1, 1, 1, 1]], np.float32)))
            assert tf.make_ndarray(stub.Predict(request, timeout=30).outputs["y"]).tolist() == [[2.0, 2.0, 2.0, 2.0]]


# -- deadlines ---------------------------------------------------------------------------------


def test_a_rest_timeout_of_0_is_no_deadline(exports, tmp_path, monkeypatch):
    """`--rest_api_timeout_in_ms 0` answered every predict 504 "after 0 s" (status still 200); TF
    Serving sets no deadline for a timeout <= 0 (http_rest_api_handler.cc)."""
    drop_version(exports, tmp_path, 1)
    with running_server(tmp_path, "vae", rest_timeout_seconds=0.0) as server:
        faults = ModelFaults(monkeypatch, server)
        call = _in_background(_rest_predict, server.rest_port, _x(1, marker=ModelFaults.BLOCK))
        faults.wait_for_calls(ModelFaults.BLOCK)
        time.sleep(0.3)  # held inside the model for a while: no deadline passes
        faults.gate.set()
        status, body = call()
    assert status == 200 and len(body["outputs"]["z_mean"]) == 1


def test_rest_deadline_504_and_a_queued_request_past_its_deadline_never_runs(exports, tmp_path, monkeypatch):
    drop_version(exports, tmp_path, 1)
    with running_server(tmp_path, "vae", rest_threads=1, rest_timeout_seconds=0.5) as server:
        faults = ModelFaults(monkeypatch, server)
        slow = _in_background(_rest_predict, server.rest_port, _x(1, marker=ModelFaults.BLOCK))
        faults.wait_for_calls(ModelFaults.BLOCK)  # the only worker thread is now busy
        status, body = _rest_predict(server.rest_port, _x(1, marker=7.0))  # queued behind it
        assert status == 504 and body["error"].startswith("Request timed out after 0.5 s"), body
        assert_one_line(body["error"])
        assert slow() == (504, {"error": body["error"]})  # the blocked one timed out too
        faults.gate.set()
        deadline = time.monotonic() + 30
        while server.rest.app.in_flight and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.rest.app.in_flight == 0  # the blocked call finished and gave its place back
        assert 7.0 not in faults.calls  # the queued request was dropped, not run late
        status, body = _rest_predict(server.rest_port, _x(1))
        assert status == 200 and len(body["outputs"]["z_mean"]) == 1


def test_rest_body_that_never_arrives_gets_408(exports, tmp_path):
    drop_version(exports, tmp_path, 1)
    with running_server(tmp_path, "vae", rest_timeout_seconds=0.5, max_in_flight=1) as server:
        with socket.create_connection(("127.0.0.1", server.rest_port), timeout=30) as sock:
            sock.sendall(b"POST /v1/models/vae:predict HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"inp")
            reply = b""
            while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
                chunk = sock.recv(4096)
                if not chunk:
                    break
                reply += chunk
        head, _, payload = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408"), reply
        assert json.loads(payload)["error"].startswith("Request body not received within 0.5 s")
        # The stalled request gave back the only place: the next one is served.
        assert _rest_predict(server.rest_port, _x(1))[0] == 200


def test_grpc_deadline_is_honoured_and_an_expired_call_never_runs(exports, tmp_path, monkeypatch):
    drop_version(exports, tmp_path, 1)
    with running_server(tmp_path, "vae", grpc_threads=1) as server:
        faults = ModelFaults(monkeypatch, server)
        slow = _in_background(_grpc_call, server.grpc_target, _x(1, marker=ModelFaults.BLOCK), 0.5)
        faults.wait_for_calls(ModelFaults.BLOCK)  # the only worker thread is now busy
        code, _ = _grpc_call(server.grpc_target, _x(1, marker=7.0), 0.3)  # waits for that thread
        assert code == "DEADLINE_EXCEEDED"
        assert slow()[0] == "DEADLINE_EXCEEDED"
        faults.gate.set()
        code, response = _grpc_call(server.grpc_target, _x(2))  # the thread is free again
        assert code == "OK" and tf.make_ndarray(response.outputs["z_mean"]).shape == (2, 4)
        assert 7.0 not in faults.calls  # its deadline had passed when a thread picked it up


def test_a_request_whose_deadline_passes_while_its_input_is_parsed_never_runs(exports, tmp_path, monkeypatch):
    """Parsing a large request can use up the deadline; then the model must not run it."""
    drop_version(exports, tmp_path, 1)
    with running_server(tmp_path, "vae", rest_threads=1, grpc_threads=1, rest_timeout_seconds=0.3) as server:
        faults = ModelFaults(monkeypatch, server)
        signature = server.store.servable("vae").signatures["encode"]
        real_prepare = signature.prepare

        def slow_prepare(arrays, **options):
            if float(np.asarray(arrays["x"]).reshape(-1)[0]) == 7.0:
                time.sleep(0.8)  # longer than both deadlines below
            return real_prepare(arrays, **options)

        monkeypatch.setattr(signature, "prepare", slow_prepare)
        assert _rest_predict(server.rest_port, _x(1, marker=7.0))[0] == 504
        assert _grpc_call(server.grpc_target, _x(1, marker=7.0), 0.3)[0] == "DEADLINE_EXCEEDED"
        # One worker thread per protocol: these run only after the slow handlers have finished.
        assert _rest_predict(server.rest_port, _x(1))[0] == 200
        assert _grpc_call(server.grpc_target, _x(1))[0] == "OK"
        assert 7.0 not in faults.calls and len(faults.calls) == 2


# -- bounded admission -------------------------------------------------------------------------


def test_full_server_answers_429_and_resource_exhausted_then_recovers(exports, tmp_path, monkeypatch):
    drop_version(exports, tmp_path, 1)
    with running_server(tmp_path, "vae", max_in_flight=2, rest_threads=4, grpc_threads=4) as server:
        faults = ModelFaults(monkeypatch, server)
        blocked = [_in_background(_rest_predict, server.rest_port, _x(1, seed=i, marker=ModelFaults.BLOCK))
                   for i in range(2)]
        blocked += [_in_background(_grpc_call, server.grpc_target, _x(1, seed=i, marker=ModelFaults.BLOCK))
                    for i in range(2)]
        faults.wait_for_calls(ModelFaults.BLOCK, count=4)  # two per protocol: both are full
        for _ in range(3):
            status, body = _rest_predict(server.rest_port, _x(1))
            assert status == 429, (status, body)
            assert body["error"] == ("Too many requests in flight (the server's limit is 2); retry after a short "
                                     "wait, or raise --max-in-flight")
            code, details = _grpc_call(server.grpc_target, _x(1))
            assert code == "RESOURCE_EXHAUSTED", (code, details)
        assert faults.calls.count(ModelFaults.BLOCK) == 4 and len(faults.calls) == 4  # refused ones never ran
        faults.gate.set()
        rest_answers = [wait() for wait in blocked[:2]]
        grpc_answers = [wait() for wait in blocked[2:]]
        assert [status for status, _ in rest_answers] == [200, 200]
        assert [code for code, _ in grpc_answers] == ["OK", "OK"]
        deadline = time.monotonic() + 30
        while server.rest.app.in_flight and time.monotonic() < deadline:
            time.sleep(0.01)
        for _ in range(4):  # places were given back
            assert _rest_predict(server.rest_port, _x(1))[0] == 200
            assert _grpc_call(server.grpc_target, _x(1))[0] == "OK"


def test_batcher_queue_full_is_unavailable_not_a_crash():
    """With batching on, the row queue is bounded too (TF Serving's UNAVAILABLE message)."""
    from serving.batching import Batcher, BatchingOptions
    from serving.status import ServingError

    gate, started = threading.Event(), threading.Event()

    class Blocking:
        def run(self, arrays):
            started.set()
            gate.wait(30)
            return {"y": arrays["x"]}

    batcher = Batcher(BatchingOptions(max_batch_size=2, batch_timeout_ms=0, max_enqueued_rows=2))
    first = _in_background(batcher.run, Blocking(), {"x": np.ones((1, 1))})
    assert started.wait(30)  # the worker is busy; the queue is empty
    queued = [_in_background(batcher.run, Blocking(), {"x": np.full((1, 1), i)}) for i in range(2)]
    deadline = time.monotonic() + 30
    while batcher._total_rows < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    with pytest.raises(ServingError) as info:
        batcher.run(Blocking(), {"x": np.ones((1, 1))})
    assert info.value.code.name == "UNAVAILABLE"
    assert info.value.message == "The batch scheduling queue to which this task was submitted is full"
    gate.set()
    assert first()["y"].tolist() == [[1.0]]
    assert sorted(wait()["y"].item() for wait in queued) == [0.0, 1.0]
    batcher.close()


# -- graceful shutdown -------------------------------------------------------------------------


def _stoppable_server(exports, tmp_path, grace_seconds: float) -> ModelServer:
    """A started server of version 1 with this grace period, for tests that stop it themselves."""
    drop_version(exports, tmp_path, 1)
    return ModelServer(ServerConfig(model_base_path=str(tmp_path), model_name="vae", rest_port=0, grpc_port=0,
                                    grace_seconds=grace_seconds, freeze_gc=False)).start()


def test_graceful_shutdown_drains_in_flight_requests(exports, tmp_path, monkeypatch):
    server = _stoppable_server(exports, tmp_path, 30.0)
    try:
        faults = ModelFaults(monkeypatch, server)
        x = _x(2, seed=5, marker=ModelFaults.BLOCK)
        want = _local_encode(exports / "1", x)
        rest_call = _in_background(_rest_predict, server.rest_port, x)
        grpc_call = _in_background(_grpc_call, server.grpc_target, x)
        faults.wait_for_calls(ModelFaults.BLOCK, count=2)
        stopping = _in_background(server.stop)
        # New work is refused while the two requests are still inside the model.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", server.rest_port), timeout=1).close()
            except OSError:
                break
            time.sleep(0.05)
        else:
            pytest.fail("the REST listener was still accepting 30 s after stop()")
        assert _grpc_call(server.grpc_target, _x(1), 5)[0] == "UNAVAILABLE"
        assert faults.calls.count(ModelFaults.BLOCK) == 2 and len(faults.calls) == 2
        faults.gate.set()  # let the in-flight requests finish
        status, body = rest_call()
        code, response = grpc_call()
        stopping()
    finally:
        server.stop()
    assert status == 200 and np.allclose(body["outputs"]["z_mean"], want, rtol=1e-5, atol=1e-6)
    assert code == "OK" and np.allclose(tf.make_ndarray(response.outputs["z_mean"]), want, rtol=1e-5, atol=1e-6)


def test_a_request_still_running_when_the_grace_period_ends_gets_a_json_503(exports, tmp_path, monkeypatch, caplog):
    """uvicorn cancels REST requests still running after --grace-seconds: they got its plain-text
    "Internal Server Error" 500 (not retryable) and each logged a traceback; gRPC said UNAVAILABLE."""
    import logging

    server = _stoppable_server(exports, tmp_path, 0.5)
    try:
        faults = ModelFaults(monkeypatch, server)
        rest_call = _in_background(_rest_predict, server.rest_port, _x(2, seed=5, marker=ModelFaults.BLOCK))
        faults.wait_for_calls(ModelFaults.BLOCK, count=1)
        with caplog.at_level(logging.ERROR):
            stopping = _in_background(server.stop)
            status, body = rest_call()
        faults.gate.set()
        stopping()
    finally:
        faults.gate.set()
        server.stop()
    assert status == 503 and body == {"error": "the server is shutting down and its --grace-seconds ran out before "
                                               "this request finished; send it again (to another replica)"}
    assert "Exception in ASGI application" not in caplog.text


# -- path tricks and symbolic links ------------------------------------------------------------


TRICK_NAMES = ["..", "../outside/vae", "..%2foutside%2fvae", "%2e%2e%2foutside%2fvae", "%2E%2E%2Foutside%2Fvae",
               "..%252foutside%252fvae", "%2Ftmp%2Fvae", "%2F", "vae%00", "vae%2F..%2F..%2Foutside%2Fvae",
               "%2e%2e", ".%2e", "..%5coutside%5cvae", "~%2Fvae"]


@pytest.fixture(scope="module")
def trick_site(exports, tmp_path_factory):
    """``root/base/vae/1`` served; a decoy model ``root/outside/vae/1`` (other weights) and
    ``root/base/outside`` absent. A request that reached the decoy would answer with its numbers."""
    root = tmp_path_factory.mktemp("tricks")
    (root / "base" / "vae").mkdir(parents=True)
    shutil.copytree(exports / "1", root / "base" / "vae" / "1")
    shutil.copytree(exports / "2", root / "outside" / "vae" / "1")
    return root


def test_model_names_in_requests_never_reach_outside_the_base_path(trick_site):
    root = trick_site
    opened: list[str] = []
    watching = threading.Event()

    def audit(event, args):  # every file Python opens while the tricks are sent
        if watching.is_set() and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
            opened.append(os.fsdecode(args[0]))

    sys.addaudithook(audit)  # cannot be removed; inert once `watching` is cleared
    x = _x(1)
    body = json.dumps({"signature_name": "encode", "inputs": x.tolist()}).encode()
    with running_server(root / "base", "vae", poll_seconds=0) as server:
        conn = http.client.HTTPConnection("127.0.0.1", server.rest_port, timeout=30)
        watching.set()
        try:
            for name in TRICK_NAMES + ["/etc/passwd", "/../outside/vae"]:
                for method, path, payload in (("POST", f"/v1/models/{name}:predict", body),
                                              ("GET", f"/v1/models/{name}", None),
                                              ("GET", f"/v1/models/{name}/metadata", None),
                                              ("POST", f"/v1/models/{name}/versions/1:predict", body)):
                    conn.request(method, path, body=payload)
                    response = conn.getresponse()
                    answer = json.loads(response.read() or b"{}")
                    # 404 (not our model) or 400 (not a route): never an answer, never a 5xx.
                    assert response.status in (400, 404), (path, response.status, answer)
                    assert "error" in answer and "outputs" not in answer, (path, answer)
            with grpc.insecure_channel(server.grpc_target) as channel:
                stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
                for name in ["..", "../outside/vae", "/abs/outside/vae", str(root / "outside" / "vae"), "vae/../vae",
                             "%2e%2e%2fvae", "vae\x00"]:
                    with pytest.raises(grpc.RpcError) as info:
                        stub.Predict(_grpc_request(x, name=name), timeout=30)
                    assert info.value.code() == grpc.StatusCode.NOT_FOUND, name
        finally:
            watching.clear()
            conn.close()
        # The real model still answers, with its own numbers (not the decoy's).
        z = RestClient(server.rest_url, "vae").encode(x)["z_mean"]
    assert np.allclose(z, _local_encode(root / "base" / "vae" / "1", x), rtol=1e-5, atol=1e-6)
    assert not np.allclose(z, _local_encode(root / "outside" / "vae" / "1", x), rtol=1e-5, atol=1e-6)
    assert [p for p in opened if "outside" in p or p.startswith("/etc")] == []


def test_symlinked_versions_pointing_outside_are_not_loaded(exports, tmp_path):
    base = tmp_path / "base"
    (base / "vae").mkdir(parents=True)
    shutil.copytree(exports / "1", base / "vae" / "1")
    store = ModelStore(base, "vae", poll_seconds=0)
    store.poll()
    assert store.versions == [1]
    shutil.copytree(exports / "2", tmp_path / "elsewhere" / "2")
    os.symlink(tmp_path / "elsewhere" / "2", base / "vae" / "2")  # the whole version points outside
    shutil.copytree(exports / "2", base / "vae" / "3")
    shutil.rmtree(base / "vae" / "3" / "variables")
    os.symlink(tmp_path / "elsewhere" / "2" / "variables", base / "vae" / "3" / "variables")  # one folder does
    store.poll()  # 3 is the newest: refused, so version 1 keeps serving
    assert store.versions == [1]
    os.rename(base / "vae" / "3", tmp_path / "v3")
    store.poll()  # now 2 is the newest: refused too
    assert store.versions == [1]
    os.rename(tmp_path / "v3", base / "vae" / "3")
    states = {s.version: s for s in store.status("vae")}
    for version in (2, 3):
        assert states[version].state == 50 and states[version].error_code.name == "UNKNOWN"
        assert "outside MODEL_BASE_PATH" in states[version].error_message, states[version].error_message
        assert states[version].error_message.endswith("or pass --follow-external-links")
        assert_one_line(states[version].error_message)
    # A link that stays inside the base path is fine (e.g. a Kubernetes volume's ..data links).
    shutil.copytree(exports / "2", base / "store" / "v4")
    os.symlink(base / "store" / "v4", base / "vae" / "4")
    store.poll()
    assert store.versions == [4]
    # The operator can allow links that leave the base path.
    os.rename(base / "vae" / "4", tmp_path / "v4-link")
    allowed = ModelStore(base, "vae", poll_seconds=0, follow_external_links=True)
    allowed.poll()
    assert allowed.versions == [3]


# -- defaults ----------------------------------------------------------------------------------


def test_default_bind_is_loopback_and_limits_are_on(exports, tmp_path, monkeypatch):
    import argparse

    monkeypatch.delenv("VAE_TF_SERVE_HOST", raising=False)  # the app image's variable (test_dockerfile.py)

    from serving.cli import add_parsers

    parser = argparse.ArgumentParser()
    add_parsers(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["serve"])
    assert (args.host, args.max_in_flight, args.follow_external_links) == ("127.0.0.1", 128, False)
    assert ServerConfig(model_name="vae").host == "127.0.0.1"
    drop_version(exports, tmp_path, 1)
    server = ModelServer(ServerConfig(model_base_path=str(tmp_path), model_name="vae", rest_port=0, grpc_port=0,
                                      freeze_gc=False)).start()  # no host given
    try:
        assert server.rest.socket.getsockname()[0] == "127.0.0.1"
        assert server.rest.app.max_in_flight == 128
        assert server.rest_url.startswith("http://127.0.0.1:") and server.grpc_target.startswith("127.0.0.1:")
    finally:
        server.stop()
    with pytest.raises(Exception, match="--max-in-flight must be at least 1"):
        ServerConfig(model_base_path=str(tmp_path), model_name="vae", max_in_flight=0).check()
