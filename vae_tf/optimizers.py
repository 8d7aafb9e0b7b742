"""``FusedAdam``: Keras' Adam with each variable's update done by one fused TensorFlow kernel.

Why: Keras 3's ``Adam.update_step`` writes the update as eight element-wise TensorFlow ops per
variable (``m += (g − m)(1 − β₁)``, ``v += (g² − v)(1 − β₂)``, ``θ −= α m / (√v + ε)``), and
each op is one more pass over the variable. On the reference conv VAE (1.66 M parameters) the
profile of a training step on a 2-core CPU put 21 % of the op time in those ops
(``docs/performance.md``, "Where a training step's time goes"). TensorFlow has the same update as
a single kernel, ``ResourceApplyAdam`` (one vectorised, multi-threaded pass that reads the
gradient and the three tensors once, also on GPU and under XLA), which is what PyTorch's
``fused=True`` Adam does too. Measured on that model: 0.84 ms instead of 2.2 ms per update.

The mathematics is Keras' own, term for term (the kernel computes
``α = lr √(1 − β₂ᵗ) / (1 − β₁ᵗ)``, ``m += (g − m)(1 − β₁)``, ``v += (g² − v)(1 − β₂)``,
``θ −= α m / (√v + ε)`` with ε outside the root, as Keras does), so trajectories agree with
``keras.optimizers.Adam`` to float32 rounding (tests/test_optimizers.py). Everything around the
update is inherited unchanged: learning-rate schedules, ``clipnorm`` / ``global_clipnorm``,
weight decay, EMA, loss scaling (``LossScaleOptimizer`` wraps it), ``tf.distribute`` (the
kernel runs inside ``strategy.extended.update`` on each replica's copy), and the optimizer's
variables, so checkpoints of either class restore into the other. Where no fused kernel fits,
the update falls back to Keras' ops: ``amsgrad=True`` and sparse (``IndexedSlices``) gradients.

Small variables keep Keras' ops too (``min_fused_size``, default 131,072 values): on a CPU the
kernel splits its pass over the intra-op threads, which costs more than it saves on a small
tensor. Measured side by side on a 2-core CPU (benchmarks/train_throughput.py's models, the
bare Keras loop with each optimizer, ms per step over ~90 interleaved rounds): on the MLP
256/128 (largest variable 32,768 values) the fused kernel on every variable made a step 12-14 %
slower than Keras' Adam, fused from 16,384 values up still 8 % slower, Keras' ops everywhere
equal to Keras' Adam; on the conv reference (two 802,816-value dense kernels, everything else
under 20,000) fusing from 65,536 or 262,144 values up was as fast as fusing everything (0.96-0.97
of Keras' Adam). Every threshold between 32,769 and 802,816 picks the same variables in both
models; 131,072 sits in that range. ``min_fused_size=1`` fuses every variable.

The step's scalars are computed once per step: Keras' ``update_step`` computes the bias
corrections ``β₁ᵗ``, ``β₂ᵗ`` and the step size ``α`` again for every variable (about 20 small ops
each, which graph optimisation cannot merge: each reads the iteration counter), so on the conv
reference 579 of a training step's 962 graph ops were the optimizer's. Here they are made once
per step, device and dtype (:meth:`FusedAdam._step_terms`) and shared by every variable's update,
fused or not; the values and the order of the element-wise ops are Keras' own.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf


#: Variables with fewer values than this are updated by Keras' ops (module docstring).
DEFAULT_MIN_FUSED_SIZE = 131_072


def _keras_constant(value, dtype):
    """``value`` as Keras' ops take a Python number next to a tensor of ``dtype``: converted straight
    to ``dtype`` (``tf.cast`` would round a float64 update's ε through float32); a tensor is cast."""
    return tf.constant(value, dtype) if isinstance(value, (int, float)) else tf.cast(value, dtype)


def _tf_variable(variable):
    """The ``tf.Variable`` behind a Keras variable (a distributed one inside a strategy)."""
    return variable.value if isinstance(variable, keras.Variable) else variable


@keras.saving.register_keras_serializable(package="vae_tf")
class FusedAdam(keras.optimizers.Adam):
    """``keras.optimizers.Adam`` (same arguments, same results) whose per-variable update is
    TensorFlow's fused ``ResourceApplyAdam`` kernel; see the module docstring."""

    def __init__(self, *args, min_fused_size: int = DEFAULT_MIN_FUSED_SIZE, **kwargs):
        super().__init__(*args, **kwargs)
        if isinstance(min_fused_size, bool) or not isinstance(min_fused_size, int) or min_fused_size < 1:
            raise ValueError(f"min_fused_size must be a positive integer (values per variable), got {min_fused_size!r}")
        self.min_fused_size = min_fused_size

    def get_config(self):
        return {**super().get_config(), "min_fused_size": self.min_fused_size}

    def uses_fused_kernel(self, variable) -> bool:
        """Whether ``variable``'s dense update is the fused kernel (else Keras' element-wise ops)."""
        return not self.amsgrad and math.prod(variable.shape) >= self.min_fused_size

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        # One step's updates (every variable, on every replica): the scalars they share are made
        # once (_step_terms), then forgotten, so that no tensor outlives the graph it belongs to.
        # Set past Keras' and TensorFlow's attribute tracking: the cache is no checkpoint dependency.
        object.__setattr__(self, "_terms_of_this_step", {})
        try:
            return super()._backend_update_step(grads, trainable_variables, learning_rate)
        finally:
            object.__setattr__(self, "_terms_of_this_step", None)

    def _step_terms(self, var, learning_rate) -> dict:
        """Adam's scalars for this step in ``var``'s dtype, on ``var``'s device: made once per
        step (within :meth:`_backend_update_step`; anywhere else, for each call), as Keras'
        ``Adam.update_step`` computes them for each variable."""
        dtype = var.dtype
        cache = getattr(self, "_terms_of_this_step", None)
        key = (var.device, dtype)
        if cache is not None and key in cache:  # the cache is new for each step: one learning rate
            return cache[key]
        step = tf.cast(self.iterations + 1, dtype)
        beta_1, beta_2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
        lr = tf.cast(learning_rate, dtype)
        beta_1_power, beta_2_power = tf.pow(beta_1, step), tf.pow(beta_2, step)
        terms = {"lr": lr, "beta_1": beta_1, "beta_2": beta_2,
                 "beta_1_power": beta_1_power, "beta_2_power": beta_2_power, "epsilon": tf.cast(self.epsilon, dtype)}
        if cache is not None:
            cache[key] = terms
        return terms

    def _keras_op_terms(self, terms: dict, dtype) -> dict:
        """The scalars only Keras' element-wise update needs, added to ``terms`` at its first use
        (a step that updates every variable with the kernel does not make them)."""
        if "alpha" not in terms:
            terms["alpha"] = terms["lr"] * tf.sqrt(1 - terms["beta_2_power"]) / (1 - terms["beta_1_power"])
            terms["one_minus_beta_1"] = _keras_constant(1 - self.beta_1, dtype)
            terms["one_minus_beta_2"] = _keras_constant(1 - self.beta_2, dtype)
            terms["keras_epsilon"] = _keras_constant(self.epsilon, dtype)
        return terms

    def update_step(self, gradient, variable, learning_rate):
        if isinstance(gradient, tf.IndexedSlices) or self.amsgrad:
            return super().update_step(gradient, variable, learning_rate)
        var = _tf_variable(variable)
        dtype = var.dtype
        index = self._get_variable_index(variable)
        terms = self._step_terms(var, learning_rate)
        gradient = tf.cast(gradient, dtype)
        m, v = _tf_variable(self._momentums[index]), _tf_variable(self._velocities[index])
        if not self.uses_fused_kernel(variable):
            # Keras' Adam.update_step, op for op, with the step's scalars shared.
            terms = self._keras_op_terms(terms, dtype)
            m.assign_add((gradient - m) * terms["one_minus_beta_1"])
            v.assign_add((tf.square(gradient) - v) * terms["one_minus_beta_2"])
            return var.assign_sub((m * terms["alpha"]) / (tf.sqrt(v) + terms["keras_epsilon"]))
        return tf.raw_ops.ResourceApplyAdam(
            var=var.handle,
            m=m.handle,
            v=v.handle,
            beta1_power=terms["beta_1_power"],
            beta2_power=terms["beta_2_power"],
            lr=terms["lr"],
            beta1=terms["beta_1"],
            beta2=terms["beta_2"],
            epsilon=terms["epsilon"],
            grad=gradient,
            use_locking=False,
            use_nesterov=False,
        )
