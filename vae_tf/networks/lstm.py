"""An LSTM layer whose training step uses a 2-core CPU: :class:`LSTM` is ``keras.layers.LSTM``
(same weights, same maths, same outputs; a Keras layer like any other) with another way of
running the recurrence while training, where that is faster.

**Why.** On a CPU, Keras runs an LSTM as a ``tf.while_loop`` over the cell, and TensorFlow's
automatic differentiation of that loop computes, at every time step, the input and recurrent
weight gradients as small products and their running sums. On a 2-CPU machine such a loop gains
little from the second core: one layer of 256 units over a [64, 11, 144] batch, forward and
backward, took 14–18 ms against PyTorch's fused oneDNN LSTM's 8.5 ms on 2 threads
(docs/performance.md, Text).

**How** (:func:`lstm_sequence`), for a training call whose sequence length is known when the graph
is built (a text model's token ids are always ``[B, max_length (+1)]``) and at most
:data:`MAX_UNROLLED_STEPS`:

- the input projection ``x W + b`` of every step is one product over the whole sequence;
- the recurrence is unrolled in the graph: per step one product ``h U`` and the gates;
- the backward pass is written by hand (``tf.custom_gradient``): the reverse loop computes only the
  gates' gradients and ``dh_{t-1} = dz_t Uᵀ``; the weight and input gradients are three products
  over the whole sequence after it;
- the batch is cut into :data:`BATCH_PARTS` parts whose recurrences are independent (rows never
  interact), so that TensorFlow's inter-op threads run them side by side.

The same layer went from 14–18 ms to 9.3–10.4 ms (docs/performance.md, Text). Masking is Keras':
at a masked step the state is carried over unchanged and the output repeats the previous step's
(zeros before the first unmasked step).

Everything else runs Keras' own path, so the layer accepts every ``keras.layers.LSTM`` setting:
inference (evaluation, encoding, the exported signatures: the forward pass alone gains only
1.1–1.3x, and Keras' loop keeps the graph small to trace and to serve), a GPU (cuDNN, as Keras
chooses), ``dropout`` / ``recurrent_dropout``, ``go_backwards``, ``unroll``, ``zero_output_for_mask``,
activations other than tanh / sigmoid, no bias, and an unknown or longer time dimension (the
unrolled graph grows with the length: ~0.04 s of tracing per step and layer).
"""

from __future__ import annotations

import keras
import tensorflow as tf

#: Longest sequence run by the unrolled path; longer ones (and an unknown length) take Keras'
#: ``while`` loop, whose graph does not grow with the length.
MAX_UNROLLED_STEPS = 64
#: Independent parts the batch is cut into (docs/performance.md, Text: two on a 2-CPU machine).
BATCH_PARTS = 2


@tf.function(autograph=False)
def _cell_forward(projected, h, c, recurrent_kernel):
    """One step of the LSTM: the gates, the new cell state and the new hidden state."""
    z = projected + tf.matmul(h, recurrent_kernel)
    zi, zf, zg, zo = tf.split(z, 4, axis=1)
    gates = (tf.sigmoid(zi), tf.sigmoid(zf), tf.tanh(zg), tf.sigmoid(zo))
    c_new = gates[1] * c + gates[0] * gates[2]
    return gates, c_new, gates[3] * tf.tanh(c_new)


@tf.function(autograph=False)
def _cell_backward(dh, dc, gates, c_prev, c_new, recurrent_kernel):
    """One step of the LSTM's backward pass from the gradients of its new state ``(h, c)``:
    the pre-activation gradient ``dz`` ``[B, 4H]`` (Keras' gate order i, f, c, o) and the
    gradients of the previous state."""
    i, f, g, o = gates
    tc = tf.tanh(c_new)
    dc = dc + dh * o * (1.0 - tc * tc)
    dz = tf.concat([dc * g * i * (1.0 - i), dc * c_prev * f * (1.0 - f), dc * i * (1.0 - g * g),
                    dh * tc * o * (1.0 - o)], axis=1)
    return dz, tf.matmul(dz, recurrent_kernel, transpose_b=True), dc * f


def _lstm_part(x, mask, h0, c0, kernel, recurrent_kernel, bias):
    """The recurrence of :func:`lstm_sequence` for one part of the batch (``mask`` None: no step
    masked)."""
    steps, width = x.shape[1], x.shape[2]

    @tf.custom_gradient
    def run(x, h0, c0, kernel, recurrent_kernel, bias):
        batch, units = tf.shape(x)[0], recurrent_kernel.shape[0]
        projected = tf.reshape(tf.matmul(tf.reshape(x, [-1, width]), kernel) + bias, [batch, steps, 4 * units])
        keep = None if mask is None else tf.unstack(mask[:, :, None], axis=1)  # [B, 1] per step
        h, c, y = h0, c0, tf.zeros_like(h0)
        saved = []  # per step: gates, previous c, new c (before masking), previous h
        outputs = []
        for t in range(steps):
            gates, c_new, h_new = _cell_forward(projected[:, t], h, c, recurrent_kernel)
            saved.append((gates, c, c_new, h))
            if keep is None:
                h, c, y = h_new, c_new, h_new
            else:
                h, c = tf.where(keep[t], h_new, h), tf.where(keep[t], c_new, c)
                y = tf.where(keep[t], h_new, y)
            outputs.append(y)

        def grad(d_outputs, d_h, d_c):
            d_y = tf.unstack(d_outputs, axis=1)
            dh, dc, dy_carry = d_h, d_c, None
            dzs = [None] * steps
            for t in reversed(range(steps)):
                gates, c_prev, c_new, _ = saved[t]
                dy = d_y[t] if dy_carry is None else d_y[t] + dy_carry
                if keep is None:
                    dh_new, dc_new, dh_carry, dc_carry = dh + dy, dc, None, None
                else:
                    zero = tf.zeros_like(dh)
                    dh_new, dh_carry = tf.where(keep[t], dh + dy, zero), tf.where(keep[t], zero, dh)
                    dc_new, dc_carry = tf.where(keep[t], dc, zero), tf.where(keep[t], zero, dc)
                    dy_carry = tf.where(keep[t], zero, dy)
                dzs[t], dh, dc = _cell_backward(dh_new, dc_new, gates, c_prev, c_new, recurrent_kernel)
                if keep is not None:
                    dh, dc = dh + dh_carry, dc + dc_carry
            dz = tf.reshape(tf.stack(dzs, axis=1), [-1, 4 * units])
            h_prev = tf.reshape(tf.stack([s[3] for s in saved], axis=1), [-1, units])
            d_x = tf.reshape(tf.matmul(dz, kernel, transpose_b=True), [batch, steps, width])
            d_kernel = tf.matmul(tf.reshape(x, [-1, width]), dz, transpose_a=True)
            d_recurrent = tf.matmul(h_prev, dz, transpose_a=True)
            return d_x, dh, dc, d_kernel, d_recurrent, tf.reduce_sum(dz, axis=0)

        return (tf.stack(outputs, axis=1), h, c), grad

    return run(x, h0, c0, kernel, recurrent_kernel, bias)


def lstm_sequence(x, h0, c0, kernel, recurrent_kernel, bias, mask=None, parts: int = BATCH_PARTS):
    """Keras' LSTM (tanh / sigmoid, gate order i, f, c, o) over ``x`` ``[B, T, d]`` with a static
    ``T``, from the state ``(h0, c0)`` ``[B, H]``: returns ``(outputs [B, T, H], h_T, c_T)``, with
    Keras' masking where ``mask`` ``[B, T]`` (bool) is given (module docstring). The batch is cut
    into ``parts`` (the last ones may be empty for a small batch)."""
    if x.shape[1] is None:
        raise ValueError("lstm_sequence needs the time dimension known when the graph is built")
    batch = tf.shape(x)[0]
    if parts <= 1:
        return _lstm_part(x, mask, h0, c0, kernel, recurrent_kernel, bias)
    base = batch // parts
    sizes = tf.stack([base] * (parts - 1) + [batch - base * (parts - 1)])
    pieces = [tf.split(t, sizes, axis=0, num=parts) for t in (x, h0, c0)]
    masks = [None] * parts if mask is None else tf.split(mask, sizes, axis=0, num=parts)
    results = [_lstm_part(xp, mp, hp, cp, kernel, recurrent_kernel, bias)
               for xp, hp, cp, mp in zip(*pieces, masks)]
    return tuple(tf.concat([r[k] for r in results], axis=0) for k in range(3))


@keras.saving.register_keras_serializable(package="vae_tf")
class LSTM(keras.layers.LSTM):
    """``keras.layers.LSTM`` that runs :func:`lstm_sequence` where it applies (module docstring),
    Keras' own path (cuDNN on a GPU, the ``while`` loop otherwise) everywhere else."""

    def unrolled_path(self, sequences, training=False) -> bool:
        """Whether this call runs :func:`lstm_sequence` (module docstring lists when not)."""
        from keras.src.backend.tensorflow.rnn import cudnn_ok

        cell = self.cell
        steps = sequences.shape[1]
        if steps is None or steps > MAX_UNROLLED_STEPS or self.go_backwards or self.unroll or not cell.use_bias:
            return False
        if self.zero_output_for_mask:
            return False
        if cell.activation is not keras.activations.tanh or cell.recurrent_activation is not keras.activations.sigmoid:
            return False
        if training is not True or cell.dropout or cell.recurrent_dropout:
            return False  # inference (or a symbolic flag): Keras' loop; dropout: Keras' masks
        if self.use_cudnn is True or (self.use_cudnn == "auto" and cudnn_ok(cell.activation, cell.recurrent_activation,
                                                                            self.unroll, cell.use_bias)):
            return False  # cuDNN asked for, or Keras would use it (a GPU)
        return True

    def inner_loop(self, sequences, initial_state, mask, training=False):
        if isinstance(mask, (list, tuple)):
            mask = mask[0]
        if not self.unrolled_path(sequences, training):
            return super().inner_loop(sequences, initial_state, mask=mask, training=training)
        dtype = sequences.dtype
        cell = self.cell
        outputs, h, c = lstm_sequence(sequences, tf.cast(initial_state[0], dtype), tf.cast(initial_state[1], dtype),
                                      tf.cast(cell.kernel, dtype), tf.cast(cell.recurrent_kernel, dtype),
                                      tf.cast(cell.bias, dtype), mask=None if mask is None else tf.cast(mask, tf.bool))
        return outputs[:, -1], outputs, [h, c]


__all__ = ["BATCH_PARTS", "LSTM", "MAX_UNROLLED_STEPS", "lstm_sequence"]
