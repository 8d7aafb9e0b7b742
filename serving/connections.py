"""Bounded REST connections: uvicorn's h11 protocol with an idle timeout that also covers
connections that never send a request, and a connection limit that closes the longest-idle
connection rather than refusing a new client.

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

Connections with a request in progress are never closed here; the REST deadline
(``--rest-timeout-seconds``) and ``--max-in-flight`` bound those.
"""

from __future__ import annotations

import collections

# Both protocols' defaults (`vae-tf serve --keep-alive-seconds / --max-connections`, per protocol).
DEFAULT_KEEP_ALIVE_SECONDS = 30.0
DEFAULT_MAX_CONNECTIONS = 1024


def bounded_h11_protocol(max_connections: int) -> type:
    """A protocol class for ``uvicorn.Config(http=...)`` (one per server: it holds the server's
    idle-connection order) that enforces the idle timeout and ``max_connections``."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    if max_connections < 1:
        raise ValueError(f"max_connections must be at least 1, got {max_connections}")
    idle: collections.OrderedDict[BoundedH11Protocol, None] = collections.OrderedDict()  # longest idle first

    class BoundedH11Protocol(H11Protocol):
        _idle_timer = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._mark_idle()
            if len(self.connections) > max_connections:
                # The newcomer is last in the idle order, so it is chosen only when no other
                # connection is idle.
                next(iter(idle)).close_idle()

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
            if self.transport.is_closing():
                return
            try:
                self.conn.send(h11.ConnectionClosed())
            except h11.LocalProtocolError:  # half a request received: nothing to finish politely
                pass
            self.transport.close()

    return BoundedH11Protocol


__all__ = ["DEFAULT_KEEP_ALIVE_SECONDS", "DEFAULT_MAX_CONNECTIONS", "bounded_h11_protocol"]
