"""ControlVAE's PI controller (Shao et al. 2020, Algorithm 1) against its math: the step response of
a toy plant settles at the set point, the integral does not wind up while β is clamped, β stays in
its bounds, the smoothing and the set-point ramp follow their formulas; bad options are one-line
errors of the config schema."""

from __future__ import annotations

import numpy as np
import pytest

from vae_tf.errors import ConfigError
from vae_tf.remedies import parse_objective
from vae_tf.remedies.control_vae import PIController


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


@pytest.mark.slow
def test_pi_controller_drives_the_error_to_zero():
    controller = PIController(kl_set_point=10.0, kp=0.01, ki=0.001, smoothing=0.0)
    betas, kls = run(controller, 3000)
    # The plant reaches KL = 10 at β = 0.2.
    assert abs(kls[-1] - 10.0) < 0.05 and abs(betas[-1] - 0.2) < 0.01
    assert abs(float(controller.error)) < 0.05


@pytest.mark.slow
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
    ({"beta_min": 0.5, "beta_max": 0.1}, "^objective.kl_weight: beta_max \\(0.1\\) must be >= beta_min \\(0.5\\)$"),
    ({"smoothing": 1.0}, "^objective.kl_weight.smoothing: input should be less than 1, got 1.0$"),
    ({"ki": -1.0}, "^objective.kl_weight.ki: input should be greater than or equal to 0, got -1.0$"),
    ({"kl_set_point": 1.0}, "^unknown option objective.kl_weight.kl_set_point; did you mean objective.kl_weight.set_point\\?$"),
])
def test_bad_controller_options_are_one_line_errors_before_anything_is_built(options, match):
    spec = {"kind": "control", **({} if "kl_set_point" in options else {"set_point": 1.0}), **options}
    with pytest.raises(ConfigError, match=match):
        parse_objective({"kl_weight": spec})
