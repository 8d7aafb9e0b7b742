"""Remedies compose: every pair of slots (KL weight, regulariser, input noise, inference procedure,
AR-ELBO likelihood, Skip decoder, encoder pretraining) trains a few steps and exports; a
composition's loss is the sum its slots say; combinations that cannot work are refused before
anything is built; adding a remedy is one file and one registry line."""

from __future__ import annotations

import itertools
from typing import Literal

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import assert_one_line
from vae_tf.errors import ConfigError
from vae_tf.export import export_model, load_vae
from vae_tf.models import build_vae
from vae_tf.remedies import KL_WEIGHTS, SLOTS, parse_objective
from vae_tf.remedies.pretraining import pretrain_encoder, split_labelled

GAUSS = {"family": "gaussian", "latent_dim": 3}
MLP = {"kind": "mlp", "hidden": [16]}

#: One non-default value per slot (several for the slots with several methods); the pairs below
#: take them in turn, so every value appears and every pair of slots is combined once.
VALUES = {
    "kl_weight": [{"kind": "control", "set_point": 3.0, "kp": 0.1}, {"kind": "capacity", "capacity_max": 3.0,
                                                                     "capacity_steps": 5},
                  {"kind": "linear", "steps": 4}, {"kind": "cyclical", "total_steps": 6, "cycles": 2},
                  {"kind": "constant", "beta": 2.0}],
    "regularizers": [[{"kind": "mi_q", "q_network": {"kind": "mlp", "hidden": [8]}}]],
    "input_noise": [{"kind": "fgsm", "epsilon": 0.05}, {"kind": "gaussian", "sigma": 0.1}],
    "inference": [{"kind": "aggressive", "max_inner_steps": 4, "check_every": 2}],
    "likelihood": [{"name": "gaussian_adaptive"}],   # AR-ELBO
    "skip": [True],                                  # Skip-VAE decoder
    "pretraining": [0.2],                            # encoder pretraining on 20 % of the labels
}


def _pairs():
    counters = {slot: itertools.cycle(values) for slot, values in VALUES.items()}
    return [((a, next(counters[a])), (b, next(counters[b]))) for a, b in itertools.combinations(VALUES, 2)]


PAIRS = _pairs()


def _case_id(pair):
    return "+".join(f"{slot}={value.get('kind', value.get('name')) if isinstance(value, dict) else value}"
                    if not isinstance(value, list) else f"{slot}={value[0]['kind']}" for slot, value in pair)


def build(settings: dict, seed: int = 0):
    objective = {slot: settings[slot] for slot in SLOTS if slot in settings}
    network = {**MLP, "skip": True} if settings.get("skip") else MLP
    keras.utils.set_random_seed(seed)
    model = build_vae((8, 8, 1), latent=GAUSS, network=network, likelihood=settings.get("likelihood"),
                      objective=objective, seed=seed)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    return model


def test_the_pairs_cover_every_pair_of_slots_and_every_value():
    assert len(PAIRS) == 21  # 7 slots, choose 2
    seen = {(slot, repr(value)) for pair in PAIRS for slot, value in pair}
    assert seen == {(slot, repr(value)) for slot, values in VALUES.items() for value in values}


@pytest.mark.slow
@pytest.mark.parametrize("pair", PAIRS, ids=[_case_id(p) for p in PAIRS])
def test_every_pair_of_slots_trains_and_exports(pair, digits, tmp_path):
    settings = dict(pair)
    model = build(settings)
    data = digits
    if "pretraining" in settings:
        data, x, y = split_labelled(digits, settings["pretraining"], seed=0)
        result = pretrain_encoder(model, x, y, epochs=2, batch_size=64)
        assert np.isfinite(result["pretrain_loss"][-1])
    history = model.fit(data.pipeline("train", 64), validation_data=data.pipeline("val", 128), epochs=2,
                        steps_per_epoch=3, verbose=0, shuffle=False).history
    for key, values in history.items():
        assert np.all(np.isfinite(values)), (key, values)
    assert int(model.train_steps.numpy()) == 6
    if "inference" in settings:
        assert history["aggressive_inner_steps"][0] >= 1
    if "input_noise" in settings:
        assert history["perturbation_linf"][0] > 0
    if "regularizers" in settings:
        assert int(model.regularizers[0].q_optimizer.iterations.numpy()) == 6
    path = export_model(model, tmp_path, "pair")
    loaded = tf.saved_model.load(str(path))
    np.testing.assert_allclose(loaded.signatures["encode"](x=tf.constant(digits.x_test[:3]))["z_mean"].numpy(),
                               model.encode(digits.x_test[:3])["z_mean"].numpy(), rtol=1e-5, atol=1e-6)
    rebuilt = load_vae(path)  # the build spec records the composition
    assert rebuilt.composition == model.composition and rebuilt.objective == model.objective


def test_a_composed_loss_is_the_sum_its_slots_say(digits):
    """ControlVAE + MI: loss = −mean(rec) + β·mean(kl) − λ·mi_bound, with the β the controller set
    in this step and the bound of the Q it just updated."""
    model = build({"kl_weight": {"kind": "control", "set_point": 3.0},
                   "regularizers": [{"kind": "mi_q", "weight": 0.7}]})
    model.optimizer.build(model.trainable_variables)
    x = tf.constant(digits.x_train[:64])
    with tf.GradientTape() as tape:
        terms = model.forward(x, x, training=True, update_state=True, tape=tape)
    beta = float(model.beta.numpy())
    assert beta > 0  # the controller stepped: the untrained KL is far from 3 nats
    expected = (-np.mean(terms["reconstruction"]) + beta * np.mean(terms["kl"])
                - 0.7 * float(terms["mi_bound"]))
    assert float(terms["loss"]) == pytest.approx(expected, rel=1e-5)
    assert int(model.regularizers[0].q_optimizer.iterations.numpy()) == 1  # the Q step ran first


def test_encoder_only_updates_do_not_step_the_controller_or_q(digits):
    """In aggressive inference the inner, encoder-only updates read the KL weight in force: the
    controller and the Q network change once per training step, not once per inner update."""
    model = build({"kl_weight": {"kind": "control", "set_point": 3.0},
                   "regularizers": [{"kind": "mi_q"}],
                   "inference": {"kind": "aggressive", "max_inner_steps": 6, "check_every": 3}})
    model.inference.set_inner_data(digits.pipeline("train", 64, repeat=True))
    model.optimizer.build(model.trainable_variables)
    x = tf.constant(digits.x_train[:64])
    inner = int(model.inference.encoder_loop(model, x))
    assert inner >= 3
    controller = model.kl_weight.controller
    assert float(controller.started.numpy()) == 0.0 and int(model.regularizers[0].q_optimizer.iterations.numpy()) == 0
    model.train_step(x)
    assert float(controller.started.numpy()) == 1.0 and int(model.regularizers[0].q_optimizer.iterations.numpy()) == 1
    assert int(model.train_steps.numpy()) == 1


@pytest.mark.parametrize("objective, latent, likelihood, match", [
    ({"regularizers": [{"kind": "mi_q", "target": "categorical"}]}, GAUSS, None,
     "target=categorical needs a latent family with a categorical part"),
    ({"input_noise": {"kind": "gaussian", "clip": True}}, GAUSS, {"name": "gaussian"},
     "clip needs a likelihood with a bounded support"),
    ({"name": "ar_elbo"}, GAUSS, {"name": "gaussian"}, "objective ar_elbo needs model.likelihood.name=gaussian_adaptive"),
    ({"name": "control_vae", "kl_set_point": 1, "inference": {"kind": "aggressive"}}, GAUSS, None,
     "objective mixes the preset form \\(name\\) with the slot form \\(inference\\): write only the slot form"),
    ({"name": "elbo", "kl_weight": {"kind": "control"}}, GAUSS, None, "objective mixes the preset form"),
    ({"kl_weight": {"kind": "cyclical"}}, GAUSS, None, "total_steps is required for kind=cyclical outside"),
])
def test_combinations_that_cannot_work_are_refused_with_one_line(objective, latent, likelihood, match):
    with pytest.raises(ConfigError, match=match) as info:
        build_vae((8, 8, 1), latent=latent, likelihood=likelihood, network=MLP, objective=objective)
    assert_one_line(str(info.value))


def test_composition_is_validated_before_anything_is_built(monkeypatch):
    """parse_objective needs no model: a typo fails before any network or variable exists."""
    import vae_tf.models as models

    def no_build(*args, **kwargs):
        raise AssertionError("a network was built before the objective was validated")

    monkeypatch.setattr(models, "build_encoder", no_build)
    with pytest.raises(ConfigError, match="unknown option objective.inference.max_inner_step; did you mean"):
        build_vae((8, 8, 1), objective={"inference": {"kind": "aggressive", "max_inner_step": 3}})
    composition = parse_objective({"kl_weight": {"kind": "control", "set_point": 2}, "inference": "aggressive"})
    assert composition.summary() == "control + aggressive"


def test_adding_a_remedy_is_one_file_and_one_registry_line(digits):
    """A new KL weight (here: a cosine warm-up, written in a few lines) joins through its registry
    alone: the config schema, the model, training and the export follow."""
    import math

    from vae_tf.remedies.base import KLWeight, SlotOptions

    class CosineWarmup(KLWeight):
        kind = "cosine"

        class Options(SlotOptions):
            kind: Literal["cosine"] = "cosine"
            steps: int = 10

        def initial_beta(self):
            return 0.0

        def next_beta(self, kl, step):
            t = tf.minimum(tf.cast(step, tf.float32) / self.options.steps, 1.0)
            return 0.5 * (1.0 - tf.cos(math.pi * t))

    KL_WEIGHTS.register("cosine")(CosineWarmup)
    try:
        from training.config import load_config

        config = load_config(None, ["objective.kl_weight={kind: cosine, steps: 4}"])
        assert config.objective.kl_weight == {"kind": "cosine", "steps": 4}
        model = build({"kl_weight": config.objective.kl_weight})
        betas = []
        for batch in digits.pipeline("train", 64).take(6):
            model.train_step(batch)
            betas.append(float(model.beta.numpy()))
        assert betas == pytest.approx([0.5 * (1 - math.cos(math.pi * min(t / 4, 1))) for t in range(6)], abs=1e-6)
    finally:
        KL_WEIGHTS.unregister("cosine")


def test_every_public_remedy_name_resolves_through_the_lazy_package():
    """vae_tf.remedies loads its names on first use (so that reading a config needs no Keras):
    every name of its ``__all__`` must still resolve, to the object of the module that defines it."""
    import importlib

    import vae_tf.remedies as remedies
    from vae_tf.remedies import slots

    for name in remedies.__all__:
        assert getattr(remedies, name) is not None, name
    assert remedies.parse_objective is slots.parse_objective and remedies.KL_WEIGHTS is slots.KL_WEIGHTS
    assert remedies.FGSM is importlib.import_module("vae_tf.remedies.adversarial").FGSM
    with pytest.raises(AttributeError, match="no attribute 'Bogus'"):
        remedies.Bogus  # noqa: B018
    assert set(remedies.__all__) <= set(dir(remedies))
