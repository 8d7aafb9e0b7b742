"""What `vae-tf evaluate` reports for the latent families beyond the Gaussian one: the whole
code's mutual information (checked against the closed-form Gaussian estimator), NG-VAE's p split
and the categorical part's usage, KL and I(x; c), each against an independent computation."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import special, stats

from vae_tf.metrics import code_mutual_information, encode_posterior, evaluate_model, mutual_information_minibatch
from vae_tf.models import build_vae

CHEAP = {"iw_k": 0, "probe": False, "tsne": False, "disentanglement": False, "max_examples": 600}


def _random_model(digits, latent: dict, scale: float = 0.3):
    """An MLP VAE whose weights are all redrawn (the builders zero the output layers: every input
    would encode alike), so that the code depends on x."""
    model = build_vae(digits.data_shape, latent=latent, network={"kind": "mlp", "hidden": [32]}, seed=0)
    model(np.zeros((1,) + tuple(digits.data_shape), np.float32))
    rng = np.random.default_rng(0)
    for variable in model.weights:
        if variable.dtype == "float32" and variable.trainable:
            variable.assign(rng.normal(0.0, scale, tuple(variable.shape)).astype(np.float32))
    return model


def test_the_whole_codes_mi_agrees_with_the_closed_form_gaussian_estimator_and_is_zero_for_a_constant_code(digits):
    model = _random_model(digits, {"family": "gaussian", "latent_dim": 4})
    x = np.concatenate([digits.x_train, digits.x_val, digits.x_test])
    post = encode_posterior(model, x)
    ours = np.mean([code_mutual_information(model, x, seed=s) for s in range(3)])
    closed = np.mean([mutual_information_minibatch(post["z_mean"], post["z_log_var"], seed=s) for s in range(3)])
    assert closed > 0.5 and abs(ours - closed) < 0.1, (ours, closed)  # one-draw vs closed-form entropies
    # an encoder that ignores x: log q(z_i|x_i) equals every log q(z_i|x_j), so the estimate is 0
    last = model.encoder.layers[-1]
    last.kernel.assign(np.zeros(last.kernel.shape, np.float32))
    assert code_mutual_information(model, x[:300]) == pytest.approx(0.0, abs=1e-5)
    with pytest.raises(ValueError, match="at least 2 examples"):
        code_mutual_information(model, x[:1])


@pytest.mark.slow
def test_ng_evaluation_reports_the_p_split_and_the_whole_codes_mi(digits):
    """`vae-tf evaluate` of an NG model reported neither `informative_dims` nor any MI ("the MI
    estimators need diagonal-Gaussian posteriors"), and its verdict had no MI."""
    from training.lineage import result_verdict

    model = _random_model(digits, {"family": "normal_gamma", "latent_dim": 3})
    result = evaluate_model(model, digits, **CHEAP)
    m = result["metrics"]
    encoded = model.encode(digits.x_test[:600])  # what the export's encode gives, per example
    weight = np.mean(encoded["informative_weight"].numpy(), axis=0)
    for i in range(3):
        assert m[f"informative_weight_{i}"] == pytest.approx(weight[i], rel=1e-5)
        assert m[f"precision_mean_{i}"] == pytest.approx(np.mean(encoded["precision_mean"].numpy()[:, i]), rel=1e-5)
    assert m["informative_dims"] == np.sum(weight > 0.5)
    assert 0 < m["mi_code_minibatch"] < np.log(50) + 0.1
    assert "mi_full" not in m and "mi_code_minibatch" in result["info"]["estimators"]
    assert f"MI {m['mi_code_minibatch']:#.3g}".rstrip(".") in result_verdict(result).line


def test_categorical_evaluation_reports_usage_kl_parts_and_i_x_c(digits):
    model = _random_model(digits, {"family": "gaussian_categorical", "latent_dim": 2, "categories": 5}, scale=0.6)
    result = evaluate_model(model, digits, **CHEAP)
    m = result["metrics"]
    logits = model.latent.split(model.posterior_params(digits.x_test[:600]))[2].numpy().astype(np.float64)
    probs = special.softmax(logits, axis=1)
    usage = probs.mean(axis=0)
    np.testing.assert_allclose([m[f"category_usage_{k}"] for k in range(5)], usage, rtol=1e-5)
    assert m["category_entropy"] == pytest.approx(stats.entropy(usage), rel=1e-5)
    # I(x; c) = H(E π) − E H(π), and KL(Cat(π) ‖ U(5)) = log 5 − H(π)
    i_xc = stats.entropy(usage) - np.mean(stats.entropy(probs, axis=1))
    assert i_xc > 0.05 and m["mi_category"] == pytest.approx(i_xc, rel=1e-4)
    assert m["kl_categorical"] == pytest.approx(np.mean(np.log(5) - stats.entropy(probs, axis=1)), rel=1e-4)
    assert m["kl_gaussian"] + m["kl_categorical"] == pytest.approx(m["kl"], rel=1e-6)
    # the whole code's MI counts the category too: above the Gaussian part's (same batches, B = 50)
    assert m["mi_code_minibatch"] > m["mi_minibatch"] - 0.05
