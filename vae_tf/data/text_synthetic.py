"""The synthetic corpus of He, Spokoyny, Neubig, Berg-Kirkpatrick (2019), "Lagging inference
networks and posterior collapse in variational autoencoders", Section 6.1 and appendix; their
generator is ``synthetic-data/{generate,lm_lstm}.py`` of jxhe/vae-lagging-encoder (MIT). Written
here from that definition in NumPy, vectorised over sequences.

The data-generating process, for each sequence:

1. a mixture component ``k ~ Uniform{0, 1, 2, 3}`` with means ``(-2, -2), (2, 2), (-2, 2),
   (2, -2)`` (in that order, as in the reference) and ``z ~ N(mean_k, I_2)``;
2. the LSTM's initial state ``c_0 = W_z z`` (no bias), ``h_0 = tanh(c_0)``;
3. the first token ``x_1 ~ Uniform{0, ..., V-1}``;
4. for ``t = 1 .. T-1``: one LSTM step (PyTorch gate layout ``i, f, g, o``, two biases) on the
   input ``[E[x_t]; z]`` (the embedding concatenated with z), then
   ``x_{t+1} ~ softmax(W_1 h_t + W_2 z)`` (no output bias).

The language model's weights are drawn once, every entry ``U(-1, 1)`` (embedding ``E`` V x 100,
LSTM 400 x 102 input and 400 x 100 recurrent matrices and two 400 biases, ``W_z`` 100 x 2,
``W_1`` V x 100) except ``W_2`` (V x 2, z -> vocabulary) ``U(-5, 5)``; V = 1000, T = 10.

Seeds: the weights come from ``generator_seed`` (default 0: one fixed language model, like the
paper's one fixed corpus); the sequences (z, components, tokens) and the split come from the run
seed. Same ``(seed, generator_seed, n_samples)``, same corpus. Sampling uses NumPy's
``default_rng`` (PCG64), not PyTorch's generator: the corpus has the paper's distribution, not
its exact sentences.

Tokens are rendered as words ``w0 .. w999`` joined by spaces (``"w17 w903 ..."``), so the text
models read them with the same in-model tokeniser as any other text.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from vae_tf._cpus import usable_cpus
from vae_tf.data.registry import register_dataset
from vae_tf.data.splits import DataSplits, SplitPlan
from vae_tf.data.text import TextOptions, random_parts, text_splits
from vae_tf.data.validation import is_int
from vae_tf.errors import DataError

GENERATOR_VERSION = "1"
VOCAB_SIZE = 1000
SEQUENCE_LENGTH = 10
EMBEDDING_DIM = 100
HIDDEN_DIM = 100
LATENT_DIM = 2
#: Means of the four mixture components, in the reference generator's order.
COMPONENT_MEANS = np.array([[-2.0, -2.0], [2.0, 2.0], [-2.0, 2.0], [2.0, -2.0]])
COMPONENT_SCALE = 1.0
WEIGHT_SCALE = 1.0
Z_TO_VOCAB_SCALE = 5.0
# Sequences sampled together (rows of the (rows x V) arrays, ~4 MiB each); results do not depend
# on it, nor on how many threads sample the chunks.
_CHUNK = 512
# Threads sampling blocks side by side at most (each holds ~12 MiB of temporaries): on a machine
# that lends more CPUs than it has, or a large one, more would add memory, not speed.
_MAX_WORKERS = 8


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # overflow-free form of 1 / (1 + exp(-x))


@dataclass(frozen=True)
class LanguageModelWeights:
    """The random LSTM language model of the generator (shapes as in PyTorch: ``(out, in)``)."""

    embedding: np.ndarray  # (V, E)
    w_ih: np.ndarray  # (4H, E + 2), gates i, f, g, o
    w_hh: np.ndarray  # (4H, H)
    b_ih: np.ndarray  # (4H,)
    b_hh: np.ndarray  # (4H,)
    w_z: np.ndarray  # (H, 2): c_0 = W_z z
    w_out_h: np.ndarray  # (V, H): W_1
    w_out_z: np.ndarray  # (V, 2): W_2

    @classmethod
    def draw(cls, generator_seed: int) -> LanguageModelWeights:
        rng = np.random.default_rng([int(generator_seed), 20190127])

        def u(shape, scale=WEIGHT_SCALE):
            return rng.uniform(-scale, scale, size=shape)

        v, e, h, d = VOCAB_SIZE, EMBEDDING_DIM, HIDDEN_DIM, LATENT_DIM
        return cls(
            embedding=u((v, e)), w_ih=u((4 * h, e + d)), w_hh=u((4 * h, h)), b_ih=u(4 * h),
            b_hh=u(4 * h), w_z=u((h, d)), w_out_h=u((v, h)), w_out_z=u((v, d), Z_TO_VOCAB_SCALE),
        )


class SyntheticTextGenerator:
    """He et al. (2019)'s synthetic corpus (module docstring): ``sample`` draws sequences,
    ``next_token_probabilities`` is the LSTM language model itself (used by ``sample``)."""

    def __init__(self, generator_seed: int = 0):
        self.weights = LanguageModelWeights.draw(generator_seed)

    def initial_state(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(h_0, c_0) = (tanh(W_z z), W_z z)`` for z ``(N, 2)``."""
        c = z @ self.weights.w_z.T
        return np.tanh(c), c

    def step(self, tokens: np.ndarray, z: np.ndarray, state):
        """One LSTM step on ``[E[tokens]; z]``: returns the next-token probabilities ``(N, V)``
        (softmax of ``W_1 h + W_2 z``) and the new state ``(h, c)``."""
        logits, state = self._logits(tokens, z, state)
        logits -= logits.max(axis=1, keepdims=True)
        np.exp(logits, out=logits)
        logits /= logits.sum(axis=1, keepdims=True)
        return logits, state

    def _logits(self, tokens: np.ndarray, z: np.ndarray, state, z_out: np.ndarray | None = None):
        """Logits ``W_1 h + W_2 z`` after one LSTM step, and the new state; ``z_out``, if given,
        is ``W_2 z`` computed once for a sequence (the same numbers as computing it here)."""
        w = self.weights
        h, c = state
        x = np.concatenate([w.embedding[tokens], z], axis=1)
        gates = x @ w.w_ih.T + h @ w.w_hh.T + w.b_ih + w.b_hh
        i, f, g, o = np.split(gates, 4, axis=1)
        c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
        h = _sigmoid(o) * np.tanh(c)
        return h @ w.w_out_h.T + (z @ w.w_out_z.T if z_out is None else z_out), (h, c)

    @staticmethod
    def sample_latents(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``(z (n, 2) float64, component (n,) int64)`` from the 4-component mixture."""
        component = rng.integers(0, len(COMPONENT_MEANS), size=n).astype(np.int64)
        z = COMPONENT_MEANS[component] + COMPONENT_SCALE * rng.standard_normal((n, LATENT_DIM))
        return z, component

    def sample_tokens(self, z: np.ndarray, rng: np.random.Generator, first: np.ndarray | None = None,
                      length: int = SEQUENCE_LENGTH, *, chunk: int = _CHUNK, workers: int | None = None
                      ) -> np.ndarray:
        """Token ids ``(N, length)`` given z ``(N, 2)``: the first uniform (or ``first``), the
        rest drawn from the language model by inverse-CDF sampling, one uniform per token (all
        drawn up front, so the result depends neither on ``chunk``, the rows sampled together,
        nor on ``workers``, the threads sampling chunks side by side; default: one per usable CPU,
        at most 8)."""
        n = len(z)
        tokens = np.empty((n, length), dtype=np.int64)
        tokens[:, 0] = rng.integers(0, VOCAB_SIZE, size=n) if first is None else first
        uniforms = rng.random((n, length - 1))

        def sample_rows(rows: slice) -> None:  # writes its own rows of ``tokens`` only
            state, z_out = self.initial_state(z[rows]), z[rows] @ self.weights.w_out_z.T
            for t in range(1, length):
                cdf, state = self._logits(tokens[rows, t - 1], z[rows], state, z_out)
                cdf -= cdf.max(axis=1, keepdims=True)
                np.exp(cdf, out=cdf)
                np.cumsum(cdf, axis=1, out=cdf)
                u = uniforms[rows, t - 1 : t] * cdf[:, -1:]
                tokens[rows, t] = np.minimum((cdf < u).sum(axis=1), VOCAB_SIZE - 1)

        chunks = [slice(start, min(n, start + chunk)) for start in range(0, n, chunk)]
        workers = min(len(chunks), workers or min(usable_cpus(), _MAX_WORKERS))
        if workers <= 1:
            for rows in chunks:
                sample_rows(rows)
            return tokens
        # NumPy's element-wise passes (exp, cumsum: half the time) run on one core; chunks on
        # threads use the others. BLAS gets one thread per chunk, else its own threads and ours
        # oversubscribe the cores (slower than one thread overall).
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1, user_api="blas"), ThreadPoolExecutor(workers) as pool:
            for _ in pool.map(sample_rows, chunks):  # consumed, so a chunk's exception is raised
                pass
        return tokens

    def sample(self, n: int, rng: np.random.Generator):
        """``(tokens (n, T) int64, z (n, 2) float64, component (n,) int64)``."""
        z, component = self.sample_latents(n, rng)
        return self.sample_tokens(z, rng), z, component


def render(tokens: np.ndarray) -> list[str]:
    """Token ids -> sentences ``"w17 w903 ..."``."""
    return [" ".join(f"w{int(t)}" for t in row) for row in tokens]


@register_dataset("text_synthetic", modality="text")
def load_text_synthetic(plan: SplitPlan, *, n_samples: int = 20000, generator_seed: int = 0) -> DataSplits:
    """He et al. (2019)'s synthetic corpus (module docstring), generated from the seeds.

    Options:
        n_samples: number of sequences (default 20,000, as in the paper); ``max_samples`` of the
            plan then keeps a subset.
        generator_seed: seed of the language model's weights (default 0).

    Returns:
        text :class:`DataSplits` (:mod:`vae_tf.data.text`): sentences of 10 words ``w0..w999``,
        random split by ``plan``; ``factors_*`` the true z (float32 ``(N, 2)``, names
        ``("z_0", "z_1")``, no ``factor_sizes``: continuous); ``y_*`` the mixture component
        (int64 0-3). Tokeniser settings: no lower-casing, no punctuation splitting (the words
        are already tokens); ``max_length`` 10, nothing dropped.
    """
    for key, value, low in (("n_samples", n_samples, 1), ("generator_seed", generator_seed, 0)):
        if not is_int(value) or value < low:
            raise DataError(f"text_synthetic {key} must be an integer >= {low}, got {value!r}")
    # Keyed by the run seed but a different stream from the split's default_rng(seed).
    rng = np.random.default_rng([int(plan.seed), 1])
    generator = SyntheticTextGenerator(int(generator_seed))
    tokens, z, component = generator.sample(int(n_samples), rng)
    parts = random_parts(plan, render(tokens), component, z.astype(np.float32))
    options = TextOptions(lowercase=False, split_punctuation=False)
    return text_splits(
        "text_synthetic", plan, parts, options,
        {"source": "He et al. 2019 synthetic corpus (jxhe/vae-lagging-encoder generator), procedural",
         "generator_version": GENERATOR_VERSION, "generator_seed": int(generator_seed),
         "n_samples": int(n_samples), "test_split": "random",
         "class_names": [f"component ({m[0]:+g}, {m[1]:+g})" for m in COMPONENT_MEANS]},
        factor_names=("z_0", "z_1"),
    )
