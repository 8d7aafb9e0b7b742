"""Noisy and adversarial inputs: the encoder sees a perturbed x̃, the model reconstructs the clean x.

    loss = −mean_B(log p(x | z)) + (KL weight's term of KL(q(z | x̃) || p(z))) + ...,   z ~ q(z | x̃)

- ``gaussian``: x̃ = x + σ_n ε, ε ~ N(0, I) (``sigma``; the denoising criterion of Im, Ahn,
  Memisevic, Bengio 2017, "Denoising criterion for variational auto-encoding framework");
- ``fgsm``: x̃ = x + ε · sign(∇_x̃ [−ELBO(x̃ → x)]) at x̃ = x (``epsilon``; the fast gradient sign
  method of Goodfellow, Shlens, Szegedy 2015, against the ELBO): the L∞ norm of every
  perturbation is exactly ε (fewer only where the gradient is exactly 0). The gradient is taken
  w.r.t. the encoder's input only, the target staying the clean x, with a fresh
  reparameterisation sample and the model as it is before the step's update.

For text the encoder's input is the embedded sentence (:meth:`vae_tf.models.VAE.encoder_input`), so
both perturb the word vectors, the noise being added to every position ("adversarial training on
the embeddings", Miyato et al. 2017's setting); the decoder still reconstructs the clean words.

``clip: true`` clips x̃ to the likelihood's support (e.g. [0, 1] for Bernoulli); it is off by
default, so the requested norms hold exactly (the encoder accepts any real input).

Logged (train and ``val_``, means over examples): ``elbo``, ``reconstruction``, ``kl`` of the
*clean* input (the model's ELBO on the data, comparable with every other run, and what early
stopping watches); ``elbo_perturbed``, ``reconstruction_perturbed``, ``kl_perturbed`` of the
perturbed input (what the step trains on; ``loss`` is its loss); ``perturbation_linf`` and
``perturbation_l2`` (per-example norms of x̃ − x over all data dims).

Under ``tf.distribute`` the Gaussian noise is drawn for the global batch and sliced per replica
(:func:`vae_tf.replicas.draw_rows`), so every example gets the noise it gets on one device.
"""

from __future__ import annotations

from typing import Literal

import keras
import tensorflow as tf
from pydantic import PositiveFloat

from vae_tf import replicas
from vae_tf.errors import ConfigError
from vae_tf.remedies.base import InputNoise, SlotOptions


class _Perturbation(InputNoise):
    """What Gaussian noise and FGSM share: the optional clip and the trackers."""

    def __init__(self, options, context, **kwargs):
        super().__init__(options, context, **kwargs)
        self.support = context.likelihood.support
        if self.options.clip and self.support is None:
            raise ConfigError(f"objective.input_noise.clip needs a likelihood with a bounded support; "
                              f"{context.likelihood.name_key!r} has none: set clip: false")
        self.elbo_perturbed_tracker = keras.metrics.Mean(name="elbo_perturbed")
        self.reconstruction_perturbed_tracker = keras.metrics.Mean(name="reconstruction_perturbed")
        self.kl_perturbed_tracker = keras.metrics.Mean(name="kl_perturbed")
        self.linf_tracker = keras.metrics.Mean(name="perturbation_linf")
        self.l2_tracker = keras.metrics.Mean(name="perturbation_l2")

    @property
    def metrics(self):
        return [self.elbo_perturbed_tracker, self.reconstruction_perturbed_tracker, self.kl_perturbed_tracker,
                self.linf_tracker, self.l2_tracker]

    def noise(self, model, x: tf.Tensor, target) -> tf.Tensor:
        raise NotImplementedError

    def perturb(self, model, inputs, target):
        x = tf.convert_to_tensor(inputs, tf.float32)
        x_tilde = x + self.noise(model, x, target)
        if self.options.clip:
            low, high = self.support
            x_tilde = tf.clip_by_value(x_tilde, low, high)
        return tf.stop_gradient(x_tilde)

    def update_trackers(self, x, x_tilde, perturbed):
        delta = tf.reshape(x_tilde - tf.cast(x, tf.float32), [tf.shape(x_tilde)[0], -1])
        self.linf_tracker.update_state(tf.reduce_max(tf.abs(delta), axis=-1))
        self.l2_tracker.update_state(tf.norm(delta, axis=-1))
        self.elbo_perturbed_tracker.update_state(perturbed["elbo"])
        self.reconstruction_perturbed_tracker.update_state(perturbed["reconstruction"])
        self.kl_perturbed_tracker.update_state(perturbed["kl"])


class GaussianNoise(_Perturbation):
    """``input_noise: {kind: gaussian, sigma: 0.1, clip: false}``: x̃ = x + σ_n ε (module docstring)."""

    kind = "gaussian"

    class Options(SlotOptions):
        kind: Literal["gaussian"] = "gaussian"
        sigma: PositiveFloat = 0.1
        clip: bool = False

    def noise(self, model, x, target):
        seed = model.next_seed()  # the model's checkpointed stream
        return self.options.sigma * replicas.draw_rows(lambda shape: tf.random.stateless_normal(shape, seed=seed), x)

    def state(self, step):
        return {"perturbation_scale": tf.constant(self.options.sigma, tf.float32)}


class FGSM(_Perturbation):
    """``input_noise: {kind: fgsm, epsilon: 0.1, clip: false}``: x̃ = x + ε sign(∇ −ELBO) (module
    docstring)."""

    kind = "fgsm"

    class Options(SlotOptions):
        kind: Literal["fgsm"] = "fgsm"
        epsilon: PositiveFloat = 0.1
        clip: bool = False

    def noise(self, model, x, target):
        target = tf.stop_gradient(target)
        with tf.GradientTape() as tape:
            tape.watch(x)
            negative_elbo = -tf.reduce_sum(model.compute_terms(x, training=False, target=target)["elbo"])
        return self.options.epsilon * tf.sign(tape.gradient(negative_elbo, x))

    def state(self, step):
        return {"perturbation_scale": tf.constant(self.options.epsilon, tf.float32)}


__all__ = ["FGSM", "GaussianNoise"]
