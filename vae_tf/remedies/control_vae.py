"""ControlVAE (Shao, Yao, Sun, Zhang, Liu, Liu, Wang, Abdelzaher, ICML 2020, "ControlVAE:
controllable variational autoencoder", Algorithm 1): a PI controller sets β every step so that the
KL follows a set point.

    loss = −mean_B(reconstruction) + β_t · mean_B(kl),    β_t = PI(KL_set(t) − KL̃_t)

KL̃ is a moving average of the batch KL (:class:`PIController`). The controller's state (integral,
smoothed KL) lives in variables: checkpoints restore it exactly. Logged every epoch:
``kl_set_point`` (in force), ``kl_error`` (set point − smoothed KL), ``kl_smoothed`` and
``pi_integral``. Under ``tf.distribute`` the controller reads the global batch's KL (an
all-reduce), so every replica computes the same β and the same state.
"""

from __future__ import annotations

from typing import Literal

import keras
import tensorflow as tf
from pydantic import Field, NonNegativeFloat, PositiveInt, model_validator

from vae_tf import replicas
from vae_tf.remedies.base import KLWeight, SlotOptions


class PIController(keras.layers.Layer):
    """The PI controller of ControlVAE that sets β so that the KL follows a set point.

    With the KL error ``e(t) = KL_set(t) − KL̃(t)`` (``KL̃`` the moving average of the batch KL,
    ``KL̃ ← s KL̃ + (1 − s) KL``, seeded with the first value):

        P(t) = Kp / (1 + exp(e(t)))
        I(t) = I(t−1) − Ki · e(t)        (only while not saturated, see below)
        β(t) = clamp(P(t) + I(t) + β_min, β_min, β_max)

    A KL above the set point (e < 0) raises β; below it (e > 0) β falls toward β_min.

    **Anti-windup** (conditional integration): the integral is frozen whenever the new value would
    push an already saturated β further into saturation (above β_max with e < 0, or below β_min
    with e > 0), so a set point that cannot be reached does not wind the integral up and β reacts
    at once when it becomes reachable. (The official implementation's condition
    ``W < 0 and W >= 1`` can never be true, so it has no anti-windup at all.)

    **Set-point ramp** (optional): ``KL_set(t) = min(kl_set_point, ramp_start + ramp_step ·
    floor(t / ramp_every))``, the paper's schedule for disentanglement.

    All state (``integral``, ``kl_smooth``, ``started``, last ``error`` and ``set_point``) lives in
    non-trainable variables. Arguments are validated by :class:`ControlVAE.Options`.
    """

    def __init__(self, kl_set_point: float, kp: float = 0.01, ki: float = 0.001, beta_min: float = 0.0,
                 beta_max: float = 1.0, smoothing: float = 0.9, ramp_start: float | None = None,
                 ramp_step: float = 0.0, ramp_every: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.kl_set_point, self.kp, self.ki = float(kl_set_point), float(kp), float(ki)
        self.beta_min, self.beta_max, self.smoothing = float(beta_min), float(beta_max), float(smoothing)
        self.ramp_start = None if ramp_start is None else float(ramp_start)
        self.ramp_step, self.ramp_every = float(ramp_step), int(ramp_every)

        def state(name, value=0.0):
            return self.add_weight(name=name, shape=(), initializer=keras.initializers.Constant(value), trainable=False)

        self.integral = state("integral")
        self.kl_smooth = state("kl_smooth")
        self.started = state("started")
        self.error = state("error")
        self.set_point = state("set_point", self.kl_set_point if self.ramp_start is None else self.ramp_start)
        self.built = True

    def target(self, step) -> tf.Tensor:
        """The set point at ``step`` (ramped when ``ramp_start`` is given)."""
        if self.ramp_start is None:
            return tf.constant(self.kl_set_point, tf.float32)
        ramps = tf.floor(tf.cast(step, tf.float32) / float(self.ramp_every))
        return tf.minimum(self.kl_set_point, self.ramp_start + self.ramp_step * ramps)

    def update(self, kl, step) -> tf.Tensor:
        """Feed the batch KL (a scalar, no gradient) at ``step``; returns the new β."""
        kl = tf.stop_gradient(tf.cast(kl, tf.float32))
        started = tf.convert_to_tensor(self.started) > 0.5
        smooth = tf.where(started, self.smoothing * self.kl_smooth + (1.0 - self.smoothing) * kl, kl)
        set_point = self.target(step)
        error = set_point - smooth
        proportional = self.kp / (1.0 + tf.exp(tf.clip_by_value(error, -50.0, 50.0)))
        candidate = self.integral - self.ki * error
        raw = proportional + candidate + self.beta_min
        winding_up = tf.logical_or(tf.logical_and(raw > self.beta_max, error < 0.0),
                                   tf.logical_and(raw < self.beta_min, error > 0.0))
        integral = tf.where(winding_up, tf.convert_to_tensor(self.integral), candidate)
        beta = tf.clip_by_value(proportional + integral + self.beta_min, self.beta_min, self.beta_max)
        self.integral.assign(integral)
        self.kl_smooth.assign(smooth)
        self.started.assign(1.0)
        self.error.assign(error)
        self.set_point.assign(set_point)
        return beta

    def call(self, kl, step=0):
        return self.update(kl, step)


class ControlVAE(KLWeight):
    """``kl_weight: {kind: control, set_point: 15, kp: 0.01, ki: 0.001, beta_min: 0, beta_max: 1,
    smoothing: 0.9}`` (module docstring; ramp: ``ramp_start``, ``ramp_step``, ``ramp_every``)."""

    kind = "control"

    class Options(SlotOptions):
        kind: Literal["control"] = "control"
        set_point: NonNegativeFloat
        kp: NonNegativeFloat = 0.01
        ki: NonNegativeFloat = 0.001
        beta_min: NonNegativeFloat = 0.0
        beta_max: float = 1.0
        smoothing: float = Field(0.9, ge=0.0, lt=1.0)
        ramp_start: NonNegativeFloat | None = None
        ramp_step: NonNegativeFloat = 0.0
        ramp_every: PositiveInt = 1

        @model_validator(mode="after")
        def _beta_range(self):
            if self.beta_max < self.beta_min:
                raise ValueError(f"beta_max ({self.beta_max:g}) must be >= beta_min ({self.beta_min:g})")
            return self

    def __init__(self, options, context, **kwargs):
        super().__init__(options, context, **kwargs)
        o = self.options
        self.controller = PIController(o.set_point, kp=o.kp, ki=o.ki, beta_min=o.beta_min, beta_max=o.beta_max,
                                       smoothing=o.smoothing, ramp_start=o.ramp_start, ramp_step=o.ramp_step,
                                       ramp_every=o.ramp_every, name="pi_controller")

    def initial_beta(self) -> float:
        return self.options.beta_min

    def next_beta(self, kl, step):
        # The controller stops the gradient itself; global_mean never differentiates an all-reduce.
        return self.controller.update(replicas.global_mean(kl), step)

    def state(self, step):
        c = self.controller
        return {"kl_set_point": tf.convert_to_tensor(c.set_point), "kl_error": tf.convert_to_tensor(c.error),
                "kl_smoothed": tf.convert_to_tensor(c.kl_smooth), "pi_integral": tf.convert_to_tensor(c.integral)}


__all__ = ["ControlVAE", "PIController"]
