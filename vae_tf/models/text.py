"""Sentence VAEs: raw strings in, strings out, with the vocabulary inside the model.

:class:`TextCodec` is the model's tokenizer: the normalisation and splitting of
:mod:`vae_tf.tokenize` (in-graph TensorFlow string ops) and a lookup table of the vocabulary built
from the training split (``<pad>`` 0, ``<unk>`` 1, ``<bos>`` 2, ``<eos>`` 3, then the words), so a
model — and its SavedModel — takes raw sentences and gives sentences back, with no Python and no
download at serving time.

:class:`TextVAE` is :class:`~vae_tf.models.vae.VAE` with a text front end; everything else — the
composed objective (KL weight, regularisers, input noise, inference procedure), checkpoints,
distribution — is the base class's:

- :meth:`TextVAE.prepare` tokenises a batch of sentences, :meth:`TextVAE.encoder_input` embeds
  them: the encoder's input is the *embedded* sentence (so an input noise perturbs word vectors;
  the training step embeds inside its gradient tape, so the encoder's embeddings are trained),
  the target the word ids;
- :meth:`TextVAE.compute_terms`: the recurrent encoder reads the embedded words (padding
  masked), z ~ q(z|x), the autoregressive decoder predicts ``w_1 … w_n <eos>`` from
  ``<bos> w_1 … w_n`` and z (teacher forcing), and the likelihood
  (:class:`~vae_tf.likelihoods.categorical.TokenCategoricalLikelihood`) sums log p(w_t | w_<t, z)
  over the n + 1 positions, padding masked: ``reconstruction`` is the sentence's log-likelihood in
  nats, ``kl`` its KL, per sentence, and the loss is their batch mean as for images;
- the inference API: :meth:`encode` (strings → code), :meth:`decode` (z → greedy text, ids and
  lengths; sampled with per-row seeds), :meth:`reconstruct` (strings → the greedy decode of their
  posterior mean), :meth:`sample` (seeds → z ~ p(z) and its sampled text).

Sentences longer than the model's ``max_length`` words are **truncated** to their first
``max_length`` words by the tokenizer (the training data never has longer ones: the data sets drop
or truncate them when they are built); the serving layer says so (docs/serving.md).
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from vae_tf.errors import ConfigError, DataError
from vae_tf.models.inputs import model_rows
from vae_tf.models.vae import VAE, seed_rows
from vae_tf.networks.recurrent import BOS_ID, EOS_ID, PAD_ID
from vae_tf.networks.unrolled_rnn import traced_for_xla
from vae_tf.tokenize import BOS, EOS, PAD, SPECIALS, UNK, split_tokens


@keras.saving.register_keras_serializable(package="vae_tf")
class TextCodec(keras.layers.Layer):
    """Sentences ↔ token ids, inside the model (module docstring).

    Args:
        vocabulary: the words (specials excluded), most frequent first, as the data set built them
            from its training split (``metadata["vocabulary"]``).
        max_length: the most words a sentence keeps (``metadata["max_length"]``).
        lowercase, split_punctuation, symbol_clusters: the tokenizer settings of the data set
            (``metadata["tokenizer"]``; :mod:`vae_tf.tokenize`).
    """

    def __init__(self, vocabulary, max_length: int, lowercase: bool = True, split_punctuation: bool = True,
                 symbol_clusters: bool = True, **kwargs):
        super().__init__(**kwargs)
        words = [str(w) for w in vocabulary]
        if not words:
            raise ConfigError("a text model needs a vocabulary of at least one word (the data set's "
                              "metadata['vocabulary'])")
        clash = sorted(set(words) & set(SPECIALS))
        if clash or len(set(words)) != len(words):
            raise ConfigError(f"the vocabulary must hold distinct words and none of {', '.join(SPECIALS)}; "
                              f"found {clash or 'duplicates'}")
        if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 1:
            raise ConfigError(f"max_length must be a positive integer, got {max_length!r}")
        self.words, self.max_length = words, int(max_length)
        self.lowercase, self.split_punctuation = bool(lowercase), bool(split_punctuation)
        self.symbol_clusters = bool(symbol_clusters)
        self.table = [*SPECIALS, *words]  # id -> token
        self.lookup = keras.layers.StringLookup(vocabulary=[BOS, EOS, *words], mask_token=PAD, oov_token=UNK,
                                                num_oov_indices=1, output_mode="int", name="string_lookup")
        self.built = True

    @property
    def vocab_size(self) -> int:
        """Table size: the four specials and the words."""
        return len(self.table)

    def encode(self, sentences) -> tf.Tensor:
        """``[B]`` strings → ``[B, max_length]`` int32 ids, padded with ``<pad>`` (0) after the words,
        words outside the vocabulary (and a sentence's own special tokens, e.g. a literal
        ``<pad>``) as ``<unk>`` (1), sentences longer than ``max_length`` words truncated."""
        sentences = tf.convert_to_tensor(sentences, tf.string)
        tokens = split_tokens(sentences, lowercase=self.lowercase, split_punctuation=self.split_punctuation,
                              symbol_clusters=self.symbol_clusters)
        tokens = tokens[:, : self.max_length]
        ids = tf.ragged.map_flat_values(lambda t: tf.cast(self.lookup(self._specials_as_unk(t)), tf.int32), tokens)
        return ids.to_tensor(default_value=PAD_ID, shape=[None, self.max_length])

    @staticmethod
    def _specials_as_unk(tokens: tf.Tensor) -> tf.Tensor:
        """A sentence's own ``<pad>``, ``<bos>``, ``<eos>`` (or ``<unk>``) is a word the vocabulary
        does not hold: ``<unk>``, never the special id (a ``<pad>`` inside a sentence would
        otherwise read as padding)."""
        special = tf.reduce_any(tf.equal(tokens[:, None], tf.constant(list(SPECIALS))[None, :]), axis=1)
        return tf.where(special, tf.constant(UNK), tokens)

    def decode(self, ids, lengths) -> tf.Tensor:
        """``[B, L]`` ids and ``[B]`` word counts → ``[B]`` strings (words joined by one space)."""
        ids = tf.convert_to_tensor(ids, tf.int32)
        ragged = tf.RaggedTensor.from_tensor(ids, lengths=tf.cast(lengths, tf.int64))
        words = tf.ragged.map_flat_values(lambda i: tf.gather(tf.constant(self.table), i), ragged)
        return tf.strings.reduce_join(words, axis=1, separator=" ")

    def call(self, sentences):
        return self.encode(sentences)

    def describe(self) -> dict:
        return {"vocab_size": self.vocab_size, "max_length": self.max_length, "lowercase": self.lowercase,
                "split_punctuation": self.split_punctuation, "symbol_clusters": self.symbol_clusters,
                "specials": list(SPECIALS),
                "long_sentences": "truncated to max_length words"}

    def get_config(self):
        return {**super().get_config(), "vocabulary": self.words, "max_length": self.max_length,
                "lowercase": self.lowercase, "split_punctuation": self.split_punctuation,
                "symbol_clusters": self.symbol_clusters}

    @classmethod
    def from_config(cls, config):
        # a config saved before symbol clusters existed: its model split symbols as they were then
        return cls(**{"symbol_clusters": False, **config})


def teacher_forcing(ids: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """``(decoder inputs, decoder targets)`` of padded word ids ``[B, T]``: ``<bos> w_1 … w_n``
    and ``w_1 … w_n <eos>``, both ``[B, T + 1]`` and padded with ``<pad>``."""
    ids = tf.cast(ids, tf.int32)
    batch = tf.shape(ids)[0]
    lengths = tf.reduce_sum(tf.cast(tf.not_equal(ids, PAD_ID), tf.int32), axis=1)
    inputs = tf.concat([tf.fill([batch, 1], BOS_ID), ids], axis=1)
    padded = tf.concat([ids, tf.fill([batch, 1], PAD_ID)], axis=1)
    at_end = tf.equal(tf.range(tf.shape(padded)[1])[None, :], lengths[:, None])
    return inputs, tf.where(at_end, tf.constant(EOS_ID, tf.int32), padded)


class TextVAE(VAE):
    """A VAE of sentences (module docstring): the composed objective of :class:`VAE` with a
    tokenizer in front (``codec``), a recurrent encoder and an autoregressive decoder
    (:mod:`vae_tf.networks.recurrent`) and the token likelihood."""

    modality = "text"

    def __init__(self, *args, codec: TextCodec, **kwargs):
        super().__init__(*args, **kwargs)
        self.codec = codec

    @property
    def input_signature(self) -> tf.TensorSpec:
        """What ``encode`` / ``reconstruct`` take: a batch of raw UTF-8 sentences."""
        return tf.TensorSpec((None,), tf.string, name="x")

    def example_input(self) -> tf.Tensor:
        return tf.constant([self.codec.words[0]])

    def export_resources(self) -> list:
        """What the export must track besides the signatures' variables: the vocabulary table."""
        return [self.codec.lookup]

    # --- training ----------------------------------------------------------------------------------
    embeds_inputs = True  # the encoder's word embeddings are trained through encoder_input

    def prepare(self, x):
        """Sentences → (word ids ``[B, T]``, word ids ``[B, T]``): the encoder's tokens and the
        likelihood's target. Word ids already (:meth:`tokenized`: the input pipeline of a model
        compiled with ``jit_compile=True``) are taken as they are."""
        x = tf.convert_to_tensor(x)
        # Checked when the step is traced: TensorFlow's "Tensor conversion requested dtype string for
        # Tensor with dtype float32" said neither what the model takes nor what to do.
        if x.dtype != tf.string and not x.dtype.is_integer:
            raise DataError(f"this text model trains on sentences (strings, one per example), got {x.dtype.name} "
                            f"values of shape {x.shape.as_list()}; give it sentences, e.g. load_dataset"
                            "('text_synthetic') or a text file's lines")
        ids = tf.cast(x, tf.int32) if x.dtype.is_integer else self.codec.encode(x)
        return ids, ids

    def encoder_input(self, inputs):
        """Word ids → the encoder's embedded words ``[B, T, E]`` (what an input noise perturbs)."""
        return self.encoder.embed(inputs)

    def compute_terms(self, x, training: bool = False, target=None, *, gradient: bool = True) -> dict:
        """Per-sentence ELBO terms (module docstring). ``x``: embedded words (possibly perturbed);
        ``target``: the word ids; ``gradient`` as in :meth:`VAE.compute_terms`. ``reconstruction``
        = log p(sentence | z) summed over its words and ``<eos>``; ``kl`` summed over latent dims;
        ``words`` the positions scored (n + 1)."""
        if target is None:
            raise ConfigError("a text model's compute_terms needs the word ids (TextVAE.prepare gives them)")
        ids = tf.cast(target, tf.int32)
        params = self.encoder.encode_embedded(x, tf.not_equal(ids, PAD_ID), training=training)
        seed = self.next_seed()
        z = self.sample_code(params, seed)
        decoder_inputs, decoder_targets = teacher_forcing(ids)
        out = self.decoder([z, decoder_inputs], training=training)
        reconstruction = self.likelihood_scorer(gradient)(decoder_targets, out)
        kl_per_dim = self.latent.kl_per_dim(params, z, seed=tf.random.experimental.stateless_fold_in(seed, 1))
        kl = tf.reduce_sum(kl_per_dim, axis=-1)
        words = tf.reduce_sum(tf.cast(tf.not_equal(decoder_targets, PAD_ID), tf.float32), axis=-1)
        return {"params": params, "z": z, "out": out, "reconstruction": reconstruction, "kl_per_dim": kl_per_dim,
                "kl": kl, "elbo": reconstruction - kl, "words": words}

    @property
    def encoder_variables(self) -> list:
        return [*self.encoder.trainable_variables, *self.latent.trainable_variables]

    # --- XLA: jit_compile=True trains on word ids ----------------------------------------------------
    # The tokenizer's vocabulary lookup has no XLA kernel, so Keras turns jit_compile=True off for a
    # model holding one. A text model compiled with it tokenises its data in the input pipeline
    # instead (fit and evaluate map the sentences through the codec), so the compiled steps read
    # word ids and never run the lookup; its unrolled recurrent layers build their steps for XLA
    # (vae_tf.networks.unrolled_rnn.traced_for_xla). Where it pays: the text benchmark's models
    # trained 1.12-1.20x faster on 2 CPUs after 6-10 s more of compiling (docs/performance.md,
    # Text); Keras' auto leaves XLA off on a CPU.
    def layers_outside_compiled_steps(self) -> list:
        """The tokenizer: with XLA the compiled steps read word ids (see above)."""
        return [self.codec]

    @property
    def jit_compile(self):
        return keras.Model.jit_compile.fget(self)

    @jit_compile.setter
    def jit_compile(self, value):
        from tensorflow.python.framework.config import is_op_determinism_enabled

        if value is True and not self.layers_without_xla() and not is_op_determinism_enabled():
            self._jit_compile = True
        else:  # Keras' own checks (and its warning where it turns XLA off)
            keras.Model.jit_compile.fset(self, value)

    def tokenized(self, data):
        """``data`` with its sentences as word ids ``[B, max_length]`` (:meth:`TextCodec.encode`):
        a ``tf.data.Dataset`` of sentence batches (or of ``(sentences, ...)`` tuples) mapped through
        the tokenizer, an array of sentences tokenised now; ids, and anything else, as given."""
        def encode_first(first, *rest):
            ids = self.codec.encode(first)
            return (ids, *rest) if rest else ids

        if isinstance(data, tf.data.Dataset):
            spec = data.element_spec
            first = spec[0] if isinstance(spec, tuple) else spec
            if getattr(first, "dtype", None) != tf.string:
                return data
            return data.map(encode_first).prefetch(2)
        if isinstance(data, tuple) and data:
            return (self.tokenized(data[0]), *data[1:])
        if isinstance(data, (list, np.ndarray)):
            array = np.asarray(data, dtype=object) if isinstance(data, list) else data
            if array.dtype == object or array.dtype.kind in "US":
                return self.codec.encode(tf.constant(array.astype(object))).numpy()
        return data

    def _xla_inputs(self, args: tuple, kwargs: dict, fit: bool) -> tuple[tuple, dict]:
        """``fit`` / ``evaluate``'s data (``x``, and ``fit``'s ``validation_data``) tokenised when XLA is on."""
        if not self.jit_compile:
            return args, kwargs
        args, kwargs = list(args), dict(kwargs)
        if args:
            args[0] = self.tokenized(args[0])
        elif kwargs.get("x") is not None:
            kwargs["x"] = self.tokenized(kwargs["x"])
        if fit and len(args) > 7:  # fit's positional validation_data
            args[7] = self.tokenized(args[7])
        if fit and kwargs.get("validation_data") is not None:
            kwargs["validation_data"] = self.tokenized(kwargs["validation_data"])
        return tuple(args), kwargs

    def fit(self, *args, **kwargs):
        """:meth:`VAE.fit`; with ``jit_compile=True`` the sentences are tokenised in the input
        pipeline (:meth:`tokenized`) for the compiled steps."""
        if self.jit_compile:  # checked as sentences before they become ids (VAE.fit checks them otherwise)
            args, kwargs = self._checked_data(args, kwargs, fit=True)
        args, kwargs = self._xla_inputs(args, kwargs, fit=True)
        return super().fit(*args, **kwargs)

    def evaluate(self, *args, **kwargs):
        """:meth:`VAE.evaluate`; with ``jit_compile=True`` the sentences are tokenised first, as in :meth:`fit`."""
        if self.jit_compile and not kwargs.get("_use_cached_eval_dataset"):  # as fit (fit's validation: checked)
            args, kwargs = self._checked_data(args, kwargs, fit=False)
        args, kwargs = self._xla_inputs(args, kwargs, fit=False)
        return super().evaluate(*args, **kwargs)

    def _refuse_sentences_in_xla(self, data) -> None:
        if self.jit_compile and self.unpack(data).dtype == tf.string:
            raise ConfigError("this text model is compiled with jit_compile=True, whose steps read word ids, not "
                              "sentences: train it with fit / evaluate (they tokenise the data) or map the "
                              "dataset through model.tokenized first")

    def train_step(self, data):
        self._refuse_sentences_in_xla(data)
        with traced_for_xla(bool(self.jit_compile)):
            return super().train_step(data)

    def test_step(self, data):
        self._refuse_sentences_in_xla(data)
        return super().test_step(data)

    # --- inference API (also the SavedModel signatures) ----------------------------------------------
    def posterior_params(self, x, training: bool = False) -> tf.Tensor:
        """The latent family's parameters for a batch of sentences."""
        return self.encoder(self.codec.encode(x), training=training)

    def log_likelihood(self, target, z) -> tf.Tensor:
        """log p(sentence | z) ``[N]`` for word ids ``[N, T]``, teacher-forced (module docstring)."""
        decoder_inputs, decoder_targets = teacher_forcing(target)
        out = self.decoder([z, decoder_inputs], training=False)
        return self.likelihood.log_prob_for_evaluation(decoder_targets, out)

    def expected_output(self, target, z) -> tf.Tensor:
        decoder_inputs, _ = teacher_forcing(target)
        return self.likelihood.expected(self.decoder([z, decoder_inputs], training=False))

    def scored_positions(self, x) -> np.ndarray:
        """Positions the likelihood scores per sentence: its words (after truncation) and ``<eos>``."""
        ids = self.codec.encode(tf.constant(np.asarray(x, dtype=object)))
        return np.sum(np.asarray(ids) != PAD_ID, axis=1) + 1

    def call(self, x, training=False):
        return self.reconstruction(x)["text"]

    def encode(self, x) -> dict:
        """Named code tensors for a batch of raw sentences (checked when given eagerly:
        :func:`vae_tf.models.inputs.sentences`)."""
        return self.latent.export_outputs(self.posterior_params(model_rows(self, x)))

    def decode(self, z, seeds=None, temperature: float = 1.0) -> dict:
        """``text`` (``[B]`` strings), ``tokens`` (``[B, max_length]`` ids, ``<pad>`` after the
        sentence) and ``lengths`` (words per sentence): greedy without ``seeds``, sampled with one
        stateless seed row per code otherwise, from the softmax at ``temperature`` (1: the
        model's; lower: sharper, towards greedy; higher: more varied). The exported ``decode``
        and ``sample`` signatures sample at temperature 1."""
        z, seeds = self._decode_inputs(z, seeds)
        temperature = check_temperature(temperature, sampled=seeds is not None)
        ids, lengths = self.decoder.generate(tf.convert_to_tensor(z, tf.float32), seeds=seeds, temperature=temperature)
        return {"text": self.codec.decode(ids, lengths), "tokens": ids, "lengths": lengths}

    def reconstruct(self, x) -> dict:
        """``text``: the greedy decode of each sentence's posterior mean code (``x`` checked as
        :meth:`encode` checks it)."""
        return self.reconstruction(model_rows(self, x))

    def reconstruction(self, x) -> dict:
        """:meth:`reconstruct` of ``x`` as it is, unchecked."""
        code = self.latent.embedding(self.posterior_params(x))
        ids, lengths = self.decoder.generate(code)
        return {"text": self.codec.decode(ids, lengths)}

    def sample(self, seeds, temperature: float = 1.0) -> dict:
        """One sentence per seed row (int32 ``[n, 2]``): ``z`` ~ p(z), then words sampled from the
        decoder (at ``temperature``: :meth:`decode`) with a stream derived from the row's seed.
        Stateless and reproducible."""
        seeds = seed_rows(seeds)
        temperature = check_temperature(temperature, sampled=True)
        z = self.latent.sample_prior(seeds)
        decode_seeds = tf.map_fn(lambda s: tf.random.experimental.stateless_fold_in(s, 1), seeds)
        return {"z": z, **self.decode(z, seeds=decode_seeds, temperature=temperature)}


def check_temperature(temperature, *, sampled: bool) -> float:
    """A sampling temperature: a finite number > 0 (one line otherwise); only for sampled decoding."""
    if isinstance(temperature, tf.Tensor) and not tf.executing_eagerly():
        return temperature
    if isinstance(temperature, tf.Tensor) and temperature.shape.rank == 0:  # tf.constant(0.7), eagerly
        temperature = temperature.numpy()
    if isinstance(temperature, np.ndarray) and temperature.ndim == 0:  # np.array(0.7)
        temperature = temperature[()]
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float, np.number)) or \
            not np.isfinite(temperature) or temperature <= 0:
        raise ConfigError(f"temperature must be a number > 0 (1 samples from the model's own distribution), got "
                          f"{temperature!r}")
    if not sampled and float(temperature) != 1.0:
        raise ConfigError("temperature applies to sampled decoding; give seeds (one row per code), or leave it at 1 "
                          "for greedy decoding")
    return float(temperature)


def text_settings(metadata: dict) -> dict:
    """What a text model takes from a text data set's metadata: vocabulary, max_length, tokenizer."""
    missing = [k for k in ("vocabulary", "max_length") if k not in metadata]
    if missing:
        raise ConfigError(f"text data sets must record {', '.join(missing)} in their metadata (vae_tf.data.text)")
    tokenizer = dict(metadata.get("tokenizer") or {})
    return {"vocabulary": list(metadata["vocabulary"]), "max_length": int(metadata["max_length"]),
            "lowercase": bool(tokenizer.get("lowercase", True)),
            "split_punctuation": bool(tokenizer.get("split_punctuation", True)),
            # a data set built before symbol clusters existed recorded no such key: its vocabulary
            # was counted without them
            "symbol_clusters": bool(tokenizer.get("symbol_clusters", False))}


__all__ = ["TextCodec", "TextVAE", "check_temperature", "teacher_forcing", "text_settings"]
