"""A text model compiled with ``jit_compile=True`` (XLA): its sentences are tokenised in the input
pipeline, its compiled steps read word ids and build the unrolled recurrences for XLA, and it
trains as the same model without XLA does (vae_tf.models.text, "XLA")."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import assert_one_line
from vae_tf.data import load_dataset
from vae_tf.errors import ConfigError
from vae_tf.models import build_vae
from vae_tf.models import text as text_module
from vae_tf.models.text import text_settings
from vae_tf.models.vae import VAE
from vae_tf.networks import unrolled_rnn


@pytest.fixture(scope="module")
def corpus():
    return load_dataset("text_synthetic", seed=0, n_samples=256, val_fraction=0.0, test_fraction=0.0)


def make(corpus, jit_compile):
    """A small sentence VAE reading the first 4 words of each sentence: XLA compiles the unrolled
    recurrences step by step, ~15 s for the corpus' 10 words, a few for 4."""
    keras.utils.set_random_seed(0)
    model = build_vae((), latent={"family": "gaussian", "latent_dim": 4}, likelihood={"name": "categorical"},
                      network={"kind": "lstm", "embedding": 8, "hidden": [16]},
                      text={**text_settings(corpus.metadata), "max_length": 4}, seed=0)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), jit_compile=jit_compile)
    return model


@pytest.mark.slow
def test_xla_trains_a_text_model_as_without_it_given_the_same_codes(monkeypatch, corpus):
    """The same model from the same weights, trained on the same batches of raw sentences with XLA
    and without: the same losses and weights. XLA draws its random numbers with kernels of its own,
    so z is the posterior mean in both runs here (the noise is the only thing that differs); the
    XLA run traced its step for XLA (one recurrent product for all gates) and never saw a string."""
    monkeypatch.setattr(VAE, "sample_code", lambda self, params, seed: self.latent.embedding(params))
    traced = []
    real_context = text_module.traced_for_xla

    def spy(on=True):
        traced.append(bool(on))
        return real_context(on)

    monkeypatch.setattr(text_module, "traced_for_xla", spy)
    batches = tf.data.Dataset.from_tensor_slices(corpus.x_train[:96]).batch(32)
    runs = {}
    for xla in (False, True):
        traced.clear()
        model = make(corpus, jit_compile=xla)
        assert model.jit_compile is xla
        history = model.fit(batches, epochs=2, verbose=0, shuffle=False, validation_data=batches)
        assert traced and set(traced) == {xla}  # each trace of the training step, in XLA's context or not
        runs[xla] = history.history["loss"] + history.history["val_loss"], [v.numpy() for v in model.trainable_variables], model
    (loss, weights, plain), (loss_xla, weights_xla, compiled) = runs[False], runs[True]
    np.testing.assert_allclose(loss_xla, loss, rtol=1e-4)
    assert max(float(np.max(np.abs(a - b))) for a, b in zip(weights, weights_xla)) < 1e-3
    # evaluate tokenises too, and gives what the model without XLA gives on the same weights
    plain.set_weights(compiled.get_weights())
    np.testing.assert_allclose(compiled.evaluate(batches, verbose=0), plain.evaluate(batches, verbose=0), rtol=1e-4)


def test_a_step_traced_for_xla_takes_one_recurrent_product_and_the_flag_is_restored():
    assert unrolled_rnn.per_gate_products(256, 4) is True
    with unrolled_rnn.traced_for_xla():
        assert unrolled_rnn.per_gate_products(256, 4) is False
        with unrolled_rnn.traced_for_xla(False):
            assert unrolled_rnn.per_gate_products(256, 4) is True
        assert unrolled_rnn.per_gate_products(256, 4) is False
    with pytest.raises(RuntimeError), unrolled_rnn.traced_for_xla():
        raise RuntimeError("a trace that failed")
    assert unrolled_rnn.per_gate_products(256, 4) is True


@pytest.mark.slow
@pytest.mark.parametrize("cell, units", [("lstm", 128), ("gru", 148)])
def test_a_recurrence_built_for_xla_equals_keras_layer_under_xla(cell, units):
    """An LSTM / GRU large enough for one product per gate outside XLA, built for XLA, forward and
    backward inside a ``jit_compile=True`` function: outputs and gradients equal Keras' layer's."""
    keras.utils.set_random_seed(3)
    layer_types = {"lstm": (unrolled_rnn.LSTM, keras.layers.LSTM), "gru": (unrolled_rnn.GRU, keras.layers.GRU)}[cell]
    ours, theirs = (kind(units, return_sequences=True) for kind in layer_types)
    x = tf.random.normal([6, 5, 12])
    ours.build(x.shape), theirs.build(x.shape)
    theirs.set_weights(ours.get_weights())

    def run(layer):
        @tf.function(jit_compile=True)
        def step(x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = layer(x, training=True)
                loss = tf.reduce_sum(y * tf.cos(tf.range(units, dtype=tf.float32)))
            return y, tape.gradient(loss, [x, *layer.trainable_variables])
        with unrolled_rnn.traced_for_xla():
            return step(x)

    (y, grads), (y_keras, grads_keras) = run(ours), run(theirs)
    assert ours.unrolled_in_training is True
    np.testing.assert_allclose(y, y_keras, atol=1e-5)
    for g, g_keras in zip(grads, grads_keras):
        np.testing.assert_allclose(g, g_keras, atol=1e-4)


def test_tokenized_maps_sentences_to_the_codecs_ids_and_leaves_the_rest(corpus):
    model = make(corpus, jit_compile=False)
    sentences = corpus.x_train[:5]
    ids = model.codec.encode(tf.constant(sentences)).numpy()
    np.testing.assert_array_equal(model.tokenized(sentences), ids)
    np.testing.assert_array_equal(model.tokenized(list(sentences)), ids)
    (batch,) = model.tokenized(tf.data.Dataset.from_tensor_slices(sentences).batch(5))
    np.testing.assert_array_equal(batch, ids)
    labels = np.arange(5)
    ((batch, y),) = model.tokenized(tf.data.Dataset.from_tensor_slices((sentences, labels)).batch(5))
    np.testing.assert_array_equal(batch, ids)
    np.testing.assert_array_equal(y, labels)
    x, y = model.tokenized((sentences, labels))
    np.testing.assert_array_equal(x, ids)
    assert y is labels
    already = tf.data.Dataset.from_tensor_slices(ids).batch(5)
    assert model.tokenized(already) is already
    assert model.tokenized(ids) is ids
    # prepare takes ids as they are, and sentences through the tokenizer
    np.testing.assert_array_equal(model.prepare(tf.constant(ids))[0], ids)
    np.testing.assert_array_equal(model.prepare(tf.constant(sentences))[0], ids)


def test_sentences_given_to_a_compiled_step_by_hand_are_a_one_line_error(corpus):
    """fit and evaluate tokenise; a custom loop that hands the XLA-compiled step raw sentences is
    told what to do instead of meeting XLA's missing-kernel error."""
    model = make(corpus, jit_compile=True)
    for step in (model.train_step, model.test_step):
        with pytest.raises(ConfigError) as err:
            step(tf.constant(corpus.x_train[:4]))
        assert_one_line(str(err.value))
        assert str(err.value).startswith("this text model is compiled with jit_compile=True, whose steps read word ids")


def test_keras_auto_leaves_xla_off_for_a_text_model_on_a_cpu(corpus):
    assert make(corpus, jit_compile="auto").jit_compile is False
    assert make(corpus, jit_compile=True).layers_without_xla() == []


@pytest.mark.slow
def test_text_lengths_benchmark_smoke(tmp_path):
    """benchmarks/text_lengths.py at smoke size: without XLA both recurrences are unrolled, in the
    Keras-loop variant under XLA neither is; speeds and warm-ups are positive, the speed is the
    one of the timed call and the table's ratio the one of the reported speeds. (Which lengths XLA
    unrolls is tests/test_unrolled_rnn.py's.)"""
    import json

    from tests.benchmark_helpers import run_script

    out = tmp_path / "lengths.json"
    proc = run_script("text_lengths.py", "--lengths", "3", "--variants", "no_xla", "xla_keras_loop",
                      "--warmup-steps", "4", "--steps", "4", "--rounds", "1", "--hidden", "8", "--embedding", "8",
                      "--latent", "2", "--json", str(out), timeout=600)
    rows = json.loads(out.read_text())["results"]["3"]
    assert rows["no_xla"]["unrolled"] == [True, True] and rows["no_xla"]["jit_compile"] is False
    assert rows["xla_keras_loop"]["unrolled"] == [False, False] and rows["xla_keras_loop"]["jit_compile"] is True
    assert rows["xla_keras_loop"]["max_unrolled_steps_xla"] == 0
    for row in rows.values():
        assert row["tokens_per_second"] > 0 and row["warmup_seconds"] > 0
        assert row["tokens_per_second"] == pytest.approx(4 * 64 * 4 / row["steady_seconds"], rel=1e-12)
    ratio = rows["no_xla"]["tokens_per_second"] / rows["xla_keras_loop"]["tokens_per_second"]
    assert f"| 3 (4) | no XLA | yes, yes | {rows['no_xla']['warmup_seconds']:.1f} | " in proc.stdout
    assert f"| {ratio:.2f} |" in proc.stdout
