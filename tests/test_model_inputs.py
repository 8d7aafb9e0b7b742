"""The inference methods (``encode``, ``reconstruct``, ``decode``) and the metrics that run the
encoder check what they are given, with one line per mistake (vae_tf/models/inputs.py): before,
an image without its batch axis or of another size was a many-line Keras shape error, NaN rows
came back as NaN codes, and a uint8 image given to a Bernoulli model was embedded and scored as
if it lay in [0, 1]. Values inside a traced function (the exported signatures) are not checked."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import assert_one_line
from vae_tf.data import load_dataset
from vae_tf.errors import DataError
from vae_tf.metrics.encode import encode_posterior, representation_function
from vae_tf.metrics.likelihood import elbo_estimate, iw_nll
from vae_tf.models import build_vae
from vae_tf.models.text import text_settings

SHAPE = (4, 4, 1)
LATENT = 3


def _image_model(likelihood="bernoulli"):
    keras.utils.set_random_seed(0)
    return build_vae(SHAPE, latent={"family": "gaussian", "latent_dim": LATENT}, likelihood={"name": likelihood},
                     network={"kind": "mlp", "hidden": [8]}, seed=0)


@pytest.fixture(scope="module")
def bernoulli():
    return _image_model()


@pytest.fixture(scope="module")
def batch():
    return np.random.default_rng(0).uniform(size=(5, *SHAPE)).astype(np.float32)


def _refused(call, match):
    with pytest.raises(DataError, match=match) as err:
        call()
    assert_one_line(str(err.value))
    return str(err.value)


@pytest.mark.parametrize("method", ["encode", "reconstruct"])
def test_an_image_without_its_batch_axis_is_told_to_add_one(bernoulli, batch, method):
    call = getattr(bernoulli, method)
    _refused(lambda: call(batch[0]), r"shape \(4, 4, 1\): one example without the batch axis.*x\[None\]")
    one = call(batch[0][None])
    first = call(batch)
    key = "z_mean" if method == "encode" else "x_mean"
    np.testing.assert_allclose(np.asarray(one[key])[0], np.asarray(first[key])[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("x, match", [
    (np.zeros((2, 5, 5, 1), np.float32), r"shape \(2, 5, 5, 1\) but the model reads batches of shape \(N, 4, 4, 1\)"),
    (np.zeros((2, 16), np.float32), r"shape \(2, 16\) but the model reads batches of shape \(N, 4, 4, 1\)"),
    (np.zeros((0, 4, 4, 1), np.float32), r"holds no examples"),
    (np.array([["a"] * 16] * 2).reshape(2, 4, 4, 1), r"not numeric \(dtype <U1"),
    ([[0.0] * 16, [0.0] * 3], r"not a rectangular array"),
])
def test_another_shape_or_kind_of_input_is_one_line(bernoulli, x, match):
    _refused(lambda: bernoulli.encode(x), match)


def test_non_finite_rows_are_named_not_encoded_as_nan_codes(bernoulli, batch):
    x = batch.copy()
    x[3, 1, 2, 0] = np.nan
    x[4, 0, 0, 0] = np.inf
    _refused(lambda: bernoulli.encode(x), r"x row 3 has NaN or Inf values \(2 of 5 rows do\)")


def test_values_outside_the_likelihoods_support_are_refused_and_scaled_ones_are_not(bernoulli, batch):
    pixels = np.round(batch * 255).astype(np.uint8)
    pixels[0] = 0  # the first row lies in [0, 1]: the message names row 1, the first outside
    message = _refused(lambda: bernoulli.encode(pixels), r"x row 1 has values outside \[0, 1\]")
    assert f"[0, {int(pixels.max())}]" in message and "bernoulli" in message and "/ 255" in message
    scaled = bernoulli.encode(pixels / 255.0)["z_mean"]
    assert np.all(np.isfinite(np.asarray(scaled)))
    # The metrics read inputs through the same check: IW-NLL no longer scores 0-255 pixels.
    _refused(lambda: iw_nll(bernoulli, pixels, k=2, chunk=2), r"x row 1 has values outside \[0, 1\]")
    _refused(lambda: representation_function(bernoulli)(pixels), r"x row 1 has values outside")


def test_a_gaussian_model_reads_any_finite_values_but_not_beyond_float32(batch):
    model = _image_model("gaussian")
    x = (batch - 0.5) * 40.0
    codes = np.asarray(model.encode(x)["z_mean"])
    assert codes.shape == (5, LATENT) and np.all(np.isfinite(codes))
    huge = x.astype(np.float64)
    huge[2, 0, 0, 0] = 1e300  # Inf as float32: encoded as NaN codes without the check
    _refused(lambda: model.encode(huge), r"x row 2 has NaN or Inf values \(or values beyond float32's range")
    _refused(lambda: model.encode(tf.constant(huge)), r"x row 2 has NaN or Inf values \(or values beyond float32's")


def test_model_call_and_predict_stay_unchecked_as_keras_models_are(bernoulli, batch):
    """``model(x)`` and ``predict`` are Keras' own entry points (a traced graph for predict); they
    reconstruct what they are given, as before, where ``reconstruct`` checks it."""
    pixels = batch * 255.0
    called = np.asarray(bernoulli(pixels))
    np.testing.assert_allclose(called, bernoulli.predict(pixels, verbose=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(called, np.asarray(bernoulli.reconstruction(pixels)["x_mean"]), rtol=1e-6)
    _refused(lambda: bernoulli.reconstruct(pixels), r"outside \[0, 1\]")


def test_decode_names_the_code_width_as_encode_s_embedding_for_a_joint_family(batch):
    keras.utils.set_random_seed(0)
    model = build_vae(SHAPE, latent={"family": "gaussian_categorical", "latent_dim": LATENT, "categories": 4},
                      network={"kind": "mlp", "hidden": [8]}, seed=0)
    encoded = model.encode(batch)
    assert np.asarray(model.decode(encoded["embedding"])["x_mean"]).shape == (5, *SHAPE)
    _refused(lambda: model.decode(encoded["z_mean"]),
             r"z has shape \(5, 3\) but the decoder reads codes of shape \(N, 7\), N >= 1: the width of encode's "
             r"embedding")


def test_tensors_and_numpy_give_the_same_codes_and_float64_is_read_as_float32(bernoulli, batch):
    from_numpy = np.asarray(bernoulli.encode(batch)["z_mean"])
    from_tensor = np.asarray(bernoulli.encode(tf.constant(batch))["z_mean"])
    from_float64 = np.asarray(bernoulli.encode(batch.astype(np.float64))["z_mean"])
    np.testing.assert_array_equal(from_numpy, from_tensor)
    np.testing.assert_array_equal(from_numpy, from_float64)
    _refused(lambda: bernoulli.encode(tf.constant(batch[:1, :2])), r"shape \(1, 2, 4, 1\)")


def test_decode_checks_its_codes_and_one_seed_row_per_code(bernoulli):
    z = np.random.default_rng(1).normal(size=(4, LATENT)).astype(np.float32)
    _refused(lambda: bernoulli.decode(z[0]), r"z has shape \(3,\): one code without the batch axis.*z\[None\]")
    _refused(lambda: bernoulli.decode(z[:, :2]), r"z has shape \(4, 2\) but the decoder reads codes of shape \(N, 3\)")
    bad = z.copy()
    bad[2, 0] = np.nan
    _refused(lambda: bernoulli.decode(bad), r"z row 2 has NaN or Inf values")
    seeds = np.arange(6, dtype=np.int32).reshape(3, 2)
    _refused(lambda: bernoulli.decode(z, seeds=seeds), r"z has 4 rows but 3 seed rows were given")
    out = bernoulli.decode(z, seeds=np.arange(8).reshape(4, 2))
    assert np.asarray(out["x_sample"]).shape == (4, *SHAPE)
    # Each row's sample depends on its own seed only.
    again = bernoulli.decode(z[1:2], seeds=np.arange(8).reshape(4, 2)[1:2])
    np.testing.assert_array_equal(np.asarray(out["x_sample"])[1], np.asarray(again["x_sample"])[0])


def test_traced_functions_pass_graph_tensors_through_unchecked(bernoulli, batch):
    encode = tf.function(bernoulli.encode, input_signature=[tf.TensorSpec((None, *SHAPE), tf.float32)])
    np.testing.assert_allclose(np.asarray(encode(batch)["z_mean"]), np.asarray(bernoulli.encode(batch)["z_mean"]),
                               rtol=1e-6)
    decode = tf.function(bernoulli.decode, input_signature=[tf.TensorSpec((None, LATENT), tf.float32)])
    assert decode(np.zeros((2, LATENT), np.float32))["x_mean"].shape == (2, *SHAPE)


# --- text ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def text_model():
    corpus = load_dataset("text_synthetic", seed=0, n_samples=60)
    keras.utils.set_random_seed(0)
    return build_vae((), latent={"family": "gaussian", "latent_dim": 2}, likelihood={"name": "categorical"},
                     network={"kind": "gru", "embedding": 4, "hidden": [8]}, text=text_settings(corpus.metadata),
                     seed=0), corpus


@pytest.mark.parametrize("x, match", [
    ("w1 w2 w3", r"x is one sentence \('w1 w2 w3'\) but a text model takes a batch.*\[sentence\]"),
    (b"w1 w2", r"x is one sentence"),
    ([["w1", "w2"], ["w3", "w4"]], r"shape \(2, 2\).*a list of words per sentence\? .*' '\.join\(words\)"),
    ([], r"shape \(0,\) but a text model takes a non-empty 1-D batch"),
    (["w1 w2", b"w3 \xff w4"], r"entry 1 is not valid UTF-8 \(byte 3: invalid start byte\); .*iconv"),
    (["w1 w2", 7], r"entry 1 is of type int, not a sentence \(str\); give one str per sentence"),
    (tf.constant([[1.0]]), r"float32 tensor of shape \(1, 1\) but a text model takes a non-empty 1-D batch"),
])
def test_text_models_say_what_a_batch_of_sentences_is(text_model, x, match):
    model, _ = text_model
    _refused(lambda: model.encode(x), match)


def test_text_models_take_lists_arrays_and_string_tensors_alike_and_empty_sentences(text_model):
    model, corpus = text_model
    sentences = list(corpus.x_train[:3]) + [""]
    as_list = np.asarray(model.encode(sentences)["z_mean"])
    as_bytes = [s.encode("utf-8") for s in sentences]  # what string tensors and Parquet columns give back
    for same in (np.asarray(sentences, dtype=object), np.asarray(sentences), tf.constant(sentences),
                 tf.Variable(sentences), as_bytes, np.asarray(as_bytes), np.asarray(as_bytes, dtype=object)):
        np.testing.assert_array_equal(as_list, np.asarray(model.encode(same)["z_mean"]))
    _refused(lambda: encode_posterior(model, tf.constant([b"w1", b"\xff\xfe w2"])), r"entry 1 is not valid UTF-8")
    assert as_list.shape == (4, 2) and np.all(np.isfinite(as_list))
    assert len(model.reconstruct(sentences)["text"]) == 4
    _refused(lambda: model.reconstruct("one sentence"), r"x is one sentence")
    _refused(lambda: model.decode(np.zeros(2, np.float32)), r"one code without the batch axis")
    # The metrics take a string tensor too, and give what they give for the same list.
    np.testing.assert_array_equal(encode_posterior(model, tf.constant(sentences))["embedding"],
                                  encode_posterior(model, sentences)["embedding"])
    _refused(lambda: elbo_estimate(model, "w1 w2"), r"x is one sentence")


def test_text_fit_and_evaluate_refuse_empty_sentences_as_the_training_data_sets_do(text_model):
    """encode takes an empty sentence (<eos> alone, as the exported signatures); fit trained on one
    and evaluate scored it without a word, where every training data set refuses it (docs/data.md),
    with XLA too (the sentences are tokenised before Keras sees them)."""
    model, corpus = text_model
    x = np.asarray(list(corpus.x_train[:4]) + [" \t "], dtype=object)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    before = _weights(model)
    _refused(lambda: model.fit(x, epochs=1, batch_size=4, verbose=0),
             r"^x has 1 empty or whitespace-only sentences \(first: entry 4\); remove them$")
    _refused(lambda: model.fit(x[:4], epochs=1, verbose=0, validation_data=(x,)), r"^validation_data has 1 empty")
    _refused(lambda: model.evaluate(["", "w1"], verbose=0), r"^x has 1 empty or whitespace-only .*entry 0")
    model.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=True)
    _refused(lambda: model.fit(x, epochs=1, batch_size=4, verbose=0), r"^x has 1 empty")
    for was, now in zip(before, _weights(model)):
        np.testing.assert_array_equal(was, now)  # nothing was trained
    assert np.asarray(model.encode([""])["embedding"]).shape == (1, 2)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))  # the module's model as the other tests found it


# --- fit and evaluate check their data as encode does --------------------------------------------

def _fresh(likelihood="bernoulli"):
    model = _image_model(likelihood)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    return model


def _weights(model):
    return [v.numpy().copy() for v in model.trainable_variables]


def _nan_at(batch, row):
    x = batch.copy()
    x[row, 1, 2, 0] = np.nan
    return x


@pytest.mark.parametrize("make, match", [
    (lambda b: (b * 255).astype(np.uint8), r"^x row 0 has values outside \[0, 1\].*/ 255"),
    (lambda b: b * 255, r"^x row 0 has values outside \[0, 1\]"),
    (lambda b: _nan_at(b, 3), r"^x row 3 has NaN or Inf values \(1 of 5 rows do\)"),
    (lambda b: b[..., 0], r"^x has shape \(5, 4, 4\) but the model reads batches of shape \(N, 4, 4, 1\)"),
    (lambda b: tf.data.Dataset.from_tensor_slices(b), r"^x is a dataset of single examples .*dataset.batch\(64\)"),
    (lambda b: tf.data.Dataset.from_tensor_slices(b[..., 0]).batch(2),
     r"^x is a dataset of batches of shape \(None, 4, 4\) but the model reads batches \(N, 4, 4, 1\)"),
    (lambda b: tf.data.Dataset.from_tensor_slices({"image": b}).batch(2), r"^x is a dataset of dicts \('image'\)"),
    (lambda b: tf.data.Dataset.from_tensor_slices((b * 255).astype(np.uint8)).batch(2),
     r"^x is a dataset of uint8 values, but the model's bernoulli likelihood reads floats in \[0, 1\]"),
    (lambda b: tf.data.Dataset.from_tensor_slices(np.full((4, *SHAPE), "a")).batch(2),
     r"^x is a dataset of string values"),
])
@pytest.mark.parametrize("method", ["fit", "evaluate"])
def test_fit_and_evaluate_refuse_bad_data_before_a_step_and_train_on_nothing(batch, make, match, method):
    """Before, Keras raised from inside the first step (a uint8 `Mul`, an unknown rank), or
    trained on: 0–255 values to loss ~5e8 and a NaN pixel to NaN weights, without a word."""
    model = _fresh()
    before = _weights(model)
    _refused(lambda: getattr(model, method)(make(batch), verbose=0), match)
    for old, new in zip(before, _weights(model)):
        np.testing.assert_array_equal(old, new)
    assert int(model.optimizer.iterations) == 0


@pytest.mark.parametrize("validation", [
    lambda b: b * 255, lambda b: (b * 255,), lambda b: tf.data.Dataset.from_tensor_slices(b),
])
def test_fit_checks_its_validation_data_before_training(batch, validation):
    model = _fresh()
    _refused(lambda: model.fit(batch, validation_data=validation(batch), epochs=1, verbose=0), r"^validation_data ")
    assert int(model.optimizer.iterations) == 0


@pytest.mark.slow
def test_a_dataset_of_another_numeric_dtype_trains_as_its_float32_cast(batch):
    """float64 batches (and integer ones for a likelihood on the real line) are cast, as arrays
    are; the same model on the float32 batches ends with the same weights."""
    def trained(x):
        model = _fresh("gaussian")
        history = model.fit(tf.data.Dataset.from_tensor_slices(x).batch(2), epochs=2, verbose=0)
        return history.history["loss"], _weights(model)

    whole = np.round(batch * 4)  # values 0..4, exact in every dtype
    want_loss, want_weights = trained(whole.astype(np.float32))
    for dtype in (np.float64, np.int32):
        loss, weights = trained(whole.astype(dtype))
        np.testing.assert_allclose(loss, want_loss, rtol=1e-6)
        for a, b in zip(weights, want_weights):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
