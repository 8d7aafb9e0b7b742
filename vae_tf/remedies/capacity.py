"""Capacity-controlled β-VAE (Burgess, Higgins, Pal, Matthey, Watters, Desjardins, Lerchner 2018,
"Understanding disentangling in β-VAE", Eq. 8):

    loss = −mean_B(reconstruction) + γ · |mean_B(kl) − C_t|,    C_t = C_max · min(1, t / capacity_steps)

The KL is pulled toward a capacity C that grows linearly from 0 to ``capacity_max`` nats over
``capacity_steps`` training steps, so information enters the code at a controlled rate.
``beta`` reports γ; ``capacity`` reports C_t. Under ``tf.distribute`` mean_B(kl) inside |·| is
the global batch's (:func:`vae_tf.replicas.global_mean`), so replicas optimise the single-device
objective.
"""

from __future__ import annotations

from typing import Literal

import tensorflow as tf
from pydantic import NonNegativeFloat, PositiveInt

from vae_tf import replicas
from vae_tf.remedies.base import KLWeight, SlotOptions


class Capacity(KLWeight):
    """``kl_weight: {kind: capacity, gamma: 100, capacity_max: 25, capacity_steps: 10000}``."""

    kind = "capacity"

    class Options(SlotOptions):
        kind: Literal["capacity"] = "capacity"
        gamma: NonNegativeFloat = 100.0
        capacity_max: NonNegativeFloat = 25.0
        capacity_steps: PositiveInt = 10000

    @property
    def static_beta(self) -> float:
        return float(self.options.gamma)

    def capacity(self, step) -> tf.Tensor:
        """C_t (nats)."""
        fraction = tf.minimum(tf.cast(step, tf.float32) / float(self.options.capacity_steps), 1.0)
        return self.options.capacity_max * fraction

    def penalty(self, kl, beta, step):
        return self.options.gamma * tf.abs(replicas.global_mean(kl) - self.capacity(step))

    def state(self, step):
        return {"capacity": self.capacity(step)}


__all__ = ["Capacity"]
