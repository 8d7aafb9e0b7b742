"""Constant KL weight: the ELBO (β = 1, Kingma & Welling 2014) and the β-VAE (β ≠ 1, Higgins et al.
2017, "β-VAE: learning basic visual concepts with a constrained variational framework").

    loss = −mean_B(reconstruction) + β · mean_B(kl)

β > 1 presses the posterior toward the prior (more disentangled, more collapsed); β < 1 the other
way. The default KL weight of every model (``kl_weight: {kind: constant, beta: 1.0}``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import NonNegativeFloat

from vae_tf.remedies.base import KLWeight, SlotOptions


class ConstantBeta(KLWeight):
    """``kl_weight: {kind: constant, beta: β}`` (module docstring). β is a Python number: the
    step adds no op for it, and the model's ``beta`` variable (logged) holds it."""

    kind = "constant"

    class Options(SlotOptions):
        kind: Literal["constant"] = "constant"
        beta: NonNegativeFloat = 1.0

    @property
    def static_beta(self) -> float:
        return float(self.options.beta)


__all__ = ["ConstantBeta"]
