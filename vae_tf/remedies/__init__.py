"""Remedies for posterior collapse as parts that compose: one registry per slot of the objective.

A model's objective names one value per slot (:mod:`vae_tf.remedies.base` has the step they
assemble and the conventions)::

    objective:
      kl_weight: {kind: control, set_point: 15}          # exactly one (default: constant, beta 1)
      regularizers: [{kind: mi_q, weight: 1.0}]           # zero or more (default: none)
      input_noise: {kind: fgsm, epsilon: 0.05}            # exactly one (default: none)
      inference: {kind: aggressive}                       # exactly one (default: standard)

One file per published method, named for it:

======================  ==================  ==============================================
slot                    kind                file (paper)
======================  ==================  ==============================================
``kl_weight``           ``constant``        ``beta_vae.py`` (Higgins et al. 2017)
``kl_weight``           ``linear``          ``annealing.py`` (Bowman et al. 2016)
``kl_weight``           ``cyclical``        ``annealing.py`` (Fu et al. 2019)
``kl_weight``           ``capacity``        ``capacity.py`` (Burgess et al. 2018)
``kl_weight``           ``control``         ``control_vae.py`` (Shao et al. 2020)
``regularizers``        ``mi_q``            ``mi_q.py`` (Serdega & Kim 2020)
``input_noise``         ``none``            ``base.py``
``input_noise``         ``gaussian``        ``adversarial.py`` (Im et al. 2017)
``input_noise``         ``fgsm``            ``adversarial.py`` (Goodfellow et al. 2015)
``inference``           ``standard``        ``base.py``
``inference``           ``aggressive``      ``aggressive.py`` (He et al. 2019)
======================  ==================  ==============================================

Outside the objective: AR-ELBO's adaptive decoder variance is a likelihood
(:mod:`vae_tf.likelihoods.ar_elbo`), the Skip-VAE decoder a network option
(:mod:`vae_tf.networks.skip`), encoder pretraining a pre-phase (:mod:`vae_tf.remedies.pretraining`).

**Adding a remedy** is one new file with a subclass of the slot's base class (its ``kind``, its
pydantic ``Options`` and the methods its slot calls) and one registry line in
:mod:`vae_tf.remedies.slots`; the config schema, validation and error messages follow from the
registry.

:func:`parse_objective` validates an objective spec (slot form, or a named preset of the earlier
one-class-per-objective form, :mod:`vae_tf.remedies.presets`) without building anything;
:func:`build_remedies` builds the slot values for a model.

The names below load on first use (PEP 562), except the presets': the remedies are Keras layers,
and a process that only validates a config's other sections (a typo in ``train.epochs``, say)
should not wait seconds for Keras and TensorFlow to report it.
"""

from __future__ import annotations

from vae_tf._lazy import lazy_names
from vae_tf.remedies.presets import PRESETS, is_preset, preset_to_slots

_LAZY = {
    **dict.fromkeys(("INFERENCES", "INPUT_NOISES", "KL_WEIGHTS", "REGULARIZERS", "SLOTS", "Composition",
                     "build_remedies", "parse_objective"), "vae_tf.remedies.slots"),
    **dict.fromkeys(("FGSM", "GaussianNoise"), "vae_tf.remedies.adversarial"),
    **dict.fromkeys(("Aggressive", "AggressivePhase"), "vae_tf.remedies.aggressive"),
    **dict.fromkeys(("CyclicalAnnealing", "LinearAnnealing"), "vae_tf.remedies.annealing"),
    **dict.fromkeys(("InputNoise", "Inference", "KLWeight", "NoInputNoise", "Regularizer", "Remedy", "SlotContext",
                     "StandardInference"), "vae_tf.remedies.base"),
    "ConstantBeta": "vae_tf.remedies.beta_vae",
    "Capacity": "vae_tf.remedies.capacity",
    **dict.fromkeys(("ControlVAE", "PIController"), "vae_tf.remedies.control_vae"),
    "MIQ": "vae_tf.remedies.mi_q",
}


__getattr__, __dir__ = lazy_names(__name__, _LAZY, globals())


__all__ = ["FGSM", "INFERENCES", "INPUT_NOISES", "KL_WEIGHTS", "MIQ", "PRESETS", "REGULARIZERS", "SLOTS", "Aggressive",
           "AggressivePhase", "Capacity", "Composition", "ConstantBeta", "ControlVAE", "CyclicalAnnealing",
           "GaussianNoise", "InputNoise", "Inference", "KLWeight", "LinearAnnealing", "NoInputNoise", "PIController",
           "Regularizer", "Remedy", "SlotContext", "StandardInference", "build_remedies", "is_preset", "parse_objective",
           "preset_to_slots"]
