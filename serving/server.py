"""``vae-tf serve``: the model store, the REST server and the gRPC server together.

Defaults are those of the official ``tensorflow/serving`` image (reference §1): ``MODEL_NAME``
(default ``model``) and ``MODEL_BASE_PATH`` (default ``/models``) from the environment, gRPC
on 8500, REST on 8501, the base path polled every second. Unlike the image, the server binds
``127.0.0.1`` unless told otherwise (``--host`` or ``$VAE_TF_SERVE_HOST``: ``0.0.0.0`` in a container), a port of 0 means "any
free port" (TF Serving reads ``--rest_api_port=0`` as "no REST"; use ``--no-rest`` here), and
request sizes are limited (64 MiB by default, both protocols), and each protocol admits at most
``max_in_flight`` requests at once (128 by default; beyond that REST answers 429 and gRPC
RESOURCE_EXHAUSTED, rather than queueing without bound), and so are connections: idle ones close
after ``keep_alive_seconds`` (30), and each protocol holds at most ``max_connections`` (1024;
REST closes the longest-idle one to admit a new client, gRPC refuses the new one). Float inputs holding NaN or ±Inf are
refused (400 / INVALID_ARGUMENT) unless ``allow_non_finite`` (``--allow-non-finite``) restores
TF Serving's pass-through. Sentences sent to a text model are checked (UTF-8, not empty, at most
``text_limits.max_rows`` a request and ``max_bytes`` each) and truncated to the model's
``max_length`` words as the model itself does, or refused with ``--long-text refuse``
(:mod:`serving.text`).

>>> from serving.server import ModelServer, ServerConfig
>>> with ModelServer(ServerConfig(model_base_path="models", model_name="vae", rest_port=0,
...                               grpc_port=0)).start() as server:          # doctest: +SKIP
...     print(server.rest_url, server.grpc_target)

Shutdown (SIGINT/SIGTERM or :meth:`ModelServer.stop`) is graceful: both servers stop
accepting at the same moment, requests in flight finish within ``grace_seconds``, then the
batcher and the poller stop.
"""

from __future__ import annotations

import errno
import gc
import logging
import os
import signal
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path

from serving.batching import Batcher, BatchingOptions
from serving.connections import DEFAULT_KEEP_ALIVE_SECONDS, DEFAULT_MAX_CONNECTIONS
from serving.grpc_server import DEFAULT_MAX_MESSAGE_BYTES, GrpcServer
from serving.model_store import DEFAULT_POLL_SECONDS, ModelStore, validate_model_name
from serving.rest import (DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_IN_FLIGHT, DEFAULT_TIMEOUT_SECONDS, RestApi, RestApp,
                          RestServer, bind_socket)
from serving.text import TextLimits
from vae_tf.errors import ConfigError, ModelNotFoundError

log = logging.getLogger("serving.server")

DEFAULT_MODEL_NAME = "model"
DEFAULT_MODEL_BASE_PATH = "/models"
DEFAULT_GRPC_PORT = 8500
DEFAULT_REST_PORT = 8501
DEFAULT_HOST = "127.0.0.1"


def _env(name: str, default: str) -> str:
    return os.environ.get(name) or default


@dataclass
class ServerConfig:
    """Everything ``vae-tf serve`` can set; environment defaults as in the official image."""

    model_name: str = field(default_factory=lambda: _env("MODEL_NAME", DEFAULT_MODEL_NAME))
    model_base_path: str = field(default_factory=lambda: _env("MODEL_BASE_PATH", DEFAULT_MODEL_BASE_PATH))
    # The model directory itself (TF Serving's own --model_base_path), served as model_name
    # whatever the directory is called; None: MODEL_BASE_PATH/MODEL_NAME, as the official image.
    model_dir: str | None = None
    host: str = DEFAULT_HOST
    grpc_port: int | None = DEFAULT_GRPC_PORT  # None: no gRPC server
    rest_port: int | None = DEFAULT_REST_PORT  # None: no REST server
    poll_seconds: float = DEFAULT_POLL_SECONDS
    labels_file: str | None = None
    rest_max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    grpc_max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    rest_timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT  # per protocol; beyond it 429 / RESOURCE_EXHAUSTED
    keep_alive_seconds: float = DEFAULT_KEEP_ALIVE_SECONDS  # idle connections close after this (both protocols)
    max_connections: int = DEFAULT_MAX_CONNECTIONS  # per protocol (serving.connections, GrpcServer)
    follow_external_links: bool = False  # load version directories that resolve outside the base path
    allow_non_finite: bool = False  # pass NaN/Inf float inputs to the model (TF Serving); default: refuse them
    text_limits: TextLimits = field(default_factory=TextLimits)  # sentences sent to a text model (serving.text)
    rest_threads: int | None = None
    grpc_threads: int | None = None
    batching: BatchingOptions | None = None  # None: off
    grace_seconds: float = 5.0
    warmup: bool = True
    freeze_gc: bool = True  # see ModelServer.start

    def check(self) -> "ServerConfig":
        validate_model_name(self.model_name)
        if self.grpc_port is None and self.rest_port is None:
            raise ConfigError("both servers are disabled; drop --no-grpc or --no-rest")
        for what, port in (("gRPC port", self.grpc_port), ("REST port", self.rest_port)):
            if port is not None and not 0 <= port <= 65535:
                raise ConfigError(f"{what} must be in 0..65535 (0: any free port), got {port}")
        if self.rest_port is not None and self.rest_port == self.grpc_port and self.rest_port != 0:
            raise ConfigError(f"REST and gRPC cannot share port {self.rest_port}; give them different ports")
        for what, size in (("--rest-max-body-bytes", self.rest_max_body_bytes),
                           ("--grpc-max-message-bytes", self.grpc_max_message_bytes)):
            if size < 1024:
                raise ConfigError(f"{what} must be at least 1024, got {size}")
        if self.max_in_flight < 1:
            raise ConfigError(f"--max-in-flight must be at least 1, got {self.max_in_flight}")
        if self.max_connections < 1:
            raise ConfigError(f"--max-connections must be at least 1, got {self.max_connections}")
        if not self.keep_alive_seconds > 0:
            raise ConfigError(f"--keep-alive-seconds must be > 0, got {self.keep_alive_seconds}")
        model_dir = self.directory
        if not model_dir.is_dir():
            if self.model_dir is not None:
                raise ModelNotFoundError(f"no model directory {model_dir} (--model_base_path): give the directory "
                                         "that holds the model's numbered versions (models/NAME)")
            raise ModelNotFoundError(f"no model directory {model_dir} (MODEL_BASE_PATH/MODEL_NAME): export a model "
                                     "there (vae-tf train) or set --model-base-path / --model-name")
        if (model_dir / "saved_model.pb").is_file():  # TF Serving would wait for numbered versions in it forever
            raise ConfigError(f"{model_dir} is one version of a model (it holds saved_model.pb); the server reads a "
                              f"model directory of numbered versions: give --model {model_dir.parent}")
        return self

    @property
    def directory(self) -> Path:
        """The directory of the model's numbered versions."""
        return Path(self.model_dir) if self.model_dir is not None else Path(self.model_base_path) / self.model_name


PORT_FLAGS = {"gRPC": "--port", "REST": "--rest-api-port"}


def bind_error(protocol: str, host: str, port: int, err: OSError) -> ConfigError:
    """The one-line error for a port ``protocol``'s server cannot listen on, with what to do
    about that cause."""
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    flag = PORT_FLAGS[protocol]
    if err.errno == errno.EACCES:
        advice = f"pick a port above 1023 with {flag} (lower ones need privileges)"
    elif err.errno == errno.EADDRNOTAVAIL or isinstance(err, socket.gaierror):
        advice = "give --host an address of this machine (127.0.0.1, or 0.0.0.0 for every interface)"
    else:
        advice = f"pick another port with {flag} or stop the other server"
    return ConfigError(f"cannot bind {protocol} to {address} ({err.strerror or err}); {advice}")


def check_ports_free(config: ServerConfig) -> None:
    """Fail at once when a configured port is taken, before the models load: loading takes
    seconds to minutes, and gRPC core would also print an error record of its own
    (``add_port.cc ... Failed to add port to server``) before vae-tf's one-line error. A probe
    socket is bound and closed, as the REST server binds (``SO_REUSEADDR``, which gRPC sets too,
    so a port that only has connections in TIME_WAIT passes). Port 0 (any free port) is probed too:
    it checks the host (an address this machine does not have, a name that does not resolve); a
    port taken between this check and the servers' own bind still fails there."""
    for protocol, port in (("gRPC", config.grpc_port), ("REST", config.rest_port)):
        if port is not None:
            try:
                bind_socket(config.host, port).close()
            except OSError as err:
                raise bind_error(protocol, config.host, port, err) from None


class ModelServer:
    """The running service; use :meth:`start` / :meth:`stop` or a ``with`` block."""

    def __init__(self, config: ServerConfig):
        self.config = config.check()
        self.store = ModelStore(config.model_base_path, config.model_name, model_dir=config.model_dir,
                                poll_seconds=config.poll_seconds,
                                labels_file=config.labels_file, warmup=config.warmup,
                                follow_external_links=config.follow_external_links,
                                text_limits=config.text_limits)
        self.batcher: Batcher | None = None
        self.rest: RestServer | None = None
        self.grpc: GrpcServer | None = None
        self._stopped = threading.Event()
        self._stop_lock = threading.Lock()

    @property
    def rest_port(self) -> int | None:
        return self.rest.port if self.rest else None

    @property
    def grpc_port(self) -> int | None:
        return self.grpc.port if self.grpc else None

    @property
    def rest_url(self) -> str | None:
        return f"http://{_url_host(self.config.host)}:{self.rest_port}" if self.rest else None

    @property
    def grpc_target(self) -> str | None:
        return f"{_url_host(self.config.host)}:{self.grpc_port}" if self.grpc else None

    def start(self) -> "ModelServer":
        config = self.config
        check_ports_free(config)
        self.store.start()
        if config.freeze_gc:
            # TensorFlow's import leaves ~10^6 Python objects that every full garbage collection
            # walks: ~180 ms, triggered every ~100 JSON requests of 64 images (the allocation
            # count), a 1 % tail in benchmarks/serving_latency.py. Freezing what exists after
            # start-up takes them out of the collector's walks (refcounting still frees them).
            gc.collect()
            gc.freeze()
        protocols = (config.grpc_port is not None) + (config.rest_port is not None)
        raise_file_limit(protocols * config.max_connections + FILE_RESERVE)
        try:
            if config.batching is not None:
                self.batcher = Batcher(config.batching)
            run = self.batcher.run if self.batcher else None
            if config.grpc_port is not None:
                try:
                    self.grpc = GrpcServer(self.store, config.host, config.grpc_port, run=run,
                                           max_message_bytes=config.grpc_max_message_bytes,
                                           threads=config.grpc_threads, max_in_flight=config.max_in_flight,
                                           allow_non_finite=config.allow_non_finite,
                                           keep_alive_seconds=config.keep_alive_seconds,
                                           max_connections=config.max_connections)
                except OSError as err:
                    raise bind_error("gRPC", config.host, config.grpc_port, err) from None
                self.grpc.start()
            if config.rest_port is not None:
                app = RestApp(RestApi(self.store, run, allow_non_finite=config.allow_non_finite), max_body_bytes=config.rest_max_body_bytes,
                              timeout_seconds=config.rest_timeout_seconds, threads=config.rest_threads,
                              max_in_flight=config.max_in_flight)
                try:
                    self.rest = RestServer(app, config.host, config.rest_port, grace_seconds=config.grace_seconds,
                                           keep_alive_seconds=config.keep_alive_seconds,
                                           max_connections=config.max_connections)
                except OSError as err:
                    raise bind_error("REST", config.host, config.rest_port, err) from None
                self.rest.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Graceful: stop accepting, finish in-flight requests, then release everything."""
        with self._stop_lock:
            if self._stopped.is_set():
                return
            # Both stop accepting first, then both drain: draining one while the other still
            # took new requests would stretch the shutdown to twice the grace period.
            if self.grpc is not None:
                self.grpc.begin_stop(self.config.grace_seconds)
            if self.rest is not None:
                self.rest.begin_stop()
                self.rest.wait_stopped()
            if self.grpc is not None:
                self.grpc.wait_stopped()
            if self.batcher is not None:
                self.batcher.close()
            self.store.stop()
            self._stopped.set()

    def wait(self) -> None:
        """Block until :meth:`stop` has run (from a signal handler or another thread)."""
        while not self._stopped.wait(0.5):
            pass

    def __enter__(self) -> "ModelServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


FILE_RESERVE = 256  # descriptors besides client connections: model files, TensorFlow, gRPC's own, logs


def raise_file_limit(needed: int) -> int:
    """Raise this process's soft ``RLIMIT_NOFILE`` towards ``needed`` (never above the hard
    limit, never lower) so that ``--max-connections`` per protocol fits; returns the soft limit.

    Past the limit ``accept`` fails (EMFILE) and new clients wait in the kernel's backlog however
    idle the held connections are; many systems still start processes with a soft limit of 1024
    and a far higher hard limit. Below what is needed, a warning says what to do."""
    try:
        import resource
    except ImportError:  # not POSIX
        return needed
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    infinite = resource.RLIM_INFINITY
    if soft == infinite or soft >= needed:
        return soft
    target = needed if hard == infinite else min(needed, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as err:
            log.warning("could not raise the open-file limit from %d to %d: %s", soft, target, err)
    if soft < needed:
        log.warning("the open-file limit is %d but --max-connections needs about %d; raise it (ulimit -n, "
                    "--ulimit nofile=...) or lower --max-connections, else new clients wait once it is reached",
                    soft, needed)
    return soft


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def serve(config: ServerConfig, *, announce=print) -> int:
    """Run until SIGINT/SIGTERM; the body of ``vae-tf serve``."""
    server = ModelServer(config)
    stopping = threading.Event()

    def on_signal(signum, frame):
        if not stopping.is_set():
            stopping.set()
            announce(f"{signal.Signals(signum).name}: shutting down (in-flight requests finish within "
                     f"{config.grace_seconds:g} s)")
            threading.Thread(target=server.stop, name="shutdown", daemon=True).start()

    in_main = threading.current_thread() is threading.main_thread()  # signals only work there
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)} if in_main else {}
    try:
        server.start()
        versions = ", ".join(map(str, server.store.versions)) or "none yet"
        where = config.directory.resolve() if config.model_dir is not None else Path(config.model_base_path).resolve()
        announce(f"model:   {config.model_name} (versions: {versions}) from {where}")
        if server.store.versions:
            text = server.store.servable(config.model_name).text
            if text is not None:
                announce(f"text:    {text.describe()}")
        if server.rest:
            announce(f"REST:    {server.rest_url}/v1/models/{config.model_name}")
        if server.grpc:
            announce(f"gRPC:    {server.grpc_target} (tensorflow.serving.PredictionService, ModelService)")
        if config.batching:
            announce(f"batching: up to {config.batching.max_batch_size} rows, {config.batching.batch_timeout_ms:g} ms")
        server.wait()
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


__all__ = ["DEFAULT_GRPC_PORT", "DEFAULT_HOST", "DEFAULT_MODEL_BASE_PATH", "DEFAULT_MODEL_NAME", "DEFAULT_REST_PORT",
           "ModelServer", "ServerConfig", "raise_file_limit", "serve"]
