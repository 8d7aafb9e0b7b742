"""Joint Gaussian + Gumbel-softmax categorical latent: relaxed samples, the KL split, the
temperature schedule in the checkpoint, stateless prior draws, training + export on digits with
``decode_category``."""

from __future__ import annotations

import json
import math

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from training.callbacks import checkpoint_for
from vae_tf import plots
from vae_tf.errors import ConfigError
from vae_tf.export import export_model
from vae_tf.latents import GaussianCategoricalLatent, build_latent
from vae_tf.models import build_vae

tfd = tfp.distributions
SCHEDULE = {"kind": "exponential_decay", "start": 1.0, "rate": 0.05, "floor": 0.5}


def _params(rng, batch, g, k):
    return tf.constant(np.concatenate([rng.normal(size=(batch, g)), rng.normal(scale=0.5, size=(batch, g)),
                                       rng.normal(scale=2.0, size=(batch, k))], axis=1).astype(np.float32))


def test_relaxed_samples_lie_on_the_simplex_and_approach_one_hot(rng):
    family = GaussianCategoricalLatent(latent_dim=2, categories=5)
    params = tf.tile(_params(rng, 1, 2, 5), [20_000, 1])
    probs = tf.nn.softmax(family.split(params)[2][0]).numpy()
    sharpness = {}
    for tau in (2.0, 0.5, 0.05, 0.01):
        c = family.sample(params, seed=tf.constant([1, 2]), temperature=tau).numpy()[:, 2:]
        assert np.all(c >= 0) and np.allclose(c.sum(1), 1.0, atol=1e-5)
        sharpness[tau] = c.max(1).mean()
        # Gumbel-max: the argmax of a relaxed draw is distributed as Cat(π) at any temperature.
        np.testing.assert_allclose(np.bincount(c.argmax(1), minlength=5) / len(c), probs, atol=0.015)
    assert sharpness[2.0] < sharpness[0.5] < sharpness[0.05] < sharpness[0.01]
    assert sharpness[0.01] > 0.99  # τ → 0: one-hot


def test_kl_is_the_sum_of_its_parts(rng):
    family = GaussianCategoricalLatent(latent_dim=3, categories=4)
    params = _params(rng, 6, 3, 4)
    kl = family.kl_per_dim(params).numpy()
    assert kl.shape == (6, 4) and family.kl_size == 4
    mean, log_var, logits = family.split(params)
    gaussian = tfd.kl_divergence(tfd.Normal(mean, tf.exp(0.5 * log_var)), tfd.Normal(0.0, 1.0)).numpy()
    categorical = tfd.kl_divergence(tfd.Categorical(logits=logits), tfd.Categorical(logits=tf.zeros([4]))).numpy()
    np.testing.assert_allclose(kl[:, :3], gaussian, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(kl[:, 3], categorical, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(kl.sum(1), gaussian.sum(1) + categorical, rtol=1e-5)
    uniform = tf.concat([params[:, :6], tf.zeros([6, 4])], axis=1)
    np.testing.assert_allclose(family.kl_per_dim(uniform).numpy()[:, 3], 0.0, atol=1e-6)


def test_gradients_reach_the_logits_through_the_relaxed_sample():
    family = GaussianCategoricalLatent(latent_dim=1, categories=3)
    params = tf.Variable([[0.2, 0.0, 1.0, 0.0, -1.0]])
    with tf.GradientTape() as tape:
        z = family.sample(tf.tile(params, [1000, 1]), seed=tf.constant([3, 3]), temperature=0.5)
        objective = tf.reduce_mean(z[:, 1])  # the relaxed weight of category 0
    grad = tape.gradient(objective, params).numpy()[0]
    assert grad[2] > 0 and grad[3] < 0 and grad[4] < 0  # raising logit 0 raises its weight


def test_prior_draws_are_stateless_one_hot_and_uniform():
    family = GaussianCategoricalLatent(latent_dim=2, categories=4)
    z = family.sample_prior(tf.constant([[1, 2], [3, 4], [1, 2]])).numpy()
    np.testing.assert_array_equal(z[0], z[2])
    np.testing.assert_array_equal(family.sample_prior(tf.constant([[3, 4]])).numpy()[0], z[1])
    many = tf.function(family.sample_prior)(tf.stack([tf.zeros(2000, tf.int32), tf.range(2000)], axis=1)).numpy()
    onehot = many[:, 2:]
    assert set(np.unique(onehot)) == {0.0, 1.0} and np.all(onehot.sum(1) == 1)
    np.testing.assert_allclose(onehot.mean(0), 0.25, atol=0.04)


def test_importance_terms_use_exact_one_hot_codes(rng):
    family = GaussianCategoricalLatent(latent_dim=2, categories=3)
    params = _params(rng, 4, 2, 3)
    z, log_q, log_p = family.iw_terms(params, 5, tf.constant([1, 2]))
    assert z.shape == (5, 4, 5) and log_q.shape == (5, 4) and log_p.shape == (5, 4)
    c = z.numpy()[..., 2:]
    assert np.all(c.sum(-1) == 1)
    mean, log_var, logits = (t.numpy() for t in family.split(params))
    gauss = -0.5 * ((z.numpy()[..., :2] - mean) ** 2 / np.exp(log_var) + log_var + math.log(2 * math.pi)).sum(-1)
    cat = (c * (logits - np.log(np.exp(logits).sum(-1, keepdims=True)))).sum(-1)
    np.testing.assert_allclose(log_q.numpy(), gauss + cat, rtol=1e-4)


def test_temperature_follows_its_schedule_and_survives_a_checkpoint(digits, tmp_path):
    def make():
        keras.utils.set_random_seed(0)
        model = build_vae(digits.data_shape, latent={"family": "gaussian_categorical", "latent_dim": 2,
                                                     "categories": 3, "temperature": SCHEDULE},
                          network={"kind": "mlp", "hidden": [16]}, seed=0)
        model.compile(optimizer=keras.optimizers.Adam(1e-3))
        return model

    model = make()
    assert float(model.latent.temperature()) == pytest.approx(1.0)
    history = model.fit(digits.pipeline("train", 64), epochs=1, verbose=0, shuffle=False).history
    steps = int(model.train_steps.numpy())
    expected = max(0.5, math.exp(-0.05 * steps))
    assert float(model.latent.temperature()) == pytest.approx(expected, rel=1e-5)
    assert history["temperature"][-1] == pytest.approx(expected, rel=1e-5)
    assert float(model.latent.temperature(1000)) == pytest.approx(0.5)  # the floor

    path = checkpoint_for(model).save(str(tmp_path / "ckpt"))
    restored = make()
    assert float(restored.latent.temperature()) == pytest.approx(1.0)
    checkpoint_for(restored).restore(path).expect_partial()
    assert float(restored.latent.temperature()) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("options, match", [
    ({"categories": 1}, "categories must be an integer >= 2"),
    ({"temperature": {"kind": "exponential_decay", "rate": 0.1, "floor": 0.0}}, "temperature must stay > 0"),
    ({"temperature": {"kind": "linear", "start": 1.0, "stop": 0.0, "steps": 10}}, "temperature must stay > 0 "
                                                                                  r"\(got a schedule reaching 0\)"),
    ({"temperature": 0.0}, r"^model.latent.temperature must be > 0, got 0; give e.g. 0.5, or an annealed "),
    ({"temperature": {"kind": "warp"}}, "unknown schedule 'warp'"),
    ({"temperature": {"kind": "exponential_decay", "floor": 0.5, "decay": 1}}, "unknown option model.latent.temperature.decay; valid options: start, rate, floor"),
])
def test_bad_options_are_one_line_config_errors(options, match):
    with pytest.raises(ConfigError, match=match):
        build_latent("gaussian_categorical", latent_dim=2, **options)


@pytest.mark.slow
def test_trains_on_digits_exports_and_decodes_a_chosen_category(digits, tmp_path):
    keras.utils.set_random_seed(0)
    g, k = 3, 4
    model = build_vae(digits.data_shape, latent={"family": "gaussian_categorical", "latent_dim": g,
                                                 "categories": k, "temperature": SCHEDULE},
                      network={"kind": "mlp", "hidden": [32]}, seed=0)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    history = model.fit(digits.pipeline("train", 64), validation_data=digits.pipeline("val", 128), epochs=2,
                        verbose=0, shuffle=False).history
    keys = ["kl_gaussian", "kl_categorical", "category_entropy", "temperature", *[f"category_usage_{i}" for i in range(k)]]
    for key in ["loss", "elbo", "kl", *keys, *[f"val_{key}" for key in keys]]:
        assert key in history and np.all(np.isfinite(history[key])), key
    for prefix in ("", "val_"):
        assert history[f"{prefix}kl"][-1] == pytest.approx(
            history[f"{prefix}kl_gaussian"][-1] + history[f"{prefix}kl_categorical"][-1], rel=1e-4)
        usage = [history[f"{prefix}category_usage_{i}"][-1] for i in range(k)]
        assert sum(usage) == pytest.approx(1.0, abs=1e-4)
        assert 0 < history[f"{prefix}category_entropy"][-1] <= math.log(k) + 1e-6
    assert model.kl_per_dim.shape == (g + 1,)

    path = export_model(model, tmp_path, "gc")
    loaded = tf.saved_model.load(str(path))
    assert set(loaded.signatures) == {"encode", "decode", "reconstruct", "sample", "decode_category", "serving_default"}
    x = digits.x_test[:6]
    enc = loaded.signatures["encode"](x=tf.constant(x))
    assert {key: tuple(v.shape) for key, v in enc.items()} == {
        "embedding": (6, g + k), "z_mean": (6, g), "z_log_var": (6, g), "category_probs": (6, k), "category": (6,)}
    assert enc["category"].dtype == tf.int32
    np.testing.assert_allclose(enc["category_probs"].numpy().sum(1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(enc["category"].numpy(), enc["category_probs"].numpy().argmax(1))
    np.testing.assert_allclose(enc["embedding"].numpy(),
                               np.concatenate([enc["z_mean"].numpy(), enc["category_probs"].numpy()], 1), rtol=1e-6)
    for key, value in model.encode(x).items():
        np.testing.assert_allclose(enc[key].numpy(), value.numpy(), rtol=1e-5, atol=1e-6)
    from vae_tf.metrics.encode import encode_posterior

    posterior = encode_posterior(model, x)  # class labels for a downstream classifier: integers, as exported
    assert posterior["category"].dtype.kind == "i" and posterior["z_mean"].dtype == np.float64
    np.testing.assert_array_equal(posterior["category"], enc["category"].numpy())

    # "Category k, style z": decode_category(z_gauss, k) == decode(concat(z_gauss, one_hot(k))).
    signature = loaded.signatures["decode_category"]
    args, kwargs = signature.structured_input_signature
    assert {n: (tuple(s.shape.as_list()), s.dtype) for n, s in kwargs.items()} == {
        "z_gauss": ((None, g), tf.float32), "category": ((None,), tf.int32)}
    categories = np.arange(k, dtype=np.int32)
    style = np.repeat(enc["z_mean"].numpy()[:1], k, axis=0)
    by_category = signature(z_gauss=tf.constant(style), category=tf.constant(categories))
    by_code = loaded.signatures["decode"](z=tf.constant(np.concatenate([style, np.eye(k, dtype=np.float32)], 1)))
    assert by_category["x_mean"].shape == (k, 8, 8, 1) and by_category["x_sample"].shape == (k, 8, 8, 1)
    np.testing.assert_allclose(by_category["x_mean"].numpy(), by_code["x_mean"].numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(tf.errors.InvalidArgumentError, match="category must be in"):
        signature(z_gauss=tf.constant(style[:1]), category=tf.constant([k], tf.int32))
    # rows that do not pair up: TensorFlow's "ConcatOp : Dimension 0 in both shapes must be equal" named neither
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"z_gauss and category must have the same number of rows .*got\] \[2\] \[and\] \[1\]"):
        signature(z_gauss=tf.constant(style[:2]), category=tf.constant([1], tf.int32))

    drawn = loaded.signatures["sample"](seed=tf.constant([[1, 2], [3, 4]]))
    assert drawn["z"].shape == (2, g + k) and np.all(drawn["z"].numpy()[:, g:].sum(1) == 1)
    info = json.loads((path / "assets" / "vae_tf_model.json").read_text())
    assert info["latent"]["code_size"] == g + k and info["latent"]["categories"] == k
    assert info["signatures"]["decode_category"] == {"inputs": ["z_gauss", "category"], "outputs": ["x_mean", "x_sample"]}

    figure = plots.category_usage(enc["category_probs"].numpy())
    assert "entropy" in figure.axes[0].get_title()
    plots.plt.close(figure)


def test_the_epoch_diagnostics_count_the_units_of_the_gaussian_means_not_the_category_probabilities(digits):
    """`val_active_units` counted the columns of the embedding, [μ, π]: 9 "units" for a code of 4
    Gaussian dims, while `test_active_units` and the verdict counted the means (4/4)."""
    from training.callbacks import CollapseDiagnostics
    from vae_tf.metrics import active_units, encode_posterior

    model = build_vae(digits.data_shape, latent={"family": "gaussian_categorical", "latent_dim": 2, "categories": 6},
                      network={"kind": "mlp", "hidden": [16]}, seed=0)
    kernel = model.encoder.layers[-1].kernel
    kernel.assign(kernel * 200.0)  # near one-hot π that changes with x: every probability column varies
    x = digits.x_val[:300]
    post = encode_posterior(model, x)
    assert active_units(post["embedding"])[0] > 2  # what was counted
    logs = {"loss": 1.0}
    callback = CollapseDiagnostics(x)
    callback.set_model(model)
    callback.on_epoch_end(0, logs)
    assert logs["val_active_units"] == active_units(post["z_mean"])[0] <= 2
