"""``tf.function`` for one object's use, made so that TensorFlow's retracing warning keeps its meaning.

TensorFlow warns "5 out of the last 5 calls to <function f> triggered tf.function retracing" when
functions are traced again and again, and it counts the traces of every ``tf.function`` whose
Python function has the same *code object* together. A ``tf.function`` of a closure made per model
(an export's signatures, a fresh Q network's training step) shares its code object with every other
model's, so a process that handles models one after another (a suite's children, each exported and
evaluated once) added their single traces up to the warning, which then said nothing true. A
``functools.partial`` of a module-level function is counted as itself (TensorFlow keys a partial by
the partial), so each function's count is its own, and the warning still fires for one function
traced again and again. (Why the traces are made without AutoGraph: :mod:`vae_tf.metrics._compiled`.)
"""

from __future__ import annotations

import functools
from collections.abc import Callable


def traced(fn: Callable, *bound, name: str | None = None, **options) -> Callable:
    """``tf.function(functools.partial(fn, *bound), autograph=False, **options)``. ``fn`` is a
    module-level function whose first arguments are ``bound``; ``name`` (default ``fn``'s) names the
    traced graphs, e.g. ``__inference_encode_123`` in a SavedModel, as a decorated function would."""
    import tensorflow as tf  # noqa: PLC0415

    partial = functools.partial(fn, *bound)
    partial.__name__ = name or fn.__name__  # a partial has no name of its own (TensorFlow would say "function")
    options.setdefault("autograph", False)
    return tf.function(partial, **options)


__all__ = ["traced"]
