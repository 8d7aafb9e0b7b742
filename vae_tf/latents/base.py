"""The latent-family interface.

A latent family turns the encoder's raw output (``params``, shape ``[B, param_size]``) into the
approximate posterior q(z|x), names the prior p(z), and computes everything the objectives, the
metrics and the export need from them. Families are Keras layers so that any state they own
(trainable hyperparameters, a temperature) is tracked, checkpointed and exported with the model.

Shapes: ``B`` is the batch, ``d = code_size`` the width of the code z fed to the decoder.
"""

from __future__ import annotations

import abc

import keras
import tensorflow as tf


class LatentFamily(keras.layers.Layer, abc.ABC):
    """Base class of latent families (posterior, prior, KL, sample, embedding, export outputs)."""

    #: Registry name, set by subclasses.
    family: str = ""
    #: Categories of a discrete part of the code (0: none). A code z is laid out as
    #: ``[continuous dims (latent_dim) | one-hot category (categories)]``; callers read these two
    #: numbers and :meth:`continuous_posterior` / :meth:`category_logits` instead of testing a
    #: family's class.
    categories: int = 0

    def __init__(self, latent_dim: int, **kwargs):
        super().__init__(**kwargs)
        self.latent_dim = int(latent_dim)

    # --- sizes -----------------------------------------------------------------------------
    @property
    @abc.abstractmethod
    def param_size(self) -> int:
        """Width of the encoder output this family reads."""

    @property
    def code_size(self) -> int:
        """Width of the code z the decoder reads."""
        return self.latent_dim

    @property
    def embedding_size(self) -> int:
        """Width of the deterministic embedding handed to downstream users."""
        return self.latent_dim

    @property
    def continuous_size(self) -> int:
        """Width of the continuous part of the code (the leading columns of z)."""
        return self.latent_dim

    @property
    def kl_size(self) -> int:
        """Number of columns of :meth:`kl_per_dim` (default: one per code dimension)."""
        return self.code_size

    # --- distributions ---------------------------------------------------------------------
    @abc.abstractmethod
    def posterior(self, params: tf.Tensor):
        """q(z|x) as a TFP distribution with batch shape ``[B, d]`` (factorised over dims)."""

    @abc.abstractmethod
    def prior(self):
        """p(z) as a TFP distribution with batch shape ``[d]``."""

    @abc.abstractmethod
    def kl_per_dim(self, params: tf.Tensor, z: tf.Tensor | None = None, seed=None) -> tf.Tensor:
        """KL(q(z_i|x) || p(z_i)) per example and latent dimension, shape ``[B, kl_size]`` (nats;
        ``kl_size == d`` unless a family groups its code dims, e.g. one column per categorical).

        ``z`` is the reparameterised sample; ``seed`` (int32 ``[2]``, from the model's seeded
        stream) is for families whose Monte Carlo estimate needs a draw of its own (their
        docstring says so); closed-form families ignore both.
        """

    def kl_per_dim_diagnostic(self, params: tf.Tensor, z: tf.Tensor | None = None, seed=None) -> tf.Tensor:
        """The per-example KL the diagnostics read (KL per dimension, (ε, δ)-collapse, the
        verdict), shape ``[B, kl_size]``: :meth:`kl_per_dim` for a closed-form family. A family
        whose :meth:`kl_per_dim` is a single-draw Monte Carlo estimate (right for a training
        objective, unbiased) returns here the mean of many draws, clipped at 0: one draw is
        negative for many examples, and (ε, δ)-collapse compares each example's KL with ε."""
        return self.kl_per_dim(params, z, seed=seed)

    @abc.abstractmethod
    def sample(self, params: tf.Tensor, seed=None) -> tf.Tensor:
        """A reparameterised sample z ~ q(z|x), shape ``[B, d]``; gradients reach ``params``."""

    @abc.abstractmethod
    def embedding(self, params: tf.Tensor) -> tf.Tensor:
        """The deterministic code given to downstream classifiers, shape ``[B, embedding_size]``."""

    @abc.abstractmethod
    def export_outputs(self, params: tf.Tensor) -> dict[str, tf.Tensor]:
        """Named batch-leading tensors the ``encode`` signature returns (``embedding`` first)."""

    @abc.abstractmethod
    def sample_prior(self, seeds: tf.Tensor) -> tf.Tensor:
        """One z ~ p(z) per row of ``seeds`` (int32 ``[n, 2]``), stateless: row i depends on
        ``seeds[i]`` alone, so a request's samples do not depend on its other rows."""

    # --- the parts of the code, for estimators that treat them apart (MI, aggregate densities) --
    def continuous_posterior(self, params: tf.Tensor):
        """q(z_c | x) of the continuous part of the code: a TFP distribution with batch shape
        ``[B, continuous_size]``, factorised over dims (default: :meth:`posterior`)."""
        return self.posterior(params)

    def category_logits(self, params: tf.Tensor) -> tf.Tensor | None:
        """Logits ``[B, categories]`` of q(c | x) for a family with a categorical part; None otherwise."""
        return None

    def hard_code(self, params: tf.Tensor, seed) -> tf.Tensor:
        """A code z ~ q(z|x) of the discrete model (an exact one-hot category where the family has
        one, as in evaluation and serving); default: :meth:`sample`."""
        return self.sample(params, seed=seed)

    # --- optional hooks: the VAE and the export call them; the defaults add nothing ---------
    def bind_step(self, step) -> None:
        """Receive the model's training-step counter (``VAE.train_steps``, a variable the
        checkpoints carry) once, at model construction. Families whose behaviour follows a
        schedule (a Gumbel-softmax temperature) read it; the default ignores it."""

    def update_diagnostics(self, terms: dict) -> dict:
        """Update the family's own ``keras.metrics`` (attributes of the family, so they appear in
        ``self.metrics``, which the VAE lists with its trackers: logged by name and reset every
        epoch) from a step's ``terms`` (``VAE.compute_terms``), and return extra scalar logs.
        Called in every train and test step; the default does nothing and returns ``{}``."""
        return {}

    def evaluation_diagnostics(self, post: dict, kl) -> dict[str, float]:
        """The family's own numbers for ``vae-tf evaluate`` (:func:`vae_tf.metrics.evaluate_model`),
        from the encoded split: ``post`` is :func:`vae_tf.metrics.encode_posterior`'s arrays (the
        family's exported tensors, per example), ``kl`` its ``(N, kl_size)`` per-example KL.
        The default adds nothing."""
        return {}

    def extra_signatures(self, model) -> dict:
        """Family-specific SavedModel signatures, ``{name: tf.function with an input_signature}``,
        exported after the four standard ones (e.g. decoding a chosen category). Default: none."""
        return {}

    # --- utilities -------------------------------------------------------------------------
    def layout(self) -> dict:
        """Description of the code layout written into the SavedModel's assets."""
        return {
            "family": self.family,
            "latent_dim": self.latent_dim,
            "code_size": self.code_size,
            "embedding_size": self.embedding_size,
            "param_size": self.param_size,
        }

    def call(self, params):  # a Layer must be callable; the family's work is in its methods
        return self.embedding(params)

    def get_config(self):
        config = super().get_config()
        config.update(latent_dim=self.latent_dim)
        return config
