"""The KL weights (β, linear and cyclical annealing, capacity, ControlVAE) and the decoder
variances (AR-ELBO, learned and per-pixel σ) against their math. Each trains on digits with finite
metrics and exports; schedule and controller state survive a checkpoint round trip exactly."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from training.callbacks import checkpoint_for
from vae_tf.errors import ConfigError
from vae_tf.export import export_model
from vae_tf.models import build_vae

SMALL = {"latent": {"family": "gaussian", "latent_dim": 4}, "network": {"kind": "mlp", "hidden": [32]}}


def make(objective, likelihood=None, seed=0, data_shape=(8, 8, 1)):
    keras.utils.set_random_seed(seed)
    model = build_vae(data_shape, likelihood=likelihood or {"name": "bernoulli"}, objective=objective, seed=seed, **SMALL)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    return model


class BetaRecorder(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.betas = []

    def on_train_batch_end(self, batch, logs=None):
        self.betas.append(float(self.model.beta.numpy()))


def kl(kind, **options):
    return {"kl_weight": {"kind": kind, **options}}


CASES = {
    "beta_vae": (kl("constant", beta=4.0), None, []),
    "kl_annealing": (kl("linear", beta=1.0, steps=30), None, []),
    "cyclical": (kl("cyclical", total_steps=69, cycles=3), None, []),
    "capacity": (kl("capacity", gamma=50.0, capacity_max=10.0, capacity_steps=40), None, ["capacity"]),
    "control_vae": (kl("control", set_point=5.0), None, ["kl_set_point", "kl_error", "kl_smoothed", "pi_integral"]),
    "ar_elbo": ({}, {"name": "gaussian_adaptive"}, ["sigma_x", "sigma_x2"]),
    "learned_sigma": ({}, {"name": "gaussian_learned"}, ["sigma_x", "sigma_x2"]),
    "per_pixel_sigma": ({}, {"name": "gaussian_per_pixel", "min_sigma": 0.01}, []),
    "ar_elbo_preset": ({"name": "ar_elbo"}, {"name": "gaussian_adaptive"}, ["sigma_x", "sigma_x2"]),
    "control_vae_preset": ({"name": "control_vae", "kl_set_point": 5.0}, None, ["kl_set_point", "pi_integral"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_every_objective_trains_reports_its_state_and_exports(case, digits, tmp_path):
    objective, likelihood, state_keys = CASES[case]
    model = make(dict(objective), likelihood)
    history = model.fit(digits.pipeline("train", 64), validation_data=digits.pipeline("val", 128), epochs=3,
                        verbose=0, shuffle=False).history
    for key in ["loss", "elbo", "reconstruction", "kl", "beta", *state_keys]:
        assert key in history and len(history[key]) == 3, key
        assert np.all(np.isfinite(history[key])), (key, history[key])
    assert int(model.train_steps.numpy()) == 3 * 23  # 1439 examples / 64 -> 23 steps per epoch
    path = export_model(model, tmp_path, case)
    loaded = tf.saved_model.load(str(path))
    out = loaded.signatures["sample"](seed=tf.constant([[1, 2]]))
    assert out["x_mean"].shape == (1, 8, 8, 1) and out["x_sample"].shape == (1, 8, 8, 1)


def test_linear_annealing_sets_beta_every_step(digits):
    model = make(kl("linear", beta=2.0, steps=10))
    recorder = BetaRecorder()
    model.fit(digits.pipeline("train", 64), epochs=1, verbose=0, shuffle=False, callbacks=[recorder])
    # Bowman et al.: step t trains with β = 2 · min(1, t / 10).
    assert recorder.betas[:12] == pytest.approx([2.0 * min(1.0, t / 10) for t in range(12)])


def test_cyclical_annealing_values_at_given_steps(digits):
    # Fu et al.'s frange_cycle_linear by hand: 40 steps, 2 cycles of 20, rising over the first
    # 0.25 of each (5 steps) from 0 to 1, times β = 3.
    model = make(kl("cyclical", beta=3.0, total_steps=40, cycles=2, ratio=0.25))
    recorder = BetaRecorder()
    model.fit(digits.pipeline("train", 64), epochs=2, verbose=0, shuffle=False, callbacks=[recorder])

    def by_hand(t):
        if t >= 40:
            return 3.0
        tau = (t % 20) / 20
        return 3.0 * min(tau / 0.25, 1.0)

    assert recorder.betas[:46] == pytest.approx([by_hand(t) for t in range(46)], abs=1e-6)


def test_capacity_follows_its_ramp_and_pulls_the_kl_to_its_target(digits):
    model = make(kl("capacity", gamma=10.0, capacity_max=20.0, capacity_steps=40))
    weight = model.kl_weight
    assert float(weight.capacity(0)) == 0.0 and float(weight.capacity(10)) == pytest.approx(5.0)
    assert float(weight.capacity(400)) == pytest.approx(20.0)
    x = tf.constant(digits.x_train[:32])
    model.train_steps.assign(10)  # C = 5 nats
    terms = model.forward(x, x, training=False)
    expected = -np.mean(terms["reconstruction"]) + 10.0 * abs(np.mean(terms["kl"]) - 5.0)
    assert float(terms["loss"]) == pytest.approx(expected, rel=1e-5)
    # Trained with a fixed C (capacity_steps 1), the mean KL settles near C_max (Burgess et al.).
    target = make(kl("capacity", gamma=50.0, capacity_max=6.0, capacity_steps=1))
    history = target.fit(digits.pipeline("train", 64), epochs=15, verbose=0, shuffle=False).history
    assert abs(history["kl"][-1] - 6.0) < 1.0, history["kl"]


def test_ar_elbo_sigma_is_the_running_mse(digits):
    model = make({}, {"name": "gaussian_adaptive", "sigma": 1.0, "momentum": 0.8})
    seen = []
    observe = model.likelihood.observe

    def recording(x, out):
        seen.append((x.numpy(), out.numpy()))
        observe(x, out)

    model.likelihood.observe = recording
    model.run_eagerly = True  # so the Python hook sees every step
    model.fit(digits.pipeline("train", 64).take(6), epochs=1, verbose=0, shuffle=False)
    assert len(seen) == 6
    sigma2 = 1.0
    for x, out in seen:
        sigma2 = 0.8 * sigma2 + 0.2 * np.mean((x - out) ** 2)
    assert float(model.likelihood.sigma2.numpy()) == pytest.approx(sigma2, rel=1e-5)
    assert sigma2 < 0.5  # it follows the data, far below the starting σ² = 1


def test_ar_elbo_needs_the_adaptive_likelihood():
    with pytest.raises(ConfigError, match="needs model.likelihood.name=gaussian_adaptive"):
        make({"name": "ar_elbo"}, {"name": "gaussian"})


def test_control_vae_needs_a_set_point():
    with pytest.raises(ConfigError, match="^objective.kl_weight.set_point is required$"):
        make(kl("control"))
    with pytest.raises(ConfigError, match="^objective 'control_vae' has no option kl_target; its options are: "):
        make({"name": "control_vae", "kl_target": 3.0, "kl_set_point": 3.0})
    # the preset without its set point pointed at objective.kl_weight.set_point, which the preset form refuses
    with pytest.raises(ConfigError, match=r"^objective control_vae needs objective.options.kl_set_point \(the KL, "
                                          r"in nats, its controller holds\), e.g. \{name: control_vae, options: "
                                          r"\{kl_set_point: 15\}\}$"):
        make({"name": "control_vae"})


@pytest.mark.parametrize("name", ["capacity", "control_vae"])
def test_a_beta_the_preset_does_not_use_is_refused(name):
    """`{name: capacity, beta: 4.0}` trained with gamma's default and no word about the 4.0."""
    with pytest.raises(ConfigError, match=rf"^objective {name} sets the KL weight itself \(.*\): remove "
                                          r"objective.beta$"):
        make({"name": name, "beta": 4.0, **({"kl_set_point": 3.0} if name == "control_vae" else {})})


def test_the_aggressive_preset_takes_leave_phase():
    from vae_tf.remedies.presets import preset_to_slots

    assert preset_to_slots({"name": "aggressive", "options": {"leave_phase": "never"}})["inference"] == \
        {"kind": "aggressive", "leave_phase": "never"}


@pytest.mark.parametrize("objective", [
    kl("control", set_point=3.0, ki=0.01),
    kl("cyclical", total_steps=12, cycles=2),
])
@pytest.mark.slow
def test_restored_checkpoint_continues_beta_exactly(objective, digits, tmp_path):
    batches = [digits.x_train[i * 32:(i + 1) * 32] for i in range(20)]
    head = tf.data.Dataset.from_tensor_slices(batches[:8])
    tail = tf.data.Dataset.from_tensor_slices(batches[8:])
    both = tf.data.Dataset.from_tensor_slices(batches)

    straight = make(dict(objective), seed=1)
    recorder = BetaRecorder()
    straight.fit(both, epochs=1, verbose=0, shuffle=False, callbacks=[recorder])
    uninterrupted = recorder.betas[8:]

    first = make(dict(objective), seed=1)
    first.fit(head, epochs=1, verbose=0, shuffle=False)
    path = checkpoint_for(first).save(str(tmp_path / "ckpt"))

    resumed = make(dict(objective), seed=7)  # a different seed: everything must come from the checkpoint
    resumed.optimizer.build(resumed.trainable_variables)
    checkpoint_for(resumed).restore(path).assert_consumed()
    assert int(resumed.train_steps.numpy()) == 8
    recorder = BetaRecorder()
    resumed.fit(tail, epochs=1, verbose=0, shuffle=False, callbacks=[recorder])
    np.testing.assert_allclose(recorder.betas, uninterrupted, rtol=1e-6, atol=1e-7)
    assert len(set(np.round(uninterrupted, 6))) > 1  # β really moved
