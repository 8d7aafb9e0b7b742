"""vae_tf's LSTM layer against keras.layers.LSTM: the unrolled training path with its hand-written
backward pass gives Keras' outputs, final states and gradients (masks of every shape, initial
states, batches that do not split evenly, bfloat16), it is taken only where it applies, it
serialises as a Keras layer, and a text model's training step with it updates the weights as
Keras' own loop does."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from vae_tf.data import load_dataset
from vae_tf.models import build_vae
from vae_tf.models.text import text_settings
from vae_tf.networks import lstm as lstm_module
from vae_tf.networks.lstm import LSTM, lstm_sequence

D, H = 6, 8


def _mask(kind: str, batch: int, steps: int, rng) -> tf.Tensor | None:
    if kind == "none":
        return None
    if kind == "right_padded":  # a text batch: each row's words, then padding (some rows empty)
        lengths = rng.integers(0, steps + 1, size=batch)
        lengths[0] = 0
        return tf.constant(np.arange(steps)[None] < lengths[:, None])
    if kind == "random":  # holes anywhere, leading masked steps included
        mask = rng.random((batch, steps)) < 0.6
        mask[0, :2] = False
        return tf.constant(mask)
    return tf.constant(np.zeros((batch, steps), bool))  # every step masked


def _outputs_and_gradients(layer, x, state, mask, weights):
    """Outputs, final states and the gradients of a loss that reads all three, w.r.t. the inputs,
    the initial state and the weights, in a tf.function as a training step runs them."""

    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            watched = [x]
            if state is not None:
                tape.watch(state)
                watched += state
            y, h, c = layer(x, initial_state=state, mask=mask, training=True)
            loss = tf.reduce_sum(y * weights) + tf.reduce_sum(h ** 2) + tf.reduce_sum(tf.sin(c))
        return (y, h, c), tape.gradient(loss, watched + layer.trainable_variables)

    return step(x)


@pytest.mark.parametrize("batch, steps, mask_kind, return_sequences, with_state", [
    (8, 11, "none", True, True),
    (5, 7, "right_padded", False, False),
    (7, 6, "random", True, True),
    (1, 5, "random", True, True),
    (4, 4, "all_masked", True, True),
])
def test_training_path_gives_keras_outputs_states_and_gradients(batch, steps, mask_kind, return_sequences, with_state):
    rng = np.random.default_rng(batch * 100 + steps)
    x = tf.constant(rng.normal(size=(batch, steps, D)), tf.float32)
    mask = _mask(mask_kind, batch, steps, rng)
    state = [tf.constant(rng.normal(size=(batch, H)), tf.float32) for _ in range(2)] if with_state else None
    reference = keras.layers.LSTM(H, return_sequences=return_sequences, return_state=True)
    ours = LSTM(H, return_sequences=return_sequences, return_state=True)
    reference(x, initial_state=state)
    ours(x, initial_state=state)
    ours.set_weights([w + rng.normal(size=w.shape) * 0.3 for w in reference.get_weights()])  # a non-zero bias too
    reference.set_weights(ours.get_weights())
    assert ours.unrolled_path(x, training=True)
    weights = tf.constant(rng.normal(size=(batch, steps, H) if return_sequences else (batch, H)), tf.float32)

    (y_ref, h_ref, c_ref), g_ref = _outputs_and_gradients(reference, x, state, mask, weights)
    (y, h, c), g = _outputs_and_gradients(ours, x, state, mask, weights)
    for a, b in zip((y, h, c), (y_ref, h_ref, c_ref)):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)
    assert len(g) == len(g_ref)
    for a, b in zip(g, g_ref):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-5)
    if mask_kind == "all_masked":  # nothing read: the state passes through, the outputs stay zero
        np.testing.assert_array_equal(h.numpy(), state[0].numpy())
        np.testing.assert_array_equal(y.numpy(), 0.0)


def test_function_splits_the_batch_into_independent_parts_with_the_same_result():
    """lstm_sequence in 1, 2 and 3 parts (3 does not divide 8: uneven parts) gives one result."""
    rng = np.random.default_rng(1)
    x = tf.constant(rng.normal(size=(8, 5, D)), tf.float32)
    h0, c0 = (tf.constant(rng.normal(size=(8, H)), tf.float32) for _ in range(2))
    kernel, recurrent, bias = (tf.constant(rng.normal(size=s) * 0.4, tf.float32)
                               for s in ((D, 4 * H), (H, 4 * H), (4 * H,)))
    mask = _mask("random", 8, 5, rng)
    whole = lstm_sequence(x, h0, c0, kernel, recurrent, bias, mask=mask, parts=1)
    for parts in (2, 3):
        split = lstm_sequence(x, h0, c0, kernel, recurrent, bias, mask=mask, parts=parts)
        for a, b in zip(split, whole):
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7)


def test_bfloat16_training_path_stays_within_bfloat16_rounding_of_float32():
    rng = np.random.default_rng(2)
    x = tf.constant(rng.normal(size=(6, 5, D)), tf.float32)
    mask = _mask("right_padded", 6, 5, rng)
    ours = LSTM(H, return_sequences=True, return_state=True, dtype="mixed_bfloat16")
    reference = keras.layers.LSTM(H, return_sequences=True, return_state=True)
    ours(x), reference(x)
    reference.set_weights(ours.get_weights())
    y, h, c = ours(x, mask=mask, training=True)
    y_ref, _, c_ref = reference(x, mask=mask, training=True)
    assert y.dtype == tf.bfloat16 and ours.unrolled_path(tf.cast(x, tf.bfloat16), training=True)
    np.testing.assert_allclose(tf.cast(y, tf.float32).numpy(), y_ref.numpy(), atol=3e-2)
    np.testing.assert_allclose(tf.cast(c, tf.float32).numpy(), c_ref.numpy(), atol=6e-2)


@pytest.mark.parametrize("settings, training, steps, takes_it", [
    ({}, True, 11, True),
    ({}, False, 11, False),                                    # inference: Keras' loop
    ({}, True, None, False),                                   # length unknown when the graph is built
    ({}, True, lstm_module.MAX_UNROLLED_STEPS + 1, False),     # too long to unroll
    ({"dropout": 0.1}, True, 11, False),
    ({"recurrent_dropout": 0.1}, True, 11, False),
    ({"go_backwards": True}, True, 11, False),
    ({"unroll": True}, True, 11, False),
    ({"activation": "relu"}, True, 11, False),
    ({"recurrent_activation": "hard_sigmoid"}, True, 11, False),
    ({"use_bias": False}, True, 11, False),
    ({"zero_output_for_mask": True}, True, 11, False),
])
def test_the_unrolled_path_is_taken_only_where_it_applies(settings, training, steps, takes_it):
    layer = LSTM(H, **settings)
    layer.build((None, None, D))
    assert layer.unrolled_path(tf.TensorSpec([None, steps, D]), training=training) is takes_it


def test_settings_the_unrolled_path_does_not_take_still_train_as_keras_layers_do():
    """A setting the unrolled path leaves to Keras (here go_backwards with a mask) gives Keras'
    own result through the same layer class."""
    rng = np.random.default_rng(3)
    x = tf.constant(rng.normal(size=(4, 6, D)), tf.float32)
    mask = _mask("right_padded", 4, 6, rng)
    ours, reference = LSTM(H, go_backwards=True), keras.layers.LSTM(H, go_backwards=True)
    ours(x), reference(x)
    reference.set_weights(ours.get_weights())
    np.testing.assert_allclose(ours(x, mask=mask, training=True).numpy(),
                               reference(x, mask=mask, training=True).numpy(), rtol=1e-6, atol=1e-7)


def test_layer_serialises_as_a_keras_layer():
    layer = LSTM(H, return_sequences=True, name="decoder_lstm_0")
    restored = keras.layers.deserialize(keras.layers.serialize(layer))
    assert type(restored) is LSTM and restored.get_config() == layer.get_config()


def test_a_text_models_training_step_updates_the_weights_as_keras_loop_does(monkeypatch):
    """One epoch of a small sentence VAE, from the same weights and seed, with the unrolled path
    and with every LSTM left to Keras' loop (MAX_UNROLLED_STEPS = 0): the same losses and the same
    weights after training."""
    corpus = load_dataset("text_synthetic", seed=0, n_samples=256, val_fraction=0.0, test_fraction=0.0)

    calls = []

    def counted(*args, **kwargs):
        calls.append(1)
        return lstm_sequence(*args, **kwargs)

    monkeypatch.setattr(lstm_module, "lstm_sequence", counted)

    def train(max_steps: int):
        monkeypatch.setattr(lstm_module, "MAX_UNROLLED_STEPS", max_steps)
        calls.clear()
        keras.utils.set_random_seed(0)
        model = build_vae((), latent={"family": "gaussian", "latent_dim": 4}, likelihood={"name": "categorical"},
                          network={"kind": "lstm", "embedding": 8, "hidden": [16, 16]},
                          text=text_settings(corpus.metadata), seed=0)
        model.compile(optimizer=keras.optimizers.Adam(1e-2))
        assert all(type(rnn) is LSTM for rnn in (*model.encoder.rnns, *model.decoder.rnns))
        steps = len(corpus.x_train) // 32
        history = model.fit(corpus.resumable_pipeline("train", 32, seed=0, epochs=2), epochs=1, steps_per_epoch=steps,
                            verbose=0)
        assert bool(calls) is (max_steps > 0)  # traced through the unrolled path, or not at all
        return history.history["loss"][-1], [v.numpy() for v in model.trainable_variables]

    loss, weights = train(64)
    loss_keras, weights_keras = train(0)
    assert abs(loss - loss_keras) <= 1e-4 * abs(loss_keras)
    assert max(float(np.max(np.abs(a - b))) for a, b in zip(weights, weights_keras)) < 1e-4
