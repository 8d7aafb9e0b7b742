"""The remedies of the other slots: MI maximisation with a Q network (regularizers), Skip-VAE
decoders, aggressive inference training (inference), encoder pretraining, noisy-input / FGSM
training (input_noise). Each trains on digits with finite metrics and exports; the mechanics each
paper relies on are checked directly."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import assert_one_line, integer_transposes
from training.callbacks import checkpoint_for
from vae_tf.errors import ConfigError, DataError
from vae_tf.export import export_model, load_vae
from vae_tf.metrics import fit_mi_bound
from vae_tf.models import build_vae
from vae_tf.networks import build_decoder
from vae_tf.remedies.aggressive import converge_loop
from vae_tf.remedies.pretraining import pretrain_encoder, split_labelled

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

MI = {"regularizers": [{"kind": "mi_q", "weight": 1.0}]}
AGGRESSIVE = {"inference": {"kind": "aggressive", "max_inner_steps": 10, "check_every": 5}}

CASES = {
    "mi_max_categorical": (MI, CATEGORICAL, MLP, ["mi_bound", "mi_entropy", "mi_q_log_likelihood", "q_loss"]),
    "mi_max_gaussian_dims": ({"regularizers": [{"kind": "mi_q", "target": [0, 2],
                                                "q_network": {"kind": "mlp", "hidden": [16]}}]},
                             GAUSS, MLP, ["mi_bound", "mi_entropy"]),
    "aggressive": ({"inference": {"kind": "aggressive", "max_inner_steps": 20, "check_every": 5}}, GAUSS, MLP,
                   ["aggressive_inner_steps", "aggressive_phase", "aggressive_mi"]),
    "noisy_gaussian": ({"input_noise": {"kind": "gaussian", "sigma": 0.2}}, GAUSS, MLP,
                       ["elbo_perturbed", "perturbation_linf", "perturbation_l2"]),
    "noisy_fgsm": ({"input_noise": {"kind": "fgsm", "epsilon": 0.05}}, GAUSS, MLP,
                   ["elbo_perturbed", "perturbation_linf", "perturbation_l2"]),
    "skip_mlp": ({}, GAUSS, {"kind": "mlp", "hidden": [32, 16], "skip": True}, []),
    "skip_conv": ({}, CATEGORICAL, {"kind": "conv", "filters": [8, 16], "dense": 32, "skip": True}, []),
    "preset_mi_max": ({"name": "mi_max", "mi_weight": 1.0}, CATEGORICAL, MLP, ["mi_bound", "q_loss"]),
    "preset_noisy_fgsm": ({"name": "noisy_input", "noise": "fgsm", "epsilon": 0.05}, GAUSS, MLP, ["elbo_perturbed"]),
}


@pytest.mark.slow
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
        assert int(rebuilt.regularizers[0].q_optimizer.iterations.numpy()) == 3 * 23
        pieces = lambda m: (m.encoder.weights + m.decoder.weights + m.regularizers[0].q_network.weights  # noqa: E731
                            + m.regularizers[0].q_optimizer.variables)
        for a, b in zip(pieces(rebuilt), pieces(model)):
            np.testing.assert_array_equal(a.numpy(), b.numpy())


# --- 1. MI maximisation -----------------------------------------------------------------------

def test_two_optimizer_step_updates_q_first_then_only_the_vae(digits):
    model = make(MI, CATEGORICAL)
    regularizer = model.regularizers[0]
    q_weights, vae_weights = regularizer.q_network.weights, model.trainable_variables
    assert not {id(v) for v in q_weights} & {id(v) for v in vae_weights}  # model.optimizer never sees Q
    before_q, before_vae = snapshot(q_weights), snapshot(vae_weights)
    seen = {}
    q_update = regularizer.q_update

    def spy(*args):
        loss = q_update(*args)
        seen["q"], seen["vae"] = snapshot(q_weights), snapshot(vae_weights)
        return loss

    regularizer.q_update = spy
    model.optimizer.build(model.trainable_variables)
    model.train_step(tf.constant(digits.x_train[:64]))  # eager: the spy sees the state between the steps
    # Q step: every Q weight moved, no encoder/decoder weight did.
    assert all(changed(before_q, [tf.constant(w) for w in seen["q"]]))
    assert not any(changed(before_vae, [tf.constant(w) for w in seen["vae"]]))
    # VAE step: Q unchanged since the Q step, encoder and decoder moved.
    assert not any(changed(seen["q"], q_weights))
    assert all(changed(seen["vae"], vae_weights))
    assert int(regularizer.q_optimizer.iterations.numpy()) == 1 and int(model.optimizer.iterations.numpy()) == 1


@pytest.mark.slow
def test_q_network_and_its_optimizer_are_in_checkpoints(digits, tmp_path):
    spec = {"regularizers": [{"kind": "mi_q", "q_learning_rate": 0.01}]}
    model = make(spec, CATEGORICAL)
    model.fit(digits.pipeline("train", 64).take(3), epochs=1, verbose=0)
    q = model.regularizers[0]
    ids = {id(v) for v in model.variables}  # what checkpoint_for saves besides model.optimizer's variables
    assert {id(v) for v in q.q_network.weights} <= ids
    assert {id(v) for v in q.q_optimizer.variables} <= ids
    path = checkpoint_for(model).save(str(tmp_path / "ckpt"))
    other = make(spec, CATEGORICAL, seed=5)
    other.optimizer.build(other.trainable_variables)
    checkpoint_for(other).restore(path).assert_consumed()
    q_other = other.regularizers[0]
    assert int(q_other.q_optimizer.iterations.numpy()) == 3
    for a, b in zip(q_other.q_network.weights + q_other.q_optimizer.variables,
                    q.q_network.weights + q.q_optimizer.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def _decoder_reading_only(model, keep: slice):
    """Zero the first decoder layer's weights of every code dim outside ``keep``: x' = E[x|z] then
    depends on those dims only."""
    kernel = model.decoder.layers[0].kernel
    mask = np.zeros(kernel.shape, np.float32)
    mask[keep] = 1.0
    kernel.assign(kernel.numpy() * mask)


@pytest.mark.parametrize("reads, expected", [("category", "entropy"), ("gaussian", "zero")])
def test_fitted_mi_bound_matches_the_mutual_information_it_bounds(reads, expected, digits):
    # Decoders whose I(c; x') is known: reading only the (exact one-hot) category, four distinct
    # images, c is a function of x' and I(c; x') = H(c); reading only the Gaussian dims,
    # x' is independent of c and I(c; x') = 0. A well-fitted Q must find either.
    model = make({}, {"family": "gaussian_categorical", "latent_dim": 2, "categories": 4})
    _decoder_reading_only(model, slice(2, 6) if reads == "category" else slice(0, 2))
    before = snapshot(model.variables)
    result = fit_mi_bound(model, digits.x_train[:512], x_eval=digits.x_val, steps=400, batch_size=64,
                          learning_rate=1e-2, log_every=20)
    assert not any(changed(before, model.variables))  # the model is frozen
    assert result["target"] == "categorical" and 0.5 < result["entropy"] <= np.log(4) + 1e-9
    if expected == "entropy":
        assert result["entropy"] - 0.1 < result["mi_bound"] <= result["entropy"] + 1e-6, result
    else:
        assert abs(result["mi_bound"]) < 0.1, result


def test_fitted_mi_bound_grows_as_q_learns_continuous_dims(digits):
    gaussian = fit_mi_bound(make({}), digits.x_train[:512], target=[0, 1], steps=100,
                            batch_size=64, learning_rate=3e-3, log_every=10)
    assert gaussian["history"][-1][1] > gaussian["history"][0][1] + 0.3, gaussian["history"]


def test_fitted_mi_bound_checks_its_data_as_encode_does(digits):
    """A NaN pixel gave a finite bound and 0-255 images one of about -10,000 nats, without a word."""
    from vae_tf.errors import DataError

    model = make({})
    nan = digits.x_train[:64].copy()
    nan[5, 2, 2, 0] = np.nan
    for kwargs, match in [({"x": nan}, "^x row 5 has NaN or Inf values"),
                          ({"x": digits.x_train[:64] * 255}, "^x row 0 has values outside \\[0, 1\\]"),
                          ({"x": digits.x_train[:64], "x_eval": nan}, "^x_eval row 5 has NaN"),
                          ({"x": digits.x_train[:64, :4]}, "^x has shape \\(64, 4, 8, 1\\) but the model reads"),
                          ({"x": digits.x_train[:0]}, "^x holds no examples")]:
        with pytest.raises(DataError, match=match) as info:
            fit_mi_bound(model, steps=1, **kwargs)
        assert_one_line(str(info.value))


@pytest.mark.slow
def test_the_mi_term_raises_the_bound_it_maximises(digits):
    # Same seed, same data, same Q training; only the weight of the MI term differs. The term must
    # keep the categories in use (a higher H(c)) and make the code more recoverable from x'.
    final = {}
    for weight in (0.0, 5.0):
        model = make({"regularizers": [{"kind": "mi_q", "weight": weight, "q_learning_rate": 0.01}]}, CATEGORICAL)
        history = model.fit(digits.pipeline("train", 64), epochs=5, verbose=0, shuffle=False).history
        final[weight] = (history["mi_bound"][-1], history["mi_entropy"][-1])
    assert final[5.0][0] > final[0.0][0] + 0.05, final
    assert final[5.0][1] > final[0.0][1] + 0.1, final


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


def test_skip_conv_maps_are_z_at_every_pixel_and_their_gradient_transposes_no_integer_tensor():
    """The conv Skip connection's code maps equal z copied to every pixel (NumPy's broadcast), and
    its gradient runs no integer `Transpose` (a tile's gradient does, which TensorFlow 2.21 with
    oneDNN reports with an error line on every CPU)."""
    from vae_tf.networks.skip import ConcatCodeMaps

    rng = np.random.default_rng(0)
    h, z = rng.normal(size=(2, 3, 4, 5)).astype("float32"), rng.normal(size=(2, 6)).astype("float32")
    expected = np.concatenate([h, np.broadcast_to(z[:, None, None, :], (2, 3, 4, 6))], axis=-1)
    np.testing.assert_array_equal(ConcatCodeMaps()([tf.constant(h), tf.constant(z)]).numpy(), expected)
    skip = build_decoder("conv", 5, (8, 8, 1), 1, skip=True, filters=[4, 8], dense=16)

    @tf.function
    def gradient(z):
        with tf.GradientTape() as tape:
            tape.watch(z)
            out = tf.reduce_sum(skip(z))
        return tape.gradient(out, [z, *skip.trainable_variables])

    assert integer_transposes(gradient.get_concrete_function(tf.zeros((2, 5)))) == []


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
    from vae_tf.latents.density import minibatch_mutual_information

    rng = np.random.default_rng(0)
    mean, log_var = rng.normal(scale=2.0, size=(200, 3)), np.full((200, 3), -2.0)
    params = tf.constant(np.concatenate([mean, log_var], axis=1), tf.float32)
    latent = build_latent("gaussian", latent_dim=3)
    ours = np.mean([float(minibatch_mutual_information(latent, params, tf.constant([s, 0]))) for s in range(40)])
    reference = np.mean([mutual_information_minibatch(mean, log_var, batch_size=200, seed=s, shuffle=False)
                         for s in range(40)])
    assert ours == pytest.approx(reference, abs=0.05) and reference > 2.0


def test_aggressive_phase_ends_when_the_heldout_mi_falls(digits):
    model = make(AGGRESSIVE)
    scripted = iter([0.5, 0.9, 0.7, 1.5])
    model.inference.heldout_mi = lambda model: next(scripted)
    history = model.fit(digits.pipeline("train", 64).take(4), validation_data=digits.pipeline("val", 128),
                        epochs=4, verbose=0).history
    assert history["aggressive_phase"] == [1.0, 1.0, 1.0, 0.0]  # the phase in force during each epoch
    assert history["aggressive_mi"] == [0.5, 0.9, 0.7]  # no MI check once the phase is over
    assert history["aggressive_end_epoch"] == [3.0, 3.0] and int(model.inference.end_epoch.numpy()) == 3
    steps = history["aggressive_inner_steps"]
    assert all(5 <= s <= 10 for s in steps[:3]) and steps[3] == 0.0


def test_aggressive_phase_can_last_the_whole_run(digits):
    """``leave_phase: never``: the same falling MI does not end the phase; every epoch keeps the
    encoder-only inner loop and logs its MI."""
    model = make({"inference": {**AGGRESSIVE["inference"], "leave_phase": "never"}})
    scripted = iter([0.5, 0.9, 0.7, 1.5])
    model.inference.heldout_mi = lambda model: next(scripted)
    history = model.fit(digits.pipeline("train", 64).take(4), validation_data=digits.pipeline("val", 128),
                        epochs=4, verbose=0).history
    assert history["aggressive_phase"] == [1.0] * 4 and history["aggressive_mi"] == [0.5, 0.9, 0.7, 1.5]
    assert "aggressive_end_epoch" not in history and int(model.inference.end_epoch.numpy()) == 0
    assert all(5 <= s <= 10 for s in history["aggressive_inner_steps"])
    with pytest.raises(ConfigError, match="leave_phase") as info:
        make({"inference": {**AGGRESSIVE["inference"], "leave_phase": "sometimes"}})
    assert_one_line(str(info.value))


def test_aggressive_inner_loop_updates_only_the_encoder(digits):
    model = make(AGGRESSIVE)
    model.inference.set_inner_data(digits.pipeline("train", 64, repeat=True))
    model.optimizer.build(model.trainable_variables)
    decoder_before = snapshot(model.decoder_variables)
    encoder_before = snapshot(model.encoder_variables)
    steps = int(model.inference.encoder_loop(model, tf.constant(digits.x_train[:64])))
    assert int(model.inference.inner_batches.numpy()) == steps - 1  # the first update is on the step's batch
    assert 5 <= steps <= 10
    assert not any(changed(decoder_before, model.decoder_variables))
    assert all(changed(encoder_before, model.encoder_variables))


def test_aggressive_needs_held_out_data(digits):
    model = make(AGGRESSIVE)
    with pytest.raises(ConfigError, match="held-out batch") as info:
        model.fit(digits.pipeline("train", 64).take(1), epochs=1, verbose=0)
    assert_one_line(str(info.value))


def test_aggressive_fit_reads_each_fits_own_data_positional_arguments_and_validation_split(digits):
    """The fresh batches and the held-out MI batch were set up by the first fit only: a model
    fine-tuned on other data kept training its encoder on the first data (the compiled step read
    the first iterator), positional validation_data was not seen, and validation_split was
    refused with a message asking for validation_data."""
    model = make({"inference": {"kind": "aggressive", "max_inner_steps": 5, "check_every": 5,
                                "leave_phase": "never"}})
    inference = model.inference
    dark, val = digits.x_train[:128] * 0.2, digits.x_val[:64] * 0.2  # means ~0.06 and ~0.3: told apart
    light = 1.0 - digits.x_train[:128] * 0.2
    model.fit(dark, None, 64, 1, 0, None, 0.0, val)  # validation_data is fit's 8th positional argument
    np.testing.assert_allclose(inference._heldout.value.numpy(), val[:inference.options.heldout_size])
    first = inference._inner.value
    assert inference._inner.traced is first
    model.fit(dark.astype(np.float64), batch_size=64, epochs=1, verbose=0, validation_data=val)  # the same values
    assert inference._inner.value is first  # kept, and the step is not traced again
    model.fit(light, batch_size=64, epochs=1, verbose=0, validation_data=1.0 - val)
    assert inference._inner.value is not first and inference._inner.traced is inference._inner.value
    assert float(tf.reduce_mean(inference._inner.value.get_next())) > 0.7
    np.testing.assert_allclose(inference._heldout.value.numpy(), (1.0 - val)[:inference.options.heldout_size])
    # validation_split: the held-out batch is the last rows, as Keras splits; the fresh batches the others
    model = make({"inference": {"kind": "aggressive", "max_inner_steps": 5, "check_every": 5}})
    x = np.concatenate([dark[:96], light[:32]])
    model.fit(x, batch_size=32, epochs=1, verbose=0, validation_split=0.25)
    np.testing.assert_allclose(model.inference._heldout.value.numpy(), light[:32])
    assert all(float(tf.reduce_max(model.inference._inner.value.get_next())) <= 0.2 + 1e-6 for _ in range(4))
    # (x, y) tuples, fit's other form: compared by their inputs (a second fit raised NumPy's ragged-array error)
    model = make({"inference": {"kind": "aggressive", "max_inner_steps": 5, "check_every": 5}})
    for _ in range(2):
        model.fit(dark, digits.y_train[:128], batch_size=64, epochs=1, verbose=0,
                  validation_data=(val, digits.y_val[:64]))
    np.testing.assert_allclose(model.inference._heldout.value.numpy(), val[:model.inference.options.heldout_size])
    # what the caller set is kept
    mine = digits.pipeline("train", 32, repeat=True)
    model.inference.set_inner_data(mine)
    model.inference.set_heldout(val)
    kept = model.inference._inner.value
    model.fit(light, batch_size=32, epochs=1, verbose=0, validation_data=1.0 - val)
    assert model.inference._inner.value is kept and model.inference._inner.traced is kept
    np.testing.assert_allclose(model.inference._heldout.value.numpy(), val[:model.inference.options.heldout_size])


# --- 4. Encoder pretraining ----------------------------------------------------------------------

def test_pretraining_reaches_above_chance_accuracy_on_digits(digits):
    remaining, x, y = split_labelled(digits, 0.2, seed=0)
    assert len(x) + len(remaining.x_train) == len(digits.x_train) and len(x) == round(0.2 * len(digits.x_train))
    model = make({})
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


def test_pretraining_checks_its_data_as_fit_does_and_leaves_the_encoder_untouched_when_refused(digits):
    """One NaN pixel made every encoder weight NaN while the reported loss looked fine; 0-255
    images trained without a word; too few classes failed deep in TensorFlow."""
    model = make({})
    before = snapshot(model.encoder.weights)
    x, y = digits.x_train[:40].copy(), digits.y_train[:40]
    nan = x.copy()
    nan[3, 0, 0, 0] = np.nan
    cases = [((nan, y), {}, "pretraining x row 3 has NaN or Inf values"),
             ((x * 255, y), {}, "pretraining x row 0 has values outside \\[0, 1\\]"),
             ((x[:, :4], y), {}, "pretraining x has shape \\(40, 4, 8, 1\\) but the model reads batches of shape"),
             ((x, y[:39]), {}, "pretraining labels must be one class index per example, shape \\(40,\\)"),
             ((x, y - 1), {}, "labels must be integer class indices >= 0, got -1"),
             ((x, y + 0.5), {}, "labels must be integer class indices >= 0, got dtype float64"),
             ((x, y), {"num_classes": 3}, f"labels go up to {int(y.max())} but num_classes=3; give at least"),
             ((x, y), {"validation_data": (nan[:10], y[:10])}, "pretraining validation x row 3 has NaN"),
             ((x, y), {"num_classes": int(y.max()) + 1, "validation_data": (x[:10], np.full(10, 11))},
              "validation labels go up to 11 but the classification head has")]
    for args, kwargs, match in cases:
        with pytest.raises(DataError, match=match) as info:
            pretrain_encoder(model, *args, epochs=1, **kwargs)
        assert_one_line(str(info.value))
    with pytest.raises(ConfigError, match=r"^num_classes must be an integer, got 10.0$"):  # not "give at least 10"
        pretrain_encoder(model, x, y, epochs=1, num_classes=10.0)
    assert not any(changed(before, model.encoder.weights))
    result = pretrain_encoder(model, x, y.astype(np.float32), epochs=1, batch_size=20)  # whole-number floats
    assert result["num_classes"] == int(y.max()) + 1 and np.isfinite(result["pretrain_loss"]).all()
    assert all(np.isfinite(w.numpy()).all() for w in model.encoder.weights)


def test_training_app_reserves_the_labelled_fraction(digits):
    from training.config import load_config
    from training.train import split_for_pretraining

    config = load_config(None, ["train.pretrain={fraction: 0.1, epochs: 2}"])
    assert config.train.pretrain.fraction == 0.1 and config.train.pretrain.epochs == 2
    remaining, (x, y) = split_for_pretraining(config, digits)
    assert len(x) == 144 and len(remaining.x_train) == len(digits.x_train) - 144 and len(y) == 144
    assert split_for_pretraining(load_config(None, []), digits)[1] is None
    for override, match in [("train.pretrain.fraction=1.0", "train.pretrain.fraction: input should be less than 1"),
                            ("train.pretrain.epoch=3", "did you mean train.pretrain.epochs")]:
        with pytest.raises(ConfigError, match=match):
            load_config(None, [override])


# --- 5. Noisy-input and adversarial training -----------------------------------------------------

def test_fgsm_perturbations_have_the_requested_norm(digits):
    x = tf.constant(digits.x_train[:32])
    for epsilon in (0.01, 0.1):
        model = make({"input_noise": {"kind": "fgsm", "epsilon": epsilon}})
        delta = (model.input_noise.perturb(model, x, x) - x).numpy().reshape(32, -1)
        np.testing.assert_allclose(np.abs(delta).max(axis=1), epsilon, rtol=1e-5)  # L∞ = ε per example
        np.testing.assert_allclose(np.abs(delta[delta != 0]), epsilon, rtol=1e-4)  # a sign step everywhere
        # and it goes against the ELBO: with the same noise, the perturbed input's ELBO is lower
        state = model.seed_generator.state.numpy()
        clean = model.compute_terms(x, target=x)["elbo"]
        model.seed_generator.state.assign(state)
        attacked = model.compute_terms(x + delta.reshape(x.shape), target=x)["elbo"]
        assert float(tf.reduce_mean(attacked)) < float(tf.reduce_mean(clean))
    noisy = make({"input_noise": {"kind": "gaussian", "sigma": 0.3}})
    batch = tf.constant(digits.x_train[:256])
    delta = (noisy.input_noise.perturb(noisy, batch, batch) - digits.x_train[:256]).numpy()
    assert abs(delta.std() - 0.3) < 0.01 and abs(delta.mean()) < 0.01


def mi(**options):
    return {"regularizers": [{"kind": "mi_q", **options}]}


@pytest.mark.parametrize("objective, match", [
    (mi(weight=-1), "^objective.regularizers\\[0\\].weight: input should be greater than or equal to 0, got -1$"),
    (mi(target="categorical"), "target=categorical needs a latent family with a categorical part"),
    (mi(target=[0, 9]), "target dims must be distinct integers in \\[0, 4\\)"),
    (mi(target="everything"), "^objective.regularizers\\[0\\].target"),
    (mi(q_network={"kind": "mlp", "hiden": [8]}), "^unknown option objective.regularizers.q_network.hiden; did you mean "
                                                  "objective.regularizers.q_network.hidden\\?$"),
    (mi(q_network="big"), "objective.regularizers\\[0\\].q_network: input should be a valid dictionary"),
    (mi(q_learning_rate=0), "q_learning_rate: input should be greater than 0"),
    (mi(lambda_=1.0), "^unknown option objective.regularizers\\[0\\].lambda_; valid options: "),
    ({"regularizers": [{"kind": "mi_k"}]}, "^unknown objective.regularizers\\[0\\].kind 'mi_k'; did you mean mi_q\\?$"),
    ({"inference": {"kind": "aggressive", "max_inner_steps": 0}}, "max_inner_steps: input should be greater than 0"),
    # a negative KL weight trained to KL 1.5e7 in three epochs, without a word
    ({"kl_weight": {"kind": "linear", "start": 0.0, "stop": -2.0, "steps": 20}},
     "^objective.kl_weight.stop: input should be greater than or equal to 0, got -2.0$"),
    ({"kl_weight": {"kind": "cyclical", "start": -0.5, "total_steps": 100}},
     "^objective.kl_weight.start: input should be greater than or equal to 0, got -0.5$"),
    ({"inference": {"kind": "aggressive", "max_inner_steps": 5, "check_every": 10}},
     "check_every \\(10\\) must be <= max_inner_steps"),
    ({"input_noise": {"kind": "salt"}}, "unknown objective.input_noise.kind 'salt'; choose one of: fgsm, gaussian, none"),
    ({"input_noise": {"kind": "fgsm", "sigma": 0.1}}, "unknown option objective.input_noise.sigma; valid options: "
                                                      "kind, epsilon, clip"),
    ({"input_noise": {"kind": "gaussian", "epsilon": 0.1}}, "unknown option objective.input_noise.epsilon; valid options: "
                                                           "kind, sigma, clip"),
    ({"input_noise": {"kind": "fgsm", "epsilon": -0.1}}, "objective.input_noise.epsilon: input should be greater than 0"),
    ({"input_noise": {"kind": "gaussian", "clip": True}, "kl_weight": {"kind": "constant"}}, None),
    ({"name": "noisy_input", "noise": "salt"}, "unknown objective.input_noise.kind 'salt'"),
    ({"name": "mi_max", "lambda": 1.0}, "^objective 'mi_max' has no option lambda; its options are: beta_schedule, "
                                        "mi_target, mi_weight, q_learning_rate, q_network$"),
])
def test_bad_remedy_options_are_one_line_config_errors(objective, match):
    if match is None:  # a valid composition (clip to the Bernoulli's [0, 1]) builds
        assert make(objective).input_noise.options.clip is True
        return
    with pytest.raises(ConfigError, match=match) as info:
        make(objective)
    assert_one_line(str(info.value))


def test_clipping_needs_a_bounded_likelihood():
    with pytest.raises(ConfigError, match="clip needs a likelihood with a bounded support; 'gaussian' has none"):
        make({"input_noise": {"kind": "fgsm", "clip": True}}, likelihood={"name": "gaussian"})


def test_bad_skip_option_is_a_one_line_config_error():
    with pytest.raises(ConfigError, match="model.network.skip: input should be a valid boolean, got 'yes'") as info:
        make({}, network={"kind": "mlp", "hidden": [8], "skip": "yes"})
    assert_one_line(str(info.value))
