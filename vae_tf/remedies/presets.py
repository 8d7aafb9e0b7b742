"""Named presets: the objectives of the earlier one-class-per-remedy form, as slot compositions.

Configs, suites and code written for ``objective: {name: control_vae, beta: ..., options: {...}}``
(or ``build_vae(objective={"name": "control_vae", "kl_set_point": 10})``) keep working: the
preset is translated to the slot form below, then validated like any other. Each preset composes
one remedy with the defaults of the other slots:

============  ===========================================================================
preset        slot form
============  ===========================================================================
elbo          kl_weight: constant β, or the ``beta_schedule`` (linear / cyclical annealing)
capacity      kl_weight: {kind: capacity, gamma, capacity_max, capacity_steps}
control_vae   kl_weight: {kind: control, set_point: kl_set_point, kp, ki, beta_min, ...}
ar_elbo       as elbo; needs ``model.likelihood.name: gaussian_adaptive`` (AR-ELBO is a likelihood)
mi_max        regularizers: [{kind: mi_q, weight: mi_weight, target: mi_target, q_network, ...}]
aggressive    inference: {kind: aggressive, max_inner_steps, check_every, heldout_size, leave_phase}
noisy_input   input_noise: {kind: noise (gaussian | fgsm), sigma | epsilon, clip}
============  ===========================================================================

Combinations (ControlVAE + aggressive + FGSM, MI + annealing, ...) need the slot form.
"""

from __future__ import annotations

import copy

from vae_tf.errors import ConfigError

_SLOT_KEYS = ("kl_weight", "regularizers", "input_noise", "inference")
_PRESET_KEYS = ("name", "beta", "options")
_SCHEDULED = ("elbo", "ar_elbo", "mi_max", "aggressive", "noisy_input")  # presets that accept beta_schedule

#: preset -> {its option: (slot, key in the slot's options)}
PRESETS: dict[str, dict[str, tuple[str, str]]] = {
    "elbo": {},
    "capacity": {k: ("kl_weight", k) for k in ("gamma", "capacity_max", "capacity_steps")},
    "control_vae": {"kl_set_point": ("kl_weight", "set_point"),
                    **{k: ("kl_weight", k) for k in ("kp", "ki", "beta_min", "beta_max", "smoothing", "ramp_start",
                                                     "ramp_step", "ramp_every")}},
    "ar_elbo": {},
    "mi_max": {"mi_weight": ("regularizers", "weight"), "mi_target": ("regularizers", "target"),
               "q_network": ("regularizers", "q_network"), "q_learning_rate": ("regularizers", "q_learning_rate")},
    "aggressive": {k: ("inference", k) for k in ("max_inner_steps", "check_every", "heldout_size", "leave_phase")},
    "noisy_input": {"noise": ("input_noise", "kind"), "sigma": ("input_noise", "sigma"),
                    "epsilon": ("input_noise", "epsilon"), "clip": ("input_noise", "clip")},
}

#: What a preset needs of the rest of the model: preset -> (config path, required value).
REQUIREMENTS = {"ar_elbo": ("model.likelihood.name", "gaussian_adaptive")}


def is_preset(spec: dict) -> bool:
    """Whether ``spec`` is in the preset form (``name`` / ``beta`` / ``options`` keys); one line
    when it mixes the two forms."""
    preset = [k for k in spec if k in _PRESET_KEYS]
    slots = [k for k in spec if k in _SLOT_KEYS]
    if preset and slots:
        raise ConfigError(f"objective mixes the preset form ({', '.join(preset)}) with the slot form "
                          f"({', '.join(slots)}): write only the slot form, e.g. objective: {{kl_weight: {{kind: "
                          "control, set_point: 15}, inference: {kind: aggressive}}")
    return bool(preset)


def _kl_weight(beta, schedule, what: str) -> dict:
    if schedule is None:
        return {"kind": "constant", "beta": beta}
    if not isinstance(schedule, dict) or schedule.get("kind") not in ("linear", "cyclical", "constant"):
        raise ConfigError(f"{what}.options.beta_schedule must be {{kind: linear | cyclical, ...}}, got {schedule!r}; "
                          "slot form: objective.kl_weight: {kind: linear, beta: 1.0, steps: 2000}")
    schedule = dict(schedule)
    if schedule["kind"] == "constant":
        value = schedule.pop("value", 1.0)
        if schedule.keys() != {"kind"} or not isinstance(value, (int, float)) or not isinstance(beta, (int, float)):
            raise ConfigError(f"{what}.options.beta_schedule {{kind: constant}} takes only a numeric value")
        return {"kind": "constant", "beta": beta * value}
    return {**schedule, "beta": beta}


def preset_to_slots(spec: dict, what: str = "objective") -> dict:
    """The slot form of a preset spec (module docstring); one-line ConfigError for an unknown
    preset or option."""
    spec = copy.deepcopy(spec)
    name = spec.pop("name", "elbo")
    if name not in PRESETS:
        raise ConfigError(f"unknown {what}.name {name!r}; presets: {', '.join(PRESETS)} (or the slot form: "
                          f"objective: {{kl_weight: ..., regularizers: [...], input_noise: ..., inference: ...}})")
    if "beta" in spec and name in ("capacity", "control_vae"):  # it was dropped without a word
        raise ConfigError(f"objective {name} sets the KL weight itself ("
                          f"{'gamma weighs |KL - C|' if name == 'capacity' else 'its controller sets beta'}): remove "
                          f"{what}.beta")
    beta = spec.pop("beta", 1.0)
    options = spec.pop("options", None) or {}
    if not isinstance(options, dict):
        raise ConfigError(f"{what}.options must be a mapping of {name}'s options, got {options!r}")
    options = {**options, **spec}  # build_vae's flat form: options next to the name
    schedule = options.pop("beta_schedule", None)
    if schedule is not None and name not in _SCHEDULED:
        raise ConfigError(f"objective {name} sets the KL weight itself: remove {what}.options.beta_schedule")
    mapping = PRESETS[name]
    unknown = sorted(set(options) - set(mapping))
    if unknown:
        valid = ", ".join(sorted([*mapping, *(["beta_schedule"] if name in _SCHEDULED else [])])) or "beta_schedule"
        raise ConfigError(f"objective {name!r} has no option {unknown[0]}; its options are: {valid}")
    if name == "control_vae" and "kl_set_point" not in options:  # "kl_weight.set_point is required" led to the slot form
        raise ConfigError(f"objective control_vae needs {what}.options.kl_set_point (the KL, in nats, its controller "
                          "holds), e.g. {name: control_vae, options: {kl_set_point: 15}}")
    slots: dict = {"kl_weight": _kl_weight(beta, schedule, what)}
    if name in ("capacity", "control_vae"):
        slots["kl_weight"] = {"kind": "capacity" if name == "capacity" else "control"}
    if name == "mi_max":
        slots["regularizers"] = [{"kind": "mi_q"}]
    if name == "noisy_input":
        slots["input_noise"] = {"kind": "gaussian"}
    if name == "aggressive":
        slots["inference"] = {"kind": "aggressive"}
    for key, value in options.items():
        slot, field = mapping[key]
        target = slots[slot][0] if slot == "regularizers" else slots[slot]
        target[field] = value
    return slots


__all__ = ["PRESETS", "REQUIREMENTS", "is_preset", "preset_to_slots"]
