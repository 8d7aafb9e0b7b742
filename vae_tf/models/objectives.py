"""Objectives beyond the plain (β-)ELBO, each a :class:`~vae_tf.models.vae.VAE` subclass.

All keep the loss conventions of :mod:`vae_tf.models.vae` (sums over data and latent dims, means
over the batch, nats) and report ``loss``, ``elbo``, ``reconstruction``, ``kl``, ``beta`` plus
their own state.
"""

from __future__ import annotations

import tensorflow as tf

from vae_tf.errors import ConfigError
from vae_tf.likelihoods import GaussianAdaptiveLikelihood
from vae_tf.models import replicas
from vae_tf.models.vae import VAE
from vae_tf.schedules import PIController, _number, _steps


class CapacityVAE(VAE):
    """Capacity-controlled β-VAE (Burgess et al. 2018, "Understanding disentangling in β-VAE"):

        loss = −mean_batch(reconstruction) + γ · |mean_batch(kl) − C(t)|,
        C(t) = C_max · min(1, t / capacity_steps)

    The KL is pulled toward a capacity C that grows linearly from 0 to ``capacity_max`` nats over
    ``capacity_steps`` training steps. ``beta`` reports γ; ``capacity`` reports C(t). Under
    ``tf.distribute`` mean_batch(kl) inside |·| is the global-batch mean
    (:func:`vae_tf.models.replicas.global_mean`), so replicas optimise the same objective as one
    device on the global batch.
    """

    objective = "capacity"

    def __init__(self, *args, gamma: float = 100.0, capacity_max: float = 25.0, capacity_steps: int = 10000,
                 **kwargs):
        super().__init__(*args, **kwargs)
        self.gamma = _number(gamma, "objective.options.gamma", low=0.0)
        self.capacity_max = _number(capacity_max, "objective.options.capacity_max", low=0.0)
        self.capacity_steps = _steps(capacity_steps, "objective.options.capacity_steps")
        self.beta.assign(self.gamma)

    def capacity(self, step=None) -> tf.Tensor:
        step = self.train_steps if step is None else step
        fraction = tf.minimum(tf.cast(step, tf.float32) / float(self.capacity_steps), 1.0)
        return self.capacity_max * fraction

    def objective_loss(self, terms):
        gap = tf.abs(replicas.global_mean(terms["kl"]) - self.capacity())
        return -tf.reduce_mean(terms["reconstruction"]) + self.gamma * gap

    def state_metrics(self):
        return {**super().state_metrics(), "capacity": self.capacity()}


class ControlVAE(VAE):
    """ControlVAE (Shao et al., ICML 2020): β(t) from a PI controller on the KL, so the KL settles
    at a chosen set point (nats, summed over latent dims, batch mean):

        loss = −mean_batch(reconstruction − β(t) · kl)

    Options (``objective.options``): ``kl_set_point`` (required), ``kp``, ``ki``, ``beta_min``,
    ``beta_max``, ``smoothing`` (moving average of the KL fed to the controller), and the
    set-point ramp ``ramp_start``, ``ramp_step``, ``ramp_every``; see
    :class:`vae_tf.schedules.PIController`. ``beta`` (the objective's constructor argument) is
    the β of the first step's forward pass only: the controller sets it from then on.

    Logged state: ``kl_set_point`` (in force), ``kl_error`` (set point − smoothed KL),
    ``kl_smoothed`` and ``pi_integral``.

    Under ``tf.distribute`` the controller is fed the KL of the *global* batch (an all-reduce),
    so every replica computes the same β and the same controller state.
    """

    objective = "control_vae"

    def __init__(self, *args, kl_set_point: float | None = None, kp: float = 0.01, ki: float = 0.001,
                 beta_min: float = 0.0, beta_max: float = 1.0, smoothing: float = 0.9,
                 ramp_start: float | None = None, ramp_step: float = 0.0, ramp_every: int = 1, **kwargs):
        super().__init__(*args, **kwargs)
        if kl_set_point is None:
            raise ConfigError("objective control_vae needs objective.options.kl_set_point (the target KL in nats)")
        if self.beta_schedule is not None:
            raise ConfigError("objective control_vae sets β itself: remove objective.options.beta_schedule")
        self.controller = PIController(kl_set_point, kp=kp, ki=ki, beta_min=beta_min, beta_max=beta_max,
                                       smoothing=smoothing, ramp_start=ramp_start, ramp_step=ramp_step,
                                       ramp_every=ramp_every, name="pi_controller")

    def before_loss(self, terms):
        # The controller stops the gradient itself; global_mean never differentiates an all-reduce.
        self.beta.assign(self.controller.update(replicas.global_mean(terms["kl"]), self.train_steps))

    def state_metrics(self):
        c = self.controller
        return {**super().state_metrics(), "kl_set_point": tf.convert_to_tensor(c.set_point),
                "kl_error": tf.convert_to_tensor(c.error), "kl_smoothed": tf.convert_to_tensor(c.kl_smooth),
                "pi_integral": tf.convert_to_tensor(c.integral)}


class ARELBOVAE(VAE):
    """AR-ELBO (Takida et al. 2022): the ELBO of a Gaussian decoder whose variance σ_x² follows
    its optimum given the decoder, the running MSE per data dimension. The derivation and the
    update are in :class:`vae_tf.likelihoods.GaussianAdaptiveLikelihood`, which this objective
    requires (``model.likelihood.name: gaussian_adaptive``); ``sigma_x2`` is logged every epoch.

    For comparison, a fixed σ_x is ``likelihood: gaussian`` with ``sigma``, and σ_x as a trainable
    parameter (Dai & Wipf 2019; Lucas et al. 2019) is ``likelihood: gaussian_learned``, both with
    the plain ``elbo`` objective.
    """

    objective = "ar_elbo"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not isinstance(self.likelihood, GaussianAdaptiveLikelihood):
            raise ConfigError(
                f"objective ar_elbo needs model.likelihood.name=gaussian_adaptive, got {self.likelihood.name_key!r}"
            )
