"""evaluate_model end to end on tiny models: what applies is computed, the rest is skipped with a
reason, the report is JSON, the figures are drawn."""

from __future__ import annotations

import json

import keras
import matplotlib.pyplot as plt
import numpy as np
import pytest

from vae_tf.data import load_dataset
from vae_tf.errors import ConfigError
from vae_tf.latents import LATENT_FAMILIES
from vae_tf.metrics import evaluate_model, evaluation_figures, report
from vae_tf.models import build_vae


def _model(data_shape, likelihood=None, latent_dim=3):
    keras.utils.set_random_seed(0)
    return build_vae(data_shape, latent={"family": "gaussian", "latent_dim": latent_dim},
                     likelihood=likelihood or {"name": "bernoulli"}, network={"kind": "mlp", "hidden": [32]}, seed=0)


@pytest.fixture(scope="module")
def digits_model(digits):
    model = _model(digits.data_shape)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    model.fit(digits.pipeline("train", 64), epochs=1, verbose=0, shuffle=False)
    return model


def test_evaluate_digits_computes_what_applies(digits, digits_model):
    result = evaluate_model(digits_model, digits, split="test", iw_k=20, iw_chunk=10, tsne_max_points=60)
    m, info, arrays = result["metrics"], result["info"], result["arrays"]
    assert m["kl"] == pytest.approx(sum(m[f"kl_dim_{i}"] for i in range(3)))
    assert 0 <= m["active_units"] <= 3
    for eps in ("0.01", "0.05", "0.1", "0.5"):
        assert 0.0 <= m[f"collapsed_frac_eps_{eps}"] <= 1.0
    assert "mi_full" in m and "mi_minibatch" in m
    assert m["elbo"] == pytest.approx(m["reconstruction"] - m["kl"], rel=0.05, abs=0.5)
    assert 0.1 < m["linear_probe_accuracy"] <= 1.0
    # digits are grey levels: a Bernoulli "likelihood" is not normalised, so no NLL by default.
    assert "iw_nll" not in m and "normalised" in info["skipped"]["iw_nll"]
    assert "disentanglement" in info["skipped"]
    assert info["num_examples"] == len(digits.x_test) and info["split"] == "test"
    assert arrays["tsne_embedding"].shape == (60, 2) and arrays["tsne_labels"].shape == (60,)
    assert all(isinstance(v, float) for v in m.values())
    text = json.dumps(report(result))
    assert "mi_minibatch" in text and "scikit_learn" in text

    open_before = set(plt.get_fignums())
    figures = evaluation_figures(result, digits_model, digits.x_test[:4])
    assert {"kl_per_dim.png", "collapse_curve.png", "tsne.png", "reconstructions.png", "traversals.png"} <= set(figures)
    # every figure drawn is returned (a caller that closes what it gets leaves none open)
    assert set(plt.get_fignums()) - open_before == {fig.number for fig in figures.values()}
    for fig in figures.values():
        plt.close(fig)


@pytest.mark.slow
def test_evaluate_scores_prior_samples_with_the_classifier_distances(digits, digits_model, tmp_path):
    from vae_tf.metrics import FDClassifierSpec, fd_classifier, load_or_train_fd_classifier

    spec = FDClassifierSpec(epochs=2)
    result = evaluate_model(digits_model, digits, split="test", iw_k=0, tsne=False, probe=False, fd=True,
                            fd_cache_dir=tmp_path, fd_spec=spec, fd_num_samples=150, seed=3)
    m, est = result["metrics"], result["info"]["estimators"]
    assert "150 prior samples (mean decodes) vs 150 test examples" in est["fd_classifier"]
    assert "the whole 150 per side (no spread: kid_classifier_std not logged)" in est["kid_classifier"]
    assert "kid_classifier_std" not in m
    # A one-epoch model's samples are much further from the test digits than held-out digits are.
    held_out = fd_classifier(digits.x_val[:150], digits.x_test[:150],
                             load_or_train_fd_classifier(digits, cache_dir=tmp_path, spec=spec))
    assert m["fd_classifier"] > 3 * held_out["fd_classifier"]
    assert m["kid_classifier"] > 3 * abs(held_out["kid_classifier"])
    assert m["fd_classifier_accuracy"] == held_out["classifier_test_accuracy"] > 0.5


def test_evaluate_gives_iw_nll_for_a_normalised_likelihood(digits):
    model = _model(digits.data_shape, likelihood={"name": "continuous_bernoulli"})
    result = evaluate_model(model, digits, split="val", max_examples=40, iw_k=10, iw_chunk=5, tsne=False,
                            probe=False)
    m = result["metrics"]
    assert m["iw_nll"] <= -m["elbo"] + 5.0  # an upper bound of -log p(x), below -ELBO up to MC noise
    assert m["iw_nll_bits_per_dim"] == pytest.approx(m["iw_nll"] / (64 * np.log(2)))
    assert result["info"]["num_examples"] == 40


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:The number of unique classes is greater than 50%")  # tiny samples
def test_evaluate_dsprites_runs_every_disentanglement_metric():
    data = load_dataset("dsprites", seed=0, max_samples=120, n_samples=120, image_size=32)
    model = _model(data.data_shape, latent_dim=4)
    sizes = {"num_train": 60, "num_eval": 30, "num_variance_estimate": 64, "batch_size": 8}
    result = evaluate_model(model, data, iw_k=0, tsne=False, disentanglement_sizes=sizes)
    m = result["metrics"]
    for key in ("beta_vae_score", "factor_vae_score", "mig", "dci_disentanglement", "dci_completeness",
                "dci_informativeness_test", "sap_score", "linear_probe_accuracy"):
        assert key in m and np.isfinite(m[key]), key
    assert result["info"]["disentanglement_sizes"]["num_train"] == 60


def test_evaluate_rejects_bad_options(digits, digits_model):
    with pytest.raises(ConfigError) as err:
        evaluate_model(digits_model, digits, disentanglement_sizes={"num_trian": 10})
    assert "\n" not in str(err.value)
    # One example has no variance to count active units with (it failed as "means has 1 rows").
    with pytest.raises(ConfigError, match=r"^max_examples \(--max-examples\) is 1; evaluation needs at least 2 "):
        evaluate_model(digits_model, digits, max_examples=1)
    # an array where the data set belongs (it was AttributeError: 'numpy.ndarray' object has no attribute 'split')
    with pytest.raises(ConfigError, match=r"^data must be the model's vae_tf.data.DataSplits .* got a ndarray"):
        evaluate_model(digits_model, digits.x_test)


@pytest.mark.slow
@pytest.mark.parametrize("family", LATENT_FAMILIES.names())
def test_evaluate_and_iw_nll_work_for_every_latent_family(digits, family):
    keras.utils.set_random_seed(0)
    model = build_vae(digits.data_shape, latent={"family": family, "latent_dim": 3},
                      likelihood={"name": "continuous_bernoulli"}, network={"kind": "mlp", "hidden": [16]}, seed=0)
    result = evaluate_model(model, digits, split="val", max_examples=60, iw_k=10, iw_chunk=5, tsne=False)
    m = result["metrics"]
    assert np.isfinite(m["iw_nll"]) and np.isfinite(m["kl"]) and "active_units" in m
    assert len([k for k in m if k.startswith("kl_dim_")]) == model.latent.kl_size
    if "category" in model.encode(digits.x_val[:1]):
        assert 0.0 < m["cluster_accuracy"] <= 1.0
    if "mi_full" not in m:
        assert "mi" in result["info"]["skipped"]


def _count_calls(owner, name: str) -> list:
    """Replace ``owner.name`` by a wrapper that records each call; inside a tf.function the Python
    body runs only while tracing, so the records count traces."""
    calls, original = [], getattr(owner, name)

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    setattr(owner, name, counted)
    return calls


def test_repeated_metric_calls_trace_once_per_model(digits):
    """encode_posterior (the collapse diagnostics of every epoch), representation_function (the
    probe and disentanglement metrics of every evaluation) and the IW-NLL / ELBO estimators are
    traced once per model, not once per call: a tf.function built per call made TensorFlow warn
    about retracing for every child run of `vae-tf compare`."""
    from vae_tf.metrics import encode_posterior, elbo_estimate, iw_nll, representation_function

    model = _model(digits.data_shape, likelihood={"name": "continuous_bernoulli"})
    x = digits.x_test[:16]
    embeddings = _count_calls(model.latent, "embedding")
    summaries = _count_calls(model.latent, "export_outputs")
    log_probs = _count_calls(model.likelihood, "log_prob")
    first = representation_function(model, batch_size=16)(x)
    for _ in range(5):
        np.testing.assert_array_equal(representation_function(model, batch_size=16)(x), first)
        encode_posterior(model, x, batch_size=16)
        iw_nll(model, x, k=10, chunk=10, batch_size=16)
        elbo_estimate(model, x, batch_size=16)
    assert len(embeddings) == 1 and len(summaries) == 1
    assert len(log_probs) == 2  # one trace of the IW weights, one of the ELBO terms


def test_metric_helpers_do_not_keep_a_model_alive(digits):
    """Their compiled functions are cached per model and dropped with it (a cached function that
    referred to the model itself kept every evaluated model in memory for good)."""
    import gc
    import weakref

    from vae_tf.metrics import encode_posterior, iw_nll, representation_function

    model = _model(digits.data_shape, likelihood={"name": "continuous_bernoulli"})
    x = digits.x_test[:8]
    encode_posterior(model, x)
    representation_function(model)(x)
    iw_nll(model, x, k=10, chunk=10)
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None


@pytest.mark.slow
def test_evaluating_one_fresh_model_after_another_gives_no_retracing_warning():
    """A suite evaluates, draws and exports a new model per child run; each needs its own traces,
    which TensorFlow must not add up across models into "N out of the last N calls ...
    triggered tf.function retracing" (what `vae-tf compare` printed for every child run: first
    for the posterior summary, then for the export's signatures, which the figures call, and the
    MI bound's Q-network steps). A fresh process, so no earlier test's traces count; five of the
    six models have the Gaussian + categorical code, whose `decode_category` signature is its own
    (TensorFlow warns at the fifth trace)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    code = """
import vae_tf_cli
vae_tf_cli.keep_optional_libraries_out_of_keras()  # as a vae-tf process starts (~1 s less)
import numpy as np
import tensorflow as tf
from vae_tf.export import serving_functions
from vae_tf.metrics import elbo_estimate, encode_posterior, fit_mi_bound, iw_nll, representation_function
from vae_tf.models import build_vae
x = np.random.default_rng(0).random((40, 8, 8, 1)).astype(np.float32)
for seed in range(6):
    latent = ({"family": "gaussian_categorical", "latent_dim": 2, "categories": 3} if seed
              else {"family": "gaussian", "latent_dim": 2})
    model = build_vae((8, 8, 1), latent=latent, likelihood={"name": "continuous_bernoulli"},
                      network={"kind": "mlp", "hidden": [8]}, seed=seed)
    representation_function(model, batch_size=32)(x)
    encode_posterior(model, x, batch_size=32)
    elbo_estimate(model, x, batch_size=32)
    iw_nll(model, x, k=10, chunk=10, batch_size=32)
    fit_mi_bound(model, x, steps=2, batch_size=32)
    signatures = serving_functions(model)
    signatures["encode"](x[:4])
    signatures["reconstruct"](x[:4])
    signatures["decode"](tf.zeros((4, model.latent.code_size)))
    signatures["sample"](tf.zeros((4, 2), tf.int32))
    if "decode_category" in signatures:
        signatures["decode_category"](tf.zeros((4, 2)), tf.constant([0, 1, 2, 0]))
print("evaluated 6 models")
"""
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(root)})
    assert proc.returncode == 0 and "evaluated 6 models" in proc.stdout, proc.stderr[-3000:]
    assert "retracing" not in proc.stderr, [line for line in proc.stderr.splitlines() if "retracing" in line]
