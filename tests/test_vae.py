"""The VAE objective: loss conventions, trackers, KL per dimension, training on digits."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from vae_tf.models import VAE, build_vae


def _model(data_shape, beta=1.0, seed=0, **kw):
    keras.utils.set_random_seed(seed)
    model = build_vae(data_shape, latent={"family": "gaussian", "latent_dim": 4},
                      network={"kind": "mlp", "hidden": [32]}, objective={"kl_weight": {"kind": "constant", "beta": beta}},
                      seed=seed, **kw)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    return model


def test_terms_follow_the_loss_conventions(digits):
    """reconstruction is summed over data dims, kl over latent dims, metrics are batch means."""
    model = _model(digits.data_shape, beta=0.5)
    x = tf.constant(digits.x_train[:16])
    terms = model.compute_terms(x)
    # Recompute by hand from the same sample z.
    params, z, out = terms["params"], terms["z"], terms["out"]
    assert tuple(out.shape) == (16, 8, 8, 1)
    p = tf.sigmoid(out).numpy()
    xn = x.numpy()
    rec = (xn * np.log(p) + (1 - xn) * np.log1p(-p)).reshape(16, -1).sum(1)
    np.testing.assert_allclose(terms["reconstruction"].numpy(), rec, rtol=1e-4)
    mean, log_var = np.split(params.numpy(), 2, axis=1)
    kl = 0.5 * (mean**2 + np.exp(log_var) - log_var - 1).sum(1)
    np.testing.assert_allclose(terms["kl"].numpy(), kl, rtol=1e-4)
    np.testing.assert_allclose(terms["elbo"].numpy(), rec - kl, rtol=1e-4)
    assert tuple(z.shape) == (16, 4)
    np.testing.assert_allclose(float(model.objective_loss(terms)), -np.mean(rec - 0.5 * kl), rtol=1e-4)


def test_metrics_are_reported_through_trackers(digits):
    model = _model(digits.data_shape, beta=2.0)
    history = model.fit(digits.pipeline("train", 64), epochs=1, verbose=0, shuffle=False)
    assert set(history.history) == {"loss", "elbo", "reconstruction", "kl", "beta"}
    h = {k: v[0] for k, v in history.history.items()}
    assert h["beta"] == pytest.approx(2.0)
    assert h["elbo"] == pytest.approx(h["reconstruction"] - h["kl"], rel=1e-4, abs=1e-4)
    assert h["loss"] == pytest.approx(-(h["reconstruction"] - 2.0 * h["kl"]), rel=1e-4, abs=1e-4)

    result = model.evaluate(digits.pipeline("val", 64), return_dict=True, verbose=0)
    assert {"loss", "elbo", "reconstruction", "kl", "beta", "active_kl_dims"} <= set(result)
    kl_per_dim = model.kl_per_dim
    assert kl_per_dim.shape == (4,) and np.all(kl_per_dim >= 0)
    assert kl_per_dim.sum() == pytest.approx(result["kl"], rel=1e-3, abs=1e-4)
    assert result["active_kl_dims"] == float((kl_per_dim > 0.01).sum())


def test_kl_per_dim_is_the_last_evaluations_and_saving_the_weights_does_not_read_the_tracker(digits, tmp_path,
                                                                                            monkeypatch):
    """`kl_per_dim` is read from its tracker once, when `evaluate` ends. Under a multi-worker
    strategy that read is an all-reduce, so it must happen where every worker is: Keras'
    `save_weights` reads every property of the model, and on a cluster's chief alone (the export)
    a read of the tracker waited for workers that had already left."""
    model = _model(digits.data_shape)
    result = model.evaluate(digits.pipeline("val", 64), return_dict=True, verbose=0)
    evaluated = model.kl_per_dim
    assert evaluated.sum() == pytest.approx(result["kl"], rel=1e-3, abs=1e-4)
    reads = []
    tracker_result = type(model.kl_per_dim_tracker).result
    monkeypatch.setattr(type(model.kl_per_dim_tracker), "result",
                        lambda self: reads.append(self.name) or tracker_result(self))
    model.save_weights(str(tmp_path / "model.weights.h5"))
    assert reads == []
    model.reset_metrics()  # what the next epoch does: the last evaluation's values stay
    np.testing.assert_array_equal(model.kl_per_dim, evaluated)
    # Another evaluation, on other data, replaces them.
    other = model.evaluate(digits.pipeline("train", 64), return_dict=True, verbose=0)
    assert model.kl_per_dim.sum() == pytest.approx(other["kl"], rel=1e-3, abs=1e-4)


def test_beta_is_a_checkpointable_variable_that_changes_the_loss(digits):
    x = tf.constant(digits.x_train[:32])
    # A KL weight whose β moves (annealing): the loss reads the variable, which checkpoints carry.
    model = build_vae(digits.data_shape, latent={"family": "gaussian", "latent_dim": 4},
                      network={"kind": "mlp", "hidden": [32]}, objective={"kl_weight": {"kind": "linear", "steps": 10}})
    assert any(v.path.endswith("beta") for v in model.non_trainable_variables)
    assert float(model.beta.numpy()) == 0.0  # the schedule's start
    terms = model.compute_terms(x)
    base = float(model.objective_loss(terms))
    model.beta.assign(3.0)
    shifted = float(model.objective_loss(terms))
    assert shifted - base == pytest.approx(3.0 * float(tf.reduce_mean(terms["kl"])), rel=1e-4)
    # A constant β is a Python number in the step, and the variable (what is logged) holds it.
    one, three = _model(digits.data_shape, beta=1.0), _model(digits.data_shape, beta=3.0)
    assert float(three.beta.numpy()) == 3.0
    assert float(three.objective_loss(terms)) - float(one.objective_loss(terms)) == pytest.approx(
        2.0 * float(tf.reduce_mean(terms["kl"])), rel=1e-4)


def test_short_training_run_on_digits_improves_validation_elbo(digits):
    model = _model(digits.data_shape, seed=3)
    val = digits.pipeline("val", 128)
    before = model.evaluate(val, return_dict=True, verbose=0)["elbo"]
    history = model.fit(digits.pipeline("train", 64), validation_data=val, epochs=8, verbose=0, shuffle=False)
    val_elbo = history.history["val_elbo"]
    assert np.all(np.isfinite(val_elbo))
    assert val_elbo[-1] > before + 5.0, (before, val_elbo)  # the untrained model sits near −44 nats
    assert val_elbo[-1] > val_elbo[0]


def test_random_stream_is_reproducible_from_the_seed(digits):
    x = tf.constant(digits.x_train[:8])
    a = _model(digits.data_shape, seed=5).compute_terms(x)["z"].numpy()
    b = _model(digits.data_shape, seed=5).compute_terms(x)["z"].numpy()
    np.testing.assert_array_equal(a, b)


def test_inference_api_shapes_and_determinism(digits):
    model = _model(digits.data_shape)
    x = digits.x_test[:5]
    enc = model.encode(x)
    assert list(enc) == ["embedding", "z_mean", "z_log_var"] and enc["embedding"].shape == (5, 4)
    rec = model.reconstruct(x)["x_mean"].numpy()
    np.testing.assert_allclose(model(x).numpy(), rec)
    np.testing.assert_allclose(model.reconstruct(x)["x_mean"].numpy(), rec)  # deterministic
    dec = model.decode(enc["z_mean"])
    np.testing.assert_allclose(dec["x_mean"].numpy(), rec, rtol=1e-6)
    assert set(np.unique(dec["x_sample"].numpy())) <= {0.0, 1.0}  # Bernoulli draws
    drawn = model.sample(tf.constant([[0, 1], [0, 2]]))
    assert drawn["z"].shape == (2, 4) and drawn["x_mean"].shape == (2, 8, 8, 1)


def test_per_pixel_gaussian_vae_trains_with_finite_metrics(digits):
    model = _model(digits.data_shape, likelihood={"name": "gaussian_per_pixel", "min_sigma": 0.01})
    assert isinstance(model, VAE)
    history = model.fit(digits.pipeline("train", 64), epochs=2, verbose=0, shuffle=False)
    assert all(np.isfinite(v).all() for v in history.history.values())


@pytest.mark.parametrize("steps_per_execution", [1, 4])
def test_fit_traces_the_training_step_once(digits, steps_per_execution):
    """The optimizer's variables exist before the first step is traced, so it is traced once
    (a step that creates variables is traced twice: start-up time, issue #20), and training
    updates the model as before."""
    model = _model(digits.data_shape)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), steps_per_execution=steps_per_execution)
    traces, train_step = [], model.train_step

    def counted(data):
        traces.append(1)  # Python runs here only while tracing
        return train_step(data)

    model.train_step = counted
    before = [w.numpy() for w in model.trainable_weights]
    history = model.fit(digits.pipeline("train", 64), epochs=2, verbose=0, shuffle=False)
    assert len(traces) == 1
    assert model.optimizer.iterations.numpy() == 2 * math.ceil(len(digits.x_train) / 64)
    assert any(not np.array_equal(b, w.numpy()) for b, w in zip(before, model.trainable_weights))
    assert all(np.isfinite(v).all() for v in history.history.values())


def test_fitting_a_pipeline_gives_no_warning_that_keras_ignored_shuffle(digits):
    """A tf.data pipeline (which shuffles itself) is fitted with shuffle=False unless one is given:
    Keras' default, True, is ignored for a dataset with a UserWarning on every fit (the README's
    "From Python" example printed it)."""
    import warnings

    model = _model(digits.data_shape)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(digits.pipeline("train", 64), validation_data=digits.pipeline("val", 64), epochs=1, steps_per_epoch=2,
                  verbose=0)
    assert not [w for w in caught if "shuffle" in str(w.message)], [str(w.message) for w in caught]
    with warnings.catch_warnings(record=True) as caught:  # the user's own choice reaches Keras, as given
        warnings.simplefilter("always")
        model.fit(digits.pipeline("train", 64), epochs=1, steps_per_epoch=2, verbose=0, shuffle=True)
    assert [w for w in caught if "shuffle=True" in str(w.message)]


@pytest.mark.slow
def test_the_library_s_checkpoint_carries_every_remedy_and_the_random_stream(digits, tmp_path):
    """`tf.train.Checkpoint(model=model)` misses what Keras 3 hides from TensorFlow's object graph
    (the MI regulariser's Q network and its optimizer, the random-stream state) and its
    assert_consumed() passes anyway; vae_tf.models.checkpoint_for restores every variable, so the
    restored model trains on exactly as the original does."""
    from vae_tf.models import checkpoint_for

    def built():
        keras.utils.set_random_seed(1)
        model = build_vae((8, 8, 1), latent={"family": "gaussian", "latent_dim": 4},
                          network={"kind": "mlp", "hidden": [32]},
                          objective={"kl_weight": {"kind": "control", "set_point": 5},
                                     "regularizers": [{"kind": "mi_q", "weight": 1.0}]}, seed=1)
        model.compile(optimizer=keras.optimizers.Adam(1e-3))
        return model

    x = digits.x_train[:256]
    original = built()
    original.fit(x, epochs=1, batch_size=64, verbose=0, shuffle=False)
    path = checkpoint_for(original).save(str(tmp_path / "ckpt"))
    restored = built()  # compiled, never fitted: its optimizer is built by checkpoint_for, so
    checkpoint_for(restored).restore(path).assert_consumed()  # Adam's state is restored too
    assert int(restored.optimizer.iterations) == int(original.optimizer.iterations) == 4
    names = [v.path for v in original.variables]
    assert any("q_network" in n for n in names) and any("seed_generator" in n for n in names), names
    for a, b in zip(original.variables, restored.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
    for model in (original, restored):
        model.fit(x, epochs=1, batch_size=64, verbose=0, shuffle=False)
    for a, b in zip(original.variables, restored.variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7, err_msg=a.path)


def test_fit_before_compile_and_keras_save_are_one_line_errors(digits, tmp_path):
    """`fit` before `compile` raised AttributeError: 'VAE' object has no attribute 'optimizer';
    model.save("m.keras") raised Keras' 20-line advice to implement get_config."""
    from vae_tf.errors import ConfigError

    keras.utils.set_random_seed(0)
    model = build_vae((8, 8, 1), latent={"family": "gaussian", "latent_dim": 4}, network={"kind": "mlp", "hidden": [8]})
    with pytest.raises(ConfigError, match=r"^compile the model before fitting it: model.compile\(optimizer=...\)"):
        model.fit(digits.x_train[:64], epochs=1, verbose=0)
    for name in ("m.keras", "m.h5"):
        with pytest.raises(ConfigError) as caught:
            model.save(str(tmp_path / name))
        assert str(caught.value).startswith(f"a vae-tf model cannot be saved with model.save('{tmp_path / name}'); "
                                            "export it with vae_tf.export.export_model")
    assert list(tmp_path.iterdir()) == []


def test_sample_checks_its_seed_rows_instead_of_casting_them_onto_other_seeds():
    """`sample(np.array([1, 2]))` raised a graph traceback ("seed must have shape [2], not []"), and
    a cast made [[1.7, 2.2]] the seed [[1, 2]] and 2**40 the seed 0: different seeds, the same sample."""
    from vae_tf.errors import ConfigError

    model = _model((8, 8, 1))
    for seeds, said in [(np.array([1, 2]), r"shape \[n, 2\] \(e.g. \[\[0, 1\], \[0, 2\]\]\), got shape \[2\]"),
                        (np.zeros((2, 3), np.int32), r"got shape \[2, 3\]"),
                        (5, r"got shape \[\]"),
                        ([[1.7, 2.2]], "must be whole numbers, got float64 values"),
                        (np.array([[2 ** 40, 3]]), r"must lie in the int32 range .* got 3 to 1099511627776")]:
        with pytest.raises(ConfigError, match=said):
            model.sample(seeds)
    same = [model.sample(s)["z"].numpy() for s in ([[1, 2]], np.array([[1.0, 2.0]]), tf.constant([[1, 2]], tf.int64))]
    np.testing.assert_array_equal(same[0], same[1])
    np.testing.assert_array_equal(same[0], same[2])
    traced = tf.function(model.sample, input_signature=[tf.TensorSpec([None, 2], tf.int32)])  # as exported
    np.testing.assert_array_equal(traced(tf.constant([[1, 2]]))["z"].numpy(), same[0])


@pytest.mark.parametrize("kwargs, said", [
    ({"data_shape": 64}, r"^data_shape must be a tuple of positive integers \(an example's shape, e.g. \(28, 28, 1\)"),
    ({"data_shape": None}, r"^data_shape must be a tuple of positive integers .* got None$"),
    ({"data_shape": (8, 0, 1)}, r"^data_shape must be a tuple of positive integers, got \(8, 0, 1\)$"),
    ({"data_shape": (16.5,)}, r"^data_shape must be a tuple of positive integers .* got \(16.5,\)$"),  # was built as (16,)
    ({"data_shape": (True, 8)}, r"^data_shape must be a tuple of positive integers .* got \(True, 8\)$"),
    ({"data_shape": ()}, r"^data_shape \(\) is a sentence model's: give text=text_settings\(data.metadata\)"),
    ({"data_shape": (8, 8, 1), "latent": "gaussian"},
     r"^latent must be a mapping \(e.g. latent=\{'family': 'gaussian', 'latent_dim': 8\}\), got 'gaussian'$"),
    ({"data_shape": (8, 8, 1), "objective": [{"kind": "control"}]}, r"^objective must be a mapping \(e.g. objective="),
])
def test_build_vae_refuses_arguments_of_the_wrong_type_in_one_line(kwargs, said):
    """They ended in Python's own errors: "object is not iterable", "tuple index out of range",
    "dictionary update sequence element #0 has length 1", "'list' object has no attribute 'get'"."""
    from vae_tf.errors import ConfigError

    with pytest.raises(ConfigError, match=said):
        build_vae(**kwargs)


def test_fit_binds_positional_arguments_as_keras_names_them_under_a_wrapped_keras_fit(digits, monkeypatch):
    """VAE.fit names every argument before its checks. Read from the method's signature, that broke
    under a (*args, **kwargs) wrapper on keras.Model.fit (MLflow's autolog patches fit; so does
    benchmarks/startup.py): "fit() got an unexpected keyword argument 'a'"."""
    import inspect

    import keras
    from keras.src.backend.tensorflow.trainer import TensorFlowTrainer

    from vae_tf.models.vae import FIT_PARAMETERS

    assert tuple(inspect.signature(TensorFlowTrainer.fit).parameters)[1:] == FIT_PARAMETERS  # Keras' own order
    seen = []
    original = keras.Model.fit

    def wrapped(self, *args, **kwargs):  # as an autologger wraps it
        seen.append((args, sorted(kwargs)))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "fit", wrapped)
    model = _model(digits.data_shape)
    history = model.fit(digits.x_train[:128], None, 64, 2, 0, None, 0.0, digits.x_val[:64]).history
    assert len(history["loss"]) == 2 and "val_loss" in history  # epochs=2 and validation_data, positionally
    assert seen[0][0] == () and {"x", "epochs", "validation_data", "callbacks"} <= set(seen[0][1])
    with pytest.raises(TypeError, match="^VAE.fit got multiple values for argument 'epochs'$"):
        model.fit(digits.x_train[:128], None, 64, 2, epochs=3)


def test_kl_per_dim_before_any_evaluation_says_so_instead_of_zeros(digits):
    """Only evaluation fills the tracker: after `fit` without validation data it read all zeros,
    a collapsed posterior by the look of it."""
    from vae_tf.errors import ConfigError

    model = _model(digits.data_shape)
    model.fit(digits.x_train[:128], epochs=1, verbose=0)
    with pytest.raises(ConfigError, match=r"^model.kl_per_dim is measured by evaluation and none has run: call "
                                          r"model.evaluate\(x\) or fit with validation_data$"):
        model.kl_per_dim
    result = model.evaluate(digits.x_val, return_dict=True, verbose=0)
    assert model.kl_per_dim.sum() == pytest.approx(result["kl"], rel=1e-3) and result["kl"] > 0
    # An evaluation of no examples (fit's validation on an empty split, as the README's example does
    # with val_fraction=0) left the tracker's zeros as the measurement.
    import tensorflow as tf

    empty = tf.data.Dataset.from_tensor_slices(digits.x_val[:0]).batch(32)
    history = model.fit(digits.x_train[:128], epochs=1, verbose=0, validation_data=empty).history
    assert not any(key.startswith("val_") for key in history)
    with pytest.raises(ConfigError, match=r"^model.kl_per_dim is measured by evaluation and the last one \(model.evaluate, "
                                          r"or fit's validation\) saw no examples .*: call model.evaluate\(x\) on data$"):
        model.kl_per_dim
    model.evaluate(digits.x_val, verbose=0)
    assert model.kl_per_dim.sum() > 0


def test_a_constant_beta_is_the_beta_in_force_after_loading_another_models_weights(digits, tmp_path):
    """`load_weights` sets the `beta` variable to the saved model's β; a constant β is never
    assigned by the steps, so the history said β = 2 while the loss was trained with 0.5."""
    source = _model(digits.data_shape, beta=2.0)
    source.fit(digits.x_train[:128], epochs=1, verbose=0)
    source.save_weights(str(tmp_path / "source.weights.h5"))
    model = _model(digits.data_shape, beta=0.5)
    model.load_weights(str(tmp_path / "source.weights.h5"))
    assert float(model.beta.numpy()) == 2.0  # what the file holds
    history = model.fit(digits.x_train[:128], epochs=1, verbose=0).history
    assert history["beta"] == [0.5]
    assert history["loss"][0] == pytest.approx(-(history["reconstruction"][0] - 0.5 * history["kl"][0]), rel=1e-4)
    model.load_weights(str(tmp_path / "source.weights.h5"))
    assert model.evaluate(digits.x_val[:64], return_dict=True, verbose=0)["beta"] == 0.5


def test_a_checkpoint_of_the_whole_model_is_refused_before_the_first_epoch(digits, tmp_path):
    """Keras' `ModelCheckpoint("m.keras")` calls `model.save`, which a vae-tf model refuses; that
    came after the first epoch had trained. Weights-only checkpoints are what works."""
    from vae_tf.errors import ConfigError

    model = _model(digits.data_shape)
    with pytest.raises(ConfigError, match=r"^keras.callbacks.ModelCheckpoint\('.*m.keras'\) saves the whole model, .*"
                                          r"save_weights_only=True"):
        model.fit(digits.x_train[:64], epochs=1, verbose=0,
                  callbacks=[keras.callbacks.ModelCheckpoint(str(tmp_path / "m.keras"))])
    assert int(model.optimizer.iterations) == 0
    model.fit(digits.x_train[:64], epochs=1, verbose=0,
              callbacks=[keras.callbacks.ModelCheckpoint(str(tmp_path / "m.weights.h5"), save_weights_only=True)])
    assert (tmp_path / "m.weights.h5").is_file()


def _dense_net(input_shape, output_shape, name):
    inputs = keras.Input(input_shape)
    flat = keras.layers.Flatten()(inputs) if len(input_shape) > 1 else inputs
    out = keras.layers.Reshape(output_shape)(keras.layers.Dense(int(np.prod(output_shape)))(flat))
    return keras.Model(inputs, out, name=name)


def test_networks_of_ones_own_must_fit_the_latent_family_and_the_likelihood():
    """`VAE(encoder, decoder, ...)` with networks one built oneself: a wrong width failed inside
    the first step ("Dimension size must be evenly divisible by 2 but is 5"), a flat decoder output
    with "logits and labels must have the same shape"."""
    from vae_tf.errors import ConfigError
    from vae_tf.latents import build_latent
    from vae_tf.likelihoods import build_likelihood

    latent = build_latent("gaussian", latent_dim=2)  # 4 parameters: mean and log-variance
    for likelihood, channels in (("bernoulli", 1), ("gaussian_per_pixel", 2)):
        lik = build_likelihood(likelihood, data_rank=3)
        with pytest.raises(ConfigError, match=r"^the enc network gives outputs of shape \(None, 5\) but this model "
                                              r"needs \(None, 4\): the latent family's 4 parameters$"):
            VAE(_dense_net((8, 8, 1), (5,), "enc"), _dense_net((2,), (8, 8, channels), "dec"), latent, lik)
        with pytest.raises(ConfigError, match=rf"^the dec network gives outputs of shape \(None, 64\) but this model "
                                              rf"needs \(None, 8, 8, {channels}\): the likelihood's parameters "
                                              rf"\({channels} per channel of the data's 1\)$"):
            VAE(_dense_net((8, 8, 1), (4,), "enc"), _dense_net((2,), (64,), "dec"), latent, lik)
        model = VAE(_dense_net((8, 8, 1), (4,), "enc"), _dense_net((2,), (8, 8, channels), "dec"), latent, lik)
        assert model.encode(np.zeros((3, 8, 8, 1), np.float32))["z_mean"].shape == (3, 2)
    # A dimension the network leaves unknown fits any size (the review: it was refused).
    inputs = keras.Input((2,))
    open_sized = keras.layers.Lambda(lambda t: tf.reshape(t, [-1, 8, 8, 1]), output_shape=(None, None, 1))(
        keras.layers.Dense(64)(inputs))
    decoder = keras.Model(inputs, open_sized, name="dec")
    assert tuple(decoder.outputs[0].shape) == (None, None, None, 1)
    model = VAE(_dense_net((8, 8, 1), (4,), "enc"), decoder, latent, build_likelihood("bernoulli", data_rank=3))
    model.compile(optimizer="adam")
    assert np.isfinite(model.fit(np.full((4, 8, 8, 1), 0.5, np.float32), epochs=1, verbose=0).history["loss"][0])
