"""Bounded REST connections: uvicorn's httptools protocol (the C parser of Node.js' llhttp; with
the pure-Python h11 one the event-loop thread spent ~0.36 ms per batch-1 request, docs/performance.md)
with an idle timeout that also covers connections that never send a request, a connection limit
that closes the longest-idle connection rather than refusing a new client, and one write per
response.

Why: uvicorn arms its keep-alive timer only after a response (and disarms it on any received
byte), so a connection that is opened and never used, or that trickles half a request line, is
held forever; its ``limit_concurrency`` answers 503 to every *new* request once such connections
fill it. 2,000 idle connections would then either exhaust the process's file descriptors or lock
every real client out. Here:

- **idle timeout** (``timeout_keep_alive``, ``--keep-alive-seconds``): a connection with no
  request in progress is closed that long after it was opened or after its last response,
  whatever partial bytes it sends meanwhile;
- **connection limit** (``--max-connections``): when a new connection would make one more than
  the limit, the connection that has been idle the longest is closed (RFC 9112 §9.5: a server
  may close an idle connection at any time; clients reopen it), so idle connections never keep a
  new client out. If every other connection has a request in progress, the new one is closed.
- **one write per response**: uvicorn writes the status line and headers, then the body, each
  with its own ``send`` system call (and, on loopback, the receiver's TCP processing and wake-up
  each time). Writes made in one turn of the event loop are joined and sent together at the end
  of that turn (order and flow control unchanged).

Connections with a request in progress are never closed here; the REST deadline
(``--rest-timeout-seconds``) and ``--max-in-flight`` bound those.

- **warnings that say who, and not once per connection**: uvicorn logs "Invalid HTTP request
  received." for every connection that sends bytes its parser refuses (a TLS hello to the plain
  port, a port scanner), without the client's address: 50 such connections, 50 identical lines.
  Each warning of a connection now names the client, and the same warning is logged at most
  once per :data:`WARNING_INTERVAL_SECONDS` per server, the next one saying how many were left
  out (:class:`ConnectionLog`). The client is still answered 400, as before.
"""

from __future__ import annotations

import collections
import time

# Both protocols' defaults (`vae-tf serve --keep-alive-seconds / --max-connections`, per protocol).
DEFAULT_KEEP_ALIVE_SECONDS = 30.0
DEFAULT_MAX_CONNECTIONS = 1024


#: The shortest time between two log lines of the same connection warning (:class:`ConnectionLog`).
WARNING_INTERVAL_SECONDS = 60.0


class ConnectionLog:
    """The logger one connection's protocol warns through: ``warning`` names the client and is
    rate-limited per message, over every connection of one server (``seen``: message -> (time of
    its last line, lines left out since)); everything else is the wrapped logger's. Used from the
    event loop's thread only."""

    def __init__(self, logger, client, seen: dict):
        self._logger = logger
        self._client = f"{client[0]}:{client[1]}" if client else "an unknown client"
        self._seen = seen

    def warning(self, msg, *args, **kwargs) -> None:
        text = str(msg) % args if args else str(msg)
        now = time.monotonic()
        last, left_out = self._seen.get(text, (None, 0))
        if last is not None and now - last < WARNING_INTERVAL_SECONDS:
            self._seen[text] = (last, left_out + 1)
            return
        self._seen[text] = (now, 0)
        more = (f"; {left_out} more like it in the last {now - last:.0f} s, not logged" if left_out else "")
        self._logger.warning("%s (from %s)%s", text.rstrip("."), self._client, more, **kwargs)

    def __getattr__(self, name):
        return getattr(self._logger, name)


class CoalescingTransport:
    """A transport whose writes within one event-loop turn go out as one ``write`` at its end.

    Everything else is the wrapped transport's; ``close`` sends what is pending first, ``abort``
    drops it, and ``get_write_buffer_size`` counts it (flow control sees every byte)."""

    def __init__(self, transport, loop):
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data) -> None:
        if not data:
            return
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(bytes(data))

    def writelines(self, chunks) -> None:
        for chunk in chunks:
            self.write(chunk)

    def _flush(self) -> None:
        if self._pending:
            data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
            self._pending.clear()
            if not self._transport.is_closing():
                self._transport.write(data)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def abort(self) -> None:
        self._pending.clear()
        self._transport.abort()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._pending))

    def __getattr__(self, name):
        return getattr(self._transport, name)


def bounded_protocol(max_connections: int) -> type:
    """A protocol class for ``uvicorn.Config(http=...)`` (one per server: it holds the server's
    idle-connection order) that enforces the idle timeout and ``max_connections``."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    if max_connections < 1:
        raise ValueError(f"max_connections must be at least 1, got {max_connections}")
    idle: collections.OrderedDict[BoundedProtocol, None] = collections.OrderedDict()  # longest idle first
    warned: dict = {}  # ConnectionLog's state, one per server

    class BoundedProtocol(HttpToolsProtocol):
        _idle_timer = None

        def connection_made(self, transport) -> None:
            super().connection_made(CoalescingTransport(transport, self.loop))
            self.logger = ConnectionLog(self.logger, self.client, warned)
            self._mark_idle()
            if len(self.connections) > max_connections:
                # The newcomer is last in the idle order, so it is chosen only when no other
                # connection is idle.
                next(iter(idle)).close_idle()

        def on_headers_complete(self) -> None:
            super().on_headers_complete()
            # An HTTP/1.0 request that asks for keep-alive is kept open, as libevent's evhttp
            # (TF Serving's HTTP server) keeps it, and the response says so (an HTTP/1.0 client
            # closes otherwise): uvicorn closes every HTTP/1.0 connection (`ab -k` measured
            # connection set-up, not the server).
            cycle = self.cycle
            if (cycle is not None and not cycle.keep_alive and self.parser.get_http_version() == "1.0"
                    and self.parser.should_keep_alive()):
                cycle.keep_alive = True
                cycle.default_headers = [*cycle.default_headers, (b"connection", b"keep-alive")]

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self._busy():
                self._forget()

        def on_response_complete(self) -> None:
            super().on_response_complete()  # may start the next pipelined request
            if not self.transport.is_closing() and not self._busy():
                self._mark_idle()

        def connection_lost(self, exc: Exception | None) -> None:
            self._forget()
            super().connection_lost(exc)

        def _busy(self) -> bool:
            return self.cycle is not None and not self.cycle.response_complete

        def _mark_idle(self) -> None:
            self._forget()
            idle[self] = None
            self._idle_timer = self.loop.call_later(self.timeout_keep_alive, self.close_idle)

        def _forget(self) -> None:
            idle.pop(self, None)
            if self._idle_timer is not None:
                self._idle_timer.cancel()
                self._idle_timer = None

        def close_idle(self) -> None:
            self._forget()
            if not self.transport.is_closing():
                self.transport.close()

    return BoundedProtocol


__all__ = ["DEFAULT_KEEP_ALIVE_SECONDS", "DEFAULT_MAX_CONNECTIONS", "WARNING_INTERVAL_SECONDS", "CoalescingTransport",
           "ConnectionLog", "bounded_protocol"]
