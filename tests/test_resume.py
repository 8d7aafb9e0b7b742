"""Resume without gaps: a composed model (ControlVAE + aggressive inference + FGSM + MI) killed with
SIGKILL resumes bit for bit, the aggressive loop's data position included; early stopping's
patience and best weights survive a resume; the Normal-Gamma Monte-Carlo KL draws from the
model's seeded stream."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
import yaml
from mlflow.tracking import MlflowClient

from tests.test_training_reliability import SMALL, kill_after_checkpoint, metric_history, start_training
from training.callbacks import ResumableEarlyStopping

COMPOSED = {
    "kl_weight": {"kind": "control", "set_point": 5.0, "kp": 0.01, "ki": 0.001},
    "regularizers": [{"kind": "mi_q", "q_network": {"kind": "mlp", "hidden": [16]}}],
    "input_noise": {"kind": "fgsm", "epsilon": 0.05},
    "inference": {"kind": "aggressive", "max_inner_steps": 6, "check_every": 3},
}


def _checkpoint_tensors(run_root: Path) -> dict:
    """Every tensor of the latest checkpoint under ``run_root`` (the final state of the run)."""
    directory = next(run_root.glob("*/checkpoints"))
    reader = tf.train.load_checkpoint(str(directory))
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
            # not the checkpoint's own bookkeeping (how many saves this process made)
            if not name.startswith(("_CHECKPOINTABLE_OBJECT_GRAPH", "save_counter")) and "history" not in name}


@pytest.mark.slow
def test_a_composed_run_killed_mid_epoch_resumes_bit_for_bit(tmp_path):
    steps_per_epoch = 24  # 1437 training digits / 64 = 23 batches, rounded up to whole groups of 2
    config = {**SMALL, "name": "victim", "objective": COMPOSED,
              "train": {"epochs": 3, "batch_size": 64, "steps_per_execution": 2, "checkpoint_every_steps": 4,
                        "deterministic": True, "verbose": 0, "early_stopping_patience": None}}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(config))
    reference = start_training(tmp_path, "--set", "name=reference", "--set", "train.run_dir=reference_runs")
    victim = start_training(tmp_path)
    killed_at = kill_after_checkpoint(victim, tmp_path / "runs", steps_per_epoch, mid_epoch_of=steps_per_epoch)
    assert killed_at % steps_per_epoch, killed_at  # inside an epoch (2 when the poll is prompt: the aggressive phase)
    assert reference.wait(timeout=600) == 0, reference.stdout.read()[-3000:]
    resumed = start_training(tmp_path, "--resume")
    out = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0, out[-3000:]

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = {r.data.params["name"]: r for r in client.search_runs([client.get_experiment_by_name("vae-tf").experiment_id])}
    assert set(runs) == {"reference", "victim"}
    ref, vic = runs["reference"], runs["victim"]
    assert vic.data.tags["vae_tf.objective"] == "control + mi_q + fgsm + aggressive"
    for key in ("loss", "elbo", "kl", "beta", "pi_integral", "mi_bound", "q_loss", "elbo_perturbed",
                "aggressive_inner_steps", "aggressive_phase", "val_elbo"):
        ours, theirs = metric_history(client, vic.info.run_id, key), metric_history(client, ref.info.run_id, key)
        assert [s for s, _ in ours] == [0, 1, 2], f"{key}: lost or duplicated epochs {ours}"
        assert [v for _, v in ours] == [v for _, v in theirs], key  # bit for bit
    assert metric_history(client, ref.info.run_id, "aggressive_inner_steps")[1][1] > 0  # killed inside the inner loops
    for key in ("test_elbo", "test_kl", "test_beta", "epochs_run"):
        assert vic.data.metrics[key] == ref.data.metrics[key], key
    # Every variable of the final state (weights, both optimizers, controller, phase, inner data
    # position, seed stream) is equal, bit for bit.
    final, expected = _checkpoint_tensors(tmp_path / "runs"), _checkpoint_tensors(tmp_path / "reference_runs")
    assert final.keys() == expected.keys() and len(final) > 20
    for name in expected:
        np.testing.assert_array_equal(final[name], expected[name], err_msg=name)


class _Position:
    def __init__(self, history):
        self.history = history


def _fit_epochs(callback, model, values, first_epoch=0):
    """Drive ``callback`` through epochs with scripted ``val_elbo`` values (the weights follow the
    epoch number, so the best epoch's weights are recognisable); returns the epochs run."""
    callback.set_model(model)
    callback.on_train_begin()
    run = []
    for epoch in range(first_epoch, len(values)):
        model.set_weights([np.full(w.shape, float(epoch), np.float32) for w in model.get_weights()])
        for variable in model.optimizer.variables:  # Adam's step count and moments follow it too
            variable.assign(np.full(variable.shape, epoch, variable.dtype))
        logs = {"val_elbo": values[epoch]}
        callback.on_epoch_end(epoch, logs)
        callback.position.history.append({"epoch": epoch, "metrics": logs})
        run.append(epoch)
        if model.stop_training:
            break
    return run


def _optimizer_epochs(model) -> set[float]:
    """The epochs Adam's state variables hold (the learning rate is the run's setting, not state)."""
    return {float(np.unique(np.asarray(v))[0]) for v in model.optimizer.variables if v is not model.optimizer.learning_rate}


def test_early_stopping_patience_and_best_weights_survive_a_resume(tmp_path):
    values = [1.0, 2.0, 3.0, 2.5, 2.9, 2.4, 2.2, 5.0]
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    model.optimizer.build(model.trainable_variables)
    assert len(model.optimizer.variables) > 3  # iterations, the rate, m and v of the kernel and the bias

    def stopping(history, path):
        return ResumableEarlyStopping(_Position(history), path, monitor="val_elbo", mode="max", patience=3,
                                      restore_best_weights=True)

    model.stop_training = False
    straight = stopping([], tmp_path / "a.npz")
    assert _fit_epochs(straight, model, values) == [0, 1, 2, 3, 4, 5]  # best at 2, three epochs without
    assert _optimizer_epochs(model) == {5.0}
    assert straight.restore_best(model)
    # the best epoch's weights, and its optimizer: Keras' EarlyStopping keeps the last epoch's Adam
    assert float(model.get_weights()[0].flat[0]) == 2.0 and _optimizer_epochs(model) == {2.0}
    assert int(model.optimizer.iterations.numpy()) == 2
    # The learning rate is left as the run set it (a resume's --set train.learning_rate stays).
    assert float(model.optimizer.learning_rate.numpy()) == 5.0

    # The same run killed after epoch 3 (its checkpoint holds epochs 0-3), then resumed by a fresh
    # process: the patience counter goes on (it does not restart at 0) and the best weights return.
    model.stop_training = False
    first = stopping([], tmp_path / "b.npz")
    _fit_epochs(first, model, values[:4])
    history = list(first.position.history)
    model.stop_training = False
    resumed = stopping(history, tmp_path / "b.npz")
    assert _fit_epochs(resumed, model, values, first_epoch=4) == [4, 5]
    assert model.stop_training and resumed.wait == 3 and resumed.best_epoch == 2
    model.set_weights([np.zeros_like(w) for w in model.get_weights()])
    assert resumed.restore_best(model)
    assert float(model.get_weights()[0].flat[0]) == 2.0 and _optimizer_epochs(model) == {2.0}
    # A best-weights file written before the optimizer's state was kept restores the weights and
    # leaves the optimizer as it is.
    with np.load(tmp_path / "b.npz") as saved:
        np.savez(tmp_path / "c.npz", **{k: v for k, v in saved.items() if not k.startswith("o") and k != "optimizer_count"})
    model.stop_training = False
    older = stopping(history[:4], tmp_path / "c.npz")  # the resumed run above appended epochs 4 and 5
    _fit_epochs(older, model, values, first_epoch=4)
    model.set_weights([np.zeros_like(w) for w in model.get_weights()])
    assert older.restore_best(model)
    assert float(model.get_weights()[0].flat[0]) == 2.0 and _optimizer_epochs(model) == {5.0}
    # A run whose finished epochs had already run out of patience does not train again; with no
    # fit, the callback never had the model, and the best weights were not restored (the export
    # held the last epoch's).
    stopped = stopping(history[:4] + [{"epoch": 4, "metrics": {"val_elbo": 2.9}},
                                      {"epoch": 5, "metrics": {"val_elbo": 2.4}}], tmp_path / "b.npz")
    assert stopped.stopped_before() and stopped.model is None
    assert stopped.outcome(6, 8) == {"best_epoch": 3, "best": 3.0, "epochs_trained": 6, "stopped": True}
    # patience running out at the last epoch is no stop: the run trained every epoch
    assert stopped.outcome(6, 6)["stopped"] is False
    model.set_weights([np.zeros_like(w) for w in model.get_weights()])
    assert stopped.restore_best(model)
    assert float(model.get_weights()[0].flat[0]) == 2.0 and _optimizer_epochs(model) == {2.0}
    # before any monitored value there is nothing to restore or report
    fresh = stopping([], tmp_path / "d.npz")
    assert not fresh.stopped_before() and fresh.outcome(0, 8) is None and not fresh.restore_best(model)

    # A NaN val_elbo is no value: Keras took a first epoch's NaN as the best, which no later value
    # beat, and the run stopped after `patience` epochs keeping that epoch.
    model.stop_training = False
    nan_first = stopping([], tmp_path / "e.npz")
    assert _fit_epochs(nan_first, model, [float("nan"), 2.0, 3.0, 4.0, 5.0, 6.0]) == [0, 1, 2, 3, 4, 5]
    assert nan_first.outcome(6, 6) == {"best_epoch": 6, "best": 6.0, "epochs_trained": 6, "stopped": False}
    model.set_weights([np.zeros_like(w) for w in model.get_weights()])
    assert nan_first.restore_best(model) and float(model.get_weights()[0].flat[0]) == 5.0


@pytest.mark.slow
def test_normal_gamma_monte_carlo_kl_draws_from_the_models_seeded_stream(digits):
    from vae_tf.models import build_vae

    def kl_of(seed, global_seed):
        tf.random.set_seed(global_seed)  # TensorFlow's global stream must not matter
        model = build_vae((8, 8, 1), latent={"family": "normal_gamma", "latent_dim": 3, "kl_estimator": "monte_carlo"},
                          network={"kind": "mlp", "hidden": [16]}, seed=seed)
        for variable in model.trainable_variables:  # same weights; the seed stream is the model's own
            variable.assign(np.full(variable.shape, 0.01, np.float32))
        return model.compute_terms(tf.constant(digits.x_train[:16]))["kl"].numpy()

    same = kl_of(1, 0), kl_of(1, 123)
    np.testing.assert_array_equal(same[0], same[1])
    assert not np.array_equal(kl_of(1, 0), kl_of(2, 0))  # and the model's seed does
