"""What every benchmark report records: the machine, the software, the commit and the command."""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def start_as_vae_tf_does() -> None:
    """What a benchmark run as a script does first (its ``__main__``, before TensorFlow is
    imported): keep Keras' optional libraries (scikit-learn, matplotlib, pandas) out of ``import
    keras``, as every ``vae-tf`` process does (``vae_tf_cli.keep_optional_libraries_out_of_keras``).
    It takes ~1.3 s off each benchmark process's start on 2 CPUs (``import tensorflow`` 3.9 -> 2.6 s)
    and changes nothing a benchmark times: the steps, requests and rows it measures run after the
    imports, and a benchmark that uses one of those libraries itself still imports it. Not for
    benchmarks/startup.py and benchmarks/export_time.py, whose fresh processes time the imports as
    a user's script or the ``vae-tf`` program makes them."""
    from vae_tf_cli import keep_optional_libraries_out_of_keras

    keep_optional_libraries_out_of_keras()


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def git_state(tree=REPO_ROOT) -> tuple[str | None, bool | None]:
    """(short commit, whether tracked files differ from it) of the checkout ``tree`` (this one by
    default); (None, None) outside a checkout."""
    def git(*args) -> str:
        return subprocess.run(["git", "-C", str(tree), *args], capture_output=True, text=True,
                              check=True).stdout.strip()

    try:
        return git("rev-parse", "--short", "HEAD"), bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.CalledProcessError):
        return None, None


def machine_info() -> dict:
    """Platform, CPU, usable CPUs and the git state (library versions are each benchmark's own)."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    commit, dirty = git_state()
    return {"platform": platform.platform(), "cpu": cpu_model(), "cpu_count": os.cpu_count(),
            "cpus_usable": usable, "python": platform.python_version(), "git_commit": commit, "git_dirty": dirty,
            "load_average": load_average()}


def write_json(path: Path, report: dict) -> None:
    """Write a benchmark's ``--json`` report (indented, non-JSON values as text) whole: to a
    temporary file beside ``path``, then renamed over it, so an interrupted run leaves the previous
    report or none, never half of one."""
    import json

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(report, indent=2, default=str) + "\n")
    os.replace(partial, path)


def summary(values) -> dict:
    """Median, min and max of a measurement over the rounds: how every table here reports one."""
    import statistics

    values = list(values)
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (other tenants of a shared machine), None where unknown."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def command_line() -> str:
    """The command as run from the repository root (how docs/performance.md tells users to rerun it)."""
    script = Path(sys.argv[0]).resolve()
    if script.is_relative_to(REPO_ROOT):
        script = script.relative_to(REPO_ROOT)
    return shlex.join(["python", str(script), *sys.argv[1:]])


class ChildFailed(RuntimeError):
    """A benchmark's measuring child process failed; the message is its last line of stderr."""


def run_json_child(argv: list[str], *, env: dict | None = None, cwd=None) -> dict:
    """Run a benchmark's child process (a measurement in a fresh interpreter) and return the JSON
    object it printed as its last line of stdout; :class:`ChildFailed` with the child's last line
    of stderr when it exits non-zero."""
    import json

    done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise ChildFailed((done.stderr.strip().splitlines() or ["no output"])[-1])
    return json.loads(done.stdout.strip().splitlines()[-1])


def free_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports on 127.0.0.1 (for clusters and servers started by a benchmark)."""
    import socket

    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def start_server(model_dir: Path, poll_seconds: float = 0.0, extra_args=(), code: Path = REPO_ROOT
                 ) -> tuple[subprocess.Popen, str, str]:
    """``vae-tf serve`` (plus ``extra_args``) on free loopback ports in its own process, for the
    serving benchmarks, running the code of the checkout ``code`` (this one by default; another
    one, e.g. a ``git worktree`` of an older commit, for a before/after comparison); returns
    ``(process, REST base URL, gRPC target)`` once both servers are listening."""
    import re

    env = {**os.environ, "PYTHONPATH": str(code)}
    process = subprocess.Popen([sys.executable, "-m", "vae_tf_cli", "serve", "--model", str(model_dir),
                                "--port", "0", "--rest-api-port", "0", "--poll-seconds", str(poll_seconds),
                                *extra_args],
                               # -m puts the working directory first on sys.path, before PYTHONPATH
                               cwd=str(code), env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    rest = grpc_target = None
    try:
        while grpc_target is None:
            line = process.stdout.readline()
            if not line:
                raise SystemExit("vae-tf serve exited before it was ready")
            if line.startswith("REST:"):
                rest = re.search(r"(http://\S+?)/v1/", line).group(1)
            elif line.startswith("gRPC:"):
                grpc_target = line.split()[1]
    except BaseException:  # interrupted while it starts: leave no server behind
        process.kill()
        process.wait()
        raise
    return process, rest, grpc_target


def default_serving_model(base: Path) -> Path:
    """The serving benchmarks' model: the default training architecture (MLP 256/128, Gaussian
    latent 8) on 8x8x1 digits-shaped inputs, with fixed random weights, exported as
    ``base/vae/1``; returns the model directory ``base/vae``."""
    import keras
    import numpy as np

    from vae_tf.export import export_model
    from vae_tf.models import build_vae

    keras.utils.set_random_seed(0)
    model = build_vae((8, 8, 1), latent={"family": "gaussian", "latent_dim": 8},
                      network={"kind": "mlp", "hidden": [256, 128]}, seed=0)
    model(np.zeros((1, 8, 8, 1), np.float32))
    rng = np.random.default_rng(0)
    for variable in model.weights:
        if variable.trainable:
            variable.assign(rng.normal(0, 0.1, tuple(variable.shape)).astype(np.float32))
    return export_model(model, base, "vae").parent


def cuda_runtime_to_preload(tensorflow_cuda: str | None, torch_cuda: str | None, torch_site: Path) -> Path | None:
    """The CUDA runtime to load first when TensorFlow and PyTorch share a process but are built on
    different CUDA majors (TensorFlow 2.21: 12; PyTorch's cu13 wheels: 13), else None.

    Seen on an H200 (docs/performance.md): once TensorFlow had loaded ``libcudart.so.12``,
    PyTorch's first CUDA kernels died of SIGFPE; with PyTorch's own ``libcudart.so.<major>``
    preloaded (``LD_PRELOAD``) both ran. ``torch_site``: the site-packages holding ``torch``,
    whose ``nvidia/**/`` folders hold the runtime of a pip-installed PyTorch."""
    if not tensorflow_cuda or not torch_cuda:
        return None  # a CPU build on either side: nothing to share
    major = torch_cuda.split(".")[0]
    if tensorflow_cuda.split(".")[0] == major:
        return None
    found = sorted(torch_site.glob(f"nvidia/**/libcudart.so.{major}"))
    return found[0] if found else None


def cuda_runtime_to_preload_here() -> Path | None:
    """:func:`cuda_runtime_to_preload` for the TensorFlow and PyTorch of this interpreter
    (``benchmarks/gpu_check.sh`` runs it)."""
    import tensorflow as tf
    import torch

    return cuda_runtime_to_preload(tf.sysconfig.get_build_info().get("cuda_version"), torch.version.cuda,
                                   Path(torch.__file__).resolve().parents[1])
