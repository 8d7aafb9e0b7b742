"""tf.distribute: every remedy (and a composition of them) under a 2-replica MirroredStrategy on 2 logical CPUs, the
2-replica run against the single-device run on the same global batch (training and encoder
pretraining), and a 2-worker MultiWorkerMirroredStrategy cluster on 127.0.0.1
(vae_tf.replicas).

Logical CPUs must be configured before TensorFlow initialises, so each scenario runs as a script
in a fresh subprocess. Every part of the mirrored script runs in one subprocess, started once for
the module's tests (`--dist loadfile` runs a file's tests on one worker anyway, so a process per
part only paid TensorFlow's start-up again: ~5 CPU seconds each).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]

PRELUDE = """
import contextlib, json, os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
sys.path.insert(0, {root!r})
import vae_tf_cli
vae_tf_cli.keep_optional_libraries_out_of_keras()  # as a vae-tf training process starts (1.3 s less)
import numpy as np
import tensorflow as tf
"""

MIRRORED = """
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
tf.config.experimental.enable_op_determinism()
import keras
from vae_tf.models import build_vae

x = (np.random.default_rng(0).random((64, 8, 8, 1)) > 0.5).astype("float32")
mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
GAUSS = {"family": "gaussian", "latent_dim": 3}
MLP = {"kind": "mlp", "hidden": [8]}


def make(objective, latent=GAUSS, likelihood=None, optimizer=None):
    keras.utils.set_random_seed(1)
    model = build_vae((8, 8, 1), latent=latent, likelihood=likelihood, network=MLP, objective=objective, seed=0)
    model.compile(optimizer=optimizer or keras.optimizers.Adam(1e-3))
    return model


def batches():
    return tf.data.Dataset.from_tensor_slices(x).batch(16)


# The parts to run (argv[2], comma-separated): "match:<objective>", "objectives", "pretrain".
parts = set(sys.argv[2].split(","))
results = {"match": {}, "objectives": {}}

# 1. Two replicas against one device, global batch 16, three epochs of four steps. Plain SGD, so
# that a wrongly scaled gradient shows (Adam is almost invariant to the gradient's scale).
CONTROL = {"kind": "control", "set_point": 2.0, "kp": 0.5, "ki": 0.1}
AGGRESSIVE = {"kind": "aggressive", "max_inner_steps": 6, "check_every": 2}
# The composition uses a categorical MI target: its H(c) is the global batch's (a continuous
# target's minibatch entropy is each replica's own, by design: vae_tf.remedies.mi_q).
CATEGORICAL = {"family": "gaussian_categorical", "latent_dim": 2, "categories": 3}
MATCH = {
    "elbo": ({}, GAUSS),
    "control_vae": ({"kl_weight": CONTROL}, GAUSS),
    "aggressive": ({"inference": AGGRESSIVE}, GAUSS),
    "composed": ({"kl_weight": CONTROL, "input_noise": {"kind": "gaussian", "sigma": 0.1},
                  "regularizers": [{"kind": "mi_q", "target": "categorical", "q_network": MLP}],
                  "inference": AGGRESSIVE}, CATEGORICAL)}
unknown = parts - {"objectives", "pretrain", "uneven", *(f"match:{name}" for name in MATCH)}
if unknown:  # a renamed case must not leave its test reading results nobody computed
    raise SystemExit(f"unknown parts {sorted(unknown)}")
for name, (objective, latent) in MATCH.items():
    if f"match:{name}" not in parts:
        continue
    runs = []
    for strategy in (None, mirrored):
        if strategy is None:
            model = make(objective, latent, optimizer=keras.optimizers.SGD(0.05))
        else:
            with strategy.scope():
                model = make(objective, latent, optimizer=keras.optimizers.SGD(0.05))
        if model.inference.kind == "aggressive":
            model.inference.set_heldout(x[:32])
        history = model.fit(batches(), epochs=3, verbose=0).history
        runs.append({"loss": history["loss"], "beta": history["beta"],
                     "inner_steps": history.get("aggressive_inner_steps", []),
                     "weights": [np.asarray(v.numpy()).ravel().tolist() for v in model.trainable_variables],
                     "seed_state": np.asarray(model.seed_generator.state.numpy()).tolist()})
    results["match"][name] = runs

# 1b. A last partial batch that splits unevenly (51 = 3 x 16 + 3: 2 and 1 examples) or leaves a
# replica none (49: 1 and 0), against one device.
results["uneven"] = {}
for n in (49, 51) if "uneven" in parts else ():
    runs = []
    for strategy in (None, mirrored):
        with strategy.scope() if strategy else contextlib.nullcontext():
            model = make({"kl_weight": CONTROL}, optimizer=keras.optimizers.SGD(0.05))
        history = model.fit(tf.data.Dataset.from_tensor_slices(x[:n]).batch(16), epochs=2, verbose=0).history
        runs.append({"loss": history["loss"], "elbo": history["elbo"], "beta": history["beta"],
                     "weights": [np.asarray(v.numpy()).ravel().tolist() for v in model.trainable_variables]})
    results["uneven"][str(n)] = runs

# 2. Every objective (and every latent family) trains under two replicas; state stays in sync.
CASES = {
    "beta_linear_schedule": ({"kl_weight": {"kind": "linear", "beta": 2.0, "steps": 3}}, GAUSS, None),
    "capacity": ({"kl_weight": {"kind": "capacity", "capacity_max": 5.0, "capacity_steps": 4}}, GAUSS, None),
    "control_vae": ({"kl_weight": {"kind": "control", "set_point": 2.0}}, GAUSS, None),
    "ar_elbo": ({}, GAUSS, {"name": "gaussian_adaptive"}),
    "mi_max_categorical": ({"regularizers": [{"kind": "mi_q", "q_network": {"kind": "mlp", "hidden": [8]}}]},
                           {"family": "gaussian_categorical", "latent_dim": 2, "categories": 3,
                            "temperature": {"kind": "exponential_decay", "start": 1.0, "rate": 0.1, "floor": 0.5}},
                           None),
    "aggressive": ({"inference": {"kind": "aggressive", "max_inner_steps": 4, "check_every": 2}}, GAUSS, None),
    "noisy_input_normal_gamma": ({"input_noise": {"kind": "gaussian"},
                                  "kl_weight": {"kind": "cyclical", "total_steps": 4, "cycles": 2}},
                                 {"family": "normal_gamma", "latent_dim": 3}, None),
    "fgsm_capacity_ar_elbo": ({"input_noise": {"kind": "fgsm", "epsilon": 0.05},
                               "kl_weight": {"kind": "capacity", "capacity_max": 5.0, "capacity_steps": 4}},
                              GAUSS, {"name": "gaussian_adaptive"}),
}
for name, (objective, latent, likelihood) in CASES.items() if "objectives" in parts else ():
    with mirrored.scope():
        model = make(objective, latent, likelihood)
    if model.inference.kind == "aggressive":
        model.inference.set_heldout(x[:32])
    history = model.fit(batches(), epochs=1, verbose=0).history
    unsynced = []
    for v in [*model.variables, *model.optimizer.variables]:
        copies = [np.asarray(t) for t in mirrored.experimental_local_results(v.value)]
        if len(copies) != 2 or not np.array_equal(copies[0], copies[1]):
            unsynced.append(v.path)
    results["objectives"][name] = {"history": {k: [float(a) for a in vals] for k, vals in history.items()},
                                   "train_steps": int(model.train_steps.numpy()), "unsynced": unsynced,
                                   "replicas": mirrored.num_replicas_in_sync}

# 3. Encoder pretraining in the strategy's scope (the training app does so) against one device.
from vae_tf.remedies.pretraining import pretrain_encoder

results["pretrain"] = []
for strategy in (None, mirrored) if "pretrain" in parts else ():
    with strategy.scope() if strategy else contextlib.nullcontext():
        model = make({})
        keras.utils.set_random_seed(2)  # the classification head's initial weights
        result = pretrain_encoder(model, x, np.arange(64) % 3, epochs=2, batch_size=16, seed=0,
                                  validation_data=(x[:32], np.arange(32) % 3))
    results["pretrain"].append({**{k: result[k] for k in ("pretrain_loss", "pretrain_accuracy", "pretrain_val_accuracy")},
                                "encoder": [np.asarray(v.numpy()).ravel().tolist() for v in model.encoder.weights]})

with open(sys.argv[1], "w") as f:
    json.dump(results, f)
"""

WORKER = """
import keras
from vae_tf.models import build_vae

strategy = tf.distribute.MultiWorkerMirroredStrategy()
x = (np.random.default_rng(0).random((64, 8, 8, 1)) > 0.5).astype("float32")
with strategy.scope():
    model = build_vae((8, 8, 1), latent={"family": "gaussian", "latent_dim": 3},
                      network={"kind": "mlp", "hidden": [8]}, seed=0)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
options = tf.data.Options()
options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
history = model.fit(tf.data.Dataset.from_tensor_slices(x).batch(16).with_options(options), epochs=2,
                    verbose=0).history
with open(sys.argv[1], "w") as f:
    json.dump({"history": {k: [float(v) for v in vals] for k, vals in history.items()},
               "types": sorted({type(v).__name__ for vals in history.values() for v in vals}),
               "replicas": strategy.num_replicas_in_sync}, f)
"""


def _script(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(PRELUDE.format(root=str(ROOT))) + textwrap.dedent(body))
    return path


def _env(**extra) -> dict:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **extra)
    env.pop("TF_CONFIG", None)
    env.update(extra)
    return env


def _mirrored_part(item) -> str | None:
    """The part of the MIRRORED script a test of this module reads (None: it reads none)."""
    name = getattr(item, "originalname", item.name)
    if name == "test_two_replicas_follow_the_single_device_run_on_the_same_global_batch":
        return f"match:{item.callspec.params['objective']}"
    return {"test_every_objective_trains_under_two_mirrored_replicas_with_state_in_sync": "objectives",
            "test_a_last_batch_split_unevenly_or_leaving_a_replica_none_follows_the_single_device_run": "uneven",
            "test_encoder_pretraining_under_two_mirrored_replicas_follows_the_single_device_run": "pretrain"}.get(name)


@pytest.fixture(scope="module")
def mirrored(request, tmp_path_factory) -> dict:
    """The MIRRORED script's results, from one subprocess that runs the parts of this module's
    selected tests (all of them in a full run, only its own for one test picked with ``-k``)."""
    parts = sorted({part for item in request.session.items if item.module is request.module
                    for part in [_mirrored_part(item)] if part})
    tmp_path = tmp_path_factory.mktemp("mirrored")
    out = tmp_path / "results.json"
    proc = subprocess.run([sys.executable, str(_script(tmp_path, "mirrored.py", MIRRORED)), str(out), ",".join(parts)],
                          env=_env(), capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return json.loads(out.read_text())


@pytest.mark.slow
def test_a_last_batch_split_unevenly_or_leaving_a_replica_none_follows_the_single_device_run(mirrored):
    """Each replica's loss was divided by R: wrong weights when a last partial batch splits 2:1,
    and with a last batch of one example the empty replica's mean (NaN) made the epoch's loss NaN,
    so `vae-tf train` stopped the run as diverged. Now weighted by each replica's share."""
    for n, (single, two) in mirrored["uneven"].items():
        assert np.all(np.isfinite(two["loss"])), (n, two["loss"])
        # The weights follow one device's to float rounding. The epoch's metrics are the mean of
        # the replicas' own means (Keras), here over 25 and 24 examples: 1e-4 apart at most.
        for a, b in zip(two["weights"], single["weights"]):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=f"{n} examples")
        for key in ("loss", "elbo", "beta"):
            np.testing.assert_allclose(two[key], single[key], rtol=1e-4, atol=1e-6, err_msg=f"{n} examples: {key}")


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["elbo", "control_vae", "aggressive", "composed"])
def test_two_replicas_follow_the_single_device_run_on_the_same_global_batch(mirrored, objective):
    """Same seeds, deterministic ops: losses, β (ControlVAE: fed the global-batch KL), weights and
    the seed stream agree to float rounding (the loss is divided by the number of replicas,
    noise is drawn for the global batch and sliced per replica; the aggressive inner loop reads
    each fresh batch once and gives every replica its rows, so its updates are one device's)."""
    single, two = mirrored["match"][objective]
    np.testing.assert_allclose(two["loss"], single["loss"], rtol=1e-5)
    assert two["inner_steps"] == single["inner_steps"]
    np.testing.assert_allclose(two["beta"], single["beta"], rtol=1e-5, atol=1e-7)
    assert len(two["weights"]) == len(single["weights"]) > 0
    for a, b in zip(two["weights"], single["weights"]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert two["seed_state"] == single["seed_state"]
    assert single["loss"][-1] < single["loss"][0]  # it trained (a bug that freezes both runs would also "match")


@pytest.mark.slow
def test_every_objective_trains_under_two_mirrored_replicas_with_state_in_sync(mirrored):
    results = mirrored["objectives"]
    assert len(results) == 8
    for name, result in results.items():
        assert result["replicas"] == 2
        assert result["train_steps"] == 4, name
        assert result["unsynced"] == [], (name, result["unsynced"])  # every variable equal on both replicas
        history = result["history"]
        assert {"loss", "elbo", "reconstruction", "kl", "beta"} <= set(history), name
        for key, values in history.items():
            assert np.all(np.isfinite(values)), (name, key, values)
    assert results["mi_max_categorical"]["history"]["q_loss"][0] > 0
    assert results["aggressive"]["history"]["aggressive_inner_steps"][0] >= 1
    assert results["capacity"]["history"]["capacity"][0] > 0


@pytest.mark.slow
def test_encoder_pretraining_under_two_mirrored_replicas_follows_the_single_device_run(mirrored):
    """The classifier of vae_tf.pretraining is built and trained in the strategy's scope: it
    trains there (it used to fail on the encoder's mirrored variables) and follows one device."""
    single, two = mirrored["pretrain"]
    for key in ("pretrain_loss", "pretrain_accuracy", "pretrain_val_accuracy"):
        np.testing.assert_allclose(two[key], single[key], rtol=1e-5, err_msg=key)
    assert len(two["encoder"]) == len(single["encoder"]) > 0
    for a, b in zip(two["encoder"], single["encoder"]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert single["pretrain_loss"][-1] < single["pretrain_loss"][0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_worker_multi_worker_mirrored_run_reports_the_same_loss_on_both_workers(tmp_path):
    """Keras reduces multi-worker logs along axis 0 (stack-notes.md §6): the steps return rank-1
    logs there, and History still holds plain floats."""
    script = _script(tmp_path, "worker.py", WORKER)
    cluster = {"worker": [f"127.0.0.1:{_free_port()}", f"127.0.0.1:{_free_port()}"]}
    procs = []
    for index in range(2):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        procs.append(subprocess.Popen([sys.executable, str(script), str(tmp_path / f"worker{index}.json")],
                                      env=_env(TF_CONFIG=tf_config), stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=300)[0])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    for proc, output in zip(procs, outputs):
        assert proc.returncode == 0, output[-5000:]
    chief, other = (json.loads((tmp_path / f"worker{i}.json").read_text()) for i in range(2))
    assert chief["replicas"] == 2
    assert chief["types"] == ["float"]
    assert chief["history"]["loss"] == other["history"]["loss"]
    assert len(chief["history"]["loss"]) == 2 and np.all(np.isfinite(chief["history"]["loss"]))
