"""Schedules and controllers for KL weights, capacities and temperatures.

Schedules are stateless functions of the training step (``value(step)``); the step itself is a
variable of the model (``VAE.train_steps``), so a restored checkpoint continues every schedule
exactly. The PI controller of ControlVAE has state of its own (integral, smoothed KL), held in
``keras.Variable``s of a Keras layer so that checkpoints and ``model.variables`` carry it.

``SCHEDULES`` maps config names (``kind``) to schedule classes; ``build_schedule(spec)`` builds
one from ``{"kind": ..., **options}``.
"""

from __future__ import annotations

import math

import keras
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
    check_options(cls, options, f"{what} {kind!r}")
    return cls(**options)


class PIController(keras.layers.Layer):
    """The PI controller of ControlVAE (Shao et al., ICML 2020, Algorithm 1) that sets β so that
    the KL follows a set point.

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
    non-trainable variables: checkpoints restore the controller exactly.
    """

    def __init__(self, kl_set_point: float, kp: float = 0.01, ki: float = 0.001, beta_min: float = 0.0,
                 beta_max: float = 1.0, smoothing: float = 0.9, ramp_start: float | None = None,
                 ramp_step: float = 0.0, ramp_every: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.kl_set_point = _number(kl_set_point, "objective.options.kl_set_point", low=0.0)
        self.kp = _number(kp, "objective.options.kp", low=0.0)
        self.ki = _number(ki, "objective.options.ki", low=0.0)
        self.beta_min = _number(beta_min, "objective.options.beta_min", low=0.0)
        self.beta_max = _number(beta_max, "objective.options.beta_max")
        if self.beta_max < self.beta_min:
            raise ConfigError(f"objective.options.beta_max ({beta_max}) must be >= beta_min ({beta_min})")
        self.smoothing = _number(smoothing, "objective.options.smoothing", low=0.0)
        if self.smoothing >= 1.0:
            raise ConfigError(f"objective.options.smoothing must be in [0, 1), got {smoothing!r}")
        self.ramp_start = None if ramp_start is None else _number(ramp_start, "objective.options.ramp_start", low=0.0)
        self.ramp_step = _number(ramp_step, "objective.options.ramp_step", low=0.0)
        self.ramp_every = _steps(ramp_every, "objective.options.ramp_every")

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

    def describe(self) -> dict:
        return {"kl_set_point": self.kl_set_point, "kp": self.kp, "ki": self.ki, "beta_min": self.beta_min,
                "beta_max": self.beta_max, "smoothing": self.smoothing, "ramp_start": self.ramp_start,
                "ramp_step": self.ramp_step, "ramp_every": self.ramp_every}


__all__ = ["SCHEDULES", "ConstantSchedule", "CyclicalSchedule", "ExponentialDecaySchedule", "LinearSchedule",
           "PIController", "Schedule", "build_schedule"]
