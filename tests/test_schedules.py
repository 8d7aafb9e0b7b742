"""Schedules give the exact values of their formulas; the PI controller regulates a toy plant
without integral wind-up."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vae_tf.errors import ConfigError
from vae_tf.schedules import PIController, build_schedule


def values(schedule, steps):
    return [float(schedule(step)) for step in steps]


def test_linear_warmup_values():
    s = build_schedule({"kind": "linear", "steps": 100})
    assert values(s, [0, 1, 50, 99, 100, 1000]) == pytest.approx([0.0, 0.01, 0.5, 0.99, 1.0, 1.0])
    s = build_schedule({"kind": "linear", "steps": 10, "start": 2.0, "stop": 1.0})
    assert values(s, [0, 5, 10, 11]) == pytest.approx([2.0, 1.5, 1.0, 1.0])


def test_cyclical_values_follow_fu_et_al():
    # 1000 steps, 4 cycles of 250, rising over the first half (125 steps) of each cycle.
    s = build_schedule({"kind": "cyclical", "total_steps": 1000, "cycles": 4, "ratio": 0.5})
    steps = [0, 25, 62, 125, 200, 249, 250, 300, 500, 874, 875, 999, 1000, 5000]
    expected = [0.0, 0.2, 0.496, 1.0, 1.0, 1.0, 0.0, 0.4, 0.0, 0.992, 1.0, 1.0, 1.0, 1.0]
    assert values(s, steps) == pytest.approx(expected, abs=1e-6)


def test_constant_and_exponential_decay_values():
    assert values(build_schedule(4.0), [0, 10**6]) == [4.0, 4.0]
    s = build_schedule({"kind": "exponential_decay", "start": 1.0, "rate": 0.01, "floor": 0.5})
    assert values(s, [0, 10, 69, 70, 10**5]) == pytest.approx([1.0, math.exp(-0.1), math.exp(-0.69), 0.5, 0.5], rel=1e-6)


@pytest.mark.parametrize("spec, match", [
    ({"kind": "linear", "steps": 0}, "positive integer number of steps"),
    ({"kind": "cyclical", "ratio": 1.5}, "ratio must be in \\(0, 1\\]"),
    ({"kind": "linear", "warmup": 10}, "has no option\\(s\\) warmup"),
    ({"kind": "sigmoid"}, "unknown schedule 'sigmoid'"),
    ({"steps": 10}, "must be a mapping with a 'kind'"),
])
def test_bad_schedules_are_one_line_config_errors(spec, match):
    with pytest.raises(ConfigError, match=match) as info:
        build_schedule(spec)
    assert "\n" not in str(info.value)


def plant(beta: float) -> float:
    """Toy plant: the KL a model settles at for a given β (falls as β grows)."""
    return 30.0 / (1.0 + 10.0 * beta)


def run(controller, steps, start_step=0, beta=1.0):
    betas, kls = [], []
    for t in range(start_step, start_step + steps):
        kl = plant(beta)
        beta = float(controller.update(kl, t))
        betas.append(beta)
        kls.append(kl)
    return np.array(betas), np.array(kls)


def test_pi_controller_drives_the_error_to_zero():
    controller = PIController(kl_set_point=10.0, kp=0.01, ki=0.001, smoothing=0.0)
    betas, kls = run(controller, 3000)
    # The plant reaches KL = 10 at β = 0.2.
    assert abs(kls[-1] - 10.0) < 0.05 and abs(betas[-1] - 0.2) < 0.01
    assert abs(float(controller.error)) < 0.05


def test_integral_does_not_wind_up_while_beta_is_clamped():
    controller = PIController(kl_set_point=40.0, kp=0.01, ki=0.001, beta_min=0.0, beta_max=1.0, smoothing=0.0)
    betas, kls = run(controller, 2000)  # 40 nats is out of reach: the plant gives at most 30 at β = 0
    assert np.all(betas < 1e-3)  # β_min plus the vanishing P term
    frozen = float(controller.integral)
    assert abs(frozen) < 0.05, frozen  # frozen, not −Ki·Σe = −0.001 · 2000 · 10 = −20
    # Made reachable again, the controller reacts at once instead of unwinding for thousands of steps.
    controller_target = PIController(kl_set_point=10.0, kp=0.01, ki=0.001, smoothing=0.0)
    controller_target.integral.assign(controller.integral)
    betas, kls = run(controller_target, 600, start_step=2000, beta=0.0)
    assert abs(kls[-1] - 10.0) < 0.5


def test_beta_stays_within_its_bounds_and_smoothing_filters_the_kl():
    controller = PIController(kl_set_point=5.0, kp=0.5, ki=0.05, beta_min=0.1, beta_max=0.6, smoothing=0.9)
    betas, _ = run(controller, 500)
    assert betas.min() >= 0.1 and betas.max() <= 0.6
    c = PIController(kl_set_point=5.0, smoothing=0.9)
    c.update(10.0, 0)
    assert float(c.kl_smooth) == pytest.approx(10.0)  # seeded with the first value
    c.update(20.0, 1)
    assert float(c.kl_smooth) == pytest.approx(11.0)


def test_set_point_ramp():
    c = PIController(kl_set_point=3.0, ramp_start=0.5, ramp_step=1.0, ramp_every=10)
    assert [float(c.target(t)) for t in (0, 9, 10, 25, 1000)] == pytest.approx([0.5, 0.5, 1.5, 2.5, 3.0])


@pytest.mark.parametrize("options, match", [
    ({"beta_min": 0.5, "beta_max": 0.1}, "beta_max"),
    ({"smoothing": 1.0}, "smoothing must be in \\[0, 1\\)"),
    ({"ki": -1.0}, "ki must be >= 0"),
])
def test_bad_controller_options(options, match):
    with pytest.raises(ConfigError, match=match):
        PIController(kl_set_point=1.0, **options)
