"""``tfd``: ``tensorflow_probability.distributions``, imported at its first use.

TensorFlow Probability takes about a second to import (it imports ``tf_keras`` too), and a model
that never builds a TFP distribution never needs it: the Gaussian family's KL and sample and the
Bernoulli likelihood's log-probability and sample are written out in TensorFlow ops, so
``build_vae`` and ``fit`` of the default model run without it, and so does a whole `vae-tf train`
of a Gaussian / Bernoulli model (its figures and exported ``sample`` signature draw from the
Bernoulli) (benchmarks/startup.py, docs/performance.md). The
families and likelihoods write ``tfd.Normal(...)`` as before; the import happens at the first
attribute access, once.
"""

from __future__ import annotations

import importlib


class _Distributions:
    """Forwards attribute access to ``tensorflow_probability.distributions``."""

    def __getattr__(self, name: str):
        return getattr(importlib.import_module("tensorflow_probability").distributions, name)


tfd = _Distributions()

__all__ = ["tfd"]
