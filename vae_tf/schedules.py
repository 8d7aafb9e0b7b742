"""Schedules: values as functions of the training step (KL annealing, Gumbel-softmax temperatures).

Schedules are stateless functions of the training step (``value(step)``); the step itself is a
variable of the model (``VAE.train_steps``), so a restored checkpoint continues every schedule
exactly. The KL weights built on them are in :mod:`vae_tf.remedies.annealing`; ControlVAE's PI
controller, which has state of its own, in :mod:`vae_tf.remedies.control_vae`.

``SCHEDULES`` maps config names (``kind``) to schedule classes; ``build_schedule(spec)`` builds
one from ``{"kind": ..., **options}``.
"""

from __future__ import annotations

import math

import tensorflow as tf

from vae_tf._registry import Registry, check_options
from vae_tf.errors import ConfigError

SCHEDULES: Registry[type["Schedule"]] = Registry("schedule")


def _number(value, what: str, *, low: float | None = None, positive: bool = False) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise ConfigError(f"{what} must be a finite number, got {value!r}")
    if positive and value <= 0:
        raise ConfigError(f"{what} must be > 0, got {value!r}")
    if low is not None and value < low:
        raise ConfigError(f"{what} must be >= {low}, got {value!r}")
    return float(value)


def _steps(value, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{what} must be a positive integer number of steps, got {value!r}")
    return value


class Schedule:
    """A value as a function of the training step (float32 scalar); ``schedule(step)``.

    Schedules hold no state (the step is the model's), so they are plain objects, not layers.
    """

    kind = ""

    def __init__(self, **kwargs):
        if kwargs:
            raise TypeError(f"unexpected schedule options: {sorted(kwargs)}")

    def value(self, step) -> tf.Tensor:
        raise NotImplementedError

    def __call__(self, step) -> tf.Tensor:
        return self.value(step)

    def describe(self) -> dict:
        return {"kind": self.kind}


@SCHEDULES.register("constant")
class ConstantSchedule(Schedule):
    """``value`` at every step (β-VAE: Higgins et al. 2017)."""

    kind = "constant"

    def __init__(self, value: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.constant = _number(value, "schedule value")

    def value(self, step):
        return tf.constant(self.constant, tf.float32)

    def describe(self):
        return {"kind": self.kind, "value": self.constant}


@SCHEDULES.register("linear")
class LinearSchedule(Schedule):
    """KL annealing (Bowman et al. 2016): ``start + (stop − start) · min(1, step / steps)``.

    Step 0 gives ``start``; from step ``steps`` on, ``stop``.
    """

    kind = "linear"

    def __init__(self, steps: int = 1000, start: float = 0.0, stop: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.steps = _steps(steps, "linear schedule steps")
        self.start = _number(start, "linear schedule start")
        self.stop = _number(stop, "linear schedule stop")

    def value(self, step):
        fraction = tf.minimum(tf.cast(step, tf.float32) / float(self.steps), 1.0)
        return self.start + (self.stop - self.start) * fraction

    def describe(self):
        return {"kind": self.kind, "steps": self.steps, "start": self.start, "stop": self.stop}


@SCHEDULES.register("cyclical")
class CyclicalSchedule(Schedule):
    """Cyclical annealing (Fu et al. 2019, ``frange_cycle_linear``): ``total_steps`` split into
    ``cycles`` cycles of length ``L = total_steps / cycles``; inside a cycle, with
    ``τ = (step mod L) / L``, the value rises linearly from ``start`` to ``stop`` while
    ``τ ≤ ratio`` and stays at ``stop`` for the rest of the cycle. After ``total_steps`` it stays
    at ``stop``."""

    kind = "cyclical"

    def __init__(self, total_steps: int = 10000, cycles: int = 4, ratio: float = 0.5, start: float = 0.0,
                 stop: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.total_steps = _steps(total_steps, "cyclical schedule total_steps")
        self.cycles = _steps(cycles, "cyclical schedule cycles")
        self.ratio = _number(ratio, "cyclical schedule ratio", positive=True)
        if self.ratio > 1:
            raise ConfigError(f"cyclical schedule ratio must be in (0, 1], got {ratio!r}")
        self.start = _number(start, "cyclical schedule start")
        self.stop = _number(stop, "cyclical schedule stop")

    def value(self, step):
        step = tf.cast(step, tf.float32)
        period = self.total_steps / self.cycles
        tau = tf.math.floormod(step, period) / period
        rising = self.start + (self.stop - self.start) * tf.minimum(tau / self.ratio, 1.0)
        return tf.where(step >= float(self.total_steps), tf.constant(self.stop), rising)

    def describe(self):
        return {"kind": self.kind, "total_steps": self.total_steps, "cycles": self.cycles,
                "ratio": self.ratio, "start": self.start, "stop": self.stop}


@SCHEDULES.register("exponential_decay")
class ExponentialDecaySchedule(Schedule):
    """``max(floor, start · exp(−rate · step))`` (Gumbel-softmax temperature, Jang et al. 2017)."""

    kind = "exponential_decay"

    def __init__(self, start: float = 1.0, rate: float = 1e-4, floor: float = 0.5, **kwargs):
        super().__init__(**kwargs)
        self.start = _number(start, "exponential_decay start", positive=True)
        self.rate = _number(rate, "exponential_decay rate", low=0.0)
        self.floor = _number(floor, "exponential_decay floor", low=0.0)

    def value(self, step):
        decayed = self.start * tf.exp(-self.rate * tf.cast(step, tf.float32))
        return tf.maximum(decayed, self.floor)

    def describe(self):
        return {"kind": self.kind, "start": self.start, "rate": self.rate, "floor": self.floor}


def build_schedule(spec, what: str = "schedule") -> Schedule:
    """``{"kind": "linear", "steps": 1000}`` -> LinearSchedule; a bare number -> constant."""
    if isinstance(spec, Schedule):
        return spec
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        return ConstantSchedule(float(spec))
    if not isinstance(spec, dict) or not isinstance(spec.get("kind"), str):
        raise ConfigError(f"{what} must be a mapping with a 'kind' ({', '.join(SCHEDULES.names())}), got {spec!r}")
    options = dict(spec)
    kind = options.pop("kind")
    cls = SCHEDULES.get(kind)
    check_options(cls, options, what)
    return cls(**options)


__all__ = ["SCHEDULES", "ConstantSchedule", "CyclicalSchedule", "ExponentialDecaySchedule", "LinearSchedule",
           "Schedule", "build_schedule"]
