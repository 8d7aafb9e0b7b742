"""Schedules give the exact values of their formulas."""

from __future__ import annotations

import math

import pytest

from vae_tf.errors import ConfigError
from vae_tf.schedules import build_schedule


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
    ({"kind": "linear", "warmup": 10}, "unknown option schedule.warmup"),
    ({"kind": "sigmoid"}, "unknown schedule 'sigmoid'"),
    ({"steps": 10}, "must be a mapping with a 'kind'"),
])
def test_bad_schedules_are_one_line_config_errors(spec, match):
    with pytest.raises(ConfigError, match=match) as info:
        build_schedule(spec)
    assert "\n" not in str(info.value)
