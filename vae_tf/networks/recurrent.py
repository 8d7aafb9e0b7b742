"""Recurrent networks for sentences: an LSTM/GRU encoder and an autoregressive LSTM/GRU decoder
(``model.network: {kind: lstm | gru, ...}``), for text data sets (:mod:`vae_tf.data.text`).

Token ids come from the model's own tokenizer (:class:`vae_tf.models.text.TextCodec`): 0 is
``<pad>``, 1 ``<unk>``, 2 ``<bos>``, 3 ``<eos>``.

**Encoder** (Bowman et al. 2016; He et al. 2019): token embeddings (``embedding`` wide; the
encoder's own) → ``layers`` stacked LSTM/GRU of ``hidden`` units, reading the sentence → the last
layer's state at its last word (the padding after it never read) → a dense layer to the latent
family's parameters.
The embedding is a separate layer (:attr:`RecurrentEncoder.embedding`) so that an input noise can
perturb the embedded sentence (the encoder reads vectors, not ids).

**Decoder**: an autoregressive LM over the vocabulary, p(w_t | w_<t, z), trained with teacher
forcing on ``<bos> w_1 … w_n`` to predict ``w_1 … w_n <eos>``. The code z enters as
``z_injection``:

- ``init``: the first layer's initial state from z (c₀ = W z, h₀ = tanh c₀ for an LSTM, h₀ =
  tanh(W z) for a GRU; He et al.'s decoder);
- ``concat``: z concatenated to every input embedding (Bowman et al.'s decoder);
- ``both`` (default, as in He et al. 2019): both.

``skip: true`` makes it a Skip-VAE decoder (Dieng et al. 2019, Eq. 6, recurrent form): z is also
concatenated to the input of every later layer and to the output layer's, so that no depth of
recurrence can wash it out. ``word_dropout`` (Bowman et al. 2016, §3.2) replaces each decoder input
word (not ``<bos>``) by ``<unk>`` with that probability while training, so the decoder must lean
on z. ``dropout_in`` / ``dropout_out`` drop the decoder's input embeddings and its last hidden
states (He et al.: 0.5 / 0.5 on the synthetic corpus).

Generation runs in graph (:meth:`RecurrentDecoder.generate`): greedy (argmax) or sampled (stateless
categorical draws, one seed per row), at most ``max_length`` words, stopping a row at ``<eos>``;
it uses the very cells the teacher-forced pass trains (``layer.cell``), one step at a time, so the
exported signatures need no Python.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from vae_tf.errors import ConfigError
from vae_tf.networks.common import positive_ints
from vae_tf.networks.unrolled_rnn import GRU, LSTM

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
Z_INJECTIONS = ("init", "concat", "both")


def _rnn(cell: str, units: int, name: str, dtype=None) -> keras.layers.Layer:
    layer = LSTM if cell == "lstm" else GRU
    return layer(units, return_sequences=True, return_state=True, name=name, dtype=dtype)


def _check(cell, embedding, hidden, what="model.network") -> tuple[int, list[int]]:
    if cell not in ("lstm", "gru"):
        raise ConfigError(f"{what}.kind must be lstm or gru for a recurrent network, got {cell!r}")
    if not isinstance(embedding, int) or isinstance(embedding, bool) or embedding < 1:
        raise ConfigError(f"{what}.embedding must be a positive integer, got {embedding!r}")
    hidden = positive_ints(hidden if isinstance(hidden, (list, tuple)) else [hidden], f"{what}.hidden")
    return embedding, hidden


@keras.saving.register_keras_serializable(package="vae_tf")
class RecurrentEncoder(keras.Model):
    """Token ids → embedding → stacked LSTM/GRU → the state at the last word → ``out_dim``
    (module docstring). :meth:`embed` and :meth:`encode_embedded` are the two halves, so an input
    noise can perturb the embedded sentence between them; ``call(ids)`` is both."""

    def __init__(self, cell: str, vocab_size: int, out_dim: int, embedding: int = 50, hidden=(50,),
                 name: str = "encoder", dtype=None, **kwargs):
        super().__init__(name=name, dtype=dtype, **kwargs)
        self.cell_kind = cell
        self.embedding = keras.layers.Embedding(vocab_size, embedding, name="encoder_embedding", dtype=dtype)
        self.rnns = [_rnn(cell, units, f"encoder_{cell}_{i}", dtype) for i, units in enumerate(hidden)]
        self.params = keras.layers.Dense(out_dim, name="params", dtype=dtype)
        self.out_cast = keras.layers.Activation("linear", dtype="float32", name="float32_output")

    def embed(self, ids: tf.Tensor) -> tf.Tensor:
        """``[B, T]`` ids → ``[B, T, embedding]`` float32 vectors (what an input noise perturbs)."""
        return tf.cast(self.embedding(ids), tf.float32)

    def encode_embedded(self, vectors: tf.Tensor, mask: tf.Tensor, training=False) -> tf.Tensor:
        """The latent family's parameters ``[B, out_dim]`` from embedded words and their mask.

        The padding comes after the words (the tokenizer's layout; a mask with a gap is an error),
        so the layers read the padded batch unmasked: no position before the padding sees it, and
        the final state is the last layer's output at each sentence's last word (zeros for an
        empty sentence), exactly what masked layers give, without a masked loop's per-step
        selections (docs/performance.md, Text)."""
        mask = tf.convert_to_tensor(mask)
        lengths = tf.reduce_sum(tf.cast(mask, tf.int32), axis=1)
        right_padded = tf.reduce_all(tf.equal(mask, tf.sequence_mask(lengths, tf.shape(mask)[1])))
        tf.debugging.assert_equal(right_padded, True, message="the encoder's padding must come after the words "
                                                              "(ids as TextCodec.encode gives them)")
        h = vectors
        for rnn in self.rnns:
            h = rnn(h, training=training)[0]
        last = tf.gather(h, tf.maximum(lengths - 1, 0), axis=1, batch_dims=1)
        state = tf.where(lengths[:, None] > 0, last, tf.zeros_like(last))
        return self.out_cast(self.params(state))

    def call(self, ids, training=False):
        ids = tf.convert_to_tensor(ids)
        return self.encode_embedded(self.embed(ids), tf.not_equal(ids, PAD_ID), training=training)


@keras.saving.register_keras_serializable(package="vae_tf")
class RecurrentDecoder(keras.Model):
    """An autoregressive LSTM/GRU language model conditioned on z (module docstring):
    ``call([z, ids])`` gives the logits ``[B, T, vocab]`` of the next word at every position of
    the teacher-forced input ``ids`` (``<bos> w_1 … w_n`` padded), :meth:`generate` decodes."""

    def __init__(self, cell: str, code_size: int, vocab_size: int, max_length: int, embedding: int = 50,
                 hidden=(50,), z_injection: str = "both", skip: bool = False, word_dropout: float = 0.0,
                 dropout_in: float = 0.0, dropout_out: float = 0.0, name: str = "decoder", dtype=None, **kwargs):
        super().__init__(name=name, dtype=dtype, **kwargs)
        if int(vocab_size) > MAX_VOCABULARY:
            raise ConfigError(f"a text decoder takes at most {MAX_VOCABULARY:,} words (ids included) in its vocabulary, "
                              f"not {int(vocab_size):,}: set the data's vocab_size lower")
        self.cell_kind, self.code_size, self.vocab_size = cell, int(code_size), int(vocab_size)
        self.max_length = int(max_length)
        self.z_injection, self.skip, self.word_dropout = z_injection, bool(skip), float(word_dropout)
        self.embedding = keras.layers.Embedding(vocab_size, embedding, name="decoder_embedding", dtype=dtype)
        self.rnns = [_rnn(cell, units, f"decoder_{cell}_{i}", dtype) for i, units in enumerate(hidden)]
        self.init_state = (keras.layers.Dense(hidden[0], name="z_to_state", dtype=dtype)
                           if z_injection in ("init", "both") else None)
        self.drop_in = keras.layers.Dropout(dropout_in, name="dropout_in")
        self.drop_out = keras.layers.Dropout(dropout_out, name="dropout_out")
        self.logits = keras.layers.Dense(vocab_size, name="logits", dtype=dtype)
        self.out_cast = keras.layers.Activation("linear", dtype="float32", name="float32_output")

    # --- pieces shared by the teacher-forced pass and generation ---------------------------------
    @staticmethod
    def _per_step(z, steps):
        """z ``[B, code]`` at every one of ``steps`` positions, ``[B, steps, code]``: broadcast, not
        tiled (``tf.repeat``), as the gradient of a tile transposes an integer tensor, which
        TensorFlow 2.21's oneDNN build reports as an error on every CPU (:func:`_transpose_ids`)."""
        return tf.broadcast_to(z[:, None, :], tf.stack([tf.shape(z)[0], steps, tf.shape(z)[1]]))

    def _initial_states(self, z) -> list:
        """One state list per layer: z's for the first (``init``), zeros for the others."""
        batch = tf.shape(z)[0]
        states = []
        for i, rnn in enumerate(self.rnns):
            units = rnn.cell.units
            if i == 0 and self.init_state is not None:
                c0 = tf.cast(self.init_state(z), self.compute_dtype)
                h0 = tf.tanh(c0)
                states.append([h0, c0] if self.cell_kind == "lstm" else [h0])
            else:
                zeros = tf.zeros([batch, units], self.compute_dtype)
                states.append([zeros, zeros] if self.cell_kind == "lstm" else [zeros])
        return states

    def _layer_input(self, i: int, h, z_seq):
        """What layer i reads: the word vectors (plus z with ``concat``), or the layer below
        (plus z with ``skip``)."""
        if i == 0:
            return tf.concat([h, z_seq], axis=-1) if self.z_injection in ("concat", "both") else h
        return tf.concat([h, z_seq], axis=-1) if self.skip else h

    def _output(self, h, z_seq, training=False):
        h = self.drop_out(h, training=training)
        if self.skip:
            h = tf.concat([h, z_seq], axis=-1)
        return self.out_cast(self.logits(h))

    # --- teacher forcing ---------------------------------------------------------------------------
    def drop_words(self, ids: tf.Tensor, training=False) -> tf.Tensor:
        """Word dropout (Bowman et al. 2016): while training, each input word (not ``<bos>``, not
        padding) becomes ``<unk>`` with probability ``word_dropout``; the ids unchanged otherwise."""
        if not training or self.word_dropout <= 0:
            return ids
        drop = tf.random.uniform(tf.shape(ids)) < self.word_dropout
        drop = tf.logical_and(drop, tf.logical_and(tf.not_equal(ids, BOS_ID), tf.not_equal(ids, PAD_ID)))
        return tf.where(drop, tf.constant(UNK_ID, ids.dtype), ids)

    def call(self, inputs, training=False):
        z, ids = inputs
        z = tf.convert_to_tensor(z)
        ids = self.drop_words(tf.convert_to_tensor(ids), training=training)
        h = self.drop_in(self.embedding(ids), training=training)
        z_seq = self._per_step(tf.cast(z, h.dtype), tf.shape(ids)[1])
        states = self._initial_states(tf.cast(z, h.dtype))
        for i, rnn in enumerate(self.rnns):
            h = rnn(self._layer_input(i, h, z_seq), initial_state=states[i], training=training)[0]
        return self._output(h, z_seq, training=training)

    # --- generation --------------------------------------------------------------------------------
    def generate(self, z, seeds=None, max_length: int | None = None,
                 temperature: float = 1.0) -> tuple[tf.Tensor, tf.Tensor]:
        """Decode ``z`` ``[B, code]`` one word at a time from ``<bos>``: greedy (argmax) when
        ``seeds`` is None, else sampled from the softmax of the logits divided by ``temperature``
        (1: the model's own distribution; below 1 sharper, towards greedy; above 1 flatter;
        ``<pad>`` and ``<bos>`` excluded; ``<unk>`` is drawn, and shown, as the model predicts it)
        with row i's draws from ``seeds[i]`` (int32 ``[B, 2]``, stateless). Returns ``(ids [B, L],
        lengths [B])``: words before the first ``<eos>`` (the ``<eos>`` itself and what follows are
        ``<pad>``); at most ``max_length`` (default the model's) words per row."""
        length = self.max_length if max_length is None else int(max_length)
        z = tf.cast(tf.convert_to_tensor(z), self.compute_dtype)
        batch = tf.shape(z)[0]
        states = self._initial_states(z)
        z_step = z[:, None, :]
        token = tf.fill([batch], tf.constant(BOS_ID, tf.int32))
        finished = tf.zeros([batch], tf.bool)
        out = tf.TensorArray(tf.int32, size=0, dynamic_size=True)

        def step(t, token, finished, states, out):
            h = self.embedding(token[:, None])
            new_states = []
            for i, rnn in enumerate(self.rnns):
                x = self._layer_input(i, h, z_step)[:, 0, :]
                h_t, layer_state = rnn.cell(x, states[i])
                new_states.append(list(layer_state) if isinstance(layer_state, (list, tuple)) else [layer_state])
                h = h_t[:, None, :]
            logits = tf.cast(self._output(h, z_step)[:, 0, :], tf.float32)
            # never <pad> or <bos>; <unk> is a word the model predicts like any other (as a language
            # model's sampler draws it), so samples keep their trained distribution
            never = tf.fill([batch, 1], tf.constant(-1e9, tf.float32))
            logits = tf.concat([never, logits[:, UNK_ID:BOS_ID], never, logits[:, BOS_ID + 1:]], axis=1)
            if seeds is None:
                chosen = tf.argmax(logits, axis=-1, output_type=tf.int32)
            else:
                logits = logits / temperature
                row_seeds = tf.map_fn(lambda s: tf.random.experimental.stateless_fold_in(s, t),
                                      tf.cast(seeds, tf.int32))
                chosen = tf.map_fn(lambda a: tf.random.stateless_categorical(a[0][None], 1, seed=a[1],
                                                                             dtype=tf.int32)[0, 0],
                                   (logits, row_seeds), fn_output_signature=tf.int32)
            chosen = tf.where(tf.equal(t, length), tf.constant(EOS_ID, tf.int32), chosen)  # the last slot ends it
            chosen = tf.where(finished, tf.constant(PAD_ID, tf.int32), chosen)
            finished = tf.logical_or(finished, tf.equal(chosen, EOS_ID))
            return t + 1, chosen, finished, new_states, out.write(t, chosen)

        t = tf.constant(0)
        t, token, finished, states, out = tf.while_loop(
            lambda t, *_: tf.logical_and(t <= length, tf.logical_not(tf.reduce_all(finished))),
            step, (t, token, finished, states, out), maximum_iterations=length + 1)
        ids = _transpose_ids(out.stack())
        ids = tf.pad(ids, [[0, 0], [0, length + 1 - tf.shape(ids)[1]]])  # rows stopped early: <pad>
        words = tf.logical_and(tf.not_equal(ids, EOS_ID), tf.not_equal(ids, PAD_ID))
        lengths = tf.reduce_sum(tf.cast(tf.math.cumprod(tf.cast(words, tf.int32), axis=1), tf.int32), axis=1)
        ids = tf.where(tf.range(length + 1)[None, :] < lengths[:, None], ids, tf.constant(PAD_ID, tf.int32))
        return ids[:, :length], lengths


#: Word ids go through float32 in :func:`_transpose_ids`, exact below 2**24.
MAX_VOCABULARY = 2 ** 24


def _transpose_ids(ids: tf.Tensor) -> tf.Tensor:
    """``[T, B]`` int32 word ids as ``[B, T]``, transposed as float32. TensorFlow 2.21's oneDNN
    build logs an error the first time a process transposes an integer tensor, on every CPU
    (``E... util.cc:131] oneDNN supports DT_INT32 only on platforms with AVX-512. Falling back to
    the default Eigen-based implementation``), which every text run and the first decode request
    of a text server printed. The ids (below :data:`MAX_VOCABULARY`) are exact in float32."""
    return tf.cast(tf.transpose(tf.cast(ids, tf.float32)), tf.int32)


def recurrent_networks(kind: str, vocab_size: int, max_length: int, param_size: int, code_size: int, *,
                       embedding: int = 50, hidden=(50,), z_injection: str = "both", skip: bool = False,
                       word_dropout: float = 0.0, dropout_in: float = 0.0, dropout_out: float = 0.0,
                       dtype=None) -> tuple[RecurrentEncoder, RecurrentDecoder]:
    """The encoder and decoder of ``model.network: {kind: lstm | gru, embedding, hidden,
    z_injection, skip, word_dropout, dropout_in, dropout_out}`` for a vocabulary of ``vocab_size``
    ids (specials included) and sentences of at most ``max_length`` words."""
    embedding, hidden = _check(kind, embedding, hidden)
    if z_injection not in Z_INJECTIONS:
        raise ConfigError(f"model.network.z_injection must be one of {', '.join(Z_INJECTIONS)}, got {z_injection!r}")
    if not isinstance(skip, bool):
        raise ConfigError(f"model.network.skip must be true or false, got {skip!r}")
    for name, value in (("word_dropout", word_dropout), ("dropout_in", dropout_in), ("dropout_out", dropout_out)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
            raise ConfigError(f"model.network.{name} must be in [0, 1), got {value!r}")
    encoder = RecurrentEncoder(kind, vocab_size, param_size, embedding, hidden, dtype=dtype)
    decoder = RecurrentDecoder(kind, code_size, vocab_size, max_length, embedding, hidden, z_injection, skip,
                               word_dropout, dropout_in, dropout_out, dtype=dtype)
    return encoder, decoder


__all__ = ["BOS_ID", "EOS_ID", "PAD_ID", "UNK_ID", "RecurrentDecoder", "RecurrentEncoder", "Z_INJECTIONS",
           "recurrent_networks"]
