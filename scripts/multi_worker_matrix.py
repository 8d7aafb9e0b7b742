"""Every objective and latent family on a 2-worker ``--strategy multi_worker`` cluster on
127.0.0.1 (issue #10): two ``vae-tf train`` processes with their own ``TF_CONFIG``, the small
digits MLP config of tests/test_training_distributed.py, 2 epochs.

    python -m scripts.multi_worker_matrix                  # every case, a table at the end
    python -m scripts.multi_worker_matrix control_vae aggressive --keep /tmp/mw
    python -m scripts.multi_worker_matrix --single         # and each case in one process, compared

For each case it checks what a cluster must give: both workers exit 0, one MLflow run (the
chief's), one export, the non-chief's final loss equal to the chief's, and every model and
optimizer variable (weights, β, the controller, σ², step counter, seed stream, Adam moments)
equal on both workers after training. The last check is what catches state that drifts apart:
the losses are all-reduced by Keras, so they agree even when the workers' models do not.

Each worker runs ``vae_tf_cli.main`` through this module (``--dump``), which wraps
``training.train.build_model`` to keep the model and writes its variables to an ``.npz`` when
training returns; nothing else changes. tests/test_training_distributed.py runs a
representative subset through :func:`run_cluster`. Cases run one after another (one cluster at
a time: each is 2 TensorFlow processes).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import free_ports

ROOT = Path(__file__).resolve().parents[1]

CONFIG = {
    "data": {"name": "digits"},
    "model": {"latent": {"family": "gaussian", "latent_dim": 4}, "network": {"kind": "mlp", "hidden": [32]}},
    "objective": {"kl_weight": {"kind": "constant", "beta": 1.0}},
    "train": {"epochs": 2, "batch_size": 64, "steps_per_execution": 1, "deterministic": True, "verbose": 0},
    "mlflow": {"log_figures": False, "register": False},
}

_GAUSS_CAT = {"family": "gaussian_categorical", "latent_dim": 3, "categories": 4}
_LINEAR = {"kind": "linear", "steps": 20}
_Q = {"kind": "mlp", "hidden": [16]}

#: Case name -> changes to :data:`CONFIG` (merged one level deep per section).
CASES: dict[str, dict] = {
    "elbo": {},
    "elbo_beta_linear": {"objective": {"kl_weight": {**_LINEAR, "beta": 2.0}}},
    "elbo_beta_cyclical": {"objective": {"kl_weight": {"kind": "cyclical", "cycles": 2}}},
    "capacity": {"objective": {"kl_weight": {"kind": "capacity", "capacity_max": 5.0, "capacity_steps": 20}}},
    "control_vae": {"objective": {"kl_weight": {"kind": "control", "set_point": 2.0, "kp": 0.5, "ki": 0.1}}},
    "ar_elbo": {"model": {"likelihood": {"name": "gaussian_adaptive"}}},
    "gaussian_learned": {"model": {"likelihood": {"name": "gaussian_learned"}}},
    "mi_max_gaussian": {"objective": {"regularizers": [{"kind": "mi_q", "q_network": _Q}]}},
    "mi_max_categorical": {"model": {"latent": _GAUSS_CAT},
                           "objective": {"regularizers": [{"kind": "mi_q", "target": "categorical", "q_network": _Q}]}},
    "aggressive": {"objective": {"inference": {"kind": "aggressive", "max_inner_steps": 4, "check_every": 2}}},
    "noisy_input_gaussian": {"objective": {"input_noise": {"kind": "gaussian"}}},
    "noisy_input_fgsm": {"objective": {"input_noise": {"kind": "fgsm", "epsilon": 0.05}}},
    "skip_decoder": {"model": {"network": {"kind": "mlp", "hidden": [32], "skip": True}}},
    "pretrain_encoder": {"train": {"pretrain": {"fraction": 0.1, "epochs": 2}}},
    "normal_gamma": {"model": {"latent": {"family": "normal_gamma", "latent_dim": 3}},
                     "objective": {"kl_weight": _LINEAR}},
    "gaussian_categorical": {"model": {"latent": _GAUSS_CAT}},
    # Remedies composed: every slot at once, on ControlVAE (issue: remedies that compose).
    "composed": {"model": {"network": {"kind": "mlp", "hidden": [32], "skip": True}},
                 "objective": {"kl_weight": {"kind": "control", "set_point": 2.0, "kp": 0.5, "ki": 0.1},
                               "regularizers": [{"kind": "mi_q", "q_network": _Q}],
                               "input_noise": {"kind": "fgsm", "epsilon": 0.05},
                               "inference": {"kind": "aggressive", "max_inner_steps": 4, "check_every": 2}},
                 "train": {"pretrain": {"fraction": 0.1, "epochs": 2}}},
}
# The same with MI maximised on the categorical part of a Gaussian + categorical code: every slot,
# two optimizers and a non-Gaussian family in one cluster (tests/test_training_distributed.py).
CASES["composed_categorical"] = {
    **CASES["composed"], "model": {**CASES["composed"]["model"], "latent": _GAUSS_CAT},
    "objective": {**CASES["composed"]["objective"],
                  "regularizers": [{"kind": "mi_q", "target": "categorical", "q_network": _Q}]}}


def case_config(case: str, **extra) -> dict:
    """:data:`CONFIG` with ``case``'s changes, then ``extra``, merged in (one level deep per
    section); named after the case unless ``extra`` names it."""
    config = {**copy.deepcopy(CONFIG), "name": case.replace("_", "-")}
    for changes in (CASES[case], extra):
        for section, values in copy.deepcopy(changes).items():
            merge = isinstance(values, dict) and isinstance(config.get(section), dict)
            config[section] = {**config[section], **values} if merge else values
    return config


@dataclasses.dataclass
class ClusterRun:
    returncodes: list[int]
    outputs: list[str]              # chief's, then the other worker's (stdout and stderr)
    states: list[dict | None]       # variable path -> value after training, per worker
    seconds: float
    workdir: Path

    @property
    def ok(self) -> bool:
        return self.returncodes == [0, 0]

    def worker_final_loss(self) -> float | None:
        match = re.search(r"worker done: \d+ epochs, final loss ([0-9.eE+-]+|nan)", self.outputs[1])
        return float(match.group(1)) if match else None

    def state_differences(self) -> dict[str, float]:
        """Variables whose values differ between the workers: path -> max |difference| (inf when
        only one worker has it)."""
        chief, other = self.states
        diffs = {}
        for key in sorted(set(chief) | set(other)):
            if key not in chief or key not in other or chief[key].shape != other[key].shape:
                diffs[key] = float("inf")
            elif not np.array_equal(chief[key], other[key]):
                diffs[key] = float(np.max(np.abs(chief[key].astype(np.float64) - other[key].astype(np.float64))))
        return diffs

    def error(self) -> str:
        """The first ``error:`` line or the last exception line of a failed worker."""
        for code, out in zip(self.returncodes, self.outputs):
            if code == 0:
                continue
            lines = [line for line in out.splitlines() if line.strip()]
            for line in lines:
                if line.startswith("error:"):
                    return line
            for line in reversed(lines):
                if re.match(r"^[A-Za-z_.]*(Error|Exception)\b", line):
                    return line[:300]
            return (lines[-1] if lines else f"exit {code}")[:300]
        return ""


def _env(workdir: Path, tf_config: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_") and k != "TF_CONFIG"}
    return {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{workdir / 'mlflow.db'}", "TF_CPP_MIN_LOG_LEVEL": "2",
            "PYTHONPATH": str(ROOT), "TF_CONFIG": tf_config}


def run_cluster(workdir: Path, config: dict, *args: str, timeout: float = 400) -> ClusterRun:
    """``vae-tf train -c cfg.yaml --strategy multi_worker *args`` on a 2-worker cluster on
    127.0.0.1, in ``workdir`` (MLflow store ``workdir/mlflow.db``, exports under
    ``workdir/models``, runs under ``workdir/runs``)."""
    import yaml

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "cfg.yaml").write_text(yaml.safe_dump(config))
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
    start = time.monotonic()
    procs = []
    for i in range(2):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "scripts.multi_worker_matrix", "--dump", str(workdir / f"state{i}.npz"), "--",
             "train", "-c", "cfg.yaml", "--strategy", "multi_worker", *args],
            cwd=workdir, env=_env(workdir, tf_config), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = []
    try:
        for proc in procs:
            try:
                outputs.append(proc.communicate(timeout=timeout)[0])
            except subprocess.TimeoutExpired:
                proc.kill()
                outputs.append(proc.communicate()[0] + f"\nTimeoutExpired: no exit after {timeout} s")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    states = []
    for i, output in enumerate(outputs):
        (workdir / f"worker{i}.log").write_text(output)
    for i in range(2):
        path = workdir / f"state{i}.npz"
        states.append(dict(np.load(path)) if path.exists() else None)
    return ClusterRun([p.returncode for p in procs], outputs, states, time.monotonic() - start, workdir)


def _dump_worker(dump: str, argv: list[str]) -> int:
    """Run ``vae-tf`` with ``argv`` and write the trained model's variables to ``dump``."""
    from vae_tf_cli import prepare_job_process

    prepare_job_process()  # as the `vae-tf` program does, before TensorFlow is imported
    from training import train

    built = []
    build_model = train.build_model

    def keep(*args, **kwargs):
        built.append(build_model(*args, **kwargs))
        return built[-1]

    train.build_model = keep
    from vae_tf_cli import main

    code = main(argv)
    if code == 0 and built:
        model = built[-1]
        state = {}
        for v in [*model.variables, *model.optimizer.variables]:
            key = v.path if v.path not in state else f"{v.path}#{len(state)}"
            state[key] = np.asarray(v.numpy())
        np.savez(dump, **state)
    return code


def chief_loss_history(workdir: Path) -> list[float] | None:
    """The per-epoch ``loss`` of the one MLflow run in ``workdir/mlflow.db`` (None unless there is
    exactly one run)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{Path(workdir) / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("vae-tf")
    runs = client.search_runs([experiment.experiment_id]) if experiment else []
    if len(runs) != 1:
        return None
    return [m.value for m in sorted(client.get_metric_history(runs[0].info.run_id, "loss"), key=lambda m: m.step)]


def problems(run: ClusterRun) -> list[str]:
    """What is wrong with a finished cluster run (empty: nothing): a failed worker, not exactly
    one export, the non-chief's final loss not the chief's, variables that differ."""
    if not run.ok:
        return [f"FAIL: {run.error()}"]
    found = []
    exports = list((run.workdir / "models").glob("*/*"))
    if len(exports) != 1:
        found.append(f"{len(exports)} exports")
    history = chief_loss_history(run.workdir)
    chief, worker = (history[-1] if history else None), run.worker_final_loss()
    if chief is None or worker is None or not np.isclose(worker, chief, rtol=1e-5):
        found.append(f"final loss: chief {chief}, worker {worker}")
    diffs = run.state_differences()
    if diffs:
        worst = sorted(diffs.items(), key=lambda kv: -kv[1])[:3]
        found.append(f"{len(diffs)} variables differ between the workers, e.g. "
                     + ", ".join(f"{k} ({v:.2g})" for k, v in worst))
    return found


def run_single(workdir: Path, config: dict) -> tuple[list[float] | None, dict | None]:
    """The same config in one process (no strategy): its loss history and variables."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    import yaml

    (workdir / "cfg.yaml").write_text(yaml.safe_dump(config))
    env = {k: v for k, v in _env(workdir, "").items() if k != "TF_CONFIG"}
    proc = subprocess.run([sys.executable, "-m", "scripts.multi_worker_matrix", "--dump", str(workdir / "state.npz"),
                           "--", "train", "-c", "cfg.yaml"], cwd=workdir, env=env, capture_output=True, text=True,
                          check=False)
    (workdir / "single.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode:
        return None, None
    return chief_loss_history(workdir), dict(np.load(workdir / "state.npz"))


#: Scalar variables shown in the table (by the last part of their path).
STATE = ("beta", "sigma_x2", "integral", "kl_smooth", "aggressive_phase", "train_steps")


def _state_summary(state: dict | None) -> str:
    if not state:
        return ""
    return " ".join(f"{k.rsplit('/', 1)[-1]}={float(v):.4g}" for k, v in state.items()
                    if v.shape == () and k.rsplit("/", 1)[-1] in STATE)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--dump"]:
        dump, rest = argv[1], argv[2:]
        return _dump_worker(dump, rest[1:] if rest[:1] == ["--"] else rest)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cases", nargs="*", help=f"default: all ({', '.join(CASES)})")
    parser.add_argument("--keep", help="directory for the runs (kept); default: a temporary one")
    parser.add_argument("--single", action="store_true",
                        help="also run each case in one process and compare the loss histories (max relative "
                             "difference; the same run up to float rounding should give < 1e-3)")
    args = parser.parse_args(argv)
    unknown = [c for c in args.cases if c not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {unknown}; choose from {', '.join(CASES)}")
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="mw-matrix-"))
    rows = []
    for name in args.cases or CASES:
        run = run_cluster(root / name, case_config(name))
        found = problems(run)
        row = [name, "; ".join(found) or "ok", f"{run.seconds:.0f}", _state_summary(run.states[0])]
        if args.single:
            single, state = run_single(root / name / "single", case_config(name))
            cluster = chief_loss_history(run.workdir)
            row.append("failed" if single is None else "" if not cluster else
                       f"{np.max(np.abs(np.subtract(cluster, single)) / np.abs(single)):.1e} "
                       f"({_state_summary(state)})")
        rows.append(row)
        print("  ".join(row), flush=True)
    print(f"\nruns in {root}\n")
    header = ["case", "multi_worker", "s", "state (chief)"] + (["vs one process: loss rel. diff (state)"]
                                                                if args.single else [])
    for line in (header, ["---"] * len(header), *rows):
        print("| " + " | ".join(line) + " |")
    return 0 if all(row[1] == "ok" for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
