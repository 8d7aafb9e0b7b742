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
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf


#: Variables with fewer values than this are updated by Keras' ops (module docstring).
DEFAULT_MIN_FUSED_SIZE = 131_072


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

    def update_step(self, gradient, variable, learning_rate):
        if isinstance(gradient, tf.IndexedSlices) or not self.uses_fused_kernel(variable):
            return super().update_step(gradient, variable, learning_rate)
        var = _tf_variable(variable)
        dtype = var.dtype
        index = self._get_variable_index(variable)
        step = tf.cast(self.iterations + 1, dtype)
        beta_1 = tf.cast(self.beta_1, dtype)
        beta_2 = tf.cast(self.beta_2, dtype)
        return tf.raw_ops.ResourceApplyAdam(
            var=var.handle,
            m=_tf_variable(self._momentums[index]).handle,
            v=_tf_variable(self._velocities[index]).handle,
            beta1_power=tf.pow(beta_1, step),
            beta2_power=tf.pow(beta_2, step),
            lr=tf.cast(learning_rate, dtype),
            beta1=beta_1,
            beta2=beta_2,
            epsilon=tf.cast(self.epsilon, dtype),
            grad=tf.cast(gradient, dtype),
            use_locking=False,
            use_nesterov=False,
        )
