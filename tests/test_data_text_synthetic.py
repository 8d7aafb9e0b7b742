"""Tests of ``text_synthetic``: He et al. (2019)'s synthetic corpus, checked against its definition."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from vae_tf.data import load_dataset
from vae_tf.data import text_synthetic as ts
from vae_tf.errors import DataError

# Every statistical check below runs on fixed seeds, so it is deterministic; the thresholds
# (p > 1e-3, 5 standard errors) would reject a correct generator rarely if the seeds changed.


@pytest.fixture(scope="module")
def corpus():
    return load_dataset("text_synthetic", seed=0)


def all_rows(data):
    x = np.concatenate([data.x_train, data.x_val, data.x_test])
    z = np.concatenate([data.factors_train, data.factors_val, data.factors_test])
    y = np.concatenate([data.y_train, data.y_val, data.y_test])
    tokens = np.array([[int(w[1:]) for w in s.split()] for s in x])
    return tokens, z, y


def test_layout_and_contract(corpus):
    assert corpus.num_examples == {"train": 16000, "val": 2000, "test": 2000}
    assert corpus.x_train.dtype == object and corpus.data_shape == () and corpus.value_range is None
    assert corpus.factors_train.dtype == np.float32 and corpus.factors_train.shape == (16000, 2)
    assert corpus.factor_names == ("z_0", "z_1") and corpus.factor_sizes is None
    assert corpus.y_train.dtype == np.int64 and set(np.unique(corpus.y_train)) == {0, 1, 2, 3}
    meta = corpus.metadata
    assert meta["modality"] == "text" and meta["max_length"] == 10
    assert meta["tokenizer"] == {"lowercase": False, "split_punctuation": False, "symbol_clusters": True}
    vocab = meta["vocabulary"]
    assert set(vocab) <= {f"w{i}" for i in range(1000)} and len(vocab) > 900
    tokens, _, _ = all_rows(corpus)
    assert tokens.shape == (20000, 10) and tokens.min() >= 0 and tokens.max() < 1000
    x, y = next(iter(corpus.pipeline("train", 5, shuffle=False, with_labels=True)))
    assert [s.decode() for s in x.numpy()] == corpus.x_train[:5].tolist()
    assert y.numpy().tolist() == corpus.y_train[:5].tolist()


def test_same_seed_same_corpus_and_seeds_differ(corpus):
    small = load_dataset("text_synthetic", seed=0, n_samples=300)
    again = load_dataset("text_synthetic", seed=0, n_samples=300)
    for split in ("train", "val", "test"):
        assert getattr(small, f"x_{split}").tolist() == getattr(again, f"x_{split}").tolist()
        np.testing.assert_array_equal(getattr(small, f"factors_{split}"), getattr(again, f"factors_{split}"))
    other_seed = load_dataset("text_synthetic", seed=1, n_samples=300)
    other_model = load_dataset("text_synthetic", seed=0, n_samples=300, generator_seed=5)
    assert sorted(other_seed.x_train.tolist()) != sorted(small.x_train.tolist())
    # Another language model with the same z and first tokens: same z, different words after.
    np.testing.assert_array_equal(other_model.factors_train, small.factors_train)
    assert other_model.x_train.tolist() != small.x_train.tolist()


def test_weights_follow_the_definition():
    w = ts.LanguageModelWeights.draw(0)
    assert w.embedding.shape == (1000, 100) and w.w_ih.shape == (400, 102) and w.w_hh.shape == (400, 100)
    assert w.w_z.shape == (100, 2) and w.w_out_h.shape == (1000, 100) and w.w_out_z.shape == (1000, 2)
    for name in ("embedding", "w_ih", "w_hh", "b_ih", "b_hh", "w_z", "w_out_h"):
        values = getattr(w, name).ravel()
        assert stats.kstest(values, stats.uniform(-1, 2).cdf).pvalue > 1e-3, name
    assert stats.kstest(w.w_out_z.ravel(), stats.uniform(-5, 10).cdf).pvalue > 1e-3


def test_latent_mixture_statistics(corpus):
    _, z, y = all_rows(corpus)
    # components uniform over 4
    counts = np.bincount(y, minlength=4)
    assert stats.chisquare(counts).pvalue > 1e-3
    # each component: mean (+-2, +-2) in the reference order, unit scale, independent coordinates
    for k, mean in enumerate(ts.COMPONENT_MEANS):
        zk = z[y == k].astype(np.float64)
        se = 1.0 / np.sqrt(len(zk))
        assert np.all(np.abs(zk.mean(axis=0) - mean) < 5 * se), (k, zk.mean(axis=0))
        assert np.all(np.abs(zk.std(axis=0, ddof=1) - 1.0) < 5 * np.sqrt(0.5) * se)
        assert abs(np.corrcoef(zk.T)[0, 1]) < 5 * se
        for d in range(2):
            assert stats.kstest(zk[:, d] - mean[d], "norm").pvalue > 1e-3


def test_first_token_is_uniform(corpus):
    tokens, _, _ = all_rows(corpus)
    counts = np.bincount(tokens[:, 0], minlength=1000)
    assert stats.chisquare(counts).pvalue > 1e-3  # 20 expected per word


def test_language_model_matches_a_keras_lstm():
    """The generator's LSTM step and output layer, checked against Keras' own LSTM with the same
    weights (Keras' gate order i, f, c, o is PyTorch's i, f, g, o)."""
    import keras

    gen = ts.SyntheticTextGenerator(0)
    w = gen.weights
    rng = np.random.default_rng(3)
    z, _ = gen.sample_latents(64, rng)
    tokens = rng.integers(0, 1000, size=(64, 3))
    lstm = keras.layers.LSTM(100, return_sequences=True, return_state=False)
    inputs = np.concatenate([w.embedding[tokens], np.repeat(z[:, None, :], 3, axis=1)], axis=2).astype(np.float32)
    c0 = z @ w.w_z.T  # the definition: c_0 = W z, h_0 = tanh(c_0)
    h0 = np.tanh(c0)
    lstm.build((None, 3, 102))
    lstm.set_weights([w.w_ih.T, w.w_hh.T, w.b_ih + w.b_hh])
    hs = np.asarray(lstm(inputs, initial_state=[h0.astype(np.float32), c0.astype(np.float32)]))
    logits = hs @ w.w_out_h.T + (z @ w.w_out_z.T)[:, None, :]
    expected = np.exp(logits - logits.max(axis=2, keepdims=True))
    expected /= expected.sum(axis=2, keepdims=True)
    state = gen.initial_state(z)
    for t in range(3):
        probs, state = gen.step(tokens[:, t], z, state)
        np.testing.assert_allclose(probs, expected[:, t], atol=2e-5)


def test_tokens_are_drawn_from_the_softmax():
    """Many continuations of one (z, first token): the second token's frequencies match the
    model's probabilities (chi-square over the words with >= 5 expected counts, the rest pooled)."""
    gen = ts.SyntheticTextGenerator(0)
    n = 20000
    z = np.tile([[1.5, -2.5]], (n, 1))
    first = np.full(n, 17)
    tokens = gen.sample_tokens(z, np.random.default_rng(11), first=first, length=2)
    probs, _ = gen.step(first[:1], z[:1], gen.initial_state(z[:1]))
    expected = probs[0] * n
    observed = np.bincount(tokens[:, 1], minlength=1000)
    big = expected >= 5
    obs = np.append(observed[big], observed[~big].sum())
    exp = np.append(expected[big], expected[~big].sum())
    assert stats.chisquare(obs, exp * obs.sum() / exp.sum()).pvalue > 1e-3
    assert np.all(tokens[:, 0] == 17)


def test_sentences_do_not_depend_on_the_chunks_or_the_threads_that_draw_them():
    """Chunks sampled on threads side by side (one BLAS thread each) give the tokens that one
    chunk of every row on one thread gives: each token has its own uniform, drawn up front."""
    gen = ts.SyntheticTextGenerator(0)
    rng = np.random.default_rng(5)
    z, _ = gen.sample_latents(1100, rng)  # not a multiple of any chunk below
    state = rng.bit_generator.state

    def draw(**how):
        rng.bit_generator.state = state
        return gen.sample_tokens(z, rng, **how)

    serial = draw(chunk=len(z), workers=1)
    for how in ({}, {"chunk": 128, "workers": 3}, {"chunk": 97, "workers": 2}, {"chunk": 300, "workers": 1}):
        np.testing.assert_array_equal(draw(**how), serial, err_msg=str(how))
    assert len(np.unique(serial[:, 1:])) > 500  # the language model's words, not a constant fill


def test_a_large_machine_samples_on_at_most_eight_threads(monkeypatch):
    """Each sampling thread holds ~12 MiB of temporaries: 64 usable CPUs start 8 threads, not one
    per block (40 for the default corpus), and the sentences are those of one thread."""
    started = []

    class Recording(ts.ThreadPoolExecutor):
        def __init__(self, max_workers=None, *args, **kwargs):
            started.append(max_workers)
            super().__init__(max_workers, *args, **kwargs)

    gen = ts.SyntheticTextGenerator(0)
    z, _ = gen.sample_latents(2000, np.random.default_rng(2))
    serial = gen.sample_tokens(z, np.random.default_rng(3), chunk=100, workers=1)
    monkeypatch.setattr(ts, "usable_cpus", lambda: 64)
    monkeypatch.setattr(ts, "ThreadPoolExecutor", Recording)
    np.testing.assert_array_equal(gen.sample_tokens(z, np.random.default_rng(3), chunk=100), serial)
    assert started == [8]


def test_z_changes_the_token_distribution(corpus):
    tokens, _, y = all_rows(corpus)

    def word_distribution(rows):
        return np.bincount(tokens[rows, 1:].ravel(), minlength=1000) / tokens[rows, 1:].size

    def tv(p, q):
        return 0.5 * np.abs(p - q).sum()

    comp = [np.flatnonzero(y == k) for k in range(4)]
    half_a, half_b = comp[0][::2], comp[0][1::2]
    within = tv(word_distribution(half_a), word_distribution(half_b))
    between = min(tv(word_distribution(comp[i]), word_distribution(comp[j]))
                  for i in range(4) for j in range(i + 1, 4))
    assert between > 3 * within, (between, within)


def test_options_are_checked():
    for options in ({"n_samples": 0}, {"n_samples": 2.5}, {"generator_seed": -1}):
        with pytest.raises(DataError) as info:
            load_dataset("text_synthetic", **options)
        assert "\n" not in str(info.value)
