"""Canonical error codes and the one exception type the servers raise for client mistakes.

Every error a request can cause is a :class:`ServingError` carrying a canonical code (the
``google.rpc.Code`` names gRPC uses) and TF Serving's message. The REST server maps the code to
an HTTP status exactly as TF Serving's ``http_server.cc::ToHTTPStatusCode`` does; the gRPC
server sends the same code with the same message (truncated like ``grpc_status_util.cc``).
Reference: ``../shared/reference/tf-serving-api.md`` §6.
"""

from __future__ import annotations

import enum


class Code(enum.Enum):
    """Canonical status codes; ``value`` is ``(number, http_status)``."""

    OK = (0, 200)
    CANCELLED = (1, 499)
    UNKNOWN = (2, 500)
    INVALID_ARGUMENT = (3, 400)
    DEADLINE_EXCEEDED = (4, 504)
    NOT_FOUND = (5, 404)
    ALREADY_EXISTS = (6, 409)
    PERMISSION_DENIED = (7, 403)
    RESOURCE_EXHAUSTED = (8, 429)
    FAILED_PRECONDITION = (9, 400)
    ABORTED = (10, 409)
    OUT_OF_RANGE = (11, 400)
    UNIMPLEMENTED = (12, 501)
    INTERNAL = (13, 500)
    UNAVAILABLE = (14, 503)
    DATA_LOSS = (15, 500)
    UNAUTHENTICATED = (16, 401)

    @property
    def number(self) -> int:
        return self.value[0]

    @property
    def http_status(self) -> int:
        return self.value[1]


class ServingError(Exception):
    """A request the server refuses: canonical ``code`` plus TF Serving's ``message``."""

    def __init__(self, code: Code, message: str):
        # Messages quote what the client sent (a label, a signature name, a model name); a line
        # break in it must not make the answer multi-line, so it is written as an escape.
        message = message.replace("\r", "\\r").replace("\n", "\\n")
        super().__init__(message)
        self.code = code
        self.message = message

    def __repr__(self) -> str:
        return f"ServingError({self.code.name}, {self.message!r})"


def invalid_argument(message: str) -> ServingError:
    return ServingError(Code.INVALID_ARGUMENT, message)


def not_found(message: str) -> ServingError:
    return ServingError(Code.NOT_FOUND, message)


def one_line(text: object, limit: int = 300) -> str:
    """``text`` on one line, at most ``limit`` characters (for messages that quote user input
    or a TensorFlow error)."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def from_tensorflow_error(err) -> ServingError:
    """Map a ``tf.errors.OpError`` raised while running a signature to its canonical code, with
    the op's own message on one line (what TF Serving's C++ shows). Errors from a loaded graph
    read ``Graph execution error:`` / ``Detected at node ...`` / stack lines / the op's message /
    ``[[{{node N}}]] [Op:...]``: the op's message and node are kept, the stack trace is not."""
    code_number = getattr(err, "error_code", Code.INTERNAL.number)
    code = next((c for c in Code if c.number == code_number), Code.INTERNAL)
    lines = [line for line in str(getattr(err, "message", err)).strip().splitlines() if line.strip()]
    if not lines:
        return ServingError(code, type(err).__name__)
    if lines[0].strip() != "Graph execution error:":
        return ServingError(code, one_line(lines[0]))
    for i, line in enumerate(lines):
        if "[[{{node" in line:
            before, _, after = line.partition("[[{{node")
            message = before.strip() or (lines[i - 1] if i > 1 else "")
            node = after.split("}}]]", 1)[0].strip()
            return ServingError(code, one_line(f"{message} [[{{{{node {node}}}}}]]"))
    return ServingError(code, one_line(lines[-1]))


__all__ = ["Code", "ServingError", "from_tensorflow_error", "invalid_argument", "not_found", "one_line"]
