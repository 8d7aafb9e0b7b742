"""The likelihood of a sentence under an autoregressive decoder: a categorical distribution over
the vocabulary at every position (``model.likelihood: {name: categorical}``, text models only).

    log p(x | z) = Σ_{t=1}^{n+1} log softmax(logits_t)[w_t],    w_1 … w_n the words, w_{n+1} = <eos>

**summed over the positions of the sentence** (its n words and the closing ``<eos>``, as in
Bowman et al. 2016 and He et al. 2019), nats; padding positions (id 0, ``<pad>``) are masked out,
so a sentence's log-likelihood does not depend on how much padding its batch has. The decoder
emits ``out`` = logits ``[B, T, vocab]``; the target is ``[B, T]`` token ids.
"""

from __future__ import annotations

import tensorflow as tf

from vae_tf.likelihoods.base import Likelihood, tfd

PAD_ID = 0


class TokenCategoricalLikelihood(Likelihood):
    """Independent categoricals over the vocabulary, one per position, padding masked (module
    docstring). ``mean`` is the most likely word at every position, ``sample`` a word drawn at
    every position (given the teacher-forced prefix; generation proper is the decoder's)."""

    name_key = "categorical"
    support = None  # token ids, not values: the data checks are the text checks
    normalised = True

    def __init__(self, **kwargs):
        kwargs.pop("data_rank", None)
        super().__init__(data_rank=1, **kwargs)

    def base_distribution(self, out):
        return tfd.Categorical(logits=out)

    def log_prob(self, x, out):
        """Σ over the non-padding positions of log p(w_t | w_<t, z), ``[B]`` nats."""
        target = tf.cast(x, tf.int32)
        return _sum_over_words(-tf.nn.sparse_softmax_cross_entropy_with_logits(labels=target, logits=out), target)

    def log_prob_for_evaluation(self, x, out):
        """:meth:`log_prob`'s value as each word's logit minus the log-sum-exp over the vocabulary.
        TensorFlow's fused sparse softmax cross-entropy also writes its gradient, a ``[B, T,
        vocab]`` tensor, on every call: for the thousands of decoder passes of an IW-NLL that is
        most of the likelihood's cost (docs/performance.md, "IW-NLL of a text model")."""
        target = tf.cast(x, tf.int32)
        if target.shape.rank is None:  # gather needs the number of batch dims when it is traced
            return self.log_prob(x, out)
        word_logit = tf.gather(out, target, axis=-1, batch_dims=target.shape.rank)
        return _sum_over_words(word_logit - tf.reduce_logsumexp(out, axis=-1), target)

    def mean(self, out):
        return tf.argmax(out, axis=-1, output_type=tf.int32)

    def expected(self, out):
        """E[one-hot word] at every position: the softmax probabilities ``[B, T, vocab]``."""
        return tf.nn.softmax(out, axis=-1)

    def sample(self, out, seed=None):
        return tf.cast(self.base_distribution(out).sample(seed=seed), tf.int32)


def _sum_over_words(per_position, target):
    """Σ over the positions that are not ``<pad>`` of the per-position log-probabilities, ``[B]``."""
    return tf.reduce_sum(per_position * tf.cast(tf.not_equal(target, PAD_ID), per_position.dtype), axis=-1)


__all__ = ["TokenCategoricalLikelihood"]
