"""Noisy-input and adversarial (FGSM) training: the encoder sees a perturbed input x̃, the model
reconstructs the clean x.

    loss = −mean_batch( log p(x | z) − β · KL(q(z | x̃) || p(z)) ),   z ~ q(z | x̃)

(``VAE.compute_terms(x̃, training=True, target=x)``). Perturbations (``noise`` option):

- ``gaussian``: x̃ = x + σ_n ε, ε ~ N(0, I) (``sigma``; the denoising criterion of Im, Ahn,
  Memisevic, Bengio 2017, "Denoising criterion for variational auto-encoding framework");
- ``fgsm``: x̃ = x + ε · sign(∇_x̃ [−ELBO(x̃ → x)]) at x̃ = x (``epsilon``; the fast gradient sign
  method of Goodfellow, Shlens, Szegedy 2015, against the ELBO): the L∞ norm of every
  perturbation is exactly ε (fewer only where the gradient is exactly 0). The gradient is taken
  w.r.t. the encoder's input only, the reconstruction target staying the clean x, with a fresh
  reparameterisation sample.

``clip: true`` clips x̃ to the likelihood's support (e.g. [0, 1] for Bernoulli); it is off by
default, so the requested norms hold exactly (the encoder accepts any real input).

Logged (train and ``val_``, means over examples): ``elbo``, ``reconstruction``, ``kl`` of the
*clean* input (the model's ELBO on the data, comparable with every other objective, and what
early stopping watches); ``elbo_perturbed``, ``reconstruction_perturbed``, ``kl_perturbed`` of the
perturbed input (what the step trains on; ``loss`` is its loss); ``perturbation_linf`` and
``perturbation_l2`` (per-example norms of x̃ − x, over all data dims).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from vae_tf.errors import ConfigError
from vae_tf.models import replicas
from vae_tf.models.vae import ACTIVE_KL_THRESHOLD, VAE
from vae_tf.schedules import _number

NOISES = ("gaussian", "fgsm")
DEFAULT_SIGMA = 0.1
DEFAULT_EPSILON = 0.1


class NoisyInputVAE(VAE):
    """ELBO with a perturbed encoder input and a clean reconstruction target (module docstring).

    Options (``objective.options``): ``noise`` (``gaussian`` or ``fgsm``), ``sigma`` (σ_n of the
    Gaussian noise, default 0.1), ``epsilon`` (ε of FGSM, default 0.1), ``clip`` (clip x̃ to the
    likelihood's support, default false), and the base ``beta_schedule``.
    """

    objective = "noisy_input"

    def __init__(self, *args, noise: str = "gaussian", sigma: float | None = None, epsilon: float | None = None,
                 clip: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        if noise not in NOISES:
            raise ConfigError(f"objective.options.noise must be one of {', '.join(NOISES)}, got {noise!r}")
        if noise == "gaussian" and epsilon is not None:
            raise ConfigError("objective.options.epsilon applies to noise=fgsm; Gaussian noise takes sigma")
        if noise == "fgsm" and sigma is not None:
            raise ConfigError("objective.options.sigma applies to noise=gaussian; FGSM takes epsilon")
        if not isinstance(clip, bool):
            raise ConfigError(f"objective.options.clip must be true or false, got {clip!r}")
        self.noise = noise
        scale = (DEFAULT_SIGMA if sigma is None else sigma) if noise == "gaussian" else (
            DEFAULT_EPSILON if epsilon is None else epsilon)
        self.scale = _number(scale, f"objective.options.{'sigma' if noise == 'gaussian' else 'epsilon'}",
                             positive=True)
        self.clip = clip
        if clip and self.likelihood.support is None:
            raise ConfigError(f"objective.options.clip needs a likelihood with a bounded support; "
                              f"{self.likelihood.name_key!r} has none")
        self.elbo_perturbed_tracker = keras.metrics.Mean(name="elbo_perturbed")
        self.reconstruction_perturbed_tracker = keras.metrics.Mean(name="reconstruction_perturbed")
        self.kl_perturbed_tracker = keras.metrics.Mean(name="kl_perturbed")
        self.linf_tracker = keras.metrics.Mean(name="perturbation_linf")
        self.l2_tracker = keras.metrics.Mean(name="perturbation_l2")

    @property
    def metrics(self):
        return [*super().metrics, self.elbo_perturbed_tracker, self.reconstruction_perturbed_tracker,
                self.kl_perturbed_tracker, self.linf_tracker, self.l2_tracker]

    def perturb(self, x: tf.Tensor) -> tf.Tensor:
        """x̃ for a batch (Gaussian noise or FGSM, then the optional clip)."""
        x = tf.convert_to_tensor(x, tf.float32)
        if self.noise == "gaussian":
            seed = self.next_seed()  # global-batch noise sliced per replica under tf.distribute
            x_tilde = x + self.scale * replicas.draw_rows(lambda shape: tf.random.stateless_normal(shape, seed=seed), x)
        else:
            target = tf.stop_gradient(x)
            with tf.GradientTape() as tape:
                tape.watch(x)
                negative_elbo = -tf.reduce_sum(self.compute_terms(x, training=False, target=target)["elbo"])
            x_tilde = x + self.scale * tf.sign(tape.gradient(negative_elbo, x))
        if self.clip:
            low, high = self.likelihood.support
            x_tilde = tf.clip_by_value(x_tilde, low, high)
        return tf.stop_gradient(x_tilde)

    def _update_perturbation_trackers(self, x, x_tilde, perturbed: dict) -> None:
        delta = tf.reshape(x_tilde - x, [tf.shape(x)[0], -1])
        self.linf_tracker.update_state(tf.reduce_max(tf.abs(delta), axis=-1))
        self.l2_tracker.update_state(tf.norm(delta, axis=-1))
        self.elbo_perturbed_tracker.update_state(perturbed["elbo"])
        self.reconstruction_perturbed_tracker.update_state(perturbed["reconstruction"])
        self.kl_perturbed_tracker.update_state(perturbed["kl"])

    def train_step(self, data):
        x = tf.convert_to_tensor(self.unpack(data), tf.float32)
        x_tilde = self.perturb(x)
        loss, terms = self.optimise(x, lambda tape: self.compute_terms(x_tilde, training=True, target=x))
        clean = self.compute_terms(x, training=False)
        self._update_perturbation_trackers(x, x_tilde, terms)
        return replicas.step_logs({**self.update_trackers(loss, clean), **self.state_metrics()})

    def test_step(self, data):
        x = tf.convert_to_tensor(self.unpack(data), tf.float32)
        x_tilde = self.perturb(x)
        perturbed = self.compute_terms(x_tilde, training=False, target=x)
        loss = self.objective_loss(perturbed)
        clean = self.compute_terms(x, training=False)
        self.kl_per_dim_tracker.update_state(clean["kl_per_dim"])
        self._update_perturbation_trackers(x, x_tilde, perturbed)
        logs = self.update_trackers(loss, clean)
        active = tf.reduce_sum(tf.cast(self.kl_per_dim_tracker.result() > ACTIVE_KL_THRESHOLD, tf.float32))
        return replicas.step_logs({**logs, "active_kl_dims": active})

    def state_metrics(self):
        return {**super().state_metrics(), "perturbation_scale": tf.constant(self.scale, tf.float32)}


__all__ = ["NOISES", "NoisyInputVAE"]
