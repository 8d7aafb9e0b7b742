"""Connections are bounded (issue 19, item 2): idle connections close after --keep-alive-seconds
(counted from the connection's opening or its last answer, whatever half a request it trickles),
each protocol holds at most --max-connections, and 2,000 idle connections opened by one client do
not stop the server answering a new request (REST closes the longest-idle connection to make
room; gRPC refuses connections past its limit and drops the ones that never speak HTTP/2)."""

from __future__ import annotations

import http.client
import json
import logging
import re
import resource
import select
import socket
import time

import grpc
import pytest
from tensorflow_serving.apis import get_model_status_pb2, model_pb2, model_service_pb2_grpc

from serving.server import FILE_RESERVE, raise_file_limit
from serving.testing import export_tiny_model, running_server

IDLE_CLIENTS = 2000
STATUS_OK = {"model_version_status": [{"version": "1", "state": "AVAILABLE",
                                       "status": {"error_code": "OK", "error_message": ""}}]}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    base = tmp_path_factory.mktemp("models")
    export_tiny_model(base, "vae", seed=0)
    return base


def _need_files(count: int) -> None:
    """Raise the soft open-file limit to ``count`` (the client's sockets and the server's live in
    this one process), or skip when the hard limit does not allow it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < count:
        pytest.skip(f"needs {count} open files but the hard RLIMIT_NOFILE is {hard} (raise it: ulimit -Hn)")
    if soft != resource.RLIM_INFINITY and soft < count:
        resource.setrlimit(resource.RLIMIT_NOFILE, (count, hard))


def _open_idle(port: int, n: int) -> list[socket.socket]:
    return [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(n)]


def _closed_by_server(sock: socket.socket) -> bool:
    """True once the server has closed ``sock`` (EOF or reset); reads and drops whatever the
    server sent before (an answer, gRPC's SETTINGS frame); never blocks."""
    poller = select.poll()  # not select(): it cannot watch descriptors past 1023
    poller.register(sock, select.POLLIN)
    while poller.poll(0):
        try:
            if sock.recv(65536, socket.MSG_DONTWAIT) == b"":
                return True
        except BlockingIOError:
            return False
        except (ConnectionResetError, BrokenPipeError):
            return True
    return False


def _wait_for(predicate, timeout: float, step: float = 0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def _get_status(port: int) -> tuple[int, float]:
    start = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", "/v1/models/vae")
        response = conn.getresponse()
        assert json.loads(response.read()) == STATUS_OK
        return response.status, time.monotonic() - start
    finally:
        conn.close()


def _close_all(socks) -> None:
    for sock in socks:
        sock.close()


# -- REST ----------------------------------------------------------------------------------------


def test_2000_idle_rest_connections_do_not_stop_a_new_request(base):
    """With the defaults (1024 connections, 30 s keep-alive): 2,000 connections that never send a
    byte; a new client is still answered at once, and the server holds no more than its limit."""
    from serving.connections import DEFAULT_MAX_CONNECTIONS

    _need_files(IDLE_CLIENTS + DEFAULT_MAX_CONNECTIONS + FILE_RESERVE + 64)
    with running_server(base, "vae") as server:
        idle = _open_idle(server.rest_port, IDLE_CLIENTS)
        try:
            status, seconds = _get_status(server.rest_port)
            assert status == 200 and seconds < 5.0, seconds
            # Every idle connection has been accepted; the oldest were closed to stay at the limit.
            assert _wait_for(lambda: sum(map(_closed_by_server, idle)) >= IDLE_CLIENTS - DEFAULT_MAX_CONNECTIONS, 10)
            assert server.rest.open_connections <= DEFAULT_MAX_CONNECTIONS
            assert not any(_closed_by_server(s) for s in idle[-DEFAULT_MAX_CONNECTIONS + 1:])  # the newest stay
            status, seconds = _get_status(server.rest_port)  # and again, with the server at its limit
            assert status == 200 and seconds < 5.0, seconds
        finally:
            _close_all(idle)


def test_idle_rest_connections_close_after_the_keep_alive_timeout(base):
    """Never used, used once, or trickling half a request line: each is closed about
    --keep-alive-seconds after it went idle, not before."""
    with running_server(base, "vae", keep_alive_seconds=1.0) as server:
        port = server.rest_port
        never = socket.create_connection(("127.0.0.1", port), timeout=10)
        used = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        used.request("GET", "/v1/models/vae")
        assert used.getresponse().read()
        trickle = socket.create_connection(("127.0.0.1", port), timeout=10)
        opened = time.monotonic()
        socks = {"never used": never, "after an answer": used.sock, "trickling a request": trickle}
        for i, byte in enumerate(b"GET /v1/mo"):  # a byte every 0.05 s: never a whole request
            trickle.send(bytes([byte]))
            time.sleep(0.05)
            if i == 5:
                assert not any(_closed_by_server(s) for s in socks.values())  # 0.3 s in: all open
        assert _wait_for(lambda: all(_closed_by_server(s) for s in socks.values()), 5.0), \
            {name: _closed_by_server(s) for name, s in socks.items()}
        assert time.monotonic() - opened >= 0.9
        assert _get_status(port)[0] == 200
        _close_all([never, trickle])
        used.close()


def test_at_the_limit_the_longest_idle_connection_makes_room(base):
    """--max-connections 3: a new connection closes the one idle the longest (a connection's
    idle time restarts with each answer); one with a request in progress is never chosen."""
    with running_server(base, "vae", max_connections=3) as server:
        socks: list[socket.socket] = []

        def connect() -> socket.socket:
            count = server.rest.open_connections
            socks.append(socket.create_connection(("127.0.0.1", server.rest_port), timeout=10))
            assert _wait_for(lambda: server.rest.open_connections >= min(count + 1, 3), 5)
            time.sleep(0.05)  # accepted in this order
            return socks[-1]

        try:
            a, b, c = connect(), connect(), connect()
            b.sendall(b"GET /v1/models/vae HTTP/1.1\r\nHost: x\r\n\r\n")  # answered: b is now the latest idle
            assert b"200 OK" in b.recv(65536)
            busy = connect()  # closes a (idle the longest)
            assert _wait_for(lambda: _closed_by_server(a), 5)
            # A request in progress: its body is announced but not all sent.
            busy.sendall(b"POST /v1/models/vae:predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
            time.sleep(0.2)
            d = connect()  # closes c (idle since its opening, before b's answer)
            assert _wait_for(lambda: _closed_by_server(c), 5)
            assert not any(map(_closed_by_server, (b, busy, d)))
            e = connect()  # closes b; busy is never chosen
            assert _wait_for(lambda: _closed_by_server(b), 5)
            assert not any(map(_closed_by_server, (busy, d, e)))
            assert server.rest.open_connections == 3
        finally:
            _close_all(socks)


# -- gRPC ----------------------------------------------------------------------------------------


def _grpc_status(target: str, timeout: float, wait_for_ready: bool = False, name: str = "vae"):
    with grpc.insecure_channel(target) as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        return stub.GetModelStatus(get_model_status_pb2.GetModelStatusRequest(model_spec=model_pb2.ModelSpec(name=name)),
                                   timeout=timeout, wait_for_ready=wait_for_ready)


def test_2000_idle_grpc_sockets_keep_new_clients_out_only_for_the_handshake_time(base):
    """gRPC core cannot close an idle connection to admit a new one: past --max-connections new
    connections are refused, and sockets that never send the HTTP/2 preface are dropped after
    min(--keep-alive-seconds, 5 s); then a new client is answered."""
    from serving.connections import DEFAULT_MAX_CONNECTIONS

    _need_files(IDLE_CLIENTS + DEFAULT_MAX_CONNECTIONS + FILE_RESERVE + 64)
    with running_server(base, "vae", keep_alive_seconds=2.0) as server:
        started = time.monotonic()  # the first silent socket's handshake time runs from about here
        idle = _open_idle(server.grpc_port, IDLE_CLIENTS)
        try:
            with pytest.raises(grpc.RpcError) as info:  # bounded: the limit is full of silent sockets
                _grpc_status(server.grpc_target, timeout=5)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            response = _grpc_status(server.grpc_target, timeout=20, wait_for_ready=True)
            assert response.model_version_status[0].state == 30  # AVAILABLE
            assert 1.5 <= time.monotonic() - started < 15
            assert _wait_for(lambda: all(map(_closed_by_server, idle)), 10)
        finally:
            _close_all(idle)


def _http2_frames(sock: socket.socket, until: float):
    """(type, time) of each HTTP/2 frame the server sends (RFC 9113 §4.1: 9-byte header, 24-bit
    length, 8-bit type) until it closes the connection or ``until`` passes; SETTINGS are
    acknowledged as a client must."""
    buffer = b""
    while time.monotonic() < until:
        sock.settimeout(max(0.01, until - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            return
        if not chunk:
            return
        buffer += chunk
        while len(buffer) >= 9 and len(buffer) >= 9 + int.from_bytes(buffer[:3], "big"):
            length, kind, flags = int.from_bytes(buffer[:3], "big"), buffer[3], buffer[4]
            buffer = buffer[9 + length:]
            if kind == 0x4 and not flags & 0x1:
                sock.sendall(b"\x00\x00\x00\x04\x01\x00\x00\x00\x00")  # SETTINGS ACK
            yield kind, time.monotonic()


def test_an_idle_grpc_connection_gets_goaway_after_the_keep_alive_timeout(base):
    """A client that completed the HTTP/2 handshake and makes no call is sent GOAWAY (frame type
    7) about --keep-alive-seconds later; gRPC clients then reconnect on their next call."""
    with running_server(base, "vae", keep_alive_seconds=1.0) as server:
        with socket.create_connection(("127.0.0.1", server.grpc_port), timeout=10) as sock:
            sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
            opened = time.monotonic()
            frames = list(_http2_frames(sock, opened + 6))
        assert 0x4 in [kind for kind, _ in frames]  # the server's SETTINGS: a real HTTP/2 connection
        goaway = [t - opened for kind, t in frames if kind == 0x7]
        assert goaway and 0.8 <= goaway[0] < 5, frames
        assert _grpc_status(server.grpc_target, timeout=10).model_version_status[0].state == 30


def test_the_server_raises_its_open_file_limit_for_max_connections():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        target = 2048 if hard == resource.RLIM_INFINITY else min(2048, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, target // 2), hard))
        assert raise_file_limit(target) == target == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        assert raise_file_limit(16) == target  # never lowered
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_serve_options_reach_the_server_config(base, monkeypatch):
    import serving.server
    from vae_tf_cli import main

    seen = []
    monkeypatch.setattr(serving.server, "serve", lambda config, announce: seen.append(config) or 0)
    assert main(["serve", "--model", str(base / "vae")]) == 0
    assert (seen[-1].keep_alive_seconds, seen[-1].max_connections, seen[-1].allow_non_finite) == (30.0, 1024, False)
    assert main(["serve", "--model", str(base / "vae"), "--keep-alive-seconds", "2.5", "--max-connections", "7",
                 "--allow-non-finite"]) == 0
    assert (seen[-1].keep_alive_seconds, seen[-1].max_connections, seen[-1].allow_non_finite) == (2.5, 7, True)
    for bad in (["--keep-alive-seconds", "0"], ["--keep-alive-seconds", "inf"], ["--max-connections", "0"]):
        with pytest.raises(SystemExit) as info:
            main(["serve", "--model", str(base / "vae"), *bad])
        assert info.value.code == 2


def test_tf_serving_flags_mean_what_they_mean_there(base, monkeypatch, capsys):
    """A TF Serving command line works as it is: --model_base_path is the model directory itself
    (it was refused as an unknown flag, and --model-base-path is its parent), served as
    --model_name or, without it, as `default` (TF Serving's binary); --rest_api_timeout_in_ms and
    the thread flags are taken; flags with no counterpart are one line saying what to do."""
    import serving.server
    from vae_tf_cli import main

    seen = []
    monkeypatch.setattr(serving.server, "serve", lambda config, announce: seen.append(config) or 0)
    assert main(["serve", "--port=8500", "--rest_api_port=8501", f"--model_base_path={base / 'vae'}",
                 "--rest_api_timeout_in_ms=2500", "--rest_api_num_threads=3", "--grpc_max_threads=2"]) == 0
    config = seen[-1]
    assert (config.model_dir, config.model_name) == (str(base / "vae"), "default")
    assert (config.rest_timeout_seconds, config.rest_threads, config.grpc_threads) == (2.5, 3, 2)
    assert main(["serve", "--model_name=encoder", f"--model_base_path={base / 'vae'}"]) == 0
    assert (seen[-1].model_dir, seen[-1].model_name, seen[-1].rest_timeout_seconds) == (str(base / "vae"), "encoder", 30.0)
    capsys.readouterr()
    assert main(["serve", f"--model_base_path={base / 'vae'}", "--model", str(base / "vae")]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: --model_base_path (TF Serving's: the model directory itself) replaces --model and --model-base-path "
        "(the directory that holds it); give one of them")
    for flag, hint in [("--model_config_file=/models/models.config", "it serves one model: give --model DIR (or "
                        "--model_base_path), one server per model"),
                       ("--tensorflow_intra_op_parallelism=1", "set TF_NUM_INTRAOP_THREADS in its environment"),
                       # flags of TF Serving's main.cc that were "unrecognized arguments"
                       ("--max_num_load_retries=5", "a version that fails to load is tried again whenever any of "
                        "its files changes"),
                       ("--enable_grpc_healthcheck_service=true", "health checks read the model status (GET "
                        "/v1/models/NAME, or gRPC GetModelStatus): look for a version AVAILABLE")]:
        with pytest.raises(SystemExit) as info:
            main(["serve", f"--model_base_path={base / 'vae'}", flag])
        assert info.value.code == 2
        assert capsys.readouterr().err.strip().splitlines()[-1] == (
            f"vae-tf serve: error: {flag.split('=')[0]} is a TensorFlow Serving flag that vae-tf serve does not "
            f"take: {hint} (see vae-tf serve --help)")

    # ... unless the value asks for what vae-tf serve does anyway (a command line spelling out defaults)
    assert main(["serve", f"--model_base_path={base / 'vae'}", "--enable_model_warmup=true",
                 "--saved_model_tags=serve", "--tensorflow_intra_op_parallelism=0", "--num_load_threads=0",
                 "--flush_filesystem_caches=true"]) == 0
    # --enable_batching=true|false as TF Serving users type it ("ignored explicit argument 'true'");
    # --rest_api_timeout_in_ms <= 0 is no deadline there (http_rest_api_handler.cc): 0 here too
    for given, batching in (("--enable_batching=true", True), ("--enable_batching=false", False),
                            ("--enable_batching", True), ("--enable-batching=0", False)):
        assert main(["serve", f"--model_base_path={base / 'vae'}", given]) == 0
        assert seen[-1].batching is not None if batching else seen[-1].batching is None, given
    for given in ("0", "-1"):
        assert main(["serve", f"--model_base_path={base / 'vae'}", f"--rest_api_timeout_in_ms={given}"]) == 0
        assert seen[-1].rest_timeout_seconds == 0.0
    with pytest.raises(SystemExit):
        main(["serve", f"--model_base_path={base / 'vae'}", "--saved_model_tags=serve,gpu"])
    capsys.readouterr()

    # The directory is served under the given name, whatever the directory is called.
    with running_server(base, "encoder", model_dir=str(base / "vae")) as server:
        conn = http.client.HTTPConnection("127.0.0.1", server.rest_port, timeout=30)
        try:
            conn.request("GET", "/v1/models/encoder")
            response = conn.getresponse()
            status = json.loads(response.read())["model_version_status"][0]
        finally:
            conn.close()
        assert (response.status, status["version"], status["state"]) == (200, "1", "AVAILABLE")
        assert _grpc_status(server.grpc_target, timeout=10, name="encoder").model_version_status[0].state == 30


def _read_response(sock) -> tuple[bytes, bytes, bytes]:
    """(status line, lower-cased headers, body) of one response read from ``sock``."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed after {data!r}")
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    status, _, headers = head.partition(b"\r\n")
    length = int(next(line.split(b":", 1)[1] for line in headers.lower().split(b"\r\n")
                      if line.startswith(b"content-length:")))
    while len(body) < length:
        body += sock.recv(65536)
    return status, headers.lower(), body


def test_http_1_0_keep_alive_is_honoured_as_tf_serving_honours_it(base):
    """HTTP/1.0 with Connection: keep-alive (as `ab -k` sends) was answered `connection: close`
    and the second request on the socket got nothing; TF Serving's evhttp keeps it open and says
    keep-alive. Without the header an HTTP/1.0 connection closes after its response, as before."""
    request = b"GET /v1/models/vae HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
    with running_server(base, "vae") as server:
        with socket.create_connection(("127.0.0.1", server.rest_port), timeout=10) as sock:
            for _ in range(3):
                sock.sendall(request)
                status, headers, body = _read_response(sock)
                assert status.startswith(b"HTTP/1.1 200") and b"connection: keep-alive" in headers
                assert json.loads(body)["model_version_status"][0]["state"] == "AVAILABLE"
        with socket.create_connection(("127.0.0.1", server.rest_port), timeout=10) as sock:
            sock.sendall(b"GET /v1/models/vae HTTP/1.0\r\n\r\n")
            status, headers, _ = _read_response(sock)
            assert status.startswith(b"HTTP/1.1 200") and b"connection: close" in headers
            assert sock.recv(1) == b""  # closed by the server


def test_writes_in_one_event_loop_turn_leave_as_one_write():
    """CoalescingTransport: a response's header and body writes go out as one send at the end of
    the loop turn, in order; close sends what is pending first, abort drops it; flow control and
    everything else see the wrapped transport."""
    import asyncio

    from serving.connections import CoalescingTransport

    class Recording:
        def __init__(self):
            self.writes, self.closed, self.aborted = [], False, False

        def write(self, data):
            self.writes.append(bytes(data))

        def is_closing(self):
            return self.closed or self.aborted

        def close(self):
            self.closed = True

        def abort(self):
            self.aborted = True

        def get_write_buffer_size(self):
            return 7

        def get_extra_info(self, name, default=None):
            return ("127.0.0.1", 1) if name == "peername" else default

    async def scenario():
        loop = asyncio.get_running_loop()
        inner = Recording()
        transport = CoalescingTransport(inner, loop)
        transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
        transport.write(b"{}")
        assert inner.writes == [] and transport.get_write_buffer_size() == 7 + 40
        await asyncio.sleep(0)
        assert inner.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"]
        transport.write(b"last")
        transport.close()
        assert inner.writes[-1] == b"last" and inner.closed and len(inner.writes) == 2
        await asyncio.sleep(0)
        assert len(inner.writes) == 2  # nothing written twice
        assert transport.get_extra_info("peername") == ("127.0.0.1", 1)
        dropped = Recording()
        transport = CoalescingTransport(dropped, loop)
        transport.write(b"never sent")
        transport.abort()
        await asyncio.sleep(0)
        assert dropped.writes == [] and dropped.aborted

    asyncio.run(scenario())


def _send_garbage(port: int) -> tuple[bytes, tuple]:
    """What a TLS client (or a scanner) sends to the plain REST port; returns the answer and the
    client's own address."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not http\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        return answer, sock.getsockname()


def test_invalid_requests_are_answered_400_and_logged_once_a_while_naming_the_client(base, caplog, monkeypatch):
    """uvicorn logged "Invalid HTTP request received." for every such connection, without the
    client: 50 TLS hellos to the plain port, 50 identical lines."""
    from serving import connections

    caplog.set_level(logging.WARNING, logger="uvicorn.error")
    with running_server(base) as server:
        port = server.rest_port
        answers = [_send_garbage(port) for _ in range(20)]
        assert all(a.startswith(b"HTTP/1.1 400 ") for a, _ in answers)
        lines = [r.getMessage() for r in caplog.records if r.name == "uvicorn.error"]
        host, first_port = answers[0][1]
        assert lines == [f"Invalid HTTP request received (from {host}:{first_port})"]
        monkeypatch.setattr(connections, "WARNING_INTERVAL_SECONDS", 0.0)  # the interval has passed
        caplog.clear()
        _, (host, last_port) = _send_garbage(port)
        lines = [r.getMessage() for r in caplog.records if r.name == "uvicorn.error"]
        assert re.fullmatch(rf"Invalid HTTP request received \(from {host}:{last_port}\); 19 more like it in the last "
                            r"\d+ s, not logged", lines[0]), lines
        assert _get_status(port)[0] == 200  # and real clients are served all along
