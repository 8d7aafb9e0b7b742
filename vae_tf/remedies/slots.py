"""The slots of the composable objective: one registry per slot, the validation of an objective
spec (:func:`parse_objective`) and the building of its slot values (:func:`build_remedies`).

Importing this module imports every remedy, so Keras and TensorFlow; ``vae_tf.remedies`` loads it
on first use of one of its names, so that what only reads a config (``training.config``: the
preset names and the pretraining defaults) does not pay for them.
"""

from __future__ import annotations

import dataclasses
import difflib

from vae_tf._registry import Registry
from vae_tf._schema import validate
from vae_tf.errors import ConfigError
from vae_tf.remedies.adversarial import FGSM, GaussianNoise
from vae_tf.remedies.aggressive import Aggressive
from vae_tf.remedies.annealing import CyclicalAnnealing, LinearAnnealing
from vae_tf.remedies.base import (InputNoise, Inference, KLWeight, NoInputNoise, Regularizer, SlotContext,
                                  StandardInference)
from vae_tf.remedies.beta_vae import ConstantBeta
from vae_tf.remedies.capacity import Capacity
from vae_tf.remedies.control_vae import ControlVAE
from vae_tf.remedies.mi_q import MIQ
from vae_tf.remedies.presets import is_preset, preset_to_slots

KL_WEIGHTS: Registry[type[KLWeight]] = Registry("kl_weight")
KL_WEIGHTS.register("constant")(ConstantBeta)
KL_WEIGHTS.register("linear")(LinearAnnealing)
KL_WEIGHTS.register("cyclical")(CyclicalAnnealing)
KL_WEIGHTS.register("capacity")(Capacity)
KL_WEIGHTS.register("control")(ControlVAE)

REGULARIZERS: Registry[type[Regularizer]] = Registry("regularizer")
REGULARIZERS.register("mi_q")(MIQ)

INPUT_NOISES: Registry[type[InputNoise]] = Registry("input_noise")
INPUT_NOISES.register("none")(NoInputNoise)
INPUT_NOISES.register("gaussian")(GaussianNoise)
INPUT_NOISES.register("fgsm")(FGSM)

INFERENCES: Registry[type[Inference]] = Registry("inference")
INFERENCES.register("standard")(StandardInference)
INFERENCES.register("aggressive")(Aggressive)

#: slot -> (registry, default kind)
SLOTS = {"kl_weight": (KL_WEIGHTS, "constant"), "regularizers": (REGULARIZERS, None),
         "input_noise": (INPUT_NOISES, "none"), "inference": (INFERENCES, "standard")}


@dataclasses.dataclass(frozen=True)
class Composition:
    """A validated objective: the options of every slot (nothing built yet)."""

    kl_weight: object
    regularizers: tuple
    input_noise: object
    inference: object

    def to_dict(self) -> dict:
        """The slot form (what configs, MLflow and the export record)."""
        return {"kl_weight": self.kl_weight.model_dump(mode="json"),
                "regularizers": [r.model_dump(mode="json") for r in self.regularizers],
                "input_noise": self.input_noise.model_dump(mode="json"),
                "inference": self.inference.model_dump(mode="json")}

    def summary(self) -> str:
        """One line naming what is composed, e.g. ``control + mi_q + fgsm + aggressive``."""
        parts = [self.kl_weight.kind, *(r.kind for r in self.regularizers)]
        parts += [p.kind for p in (self.input_noise, self.inference) if p.kind not in ("none", "standard")]
        return " + ".join(parts)


def _parse_slot(slot: str, spec, what: str):
    registry, default = SLOTS[slot]
    if isinstance(spec, str):  # shorthand: `inference: aggressive`
        spec = {"kind": spec}
    if not isinstance(spec, dict):
        raise ConfigError(f"{what} must be a mapping with a kind ({', '.join(registry.names())}), got {spec!r}")
    spec = dict(spec)
    kind = spec.setdefault("kind", default) if default else spec.get("kind")
    if not isinstance(kind, str):
        raise ConfigError(f"{what}.kind must name one of: {', '.join(registry.names())}, got {kind!r}")
    if kind not in registry:
        close = difflib.get_close_matches(kind, registry.names(), n=1)
        hint = f"; did you mean {close[0]}?" if close else f"; choose one of: {', '.join(registry.names())}"
        raise ConfigError(f"unknown {what}.kind {kind!r}{hint}")
    return validate(registry.get(kind).Options, spec, what)


def parse_objective(spec, what: str = "objective") -> Composition:
    """Validate an objective spec without building anything (one-line ConfigError otherwise).

    ``spec`` is the slot form (``{kl_weight, regularizers, input_noise, inference}``, each
    optional) or a preset (``{name: control_vae, beta: 1.0, options: {...}}`` or, as
    ``build_vae`` took it, ``{name: control_vae, kl_set_point: 10}``), which is translated to the
    slot form first.
    """
    if spec is None:
        spec = {}
    if not isinstance(spec, dict):
        raise ConfigError(f"{what} must be a mapping, got {spec!r}")
    if is_preset(spec):
        spec = preset_to_slots(spec, what)
    unknown = [key for key in spec if key not in SLOTS]
    if unknown:
        close = difflib.get_close_matches(str(unknown[0]), list(SLOTS), n=1)
        hint = f"; did you mean {what}.{close[0]}?" if close else f"; its keys are: {', '.join(SLOTS)}"
        raise ConfigError(f"unknown option {what}.{unknown[0]}{hint}")
    regularizers = spec.get("regularizers") or []
    if not isinstance(regularizers, list):
        raise ConfigError(f"{what}.regularizers must be a list of mappings, e.g. [{{kind: mi_q, weight: 1.0}}], "
                          f"got {regularizers!r}")
    return Composition(
        kl_weight=_parse_slot("kl_weight", spec.get("kl_weight") or {}, f"{what}.kl_weight"),
        regularizers=tuple(_parse_slot("regularizers", r, f"{what}.regularizers[{i}]")
                           for i, r in enumerate(regularizers)),
        input_noise=_parse_slot("input_noise", spec.get("input_noise") or {}, f"{what}.input_noise"),
        inference=_parse_slot("inference", spec.get("inference") or {}, f"{what}.inference"))


def build_remedies(composition: Composition, context: SlotContext) -> dict:
    """The slot values of ``composition`` for a model (``context``): a dict of layers
    ``{kl_weight, regularizers: [...], input_noise, inference}``."""
    def build(slot, options, **extra):
        registry, _ = SLOTS[slot]
        return registry.get(options.kind)(options, context, **extra)

    counts: dict[str, int] = {}
    regularizers = []
    for options in composition.regularizers:
        counts[options.kind] = counts.get(options.kind, 0) + 1
        regularizers.append(build("regularizers", options, index=counts[options.kind]))
    return {"kl_weight": build("kl_weight", composition.kl_weight), "regularizers": regularizers,
            "input_noise": build("input_noise", composition.input_noise),
            "inference": build("inference", composition.inference)}


__all__ = ["INFERENCES", "INPUT_NOISES", "KL_WEIGHTS", "REGULARIZERS", "SLOTS", "Composition", "build_remedies",
           "parse_objective"]
