"""Objectives II: MI maximisation with a Q network, Skip-VAE decoders, aggressive inference
training, encoder pretraining, noisy-input / FGSM training. Each remedy trains on digits with
finite metrics and exports; the mechanics each paper relies on are checked directly."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import assert_one_line
from training.callbacks import checkpoint_for
from vae_tf.errors import ConfigError, DataError
from vae_tf.export import export_model, load_vae
from vae_tf.models import build_vae, fit_mi_bound
from vae_tf.models.aggressive import converge_loop
from vae_tf.networks import build_decoder
from vae_tf.pretraining import pretrain_encoder, split_labelled

GAUSS = {"family": "gaussian", "latent_dim": 4}
CATEGORICAL = {"family": "gaussian_categorical", "latent_dim": 2, "categories": 4}
MLP = {"kind": "mlp", "hidden": [32]}


def make(objective, latent=GAUSS, network=MLP, seed=0, likelihood=None):
    keras.utils.set_random_seed(seed)
    model = build_vae((8, 8, 1), latent=latent, network=network, likelihood=likelihood or {"name": "bernoulli"},
                      objective=objective, seed=seed)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    return model


def snapshot(variables):
    return [np.array(v.numpy()) for v in variables]


def changed(before, variables):
    return [not np.array_equal(b, v.numpy()) for b, v in zip(before, variables)]


# --- every remedy trains, logs its state and exports ------------------------------------------

CASES = {
    "mi_max_categorical": ({"name": "mi_max", "mi_weight": 1.0}, CATEGORICAL, MLP,
                           ["mi_bound", "mi_entropy", "mi_q_log_likelihood", "q_loss"]),
    "mi_max_gaussian_dims": ({"name": "mi_max", "mi_target": [0, 2], "q_network": {"kind": "mlp", "hidden": [16]}},
                             GAUSS, MLP, ["mi_bound", "mi_entropy"]),
    "aggressive": ({"name": "aggressive", "max_inner_steps": 20, "check_every": 5}, GAUSS, MLP,
                   ["aggressive_inner_steps", "aggressive_phase", "aggressive_mi"]),
    "noisy_gaussian": ({"name": "noisy_input", "noise": "gaussian", "sigma": 0.2}, GAUSS, MLP,
                       ["elbo_perturbed", "perturbation_linf", "perturbation_l2"]),
    "noisy_fgsm": ({"name": "noisy_input", "noise": "fgsm", "epsilon": 0.05}, GAUSS, MLP,
                   ["elbo_perturbed", "perturbation_linf", "perturbation_l2"]),
    "skip_mlp": ({"name": "elbo"}, GAUSS, {"kind": "mlp", "hidden": [32, 16], "skip": True}, []),
    "skip_conv": ({"name": "elbo"}, CATEGORICAL, {"kind": "conv", "filters": [8, 16], "dense": 32, "skip": True}, []),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_remedy_trains_with_finite_metrics_and_exports(case, digits, tmp_path):
    objective, latent, network, state_keys = CASES[case]
    model = make(dict(objective), latent, network)
    history = model.fit(digits.pipeline("train", 64), validation_data=digits.pipeline("val", 128), epochs=3,
                        verbose=0, shuffle=False).history
    for key in ["loss", "elbo", "reconstruction", "kl", "val_elbo", *state_keys]:
        assert key in history and len(history[key]) == 3, (key, sorted(history))
        assert np.all(np.isfinite(history[key])), (key, history[key])
    assert int(model.train_steps.numpy()) == 3 * 23
    path = export_model(model, tmp_path, case)
    loaded = tf.saved_model.load(str(path))
    out = loaded.signatures["reconstruct"](x=tf.constant(digits.x_test[:2]))
    np.testing.assert_allclose(out["x_mean"].numpy(), model.reconstruct(digits.x_test[:2])["x_mean"].numpy(),
                               rtol=1e-5, atol=1e-6)
    assert loaded.signatures["sample"](seed=tf.constant([[1, 2]]))["x_mean"].shape == (1, 8, 8, 1)
    if case == "mi_max_categorical":  # the rebuildable weights carry Q and its optimizer too
        rebuilt = load_vae(path)
        assert int(rebuilt.q_optimizer.iterations.numpy()) == 3 * 23
        pieces = lambda m: m.encoder.weights + m.decoder.weights + m.q_network.weights + m.q_optimizer.variables  # noqa: E731
        for a, b in zip(pieces(rebuilt), pieces(model)):
            np.testing.assert_array_equal(a.numpy(), b.numpy())


# --- 1. MI maximisation -----------------------------------------------------------------------

def test_two_optimizer_step_updates_q_first_then_only_the_vae(digits):
    model = make({"name": "mi_max"}, CATEGORICAL)
    q_weights, vae_weights = model.q_network.weights, model.trainable_variables
    assert not {id(v) for v in q_weights} & {id(v) for v in vae_weights}  # model.optimizer never sees Q
    before_q, before_vae = snapshot(q_weights), snapshot(vae_weights)
    seen = {}
    q_update = model.q_update

    def spy(*args):
        loss = q_update(*args)
        seen["q"], seen["vae"] = snapshot(q_weights), snapshot(vae_weights)
        return loss

    model.q_update = spy
    model.optimizer.build(model.trainable_variables)
    model.train_step(tf.constant(digits.x_train[:64]))  # eager: the spy sees the state between the steps
    # Q step: every Q weight moved, no encoder/decoder weight did.
    assert all(changed(before_q, [tf.constant(w) for w in seen["q"]]))
    assert not any(changed(before_vae, [tf.constant(w) for w in seen["vae"]]))
    # VAE step: Q unchanged since the Q step, encoder and decoder moved.
    assert not any(changed(seen["q"], q_weights))
    assert all(changed(seen["vae"], vae_weights))
    assert int(model.q_optimizer.iterations.numpy()) == 1 and int(model.optimizer.iterations.numpy()) == 1


def test_q_network_and_its_optimizer_are_in_checkpoints(digits, tmp_path):
    model = make({"name": "mi_max", "q_learning_rate": 0.01}, CATEGORICAL)
    model.fit(digits.pipeline("train", 64).take(3), epochs=1, verbose=0)
    ids = {id(v) for v in model.variables}  # what checkpoint_for saves besides model.optimizer's variables
    assert {id(v) for v in model.q_network.weights} <= ids
    assert {id(v) for v in model.q_optimizer.variables} <= ids
    path = checkpoint_for(model).save(str(tmp_path / "ckpt"))
    other = make({"name": "mi_max", "q_learning_rate": 0.01}, CATEGORICAL, seed=5)
    other.optimizer.build(other.trainable_variables)
    checkpoint_for(other).restore(path).assert_consumed()
    assert int(other.q_optimizer.iterations.numpy()) == 3
    for a, b in zip(other.q_network.weights + other.q_optimizer.variables,
                    model.q_network.weights + model.q_optimizer.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_mi_bound_stays_below_the_code_entropy_and_grows_when_the_code_is_recoverable(digits):
    # An untrained decoder maps each one-hot category to a different image: c is recoverable from
    # x', so the bound must climb towards H(c) ≈ log K, and can never pass it.
    model = make({"name": "elbo"}, {"family": "gaussian_categorical", "latent_dim": 2, "categories": 4})
    before = snapshot(model.variables)
    result = fit_mi_bound(model, digits.x_train[:512], x_eval=digits.x_val, steps=150, batch_size=64,
                          learning_rate=3e-3, log_every=10)
    assert not any(changed(before, model.variables))  # the model is frozen
    bounds = [b for _, b in result["history"]]
    assert result["target"] == "categorical"
    assert result["mi_bound"] <= result["entropy"] + 1e-6 and result["entropy"] <= np.log(4) + 1e-6
    assert bounds[-1] > bounds[0] + 0.3, bounds
    assert result["mi_bound"] > 0.5 * result["entropy"], result
    # Continuous dims of any family: the bound grows as Q learns to read them.
    gaussian = fit_mi_bound(make({"name": "elbo"}), digits.x_train[:512], target=[0, 1], steps=100,
                            batch_size=64, learning_rate=3e-3, log_every=10)
    assert gaussian["history"][-1][1] > gaussian["history"][0][1] + 0.3, gaussian["history"]


def test_mi_bound_is_logged_and_below_entropy_during_training(digits):
    model = make({"name": "mi_max", "mi_weight": 2.0}, CATEGORICAL)
    history = model.fit(digits.pipeline("train", 64), epochs=2, verbose=0).history
    assert all(b <= h + 1e-6 for b, h in zip(history["mi_bound"], history["mi_entropy"]))


# --- 2. Skip-VAE decoders ---------------------------------------------------------------------

def _weighted_layers(decoder):
    return [layer for layer in decoder.layers if layer.weights]


def _direct_gradient_norms(decoder, code_size):
    """For every weighted layer l: kill layer l−1 (ReLU of a large negative bias: output 0, no
    gradient), so that z can reach layer l's output only through a direct (skip) input."""
    z = tf.constant(np.random.default_rng(0).normal(size=(3, code_size)), tf.float32)
    layers = _weighted_layers(decoder)
    norms = []
    for i, layer in enumerate(layers):
        saved = [w.numpy() for w in layers[i - 1].weights] if i else None
        if i:
            layers[i - 1].bias.assign(tf.fill(layers[i - 1].bias.shape, -1e4))
        probe = keras.Model(decoder.inputs, layer.output)
        with tf.GradientTape() as tape:
            tape.watch(z)
            out = tf.reduce_sum(probe(z))
        norms.append(float(tf.norm(tape.gradient(out, z))))
        if i:
            for w, value in zip(layers[i - 1].weights, saved):
                w.assign(value)
    return norms


@pytest.mark.parametrize("kind, options", [("mlp", {"hidden": [16, 8, 8]}),
                                           ("conv", {"filters": [4, 8], "dense": 16})])
def test_skip_decoder_feeds_z_into_every_layer(kind, options):
    skip = build_decoder(kind, 5, (8, 8, 1), 1, skip=True, **options)
    norms = _direct_gradient_norms(skip, 5)
    assert len(norms) == (len(options["hidden"]) + 1 if kind == "mlp" else 2 + len(options["filters"]))
    assert all(n > 0 for n in norms), norms
    # The same probe on the plain decoder: z reaches only its first layer directly.
    plain = _direct_gradient_norms(build_decoder(kind, 5, (8, 8, 1), 1, **options), 5)
    assert plain[0] > 0 and all(n == 0 for n in plain[1:]), plain


@pytest.mark.parametrize("kind, options", [("mlp", {"hidden": [16, 8]}), ("conv", {"filters": [4, 8], "dense": 16})])
def test_skip_false_keeps_the_plain_layer_structure(kind, options):
    default = build_decoder(kind, 5, (8, 8, 1), 1, **options)
    explicit = build_decoder(kind, 5, (8, 8, 1), 1, skip=False, **options)
    assert isinstance(default, keras.Sequential) and isinstance(explicit, keras.Sequential)
    assert [type(layer).__name__ for layer in default.layers] == [type(layer).__name__ for layer in explicit.layers]
    assert default.count_params() == explicit.count_params()


# --- 3. Aggressive inference-network training ---------------------------------------------------

def _scripted(losses):
    table = tf.constant(losses, tf.float32)
    return lambda i: tf.gather(table, tf.minimum(i, len(losses) - 1))


def test_aggressive_loop_stops_at_the_limit_or_on_convergence():
    always_better = list(np.linspace(10.0, 0.0, 200))
    assert int(converge_loop(_scripted(always_better), 100, 10)) == 100  # the limit
    assert int(converge_loop(_scripted(always_better), 35, 10)) == 35
    # Improves over the first two windows of 10, then the third window's mean is higher: stop at 30.
    plateau = [5.0] * 10 + [4.0] * 10 + [4.5] * 10 + [0.0] * 70
    assert int(converge_loop(_scripted(plateau), 100, 10)) == 30
    # A window that is merely equal is "not improving" too.
    assert int(converge_loop(_scripted([3.0] * 100), 100, 10)) == 20
    compiled = tf.function(lambda: converge_loop(_scripted(plateau), 100, 10))
    assert int(compiled()) == 30


def test_heldout_mi_estimate_agrees_with_the_metrics_library():
    from vae_tf.latents import build_latent
    from vae_tf.metrics import mutual_information_minibatch
    from vae_tf.models.code_density import minibatch_mutual_information

    rng = np.random.default_rng(0)
    mean, log_var = rng.normal(scale=2.0, size=(200, 3)), np.full((200, 3), -2.0)
    params = tf.constant(np.concatenate([mean, log_var], axis=1), tf.float32)
    latent = build_latent("gaussian", latent_dim=3)
    ours = np.mean([float(minibatch_mutual_information(latent, params, tf.constant([s, 0]))) for s in range(40)])
    reference = np.mean([mutual_information_minibatch(mean, log_var, batch_size=200, seed=s, shuffle=False)
                         for s in range(40)])
    assert ours == pytest.approx(reference, abs=0.05) and reference > 2.0


def test_aggressive_phase_ends_when_the_heldout_mi_falls(digits):
    model = make({"name": "aggressive", "max_inner_steps": 10, "check_every": 5})
    scripted = iter([0.5, 0.9, 0.7, 1.5])
    model.heldout_mi = lambda: next(scripted)
    history = model.fit(digits.pipeline("train", 64).take(4), validation_data=digits.pipeline("val", 128),
                        epochs=4, verbose=0).history
    assert history["aggressive_phase"] == [1.0, 1.0, 1.0, 0.0]  # the phase in force during each epoch
    assert history["aggressive_mi"] == [0.5, 0.9, 0.7]  # no MI check once the phase is over
    assert history["aggressive_end_epoch"] == [3.0, 3.0] and int(model.aggressive_end_epoch.numpy()) == 3
    steps = history["aggressive_inner_steps"]
    assert all(5 <= s <= 10 for s in steps[:3]) and steps[3] == 0.0


def test_aggressive_inner_loop_updates_only_the_encoder(digits):
    model = make({"name": "aggressive", "max_inner_steps": 10, "check_every": 5})
    model.set_inner_data(digits.pipeline("train", 64, repeat=True))
    model.optimizer.build(model.trainable_variables)
    decoder_before = snapshot(model.decoder_variables)
    encoder_before = snapshot(model.encoder_variables)
    steps = int(model.encoder_loop(tf.constant(digits.x_train[:64])))
    assert 5 <= steps <= 10
    assert not any(changed(decoder_before, model.decoder_variables))
    assert all(changed(encoder_before, model.encoder_variables))


def test_aggressive_needs_held_out_data(digits):
    model = make({"name": "aggressive"})
    with pytest.raises(ConfigError, match="held-out batch") as info:
        model.fit(digits.pipeline("train", 64).take(1), epochs=1, verbose=0)
    assert_one_line(str(info.value))


# --- 4. Encoder pretraining ----------------------------------------------------------------------

def test_pretraining_reaches_above_chance_accuracy_on_digits(digits):
    remaining, x, y = split_labelled(digits, 0.2, seed=0)
    assert len(x) + len(remaining.x_train) == len(digits.x_train) and len(x) == round(0.2 * len(digits.x_train))
    model = make({"name": "elbo"})
    decoder_before = snapshot(model.decoder.weights)
    encoder_before = snapshot(model.encoder.weights)
    result = pretrain_encoder(model, x, y, epochs=15, batch_size=32, learning_rate=3e-3,
                              validation_data=digits.split("val"))
    assert result["num_classes"] == 10 and len(result["pretrain_accuracy"]) == 15
    assert result["pretrain_val_accuracy"][-1] > 0.5  # chance: 0.1
    assert not any(changed(decoder_before, model.decoder.weights))
    assert all(changed(encoder_before, model.encoder.weights))


def test_pretraining_needs_labels_and_a_valid_fraction(digits):
    import dataclasses

    with pytest.raises(ConfigError, match="fraction must be in \\(0, 1\\)"):
        split_labelled(digits, 1.5)
    with pytest.raises(DataError, match="needs labels") as info:
        split_labelled(dataclasses.replace(digits, y_train=None, y_val=None, y_test=None), 0.1)
    assert_one_line(str(info.value))


def test_training_app_reserves_the_labelled_fraction(digits):
    from training.config import load_config
    from training.train import split_for_pretraining

    config = load_config(None, ["train.pretrain={fraction: 0.1, epochs: 2}"])
    assert config.train.pretrain.fraction == 0.1 and config.train.pretrain.epochs == 2
    remaining, (x, y) = split_for_pretraining(config, digits)
    assert len(x) == 144 and len(remaining.x_train) == len(digits.x_train) - 144 and len(y) == 144
    assert split_for_pretraining(load_config(None, []), digits)[1] is None
    for override, match in [("train.pretrain.fraction=1.0", "train.pretrain.fraction must be in \\[0, 1\\)"),
                            ("train.pretrain.epoch=3", "did you mean train.pretrain.epochs")]:
        with pytest.raises(ConfigError, match=match):
            load_config(None, [override])


# --- 5. Noisy-input and adversarial training -----------------------------------------------------

def test_fgsm_perturbations_have_the_requested_norm(digits):
    x = tf.constant(digits.x_train[:32])
    for epsilon in (0.01, 0.1):
        model = make({"name": "noisy_input", "noise": "fgsm", "epsilon": epsilon})
        delta = (model.perturb(x) - x).numpy().reshape(32, -1)
        np.testing.assert_allclose(np.abs(delta).max(axis=1), epsilon, rtol=1e-5)  # L∞ = ε per example
        np.testing.assert_allclose(np.abs(delta[delta != 0]), epsilon, rtol=1e-4)  # a sign step everywhere
        # and it goes against the ELBO: with the same noise, the perturbed input's ELBO is lower
        state = model.seed_generator.state.numpy()
        clean = model.compute_terms(x, target=x)["elbo"]
        model.seed_generator.state.assign(state)
        attacked = model.compute_terms(x + delta.reshape(x.shape), target=x)["elbo"]
        assert float(tf.reduce_mean(attacked)) < float(tf.reduce_mean(clean))
    noisy = make({"name": "noisy_input", "noise": "gaussian", "sigma": 0.3})
    delta = (noisy.perturb(tf.constant(digits.x_train[:256])) - digits.x_train[:256]).numpy()
    assert abs(delta.std() - 0.3) < 0.01 and abs(delta.mean()) < 0.01


@pytest.mark.parametrize("objective, match", [
    ({"name": "mi_max", "mi_weight": -1}, "objective.options.mi_weight must be >= 0"),
    ({"name": "mi_max", "mi_target": "categorical"}, "mi_target=categorical needs model.latent.family=gaussian_categorical"),
    ({"name": "mi_max", "mi_target": [0, 9]}, "mi_target dims must be distinct integers in \\[0, 4\\)"),
    ({"name": "mi_max", "mi_target": "everything"}, "mi_target must be 'categorical', 'gaussian' or a non-empty list"),
    ({"name": "mi_max", "q_network": {"kind": "mlp", "hiden": [8]}}, "objective.options.q_network 'mlp' has no option\\(s\\) hiden"),
    ({"name": "mi_max", "q_network": "big"}, "objective.options.q_network must be a mapping"),
    ({"name": "mi_max", "q_learning_rate": 0}, "objective.options.q_learning_rate must be > 0"),
    ({"name": "mi_max", "lambda": 1.0}, "objective 'mi_max' has no option\\(s\\) lambda"),
    ({"name": "aggressive", "max_inner_steps": 0}, "objective.options.max_inner_steps must be a positive integer"),
    ({"name": "aggressive", "max_inner_steps": 5, "check_every": 10}, "check_every \\(10\\) must be <= max_inner_steps"),
    ({"name": "noisy_input", "noise": "salt"}, "objective.options.noise must be one of gaussian, fgsm"),
    ({"name": "noisy_input", "noise": "fgsm", "sigma": 0.1}, "sigma applies to noise=gaussian"),
    ({"name": "noisy_input", "noise": "gaussian", "epsilon": 0.1}, "epsilon applies to noise=fgsm"),
    ({"name": "noisy_input", "noise": "fgsm", "epsilon": -0.1}, "objective.options.epsilon must be > 0"),
])
def test_bad_remedy_options_are_one_line_config_errors(objective, match):
    with pytest.raises(ConfigError, match=match) as info:
        make(objective)
    assert_one_line(str(info.value))


def test_bad_skip_option_is_a_one_line_config_error():
    with pytest.raises(ConfigError, match="model.network.skip must be true or false") as info:
        make({"name": "elbo"}, network={"kind": "mlp", "hidden": [8], "skip": "yes"})
    assert_one_line(str(info.value))
