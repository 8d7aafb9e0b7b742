"""Model store and server behaviour: hot swap under load, labels, broken versions, path safety,
concurrent clients, server-side batching, `vae-tf serve` start-up errors and graceful shutdown."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from serving.batching import Batcher, BatchingOptions
from serving.client import GrpcClient, RestClient, ServingRequestError
from serving.model_store import ModelStore, scan_versions, validate_model_name
from serving.testing import drop_version, running_server
from tests.conftest import ABSEIL_RECORD, announced, assert_one_line
from vae_tf_cli import main
from vae_tf.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def _x(n, seed=0):
    return np.random.default_rng(seed).random((n, 8, 8, 1)).astype(np.float32)


@pytest.mark.slow
def test_new_version_is_hot_swapped_without_a_failed_request(exports, tmp_path):
    drop_version(exports, tmp_path, 1)
    x = _x(2)
    expected = {v: tf.saved_model.load(str(exports / str(v))).signatures["encode"](x=tf.constant(x))["z_mean"].numpy()
                for v in (1, 2)}
    assert not np.allclose(expected[1], expected[2])
    with running_server(tmp_path, "vae", poll_seconds=0.05) as server:
        clients = [RestClient(server.rest_url, "vae"), GrpcClient(server.grpc_target, "vae")]
        seen, failures, stop = [], [], threading.Event()

        def loop(client):
            while not stop.is_set() and len(seen) < 2000:
                try:
                    z = client.encode(x)["z_mean"]
                except Exception as err:  # noqa: BLE001 - any failure fails the test
                    failures.append(repr(err))
                    continue
                version = next((v for v, e in expected.items() if np.array_equal(z, e)), None)
                seen.append(version)

        threads = [threading.Thread(target=loop, args=(c,)) for c in clients]
        for t in threads:
            t.start()
        while len(seen) < 20:
            time.sleep(0.01)
        drop_version(exports, tmp_path, 2)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and seen.count(2) < 20:
            time.sleep(0.02)
        stop.set()
        for t in threads:
            t.join()
        assert failures == []
        assert None not in seen  # every answer came from exactly one of the two versions
        first_v2 = seen.index(2)
        assert seen[first_v2 - 1] == 1 and seen.count(2) >= 20
        assert seen[first_v2:].count(1) <= 4  # only requests already in flight can still see v1
        status = clients[0].status()["model_version_status"]
        assert [(s["version"], s["state"]) for s in status] == [("2", "AVAILABLE"), ("1", "END")]


def test_labels_serve_two_versions_and_follow_the_file(exports, tmp_path):
    for v in (1, 2):
        drop_version(exports, tmp_path, v)
    labels = tmp_path / "labels.yaml"
    labels.write_text("labels: {stable: 1, canary: 2}\n")
    x = _x(1)
    with running_server(tmp_path, "vae", poll_seconds=0.05, labels_file=str(labels)) as server:
        stable = RestClient(server.rest_url, "vae", label="stable")
        canary = GrpcClient(server.grpc_target, "vae", label="canary")
        assert stable.metadata()["model_spec"]["version"] == "1"
        assert RestClient(server.rest_url, "vae").metadata()["model_spec"]["version"] == "2"  # latest
        assert not np.array_equal(stable.encode(x)["z_mean"], canary.encode(x)["z_mean"])
        # status ignores the label and lists every version, as TF Serving does (both protocols)
        assert [s["version"] for s in stable.status()["model_version_status"]] == ["2", "1"]
        assert [s["version"] for s in GrpcClient(server.grpc_target, "vae", label="nope").status()[
            "model_version_status"]] == ["2", "1"]
        labels.write_text("labels: {stable: 2}\n")
        os.utime(labels, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and stable.metadata()["model_spec"]["version"] != "2":
            time.sleep(0.05)
        assert stable.metadata()["model_spec"]["version"] == "2"
        with pytest.raises(ServingRequestError, match="Unrecognized servable version label: canary"):
            canary.encode(x)


def test_broken_version_keeps_the_last_good_one(exports, tmp_path):
    drop_version(exports, tmp_path, 1)
    with running_server(tmp_path, "vae", poll_seconds=0.05) as server:
        broken = tmp_path / "vae" / "3"
        broken.mkdir()
        (broken / "saved_model.pb").write_bytes(b"not a SavedModel")
        client = RestClient(server.rest_url, "vae")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(client.status()["model_version_status"]) < 2:
            time.sleep(0.05)
        states = {s["version"]: s for s in client.status()["model_version_status"]}
        assert states["3"]["state"] == "END" and states["3"]["status"]["error_code"] != "OK"
        assert_one_line(states["3"]["status"]["error_message"])
        assert states["1"]["state"] == "AVAILABLE"
        assert client.metadata()["model_spec"]["version"] == "1"


def test_a_model_directory_that_is_briefly_gone_keeps_its_versions_served(exports, tmp_path, caplog):
    """A rename swap of the whole model directory (or a remount) left nothing to list for a poll:
    every version was unloaded and clients got 404 until the next poll loaded it again from
    scratch. TF Serving's file system source emits no version list for a base path it cannot read
    ("transiently unavailable"); neither does this store. An empty directory still unloads."""
    drop_version(exports, tmp_path, 1)
    store = ModelStore(tmp_path, "vae", poll_seconds=0, warmup=False).start()
    first = store.servable("vae")
    (tmp_path / "vae").rename(tmp_path / "vae.swapping")
    with caplog.at_level("WARNING", logger="serving.model_store"):
        store.poll()
        store.poll()
    assert store.servable("vae") is first  # still served, not reloaded
    said = [r.getMessage() for r in caplog.records if "cannot list" in r.getMessage()]
    assert len(said) == 1 and said[0].endswith("keeping version(s) 1 until it is back")  # once, not every poll
    (tmp_path / "vae").write_text("a file where the folder was")
    store.poll()
    assert store.servable("vae") is first
    (tmp_path / "vae").unlink()
    (tmp_path / "vae.swapping").rename(tmp_path / "vae")
    store.poll()
    assert store.servable("vae") is first
    for child in (tmp_path / "vae").iterdir():  # an empty directory: no version wanted, as TF Serving
        child.rename(tmp_path / f"away-{child.name}")
    store.poll()
    with pytest.raises(Exception, match=r"Servable not found for request: Latest\(vae\)"):
        store.servable("vae")
    assert scan_versions(tmp_path / "missing") is None and scan_versions(tmp_path / "vae") == {}


def test_an_io_error_listing_the_model_directory_is_a_directory_not_there_now(tmp_path, monkeypatch, caplog):
    """A stale NFS handle, a FUSE mount gone (ENOTCONN) or EIO raised out of every poll (a
    traceback each second, and `vae-tf serve` crashed at start); and a store started before its
    folder exists said it was "keeping version(s) none"."""
    import errno

    real = os.scandir

    def failing(path):
        if Path(path).name == "flaky":
            raise OSError(errno.ESTALE, "Stale file handle")
        return real(path)

    monkeypatch.setattr(os, "scandir", failing)
    assert scan_versions(tmp_path / "flaky") is None
    with caplog.at_level("INFO", logger="serving.model_store"):
        store = ModelStore(tmp_path, "later", poll_seconds=0, warmup=False).start()
        store.poll()
    said = [r.getMessage() for r in caplog.records]
    assert not any("cannot list" in m or "listed again" in m for m in said), said
    assert any(m.startswith("no servable version of model 'later'") for m in said), said


def test_a_broken_newest_version_at_start_serves_the_one_before_and_a_half_copied_one_loads_once_whole(
        exports, tmp_path):
    """Three operational gaps: a restart with a broken newest version served nothing (the fallback
    looked only at versions already loaded) while status answered 200; a version that failed while
    half copied was never tried again once complete (only saved_model.pb's time was compared); a
    version directory without saved_model.pb was ignored without a word; and a vae-tf export
    copied before its assets/ was served without its facts file (a text model's checks off, for
    good)."""
    import shutil

    from serving.model_store import AVAILABLE, END

    base = tmp_path / "vae"
    shutil.copytree(exports / "1", base / "1")
    shutil.copytree(exports / "2", base / "2")
    shutil.rmtree(base / "2" / "variables")  # broken
    store = ModelStore(tmp_path, "vae", poll_seconds=0)
    store.poll()

    def states():
        return {s.version: (s.state, s.error_message) for s in store.status("vae")}

    assert store.servable("vae").version == 1
    assert states()[1][0] == AVAILABLE and states()[2][0] == END and "Failed to load vae version 2" in states()[2][1]

    # Version 3 copied file by file: saved_model.pb and its variables first, assets/ last.
    (base / "3").mkdir()
    for name in ("saved_model.pb", "fingerprint.pb"):
        shutil.copy2(exports / "2" / name, base / "3" / name)
    store.poll()
    assert states()[3][0] == END and store.servable("vae").version == 1
    shutil.copytree(exports / "2" / "variables", base / "3" / "variables")
    store.poll()
    assert states()[3][0] == END and "no readable assets/vae_tf_model.json (a version still being copied?" in \
        states()[3][1]
    assert store.servable("vae").version == 1
    shutil.copytree(exports / "2" / "assets", base / "3" / "assets")  # complete now: tried again, served
    store.poll()
    assert states()[3][0] == AVAILABLE and store.servable("vae").version == 3

    # A version directory without saved_model.pb is reported, not passed over in silence
    (base / "4").mkdir()
    (base / "4" / "stray.txt").write_text("not a model")
    store.poll()
    assert states()[4][0] == END and "Failed to load vae version 4" in states()[4][1]
    assert store.servable("vae").version == 3


def test_store_versions_and_path_safety(exports, tmp_path):
    (tmp_path / "vae").mkdir()
    for name in ("001", "x2", ".tmp-5", "7"):
        (tmp_path / "vae" / name).mkdir()
    (tmp_path / "vae" / "9").write_text("a file, not a version")
    assert sorted(scan_versions(tmp_path / "vae")) == [1, 7]  # leading zeros parse, other names are ignored
    for bad in ("..", "../vae", "a/b", "/etc", "", ".hidden", "vae\x00"):
        with pytest.raises(ConfigError, match="not a plain directory name"):
            validate_model_name(bad)
    store = ModelStore(tmp_path, "vae", poll_seconds=0)
    with pytest.raises(Exception, match=r"Servable not found for request: Latest\(\.\./vae\)"):
        store.servable("../vae")


def test_concurrent_clients_get_their_own_answers(exports, tmp_path):
    drop_version(exports, tmp_path, 1)
    model = tf.saved_model.load(str(exports / "1"))
    for batching in (None, BatchingOptions(max_batch_size=8, batch_timeout_ms=2.0)):
        with running_server(tmp_path, "vae", batching=batching) as server:
            errors = []

            def worker(i):
                client = (RestClient(server.rest_url, "vae") if i % 2 else GrpcClient(server.grpc_target, "vae"))
                for j in range(8):
                    x = _x(1 + (i + j) % 3, seed=100 * i + j)
                    want = model.signatures["encode"](x=tf.constant(x))["embedding"].numpy()
                    got = client.encode(x)["embedding"]
                    if got.shape != want.shape or not np.allclose(got, want, rtol=1e-5, atol=1e-6):
                        errors.append((i, j))

            threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert errors == [], f"batching={batching}"


def test_batcher_merges_concurrent_requests():
    """Deterministic: max_batch_size is the rows of all six requests and the timeout is long, so
    the batch runs the moment the sixth request joins it, whatever the threads' timing."""
    calls = []

    class Doubler:
        def run(self, arrays):
            calls.append(len(arrays["x"]))
            if np.any(arrays["x"] < 0):
                raise ValueError("negative")
            return {"y": arrays["x"] * 2}

    batcher = Batcher(BatchingOptions(max_batch_size=12, batch_timeout_ms=30_000))
    signature = Doubler()

    def six_requests(failing: int | None):
        results, errors = {}, {}

        def request(i):
            try:
                x = np.full((2, 3), -1.0 if i == failing else float(i))
                results[i] = batcher.run(signature, {"x": x})["y"]
            except ValueError as err:
                errors[i] = str(err)

        threads = [threading.Thread(target=request, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        return results, errors

    results, errors = six_requests(failing=None)
    assert calls == [12] and errors == {}  # one merged call ...
    for i, y in results.items():  # ... split back to each request's own rows
        np.testing.assert_array_equal(y, np.full((2, 3), 2.0 * i))
    calls.clear()
    results, errors = six_requests(failing=5)
    assert calls == [12] + [2] * 6  # the merged call fails, then each request runs alone
    assert errors == {5: "negative"} and sorted(results) == [0, 1, 2, 3, 4]  # a failing request fails alone
    for i, y in results.items():
        np.testing.assert_array_equal(y, np.full((2, 3), 2.0 * i))
    assert batcher.run(signature, {"x": np.ones((20, 3))})["y"].shape == (20, 3)  # too big: runs alone
    assert calls[-1] == 20
    batcher.close()


def test_serve_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["serve", "--model-base-path", str(tmp_path), "--model-name", "vae"]) == 2
    err = capsys.readouterr().err.strip()
    assert_one_line(err)
    assert err.startswith("error: no model directory") and "--model-base-path" in err
    assert main(["serve", "--model-base-path", str(tmp_path), "--model-name", "../x"]) == 2
    assert "not a plain directory name" in capsys.readouterr().err
    (tmp_path / "labels.yaml").write_text("labels: {stable: one}\n")
    (tmp_path / "vae").mkdir()
    assert main(["serve", "--model", str(tmp_path / "vae"), "--labels-file", str(tmp_path / "labels.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert_one_line(err)
    assert "must name a positive integer version" in err
    # One version's directory (what `vae-tf embed --model` and `evaluate` take) given to serve:
    # TF Serving would wait for numbered versions in it forever; this says which directory to give.
    (tmp_path / "vae" / "1").mkdir()
    (tmp_path / "vae" / "1" / "saved_model.pb").write_bytes(b"")
    assert main(["serve", "--model", str(tmp_path / "vae" / "1")]) == 2
    err = capsys.readouterr().err.strip()
    assert_one_line(err)
    assert "is one version of a model" in err and err.endswith(f"give --model {tmp_path / 'vae'}")


def test_serve_cli_port_in_use(exports, tmp_path, capsys):
    drop_version(exports, tmp_path, 1)
    with running_server(tmp_path, "vae", grpc_port=None) as server:
        code = main(["serve", "--model", str(tmp_path / "vae"), "--port", "0", "--rest-api-port",
                     str(server.rest_port)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: cannot bind REST to 127.0.0.1:") and "--rest-api-port" in err
    assert_one_line(err)


def _serve_on_a_taken_grpc_port(model) -> tuple[int, int]:
    """``vae-tf serve``'s exit code with gRPC on a port another socket listens on, and the port."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        return main(["serve", "--model", str(model), "--port", str(port), "--rest-api-port", "0"]), port


def test_a_taken_grpc_port_fails_before_the_model_loads_with_vae_tf_s_line_only(exports, tmp_path, capfd):
    """A taken gRPC port is found before the versions load (seconds to minutes for a big model),
    and gRPC core never gets to print its own `add_port.cc ... Failed to add port` error record:
    descriptor 2 holds vae-tf's one line and nothing else."""
    drop_version(exports, tmp_path, 1)
    code, port = _serve_on_a_taken_grpc_port(tmp_path / "vae")
    err = capfd.readouterr().err.strip()
    assert code == 2, err
    assert err == (f"error: cannot bind gRPC to 127.0.0.1:{port} (Address already in use); pick another port "
                   "with --port or stop the other server")


def test_a_port_that_cannot_be_bound_says_why_and_what_to_do_about_that_cause(monkeypatch):
    """Each cause of a failed bind gets its own advice: "stop the other server" is no help for
    an address this machine does not have, a host name that does not resolve, or a privileged port."""
    import errno

    import serving.server
    from serving.server import ServerConfig, check_ports_free

    def failure(host, port, **flags):
        config = ServerConfig(model_base_path="/tmp", model_name="x", host=host, **flags)
        with pytest.raises(ConfigError) as caught:
            check_ports_free(config)
        assert_one_line(str(caught.value))
        return str(caught.value)

    # 192.0.2.1 (TEST-NET-1, RFC 5737) is no address of this machine; .invalid never resolves (RFC 6761).
    for host in ("192.0.2.1", "no-such-host.invalid"):
        err = failure(host, 8500, grpc_port=8500, rest_port=None)
        assert err.startswith(f"cannot bind gRPC to {host}:8500 (") and "give --host an address of this machine" in err
        # any free port (0): the host is checked before the models load too (it was not: the
        # versions loaded, then gRPC failed with "pick another port with --port")
        err = failure(host, 0, grpc_port=0, rest_port=0)
        assert err.startswith(f"cannot bind gRPC to {host}:0 (") and "give --host an address of this machine" in err
    assert "--rest-api-port" not in err
    check_ports_free(ServerConfig(model_base_path="/tmp", model_name="x", host="127.0.0.1", grpc_port=0, rest_port=0))

    def refused(host, port):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(serving.server, "bind_socket", refused)  # this test may run as root, who may bind port 80
    err = failure("127.0.0.1", 80, grpc_port=None, rest_port=80)
    assert err == ("cannot bind REST to 127.0.0.1:80 (Permission denied); pick a port above 1023 with "
                   "--rest-api-port (lower ones need privileges)")


def test_a_grpc_port_taken_after_the_check_is_still_one_line_without_grpc_s_advice(exports, tmp_path, capsys,
                                                                                  monkeypatch):
    """The check before loading can race with another program; gRPC's own bind failure is then
    the same one-line error, without gRPC's text about GRPC_VERBOSITY (a gRPC debugging switch)."""
    import serving.server

    monkeypatch.setattr(serving.server, "check_ports_free", lambda config: None)
    drop_version(exports, tmp_path, 1)
    code, port = _serve_on_a_taken_grpc_port(tmp_path / "vae")
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2
    assert err.startswith(f"error: cannot bind gRPC to 127.0.0.1:{port} (") and "--port" in err, err
    assert "GRPC_VERBOSITY" not in err


@pytest.mark.slow
def test_serve_command_runs_and_shuts_down_gracefully(exports, tmp_path):
    """... and logs each record once, in its own format: TensorFlow's logger had a handler of its
    own besides the root logger's ("INFO:tensorflow:Restoring parameters ..." printed twice), and
    none of TensorFlow's Abseil start-up records (vae_tf_cli.tensorflow_start)."""
    drop_version(exports, tmp_path, 1)
    env = {**os.environ, "MODEL_BASE_PATH": str(tmp_path), "MODEL_NAME": "vae", "PYTHONPATH": str(REPO)}
    log = tmp_path / "stderr.txt"
    with open(log, "w") as stderr:
        process = subprocess.Popen([sys.executable, "-m", "vae_tf_cli", "serve", "--port", "0", "--rest-api-port", "0"],
                                   cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True)
    try:
        lines = announced(process)
        assert lines["model"].startswith("vae (versions: 1)")
        rest_url = lines["REST"].split("/v1/")[0]
        assert rest_url.startswith("http://127.0.0.1:")
        assert RestClient(rest_url, "vae").encode(_x(1))["z_mean"].shape == (1, 4)
        assert GrpcClient(lines["gRPC"].split()[0], "vae").status()["model_version_status"][0]["state"] == "AVAILABLE"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        logged = log.read_text()
        assert logged.count("Restoring parameters from") == 1, logged[-2000:]
        assert "INFO tensorflow: Restoring parameters from" in logged
        assert not ABSEIL_RECORD.search(logged), logged[-2000:]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


# -- how a signature runs ----------------------------------------------------------------------


def _eager_outputs(version_dir: Path, name: str, inputs: dict) -> dict:
    """The signature called as TF2 code calls it, twice: only outputs that agree between the two
    calls (deterministic ones) are kept for comparison."""
    function = tf.saved_model.load(str(version_dir)).signatures[name]
    first, second = ({k: v.numpy() for k, v in function(**{a: tf.constant(x) for a, x in inputs.items()}).items()}
                     for _ in range(2))
    return {k: v for k, v in first.items() if np.array_equal(v, second[k])}


@pytest.mark.parametrize("fast", [True, False], ids=["make_callable_from_options", "make_callable_fallback"])
def test_session_callables_give_the_eager_signature_outputs(exports, monkeypatch, fast):
    """Servable.load runs signatures in a session (TF Serving's way): through Session::MakeCallable,
    or, where TensorFlow lacks that entry point, the public make_callable; both answer exactly what
    the TF2 restored signature answers, for every signature of the export."""
    from serving.model_store import Servable

    made = []
    if not fast:
        monkeypatch.setattr(tf.compat.v1.Session, "_make_callable_from_options", None, raising=False)
        public = tf.compat.v1.Session.make_callable
        monkeypatch.setattr(tf.compat.v1.Session, "make_callable",
                            lambda self, *args, **kwargs: made.append(args) or public(self, *args, **kwargs))
    servable = Servable.load("vae", 1, exports / "1")
    rng = np.random.default_rng(3)
    inputs = {"encode": {"x": _x(5, seed=3)}, "reconstruct": {"x": _x(2, seed=4)},
              "decode": {"z": rng.normal(size=(3, 4)).astype(np.float32)},
              "sample": {"seed": np.array([[1, 2], [3, 4], [1, 2]], np.int32)}}
    for name, arrays in inputs.items():
        got = servable.signatures[name].run(arrays)
        want = _eager_outputs(exports / "1", name, arrays)
        assert set(got) == set(servable.signatures[name].output_names) and want, name
        for key, value in want.items():
            assert got[key].dtype == value.dtype and np.array_equal(got[key], value), (name, key)
    runnable = [s for s in servable.signatures.values() if s.callable]
    assert len(made) == (0 if fast else len(runnable)) and len(runnable) >= 4


def test_string_inputs_and_lookup_tables_run_in_the_session(tmp_path):
    """A signature that takes strings and looks them up in a table (what text models export):
    the SavedModel loader runs the init op that fills the table, and the session callable takes
    and returns strings, as TF Serving does."""
    from serving.model_store import Servable

    class Vocabulary(tf.Module):
        def __init__(self):
            super().__init__()
            self.table = tf.lookup.StaticHashTable(
                tf.lookup.KeyValueTensorInitializer(tf.constant(["a", "b", "c"]), tf.constant([0, 1, 2], tf.int64)), -1)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="words")])
        def ids(self, words):
            return {"ids": self.table.lookup(words), "upper": tf.strings.upper(words)}

    module = Vocabulary()
    tf.saved_model.save(module, str(tmp_path / "1"), signatures={"serving_default": module.ids})
    servable = Servable.load("vocab", 1, tmp_path / "1")
    out = servable.signatures["serving_default"].run({"words": np.array([b"b", b"zz", "c".encode()], dtype=object)})
    assert out["ids"].tolist() == [1, -1, 2]
    assert out["upper"].tolist() == [b"B", b"ZZ", b"C"]
