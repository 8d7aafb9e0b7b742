"""One compiled function per (model, function), made on first use and dropped with the model.

The metric helpers run again and again on the same model: every epoch's collapse diagnostics,
every evaluation, every child run of a suite. A ``tf.function`` created per call is traced per
call. Made once per model and kept here, each is traced once per input signature.

A new model still needs its own traces (its variables differ). :func:`compiled_for` binds the
model to a module-level function with ``functools.partial`` instead of a closure: TensorFlow's
retracing warning ("5 out of the last 5 calls to <function ...> triggered tf.function retracing")
counts the traces of all functions with the same *code object* together, and a closure made per
model shares its code with every other model's, so a suite's children, each traced once, added up
to the warning; a partial is counted as itself, per model, and the warning keeps its meaning (one
model's function traced again and again).

They are traced without AutoGraph (``autograph=False``): AutoGraph rewrites every Python function
the trace calls, down through Keras' layers, so that Python ``if``/``for`` over tensors become graph
control flow, and the model code needs none of that (its loops and branches are written as
``tf.while_loop`` / ``tf.cond``). Without it, the export's signatures and the posterior summary of
a trained conv VAE traced in ~2/3 of the time (docs/performance.md); the graphs are the same ops.

The cache holds the model weakly and the bound function holds a weak proxy of it: a cached value
that referred to the model would keep its own key alive, and no evaluated model would ever be
freed.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable

_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def compiled_for(model, fn: Callable, **options) -> Callable:
    """``tf.function(fn, autograph=False, **options)`` with ``model`` bound as ``fn``'s first
    argument, made on the first call for this model; ``fn`` must be a module-level function (the
    key)."""
    per_model = _CACHE.setdefault(model, {})
    if fn not in per_model:
        import tensorflow as tf  # noqa: PLC0415

        options.setdefault("autograph", False)
        per_model[fn] = tf.function(functools.partial(fn, weakref.proxy(model)), **options)
    return per_model[fn]


__all__ = ["compiled_for"]
