"""Sentence VAEs: the tokenizer inside the model, the recurrent networks, the token likelihood
against an independent computation, generation in graph against the teacher-forced pass, every
remedy of the composed objective on text, the text metrics, and a SavedModel that takes and gives
raw strings without vae_tf."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy.special import log_softmax

from tests.conftest import assert_one_line, integer_transposes
from vae_tf.data import load_dataset
from vae_tf.errors import ConfigError, DataError
from vae_tf.export import export_model, load_vae
from vae_tf.models import build_vae
from vae_tf.models.text import TextCodec, teacher_forcing, text_settings
from vae_tf.networks.recurrent import BOS_ID, EOS_ID, PAD_ID, UNK_ID, RecurrentDecoder

WORDS = ["the", "cat", "sat", "on", "mat", "a", "dog", "ran"]
SMALL_NET = {"kind": "lstm", "embedding": 8, "hidden": [16]}


@pytest.fixture(scope="module")
def corpus():
    return load_dataset("text_synthetic", seed=0, n_samples=600)


def make(corpus, objective=None, network=None, latent=None, seed=0):
    keras.utils.set_random_seed(seed)
    model = build_vae((), latent=latent or {"family": "gaussian", "latent_dim": 2}, likelihood={"name": "categorical"},
                      network=network or SMALL_NET, objective=objective or {}, text=text_settings(corpus.metadata),
                      seed=seed)
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    return model


# --- the tokenizer inside the model ----------------------------------------------------------------

def test_codec_ids_follow_the_fixed_layout_and_round_trip():
    codec = TextCodec(WORDS, max_length=4)
    assert codec.table[:4] == ["<pad>", "<unk>", "<bos>", "<eos>"] and codec.vocab_size == 12
    ids = codec.encode(tf.constant(["The cat sat.", "a zebra ran", "the dog sat on the mat"])).numpy()
    # lower-cased, punctuation split off (". " is outside the vocabulary), unknown words -> <unk>,
    # padding 0, truncated to 4 words
    the, cat, sat, on, mat, a, dog, ran = range(4, 12)
    np.testing.assert_array_equal(ids, [[the, cat, sat, UNK_ID], [a, UNK_ID, ran, PAD_ID], [the, dog, sat, on]])
    text = codec.decode(tf.constant(ids), tf.constant([4, 3, 4])).numpy()
    assert [t.decode() for t in text] == ["the cat sat <unk>", "a <unk> ran", "the dog sat on"]


def test_a_sentences_own_special_tokens_are_unknown_words_not_specials():
    """A literal <pad> (or <bos>, <eos>, <unk>, in any case) inside a sentence is a word outside
    the vocabulary: <unk>, so the padding stays after the words and the encoder reads the sentence
    (a <pad> id inside would leave a gap, which the encoder refuses)."""
    codec = TextCodec(WORDS, max_length=6, split_punctuation=False)
    the, cat = 4, 5
    ids = codec.encode(tf.constant(["the <pad> cat", "<EOS> <bos> the <unk>"])).numpy()
    np.testing.assert_array_equal(ids, [[the, UNK_ID, cat, PAD_ID, PAD_ID, PAD_ID],
                                        [UNK_ID, UNK_ID, the, UNK_ID, PAD_ID, PAD_ID]])
    # the padding comes after the words, as the encoder requires
    words = ids != PAD_ID
    np.testing.assert_array_equal(words, np.arange(6)[None] < words.sum(axis=1)[:, None])


@pytest.mark.parametrize("vocabulary, match", [([], "at least one word"), (["a", "a"], "distinct words"),
                                               (["a", "<eos>"], "none of"), (["a"], "max_length")])
def test_bad_vocabularies_are_one_line_errors(vocabulary, match):
    with pytest.raises(ConfigError, match=match):
        TextCodec(vocabulary, max_length=0 if match == "max_length" else 3)


def test_teacher_forcing_shifts_by_one_and_ends_with_eos():
    inputs, targets = teacher_forcing(tf.constant([[5, 6, 7], [8, 0, 0]]))
    np.testing.assert_array_equal(inputs.numpy(), [[BOS_ID, 5, 6, 7], [BOS_ID, 8, 0, 0]])
    np.testing.assert_array_equal(targets.numpy(), [[5, 6, 7, EOS_ID], [8, EOS_ID, 0, 0]])


# --- the likelihood and the decoder ------------------------------------------------------------------

def test_sentence_log_likelihood_is_the_masked_sum_of_word_log_probabilities(corpus):
    """Against NumPy/SciPy: Σ over the words and <eos> of log softmax(logits)[w], padding ignored,
    and a sentence scores the same whatever padding its batch adds."""
    model = make(corpus)
    ids = model.codec.encode(tf.constant(corpus.x_test[:4]))
    z = tf.constant(np.random.default_rng(0).normal(size=(4, 2)), tf.float32)
    ours = model.log_likelihood(ids, z).numpy()
    inputs, targets = teacher_forcing(ids)
    logits = model.decoder([z, inputs], training=False).numpy()
    reference = [sum(log_softmax(logits[b, t])[targets[b, t]] for t in range(targets.shape[1]) if targets[b, t] != 0)
                 for b in range(4)]
    np.testing.assert_allclose(ours, reference, rtol=1e-5)
    padded = tf.pad(ids, [[0, 0], [0, 5]])  # more padding: same sentence, same log-likelihood
    np.testing.assert_allclose(model.log_likelihood(padded, z).numpy(), ours, rtol=1e-5)
    # What the metrics run (IW-NLL's thousands of decoder passes) never takes a gradient, so it does
    # not run the fused cross-entropy, which writes one, a [B, T, vocab] tensor, on every call.
    graph = tf.function(model.log_likelihood).get_concrete_function(ids, z).graph
    assert "SparseSoftmaxCrossEntropyWithLogits" not in {op.type for op in graph.get_operations()}


@pytest.mark.slow
def test_an_evaluation_step_scores_words_as_the_metrics_do_and_a_training_step_with_the_fused_op(corpus):
    """``model.evaluate`` (and fit's validation) takes no gradient, so its step scores the words as
    the metrics do, without the fused cross-entropy and the [B, T, vocab] gradient it writes; the
    training step keeps the fused op, whose gradient it uses. Both give the same terms for the same
    seed, and the evaluation's loss is the negative ELBO of those terms."""
    model = make(corpus)
    sentences = tf.constant(corpus.x_test[:8])

    def op_types(fn):
        return {op.type for op in tf.function(fn).get_concrete_function(sentences).graph.get_operations()}

    assert "SparseSoftmaxCrossEntropyWithLogits" not in op_types(model.test_step)
    assert "SparseSoftmaxCrossEntropyWithLogits" in op_types(model.train_step)
    ids, target = model.prepare(sentences)
    x = model.encoder_input(ids)
    start, terms = model.seed_generator.state.numpy(), {}
    for gradient in (True, False):
        model.seed_generator.state.assign(start)  # the same z for both
        terms[gradient] = model.compute_terms(x, target=target, gradient=gradient)
    np.testing.assert_allclose(terms[False]["z"], terms[True]["z"])
    np.testing.assert_allclose(terms[False]["reconstruction"], terms[True]["reconstruction"], rtol=1e-5)
    assert np.all(terms[False]["reconstruction"].numpy() < 0)
    model.seed_generator.state.assign(start)  # the evaluation's one step draws that z too
    logs = model.evaluate(sentences, batch_size=8, verbose=0, return_dict=True)
    assert logs["loss"] == pytest.approx(-float(np.mean(terms[False]["elbo"])), rel=1e-5)  # β = 1


@pytest.mark.slow
@pytest.mark.parametrize("cell, injection, skip", [("lstm", "both", False), ("gru", "init", False),
                                                    ("lstm", "concat", True), ("gru", "both", True)])
def test_greedy_generation_in_graph_is_the_argmax_chain_of_the_teacher_forced_pass(cell, injection, skip):
    """Generation steps the very cells the teacher-forced pass trains: decoding greedily must give
    the sequence obtained by re-running the teacher-forced decoder on the prefix so far and taking
    the argmax of the last position (excluding <pad> and <bos>), stopping at <eos>."""
    keras.utils.set_random_seed(3)
    decoder = RecurrentDecoder(cell, code_size=3, vocab_size=9, max_length=6, embedding=5, hidden=[7, 6],
                               z_injection=injection, skip=skip)
    z = tf.constant(np.random.default_rng(1).normal(size=(3, 3)) * 3, tf.float32)
    ids, lengths = tf.function(decoder.generate)(z)
    for row in range(3):
        prefix, words = [BOS_ID], []
        while len(words) < 6:  # max_length: the 7th position can only be <eos>
            logits = decoder([z[row:row + 1], tf.constant([prefix])]).numpy()[0, -1]
            logits[[PAD_ID, BOS_ID]] = -np.inf
            chosen = int(np.argmax(logits))
            if chosen == EOS_ID:
                break
            words.append(chosen)
            prefix.append(chosen)
        assert int(lengths[row]) == len(words), (row, words, ids[row])
        np.testing.assert_array_equal(ids[row, :len(words)].numpy(), words)
        assert np.all(ids[row, len(words):].numpy() == PAD_ID)


@pytest.mark.slow
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_encoder_state_is_the_masked_layers_final_state(corpus, cell):
    """The encoder reads the padded batch unmasked and takes each sentence's state at its last
    word: the same parameters as stacked Keras layers reading with the padding masked (empty
    sentences included: their state is the zero initial state), in training and in inference; ids
    with padding between words are refused."""
    model = make(corpus, network={"kind": cell, "embedding": 8, "hidden": [16, 12]})
    ids = model.codec.encode(tf.constant(np.array([*corpus.x_test[:5], "", "the"], dtype=object)))
    assert int(tf.reduce_min(tf.reduce_sum(tf.cast(ids != PAD_ID, tf.int32), axis=1))) == 0  # an empty row
    layer_class = keras.layers.LSTM if cell == "lstm" else keras.layers.GRU
    masked = [layer_class(rnn.units, return_sequences=True, return_state=True) for rnn in model.encoder.rnns]
    for training in (False, True):
        h, mask = model.encoder.embed(ids), tf.not_equal(ids, PAD_ID)
        for layer, rnn in zip(masked, model.encoder.rnns):
            if not layer.built:
                layer(h)
                layer.set_weights(rnn.get_weights())
            h, state = layer(h, mask=mask)[:2]
        expected = model.encoder.params(state).numpy()
        np.testing.assert_allclose(model.encoder(ids, training=training).numpy(), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(tf.errors.InvalidArgumentError, match="padding must come after the words"):
        model.encoder(tf.constant([[5, PAD_ID, 6, PAD_ID]]))


def test_the_decoder_transposes_no_integer_tensor_in_training_or_generation():
    """Neither the teacher-forced pass's gradient (z at every step is broadcast: the gradient of
    `tf.repeat`'s tile transposes integer shapes) nor generation (the ids come out of the loop
    `[T, B]`) runs an integer `Transpose`, which TensorFlow 2.21 with oneDNN reports with an error
    line on every CPU."""
    keras.utils.set_random_seed(0)
    decoder = RecurrentDecoder("lstm", code_size=2, vocab_size=12, max_length=5, embedding=4, hidden=[6],
                               z_injection="both", skip=True)
    z, ids = tf.zeros((3, 2)), tf.constant([[BOS_ID, 5, 6, 7]] * 3)
    decoder([z, ids])

    @tf.function
    def gradients(z, ids):
        with tf.GradientTape() as tape:
            tape.watch(z)
            loss = tf.reduce_sum(decoder([z, ids], training=True))
        return tape.gradient(loss, [z, *decoder.trainable_variables])

    seeds = tf.constant([[1, 1]] * 3)
    for function in (gradients.get_concrete_function(z, ids), tf.function(decoder.generate).get_concrete_function(z),
                     tf.function(decoder.generate).get_concrete_function(z, seeds)):
        assert integer_transposes(function) == [], function.name
    ids, lengths = decoder.generate(tf.random.normal((3, 2)))
    assert ids.dtype == tf.int32 and ids.shape == (3, 5)
    # The float32 round trip keeps every id up to the largest vocabulary allowed.
    from vae_tf.networks.recurrent import MAX_VOCABULARY, _transpose_ids

    stacked = np.array([[0, 1, 2], [MAX_VOCABULARY - 1, MAX_VOCABULARY - 2, 12_345_678]], np.int32)
    np.testing.assert_array_equal(_transpose_ids(tf.constant(stacked)).numpy(), stacked.T)


def test_a_vocabulary_beyond_float32_s_exact_integers_is_a_one_line_error():
    with pytest.raises(ConfigError, match="at most 16,777,216 words") as err:
        RecurrentDecoder("gru", code_size=2, vocab_size=2 ** 24 + 1, max_length=5)
    assert_one_line(str(err.value))


def test_sampled_generation_is_reproducible_per_row_and_differs_from_greedy():
    keras.utils.set_random_seed(0)
    decoder = RecurrentDecoder("lstm", code_size=2, vocab_size=30, max_length=8, embedding=4, hidden=[8])
    z = tf.zeros((4, 2))
    seeds = tf.constant([[1, 1], [1, 2], [1, 3], [1, 4]])
    first, _ = decoder.generate(z, seeds=seeds)
    again, _ = decoder.generate(z, seeds=seeds)
    np.testing.assert_array_equal(first.numpy(), again.numpy())
    row, _ = decoder.generate(z[:1], seeds=seeds[2:3])  # a row's draws depend on its seed alone
    np.testing.assert_array_equal(row.numpy()[0], first.numpy()[2])
    assert len({tuple(r) for r in first.numpy()}) > 1  # four seeds, not one sentence
    greedy, _ = decoder.generate(z)  # argmax: the same code gives the same sentence in every row
    assert len({tuple(r) for r in greedy.numpy()}) == 1
    assert any(tuple(r) != tuple(greedy.numpy()[0]) for r in first.numpy())


def test_sampled_words_follow_the_models_softmax_with_unk_and_never_pad_or_bos():
    """A sample is a draw from the trained model: the first word's frequencies over 3,000 seeds
    match the teacher-forced softmax after <bos> renormalised over all but <pad> and <bos> (a
    chi-square test), <unk> included (it was banned, which moved its mass onto the other words
    and <eos>: shorter, emptier samples from a model with many unknown words)."""
    from scipy.stats import chisquare

    keras.utils.set_random_seed(5)
    decoder = RecurrentDecoder("gru", code_size=2, vocab_size=7, max_length=1, embedding=3, hidden=[4])
    decoder([tf.zeros((1, 2)), tf.constant([[BOS_ID]])])  # built
    kernel, bias = decoder.logits.kernel, decoder.logits.bias
    bias.assign(np.array([0.0, 1.5, 0.0, 0.2, -0.5, 0.4, 0.1], np.float32))  # <unk> the likeliest word
    kernel.assign(kernel * 0.1)
    z = tf.constant([[0.3, -0.7]])
    logits = decoder([z, tf.constant([[BOS_ID]])]).numpy()[0, 0].astype(np.float64)
    logits[[PAD_ID, BOS_ID]] = -np.inf
    p = np.exp(logits - logits.max())
    p /= p.sum()
    n = 3000
    ids, lengths = tf.function(decoder.generate)(tf.repeat(z, n, axis=0),
                                                 seeds=tf.stack([tf.fill([n], 7), tf.range(n)], axis=1))
    first = np.where(lengths.numpy() > 0, ids.numpy()[:, 0], EOS_ID)  # an empty sentence drew <eos>
    counts = np.bincount(first, minlength=7)
    assert counts[PAD_ID] == counts[BOS_ID] == 0 and counts[UNK_ID] > 0.25 * n
    drawable = p > 0
    assert chisquare(counts[drawable], n * p[drawable]).pvalue > 1e-3, (counts, n * p)


@pytest.mark.parametrize("temperature", [0.5, 2.0, 0.01])
def test_sampling_at_a_temperature_draws_from_the_softmax_of_the_logits_over_it(temperature):
    """``generate(..., temperature=T)`` draws from softmax(logits / T): the first word's
    frequencies over 3,000 seeds against that distribution, computed from the teacher-forced
    logits (a chi-square test), which for these logits differs clearly from T = 1's; at a low
    temperature every draw is the greedy word."""
    from scipy.stats import chisquare

    keras.utils.set_random_seed(5)
    decoder = RecurrentDecoder("gru", code_size=2, vocab_size=7, max_length=1, embedding=3, hidden=[4])
    decoder([tf.zeros((1, 2)), tf.constant([[BOS_ID]])])  # built
    decoder.logits.bias.assign(np.array([0.0, 1.5, 0.0, 0.2, -0.5, 0.4, 0.1], np.float32))
    decoder.logits.kernel.assign(decoder.logits.kernel * 0.1)
    z = tf.constant([[0.3, -0.7]])
    logits = decoder([z, tf.constant([[BOS_ID]])]).numpy()[0, 0].astype(np.float64)
    drawable = np.ones(7, bool)
    drawable[[PAD_ID, BOS_ID]] = False

    def softmax(scaled):
        p = np.where(drawable, np.exp(scaled - scaled[drawable].max()), 0.0)
        return p / p.sum()

    p, p_model = softmax(logits / temperature), softmax(logits)
    n = 3000
    ids, lengths = tf.function(decoder.generate)(tf.repeat(z, n, axis=0),
                                                 seeds=tf.stack([tf.fill([n], 7), tf.range(n)], axis=1),
                                                 temperature=temperature)
    counts = np.bincount(np.where(lengths.numpy() > 0, ids.numpy()[:, 0], EOS_ID), minlength=7)
    if temperature < 0.1:
        greedy, _ = decoder.generate(z)
        assert counts[int(greedy.numpy()[0, 0])] == n == counts[int(np.argmax(p))], counts
        return
    assert chisquare(counts[drawable], n * p[drawable]).pvalue > 1e-3, (counts, n * p)
    assert chisquare(counts[drawable], n * p_model[drawable]).pvalue < 1e-6, (counts, n * p_model)


@pytest.mark.slow
def test_a_text_models_temperature_is_checked_and_its_samples_reproducible(corpus):
    model = make(corpus)
    z = np.random.default_rng(0).normal(size=(6, 2)).astype(np.float32)
    seeds = np.stack([np.zeros(6, np.int64), np.arange(6)], axis=1)
    assert not np.array_equal(model.decode(z, seeds=seeds, temperature=0.7)["text"].numpy(),
                              model.decode(z, seeds=seeds, temperature=3.0)["text"].numpy())
    hot = model.sample(seeds, temperature=1.5)
    np.testing.assert_array_equal(hot["text"].numpy(), model.sample(seeds, temperature=1.5)["text"].numpy())
    for bad in (0, -1.0, float("nan"), float("inf"), "hot", True):
        with pytest.raises(ConfigError, match=r"temperature must be a number > 0") as err:
            model.sample(seeds, temperature=bad)
        assert_one_line(str(err.value))
    with pytest.raises(ConfigError, match=r"temperature applies to sampled decoding; give seeds"):
        model.decode(z, temperature=0.5)
    # A valid temperature as a 0-d tensor or array was refused as "not a number"
    for given in (tf.constant(1.5), np.array(1.5), np.float32(1.5)):
        np.testing.assert_array_equal(model.sample(seeds, temperature=given)["text"].numpy(), hot["text"].numpy())
    with pytest.raises(ConfigError, match=r"temperature must be a number > 0"):
        model.sample(seeds, temperature=np.array([1.5, 2.0]))
    # No seed rows: the message blamed shape [0], which the derived decode seeds had, not the caller's [0, 2]
    with pytest.raises(ConfigError, match=r"^seeds has no rows; give at least one, shape \[n >= 1, 2\]"):
        model.sample(np.zeros((0, 2), np.int32))
    # A str holding a lone surrogate (os.fsdecode, errors="surrogateescape") is named, one line
    with pytest.raises(DataError, match=r"^x entry 1 is not valid Unicode text \(a lone surrogate at character 2,"):
        model.encode(["fine", "a \udcff b"])


@pytest.mark.slow
def test_text_tables_decode_in_graph_what_the_eager_methods_decode(corpus):
    """The run's text tables call the model's traced signatures (vae_tf.export.serving_functions)
    instead of its eager methods: the same sentences, greedy and sampled (stateless seeds), after a
    little training so that the decodes are not all one sentence."""
    from vae_tf import plots

    model = make(corpus, seed=3)
    model.fit(corpus.pipeline("train", 64).take(4), epochs=1, verbose=0)
    x = corpus.split("test")[0][:6]
    tables = plots.text_tables(model, x, n=6, steps=5, seed=4)

    def texts(values):  # as the tables write them (Markdown-escaped: tests/test_plots.py)
        return [plots.markdown_text(v.decode("utf-8")) for v in np.asarray(values).tolist()]

    sentences = np.asarray([str(s) for s in x], dtype=object)
    for row, (source, decoded) in enumerate(zip(sentences, texts(model.reconstruct(sentences)["text"]))):
        assert f"| {plots.markdown_text(source)} | {decoded or '∅'} |" in tables["reconstructions.md"], row
    seeds = np.stack([np.full(6, 4, np.int32), np.arange(6, dtype=np.int32)], axis=1)
    drawn = model.sample(seeds)
    for greedy, sampled in zip(texts(model.decode(drawn["z"])["text"]), texts(drawn["text"])):
        assert f"| {greedy or '∅'} | {sampled or '∅'} |" in tables["samples.md"]
    ends = model.latent.embedding(model.posterior_params(sentences[:2])).numpy()
    line = np.linspace(0.0, 1.0, 5)[:, None]
    for t, decoded in zip(line[:, 0], texts(model.decode(((1 - line) * ends[0] + line * ends[1]).astype(np.float32))["text"])):
        assert f"| {t:.2f} | {decoded or '∅'} |" in tables["interpolation.md"]


def test_word_dropout_replaces_words_with_unk_while_training_only():
    """Bowman et al.: each input word (not <bos>, not padding) becomes <unk> with probability p."""
    keras.utils.set_random_seed(0)
    decoder = RecurrentDecoder("gru", code_size=2, vocab_size=50, max_length=40, embedding=4, hidden=[4],
                               word_dropout=0.3)
    ids = tf.constant(np.concatenate([[[BOS_ID]] * 200, np.random.default_rng(0).integers(4, 50, (200, 30)),
                                      np.zeros((200, 9), np.int64)], axis=1), tf.int32)
    trained = decoder.drop_words(ids, training=True).numpy()
    evaluated = decoder.drop_words(ids, training=False).numpy()
    words = ids.numpy()[:, 1:31]
    dropped = trained[:, 1:31] == UNK_ID
    assert abs(dropped.mean() - 0.3) < 0.02
    assert np.all(trained[:, 0] == BOS_ID) and np.all(trained[:, 31:] == PAD_ID)
    np.testing.assert_array_equal(trained[:, 1:31][~dropped], words[~dropped])
    np.testing.assert_array_equal(evaluated, ids.numpy())


def test_skip_decoder_feeds_z_into_every_layer_and_the_output():
    """Dieng et al.: with skip, z reaches each layer directly. Probe: the gradient of the output
    w.r.t. z with the first layer's contribution cut (its output zeroed) is non-zero with skip, and
    zero without (z then enters the first layer only)."""
    def gradient_through_upper_layers(skip):
        keras.utils.set_random_seed(0)
        decoder = RecurrentDecoder("lstm", code_size=3, vocab_size=12, max_length=5, embedding=4, hidden=[6, 6],
                                   z_injection="concat", skip=skip)
        first = decoder.rnns[0]
        original = first.call
        first.call = lambda *a, **k: [tf.zeros_like(t) for t in original(*a, **k)]
        z = tf.Variable(np.ones((2, 3), np.float32))
        with tf.GradientTape() as tape:
            out = tf.reduce_sum(decoder([z, tf.constant([[BOS_ID, 5, 6], [BOS_ID, 7, 8]])]))
        gradient = tape.gradient(out, z)
        return 0.0 if gradient is None else float(tf.norm(gradient))

    assert gradient_through_upper_layers(True) > 0
    assert gradient_through_upper_layers(False) == 0


# --- the composed objective on text ----------------------------------------------------------------

TEXT_REMEDIES = {
    "plain": {},
    "annealing": {"kl_weight": {"kind": "linear", "steps": 10, "start": 0.1}},
    "control": {"kl_weight": {"kind": "control", "set_point": 2.0}},
    "capacity": {"kl_weight": {"kind": "capacity", "capacity_max": 2.0, "capacity_steps": 10}},
    "aggressive": {"inference": {"kind": "aggressive", "max_inner_steps": 4, "check_every": 2}},
    "mi_q": {"regularizers": [{"kind": "mi_q", "q_network": {"kind": "mlp", "hidden": [8]}}]},
    "fgsm_on_embeddings": {"input_noise": {"kind": "fgsm", "epsilon": 0.05}},
    "gaussian_on_embeddings": {"input_noise": {"kind": "gaussian", "sigma": 0.1}},
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TEXT_REMEDIES))
def test_every_remedy_trains_on_text(name, corpus):
    network = {**SMALL_NET, "word_dropout": 0.2, "skip": name == "plain"}
    model = make(corpus, TEXT_REMEDIES[name], network)
    model(corpus.x_train[:2])
    before = {v.path: v.numpy().copy() for v in model.trainable_variables}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = model.fit(corpus.pipeline("train", 32), validation_data=corpus.pipeline("val", 64), epochs=1,
                            steps_per_epoch=4, verbose=0).history
    # Every weight learns, the encoder's word embeddings included (they are looked up inside the
    # gradient tape; with the lookup outside it they got no gradient and stayed at their init).
    assert not [str(w.message) for w in caught if "Gradients do not exist" in str(w.message)]
    unchanged = [path for path, value in before.items()
                 if np.array_equal(value, next(v for v in model.trainable_variables if v.path == path).numpy())]
    assert not unchanged, unchanged
    for key, values in history.items():
        assert np.all(np.isfinite(values)), (key, values)
    assert history["reconstruction"][0] < 0 and history["kl"][0] >= 0
    if "input_noise" in TEXT_REMEDIES[name]:
        assert history["perturbation_linf"][0] > 0  # the embeddings were perturbed
    if name == "mi_q":  # Q reads the decoder's word probabilities
        assert model.regularizers[0].q_network.inputs[0].shape[1:] == (corpus.metadata["max_length"] + 1,
                                                                        model.codec.vocab_size)


@pytest.mark.slow
def test_pretraining_trains_the_text_encoder(corpus):
    from vae_tf.remedies.pretraining import pretrain_encoder, split_labelled

    model = make(corpus)
    _, x, y = split_labelled(corpus, 0.3, seed=0)
    before = [w.numpy().copy() for w in model.encoder.weights]
    result = pretrain_encoder(model, x, y, epochs=2, batch_size=32)
    assert np.isfinite(result["pretrain_loss"][-1])
    assert all(not np.array_equal(b, w.numpy()) for b, w in zip(before, model.encoder.weights))


def test_text_models_refuse_array_networks_and_likelihoods(corpus):
    with pytest.raises(ConfigError, match="text data needs a recurrent network"):
        build_vae((), network={"kind": "mlp"}, likelihood={"name": "categorical"}, text=text_settings(corpus.metadata))
    with pytest.raises(ConfigError, match="text data needs model.likelihood.name=categorical"):
        build_vae((), network=SMALL_NET, likelihood={"name": "bernoulli"}, text=text_settings(corpus.metadata))
    with pytest.raises(ConfigError, match="reads sentences; this data set has arrays"):
        build_vae((8, 8, 1), network=SMALL_NET)
    # Both wrong (an image config on a text data set): one error naming both, and the text config
    with pytest.raises(ConfigError, match=r"^text data needs a recurrent network and the categorical likelihood, got "
                                          r"model.network.kind=conv and model.likelihood.name=bernoulli: start from a "
                                          r"text config \(--config training/configs/text_synthetic.yaml\)"):
        build_vae((), network={"kind": "conv"}, likelihood={"name": "bernoulli"}, text=text_settings(corpus.metadata))


def test_the_fitted_mi_bound_says_it_is_for_image_models(corpus):
    """It read sentences as float32 and failed inside NumPy ("could not convert string to float")."""
    from vae_tf.metrics import fit_mi_bound

    with pytest.raises(ConfigError, match=r"^fit_mi_bound fits its Q network on decoded images .* a text model's "
                                          r"I\(x; z\) is evaluate_model's mi") as err:
        fit_mi_bound(make(corpus), corpus.x_train[:16], steps=1)
    assert "\n" not in str(err.value)


@pytest.mark.slow
def test_fitting_a_text_model_on_arrays_is_a_one_line_error(corpus):
    """It was TensorFlow's "Tensor conversion requested dtype string for Tensor with dtype float32"."""
    model = make(corpus)
    with pytest.raises(DataError, match=r"^this text model trains on sentences \(strings, one per example\), got "
                                        r"float32 values of shape \[None, 8, 8, 1\]; give it sentences") as err:
        model.fit(np.zeros((16, 8, 8, 1), np.float32), epochs=1, verbose=0)
    assert "\n" not in str(err.value)
    assert np.isfinite(model.fit(corpus.pipeline("train", 32).take(2), epochs=1, verbose=0).history["loss"][0])


@pytest.mark.parametrize("overrides, message", [
    (["data.name=mnist"], "model.network.kind=lstm reads sentences; this data set has arrays"),
    (["data.name=text_synthetic", "model.network.kind=mlp", "model.likelihood.name=bernoulli"],
     "text data needs a recurrent network and the categorical likelihood"),
])
def test_a_model_of_the_other_kind_than_the_data_set_is_refused_before_the_data_loads(overrides, message, monkeypatch):
    """The text config on MNIST (was: Keras downloading MNIST first, or failing offline), an image
    model on the synthetic corpus (was: the corpus generated first): refused from the data set's
    registered kind, before anything loads."""
    import vae_tf.data
    from training.config import load_config
    from training.train import prepare

    def no_loading(*args, **kwargs):
        raise AssertionError("the data set was loaded")

    monkeypatch.setattr(vae_tf.data, "load_dataset", no_loading)
    config = load_config(Path(__file__).resolve().parents[1] / "training" / "configs" / "text_synthetic.yaml", overrides)
    with pytest.raises(ConfigError, match=message):
        prepare(config, tf.distribute.get_strategy())


@pytest.mark.slow
def test_iw_nll_bounds_the_negative_elbo_and_per_word_values_divide_by_the_scored_positions(corpus):
    from vae_tf.metrics import elbo_estimate, evaluate_model, iw_nll

    model = make(corpus)
    model.fit(corpus.pipeline("train", 32), epochs=1, steps_per_epoch=10, verbose=0)
    x = corpus.x_test[:40]
    elbo = elbo_estimate(model, x, num_samples=50, seed=0)["elbo"]
    nll = iw_nll(model, x, k=50, chunk=10, seed=0)
    assert nll <= -elbo + 0.05  # L_K >= ELBO (Burda et al.)
    result = evaluate_model(model, corpus, max_examples=40, iw_k=20, iw_chunk=10, tsne=False, disentanglement=False)
    words = np.mean([len(s.split()) + 1 for s in x])  # 10-token sentences and <eos>
    m = result["metrics"]
    assert m["nll_per_word"] == pytest.approx(m["iw_nll"] / words, rel=1e-6)
    assert m["perplexity"] == pytest.approx(np.exp(m["iw_nll"] / words), rel=1e-6)
    # unk_rate: the evaluated words outside the training split's vocabulary, counted here from the
    # sentences' words and the vocabulary list (the whole test split: no subsample)
    whole = evaluate_model(model, corpus, iw_k=0, probe=False, tsne=False, disentanglement=False)["metrics"]
    known = set(corpus.metadata["vocabulary"])
    words = [w for s in corpus.x_test for w in s.split()]
    expected = sum(w not in known for w in words) / len(words)
    assert expected > 0 and whole["unk_rate"] == pytest.approx(expected, rel=1e-12)
    # The minibatch MI of a text model uses jxhe's text batches: B = 32 sentences of one length
    # (it used the image setting, B = 50: a higher cap, log 50, and not comparable with the papers)
    from vae_tf.metrics import mutual_information_minibatch

    codes = model.encode(corpus.x_test)
    lengths = [len(s.split()) + 1 for s in corpus.x_test]
    mi = {b: mutual_information_minibatch(codes["z_mean"].numpy(), codes["z_log_var"].numpy(), b, seed=0,
                                          groups=lengths) for b in (32, 50)}
    assert whole["mi_minibatch"] == pytest.approx(mi[32], rel=1e-5, abs=1e-7)
    assert abs(mi[32] - mi[50]) > 1e-5  # (a barely trained model's MI is ~0: the batches still differ)


# --- the SavedModel: strings in, strings out, no vae_tf needed ---------------------------------------

@pytest.mark.slow
def test_export_takes_and_gives_raw_strings_in_a_process_without_vae_tf(corpus, tmp_path):
    model = make(corpus)
    path = export_model(model, tmp_path, "text")
    expected = {"z_mean": model.encode(corpus.x_test[:3])["z_mean"].numpy().tolist(),
                "decoded": [t.decode() for t in model.decode(np.zeros((2, 2), np.float32))["text"].numpy()],
                "sampled": [t.decode() for t in model.sample(tf.constant([[1, 2], [3, 4]]))["text"].numpy()],
                "reconstructed": [t.decode() for t in model.reconstruct(corpus.x_test[:3])["text"].numpy()]}
    script = textwrap.dedent(f"""
        import json, sys
        import numpy as np, tensorflow as tf
        m = tf.saved_model.load({str(path)!r})
        enc = m.signatures["encode"](x=tf.constant({list(corpus.x_test[:3])!r}))
        dec = m.signatures["decode"](z=tf.zeros((2, 2)))
        sam = m.signatures["sample"](seed=tf.constant([[1, 2], [3, 4]]))
        rec = m.signatures["reconstruct"](x=tf.constant({list(corpus.x_test[:3])!r}))
        print(json.dumps({{"z_mean": enc["z_mean"].numpy().tolist(),
                           "decoded": [t.decode() for t in dec["text"].numpy()],
                           "sampled": [t.decode() for t in sam["text"].numpy()],
                           "reconstructed": [t.decode() for t in rec["text"].numpy()],
                           "dtypes": [str(m.signatures["encode"].structured_input_signature[1]["x"].dtype),
                                      str(dec["text"].dtype), str(dec["tokens"].dtype), str(dec["lengths"].dtype)],
                           "vae_tf_loaded": "vae_tf" in sys.modules}}))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={"TF_CPP_MIN_LOG_LEVEL": "3", "PATH": "/usr/bin:/bin"}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["vae_tf_loaded"] is False
    assert got["dtypes"] == ["<dtype: 'string'>", "<dtype: 'string'>", "<dtype: 'int32'>", "<dtype: 'int32'>"]
    np.testing.assert_allclose(got["z_mean"], expected["z_mean"], rtol=1e-5, atol=1e-6)
    assert got["decoded"] == expected["decoded"] and got["sampled"] == expected["sampled"]
    assert got["reconstructed"] == expected["reconstructed"] and len(got["reconstructed"]) == 3
    rebuilt = load_vae(path)  # the vocabulary travels in the build spec
    assert rebuilt.codec.words == model.codec.words


@pytest.mark.slow
def test_symbol_clusters_are_recorded_and_earlier_models_keep_their_tokenizer(tmp_path):
    """A data set records `symbol_clusters` and its vocabulary holds "👍🏽" whole; a model or data
    set made before the setting existed (no key) keeps splitting symbols as then, in Python
    (`load_vae`, `from_config`) as in its SavedModel, so its vocabulary still applies."""
    from serving.testing import export_tiny_text_model
    from serving.text import TextPolicy

    thumb = "\U0001f44d\U0001f3fd"
    corpus = tmp_path / "c.txt"
    corpus.write_text("".join(f"so good {thumb}\n" if i % 2 else "not bad at all\n" for i in range(40)))
    data = load_dataset("text_file", path=str(corpus), val_fraction=0.0, test_fraction=0.0)
    assert data.metadata["tokenizer"] == {"lowercase": True, "split_punctuation": True, "symbol_clusters": True}
    assert thumb in data.metadata["vocabulary"] and "\U0001f3fd" not in data.metadata["vocabulary"]
    assert text_settings(data.metadata)["symbol_clusters"] is True
    as_then = load_dataset("text_file", path=str(corpus), val_fraction=0.0, test_fraction=0.0, symbol_clusters=False)
    assert as_then.metadata["tokenizer"]["symbol_clusters"] is False and "\U0001f3fd" in as_then.metadata["vocabulary"]
    assert text_settings(as_then.metadata)["symbol_clusters"] is False

    old = {"vocabulary": ["\U0001f44d", "\U0001f3fd", "good"], "max_length": 4}
    assert text_settings({**old, "tokenizer": {"lowercase": True, "split_punctuation": True}})["symbol_clusters"] is False
    codec = TextCodec.from_config({**old, "lowercase": True, "split_punctuation": True, "name": "c"})
    assert codec.symbol_clusters is False
    assert codec.encode([f"good {thumb}"]).numpy().tolist() == [[6, 4, 5, 0]]  # good 👍 🏽
    assert TextCodec(**old).encode([f"good {thumb}"]).numpy().tolist() == [[6, 1, 0, 0]]  # good <unk>

    version_dir = export_tiny_text_model(tmp_path / "models")
    info_path = version_dir / "assets" / "vae_tf_model.json"
    info = json.loads(info_path.read_text())
    assert info["text"]["symbol_clusters"] is True and TextPolicy.from_model_info(info).symbol_clusters is True
    del info["build_spec"]["text"]["symbol_clusters"], info["text"]["symbol_clusters"]  # as exported before
    assert load_vae(version_dir).codec.symbol_clusters is True  # as built, though build_vae was not told
    info_path.write_text(json.dumps(info))
    assert load_vae(version_dir).codec.symbol_clusters is False
    assert TextPolicy.from_model_info(info).symbol_clusters is False
