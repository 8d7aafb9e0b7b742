"""One compiled function per (model, function), made on first use and dropped with the model.

The metric helpers run again and again on the same model: every epoch's collapse diagnostics,
every evaluation, every child run of a suite. A ``tf.function`` created per call is traced per
call. Made once per model and kept here, each is traced once per input signature.

A new model still needs its own traces (its variables differ). :func:`compiled_for` binds the
model to a module-level function (:func:`vae_tf._traced.traced`, a ``functools.partial``) instead
of a closure: TensorFlow's retracing warning ("5 out of the last 5 calls to <function ...> triggered
tf.function retracing") counts the traces of all functions with the same *code object* together,
and a closure made per model shares its code with every other model's, so a suite's children, each
traced once, added up to the warning; a partial is counted as itself, per model, and the warning
keeps its meaning (one model's function traced again and again).

They are traced without AutoGraph (``autograph=False``): AutoGraph rewrites every Python function
the trace calls, down through Keras' layers, so that Python ``if``/``for`` over tensors become graph
control flow, and the model code needs none of that (its loops and branches are written as
``tf.while_loop`` / ``tf.cond``). Without it, the export's signatures and the posterior summary of
a trained conv VAE traced in ~2/3 of the time (docs/performance.md); the graphs are the same ops.

The metrics run their functions batch by batch, and the last batch of a split is usually shorter;
a split of another size (validation, test) differs again. With ``batch_polymorphic=True`` the
function's first call fixes its input signature with the first argument's batch dimension left
open (every other argument as it came), so it is traced once, not once for the first shape and
again for the generalised one, as ``reduce_retracing`` does (a text encoder's trace is ~0.1 s).

The cache holds the model weakly and the bound function holds a weak proxy of it: a cached value
that referred to the model would keep its own key alive, and no evaluated model would ever be
freed.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

from vae_tf._traced import traced

_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def compiled_for(model, fn: Callable, *, batch_polymorphic: bool = False, **options) -> Callable:
    """``tf.function(fn, autograph=False, **options)`` with ``model`` bound as ``fn``'s first
    argument, made on the first call for this model; ``fn`` must be a module-level function (the
    key). ``batch_polymorphic``: every argument is a tensor and the first one's leading dimension
    is a batch of any size (module docstring)."""
    per_model = _CACHE.setdefault(model, {})
    if fn not in per_model:
        proxy = weakref.proxy(model)
        per_model[fn] = _BatchPolymorphic(fn, proxy, options) if batch_polymorphic else traced(fn, proxy, **options)
    return per_model[fn]


class _BatchPolymorphic:
    """A ``tf.function`` whose input signature is made from its first call's arguments, the
    first argument's batch dimension left open."""

    def __init__(self, fn: Callable, model, options: dict):
        self.fn, self.model, self.options, self.function = fn, model, options, None

    def __call__(self, first, *rest):
        if self.function is None:
            import tensorflow as tf  # noqa: PLC0415

            signature = [tf.TensorSpec([None, *first.shape[1:]], first.dtype),
                         *(tf.TensorSpec.from_tensor(tf.convert_to_tensor(arg)) for arg in rest)]
            self.function = traced(self.fn, self.model, input_signature=signature, **self.options)
        return self.function(first, *rest)

    def experimental_get_tracing_count(self) -> int:
        return 0 if self.function is None else self.function.experimental_get_tracing_count()


__all__ = ["compiled_for"]
