"""KL annealing: the KL weight follows a schedule of the training step.

- ``linear`` (Bowman, Vilnis, Vinyals, Dai, Jozefowicz, Bengio 2016, "Generating sentences from a
  continuous space", §3.1 "KL cost annealing"): β_t = β · (start + (stop − start) · min(1, t / steps)),
  so the model first learns to encode, then pays for it;
- ``cyclical`` (Fu, Li, Liu, Gao, Celikyilmaz, Carin 2019, "Cyclical annealing schedule: a simple
  approach to mitigating KL vanishing", ``frange_cycle_linear``): the run's ``total_steps`` are cut
  into ``cycles`` cycles; inside each, β rises linearly from ``start`` to ``stop`` over the first
  ``ratio`` of the cycle and stays at ``stop`` for the rest; after ``total_steps`` it stays at
  ``stop`` (times β).

    loss = −mean_B(reconstruction) + β_t · mean_B(kl)

The step t is the model's ``train_steps`` variable (checkpointed), so a resumed run continues the
schedule exactly; ``beta`` is logged every epoch.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, NonNegativeFloat, PositiveInt

from vae_tf.errors import ConfigError
from vae_tf.remedies.base import KLWeight, SlotOptions
from vae_tf.schedules import CyclicalSchedule, LinearSchedule


class LinearAnnealing(KLWeight):
    """``kl_weight: {kind: linear, beta: 1.0, steps: 1000, start: 0.0, stop: 1.0}`` (the defaults)."""

    kind = "linear"

    class Options(SlotOptions):
        kind: Literal["linear"] = "linear"
        beta: NonNegativeFloat = 1.0
        steps: PositiveInt = 1000
        start: NonNegativeFloat = 0.0  # fractions of β: a negative KL weight rewards a larger KL without bound
        stop: NonNegativeFloat = 1.0

    def __init__(self, options, context, **kwargs):
        super().__init__(options, context, **kwargs)
        o = self.options
        self.schedule = LinearSchedule(steps=o.steps, start=o.start, stop=o.stop)

    def initial_beta(self) -> float:
        return self.options.beta * self.options.start

    def next_beta(self, kl, step):
        return self.options.beta * self.schedule(step)


class CyclicalAnnealing(KLWeight):
    """``kl_weight: {kind: cyclical, beta: 1.0, cycles: 4, ratio: 0.5, total_steps: N}``;
    ``vae-tf train`` sets ``total_steps`` to the whole run (epochs × steps per epoch) when it is
    not given."""

    kind = "cyclical"

    class Options(SlotOptions):
        kind: Literal["cyclical"] = "cyclical"
        beta: NonNegativeFloat = 1.0
        total_steps: PositiveInt | None = None
        cycles: PositiveInt = 4
        ratio: float = Field(0.5, gt=0.0, le=1.0)
        start: NonNegativeFloat = 0.0  # fractions of β: a negative KL weight rewards a larger KL without bound
        stop: NonNegativeFloat = 1.0

    def __init__(self, options, context, **kwargs):
        super().__init__(options, context, **kwargs)
        o = self.options
        if o.total_steps is None:
            raise ConfigError("objective.kl_weight.total_steps is required for kind=cyclical outside `vae-tf train` "
                              "(which spans the whole run): give the number of training steps the cycles cover")
        self.schedule = CyclicalSchedule(total_steps=o.total_steps, cycles=o.cycles, ratio=o.ratio, start=o.start,
                                         stop=o.stop)

    def initial_beta(self) -> float:
        return self.options.beta * self.options.start

    def next_beta(self, kl, step):
        return self.options.beta * self.schedule(step)


__all__ = ["CyclicalAnnealing", "LinearAnnealing"]
