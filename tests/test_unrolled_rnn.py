"""vae_tf's LSTM and GRU layers against keras.layers.LSTM / GRU: the unrolled training path with
its hand-written backward pass gives Keras' outputs, final states and gradients (masks of every
shape, initial states, batches that do not split evenly, bfloat16), it is taken only where it
applies, the layers serialise as Keras layers, and a text model's training step with them updates
the weights as Keras' own loop does."""

from __future__ import annotations

import importlib

import keras
import numpy as np
import pytest
import tensorflow as tf

from vae_tf.data import load_dataset
from vae_tf.models import build_vae
from vae_tf.models.text import text_settings
from vae_tf.networks import unrolled_rnn
from vae_tf.networks.unrolled_rnn import GRU, LSTM, gru_sequence, lstm_sequence

D, H = 6, 8
OURS = {"lstm": (LSTM, keras.layers.LSTM), "gru": (GRU, keras.layers.GRU)}


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
            outputs = layer(x, initial_state=state, mask=mask, training=True)
            y, *states = (tf.cast(o, tf.float32) for o in outputs)  # the loss in float32 (bfloat16 layers)
            loss = tf.reduce_sum(y * weights) + sum(tf.reduce_sum(tf.sin(s) + s ** 2) for s in states)
        return outputs, tape.gradient(loss, watched + layer.trainable_variables)

    return step(x)


@pytest.fixture(params=["one_product", "per_gate"])
def recurrent_products(request, monkeypatch):
    """The recurrent kernel as one product for all gates (what these small layers take by default)
    or one product per gate (what layers of 128 units or more take): each is checked."""
    if request.param == "per_gate":
        monkeypatch.setattr(unrolled_rnn, "PER_GATE_KERNEL_SIZE", 0)
    else:
        assert H * 4 * H < unrolled_rnn.PER_GATE_KERNEL_SIZE
    return request.param


@pytest.mark.slow
@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("batch, steps, mask_kind, return_sequences, with_state", [
    (8, 11, "none", True, True),
    (5, 7, "right_padded", False, False),
    (7, 6, "random", True, True),
    (1, 5, "random", True, True),
    (4, 4, "all_masked", True, True),
])
def test_training_path_gives_keras_outputs_states_and_gradients(cell, batch, steps, mask_kind, return_sequences,
                                                               with_state, recurrent_products):
    rng = np.random.default_rng(batch * 100 + steps)
    x = tf.constant(rng.normal(size=(batch, steps, D)), tf.float32)
    mask = _mask(mask_kind, batch, steps, rng)
    n_states = 2 if cell == "lstm" else 1
    state = [tf.constant(rng.normal(size=(batch, H)), tf.float32) for _ in range(n_states)] if with_state else None
    ours_class, keras_class = OURS[cell]
    reference = keras_class(H, return_sequences=return_sequences, return_state=True)
    ours = ours_class(H, return_sequences=return_sequences, return_state=True)
    reference(x, initial_state=state)
    ours(x, initial_state=state)
    ours.set_weights([w + rng.normal(size=w.shape) * 0.3 for w in reference.get_weights()])  # a non-zero bias too
    reference.set_weights(ours.get_weights())
    assert ours.unrolled_path(x, training=True)
    weights = tf.constant(rng.normal(size=(batch, steps, H) if return_sequences else (batch, H)), tf.float32)

    outputs_ref, g_ref = _outputs_and_gradients(reference, x, state, mask, weights)
    outputs, g = _outputs_and_gradients(ours, x, state, mask, weights)
    assert ours.unrolled_in_training is True  # the call took the unrolled path, not Keras' loop
    assert len(outputs) == len(outputs_ref) == 1 + n_states
    for a, b in zip(outputs, outputs_ref):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)
    assert len(g) == len(g_ref)
    for a, b in zip(g, g_ref):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-5)
    if mask_kind == "all_masked":  # nothing read: the state passes through, the outputs stay zero
        np.testing.assert_array_equal(outputs[1].numpy(), state[0].numpy())
        np.testing.assert_array_equal(outputs[0].numpy(), 0.0)


def test_functions_split_the_batch_into_independent_parts_with_the_same_result(recurrent_products):
    """lstm_sequence and gru_sequence in 1, 2 and 3 parts (3 does not divide 8: uneven parts) give
    one result."""
    rng = np.random.default_rng(1)
    x = tf.constant(rng.normal(size=(8, 5, D)), tf.float32)
    h0, c0 = (tf.constant(rng.normal(size=(8, H)), tf.float32) for _ in range(2))
    mask = _mask("random", 8, 5, rng)

    def weights(gates: int, bias_shape):
        return [tf.constant(rng.normal(size=shape) * 0.4, tf.float32)
                for shape in ((D, gates * H), (H, gates * H), bias_shape)]

    lstm_weights, gru_weights = weights(4, (4 * H,)), weights(3, (2, 3 * H))
    for run in (lambda parts: lstm_sequence(x, h0, c0, *lstm_weights, mask=mask, parts=parts),
                lambda parts: gru_sequence(x, h0, *gru_weights, mask=mask, parts=parts)):
        whole = run(1)
        for parts in (2, 3):
            for a, b in zip(run(parts), whole):
                np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7)


@pytest.mark.slow
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_bfloat16_training_path_stays_within_bfloat16_rounding_of_float32(cell, recurrent_products):
    rng = np.random.default_rng(2)
    x = tf.constant(rng.normal(size=(6, 5, D)), tf.float32)
    mask = _mask("right_padded", 6, 5, rng)
    ours_class, keras_class = OURS[cell]
    ours = ours_class(H, return_sequences=True, return_state=True, dtype="mixed_bfloat16")
    reference = keras_class(H, return_sequences=True, return_state=True)
    ours(x), reference(x)
    reference.set_weights(ours.get_weights())
    weights = tf.constant(rng.normal(size=(6, 5, H)), tf.float32)
    outputs, grads = _outputs_and_gradients(ours, x, None, mask, weights)
    outputs_ref, grads_ref = _outputs_and_gradients(reference, x, None, mask, weights)
    assert outputs[0].dtype == tf.bfloat16 and ours.unrolled_in_training is True
    # Measured: outputs within 2.5e-3 (LSTM) and 5.4e-3 (GRU) of float32's, gradients within 1.6e-2
    # of their largest value; the bounds leave room for another CPU's kernels, not for a wrong gate.
    assert len(outputs) == len(outputs_ref) and len(grads) == len(grads_ref)
    for a, b in zip(outputs, outputs_ref):
        np.testing.assert_allclose(tf.cast(a, tf.float32).numpy(), b.numpy(), atol=1.5e-2)
    for a, b in zip(grads, grads_ref):  # the weights' gradients (float32 variables) and the input's
        scale = float(tf.reduce_max(tf.abs(b)))
        np.testing.assert_allclose(tf.cast(a, tf.float32).numpy(), b.numpy(), atol=2.5e-2 * scale)


@pytest.mark.parametrize("settings, training, steps, takes_it", [
    ({}, True, 11, True),
    ({}, False, 11, False),                                    # inference: Keras' loop
    ({}, True, None, False),                                   # length unknown when the graph is built
    ({}, True, unrolled_rnn.MAX_UNROLLED_STEPS + 1, False),     # too long to unroll
    ({"dropout": 0.1}, True, 11, False),
    ({"recurrent_dropout": 0.1}, True, 11, False),
    ({"go_backwards": True}, True, 11, False),
    ({"unroll": True}, True, 11, False),
    ({"activation": "relu"}, True, 11, False),
    ({"recurrent_activation": "hard_sigmoid"}, True, 11, False),
    ({"use_bias": False}, True, 11, False),
    ({"zero_output_for_mask": True}, True, 11, False),
])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_the_unrolled_path_is_taken_only_where_it_applies(cell, settings, training, steps, takes_it):
    layer = OURS[cell][0](H, **settings)
    layer.build((None, None, D))
    assert layer.unrolled_path(tf.TensorSpec([None, steps, D]), training=training) is takes_it


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_a_step_traced_for_xla_unrolls_only_sequences_short_enough_to_gain(cell):
    """XLA compiles an unrolled graph into one program that grows slower and longer to compile with
    the length (MAX_UNROLLED_STEPS_XLA): in a step traced for XLA a longer sequence takes Keras'
    loop, without XLA the same sequence is unrolled; the flag is the tracing context's alone."""
    layer = OURS[cell][0](H)
    layer.build((None, None, D))
    short, long = unrolled_rnn.MAX_UNROLLED_STEPS_XLA, unrolled_rnn.MAX_UNROLLED_STEPS_XLA + 1
    assert unrolled_rnn.MAX_UNROLLED_STEPS_XLA < long <= unrolled_rnn.MAX_UNROLLED_STEPS
    with unrolled_rnn.traced_for_xla():
        assert layer.unrolled_path(tf.TensorSpec([None, short, D]), training=True)
        assert not layer.unrolled_path(tf.TensorSpec([None, long, D]), training=True)
    assert layer.unrolled_path(tf.TensorSpec([None, long, D]), training=True)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("use_cudnn, gpu, takes_it", [
    ("auto", True, False),    # Keras would run cuDNN: its path
    ("auto", False, True),    # a CPU: the unrolled path
    (False, True, True),      # cuDNN turned off on a GPU: the unrolled path there too
    (True, False, False),     # cuDNN demanded: Keras' path (which says so if it cannot)
])
def test_where_keras_would_use_cudnn_it_does(monkeypatch, cell, use_cudnn, gpu, takes_it):
    """On a GPU (Keras' own cudnn_ok says yes, faked here: this machine has none) the layers leave
    the call to Keras' cuDNN path unless use_cudnn=False."""
    keras_rnn = importlib.import_module("keras.src.backend.tensorflow.rnn")  # the module, not its rnn()
    monkeypatch.setattr(keras_rnn, "cudnn_ok", lambda *args, **kwargs: gpu)
    layer = OURS[cell][0](H, use_cudnn=use_cudnn)
    assert layer.unrolled_path(tf.TensorSpec([None, 11, D]), training=True) is takes_it


def test_a_gru_with_the_reset_gate_before_the_product_takes_keras_loop():
    layer = GRU(H, reset_after=False)
    layer.build((None, None, D))
    assert GRU(H).unrolled_path(tf.TensorSpec([None, 11, D]), training=True)
    assert not layer.unrolled_path(tf.TensorSpec([None, 11, D]), training=True)


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


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_layers_serialise_as_keras_layers(cell):
    layer = OURS[cell][0](H, return_sequences=True, name=f"decoder_{cell}_0")
    restored = keras.layers.deserialize(keras.layers.serialize(layer))
    assert type(restored) is type(layer) and restored.get_config() == layer.get_config()


@pytest.mark.slow
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_a_text_models_training_step_updates_the_weights_as_keras_loop_does(monkeypatch, cell):
    """One epoch of a small sentence VAE (two layers in the encoder and the decoder), from the same
    weights and seed, with the unrolled path and with every layer left to Keras' loop
    (MAX_UNROLLED_STEPS = 0): the same losses and the same weights after training."""
    corpus = load_dataset("text_synthetic", seed=0, n_samples=256, val_fraction=0.0, test_fraction=0.0)

    calls = []

    sequence = unrolled_rnn._sequence

    def counted(*args, **kwargs):
        calls.append(args[0])
        return sequence(*args, **kwargs)

    monkeypatch.setattr(unrolled_rnn, "_sequence", counted)

    def train(max_steps: int):
        monkeypatch.setattr(unrolled_rnn, "MAX_UNROLLED_STEPS", max_steps)
        calls.clear()
        keras.utils.set_random_seed(0)
        model = build_vae((), latent={"family": "gaussian", "latent_dim": 4}, likelihood={"name": "categorical"},
                          network={"kind": cell, "embedding": 8, "hidden": [16, 16]},
                          text=text_settings(corpus.metadata), seed=0)
        model.compile(optimizer=keras.optimizers.Adam(1e-2))
        assert all(type(rnn) is OURS[cell][0] for rnn in (*model.encoder.rnns, *model.decoder.rnns))
        steps = len(corpus.x_train) // 32
        history = model.fit(corpus.resumable_pipeline("train", 32, seed=0, epochs=2), epochs=1, steps_per_epoch=steps,
                            verbose=0)
        # every layer traced its training step through the unrolled path, or none did
        assert set(calls) == ({cell} if max_steps > 0 else set())
        assert all(rnn.unrolled_in_training is (max_steps > 0) for rnn in (*model.encoder.rnns, *model.decoder.rnns))
        return history.history["loss"][-1], [v.numpy() for v in model.trainable_variables]

    loss, weights = train(64)
    loss_keras, weights_keras = train(0)
    assert abs(loss - loss_keras) <= 1e-4 * abs(loss_keras)
    assert max(float(np.max(np.abs(a - b))) for a, b in zip(weights, weights_keras)) < 1e-4


@pytest.mark.parametrize("cell_gates, units, per_gate", [
    (4, 127, False), (4, 128, True),   # LSTM: 4 x 128 x 128 = 65,536 entries, the first to reach 64 Ki
    (3, 147, False), (3, 148, True),   # GRU: 3 x 148 x 148 = 65,712
    (4, 50, False),                    # the shipped text config's LSTM
])
def test_per_gate_products_from_a_recurrent_kernel_of_64_ki_entries(cell_gates, units, per_gate):
    assert unrolled_rnn.per_gate_products(units, cell_gates) is per_gate
