"""LSTM and GRU layers whose training step uses a 2-core CPU: :class:`LSTM` and :class:`GRU` are
``keras.layers.LSTM`` / ``keras.layers.GRU`` (same weights, same maths, same outputs; Keras layers
like any other) with another way of running the recurrence while training, where that is faster.

**Why.** On a CPU, Keras runs a recurrent layer as a ``tf.while_loop`` over the cell, and
TensorFlow's automatic differentiation of that loop computes, at every time step, the input and
recurrent weight gradients as small products and their running sums. On a 2-CPU machine such a
loop gains little from the second core: one LSTM layer of 256 units over a [64, 11, 144] batch,
forward and backward, took 13–15 ms against PyTorch's fused oneDNN LSTM's 7.5–8.5 ms on 2 threads
(docs/performance.md, Text).

**How** (:func:`lstm_sequence`, :func:`gru_sequence`), for a training call whose sequence length is
known when the graph is built (a text model's token ids are always ``[B, max_length (+1)]``) and
at most :data:`MAX_UNROLLED_STEPS` (:data:`MAX_UNROLLED_STEPS_XLA` in a step compiled with XLA):

- the input projection ``x W + b`` of every step is one product over the whole sequence;
- the recurrence is unrolled in the graph: per step one product ``h U_k`` per gate ``k`` and the
  gates. One product per gate, not one ``h U`` for all, because TensorFlow's oneDNN matrix product
  runs on one thread only when its operands fit the CPU's L2 cache, and splits across the intra-op
  pool otherwise: for a 256-unit LSTM over half a batch of 64, ``h U`` (1.2 MB of operands) was
  split over both threads on a 2-CPU AMD EPYC with 1 MB of L2 per core, and the thread hand-offs at
  every step cost more than the product (one layer: 21 ms against 14 ms per gate, PyTorch 11 ms;
  docs/performance.md, Text). Per gate (0.3 MB) each product runs whole on one thread, and the
  gates' and the batch parts' products run side by side on the inter-op pool. A small kernel
  (below :data:`PER_GATE_KERNEL_SIZE`) keeps one product: its four would cost more in op overhead
  than they gain. A step traced for XLA (:func:`traced_for_xla`: a text model compiled with
  ``jit_compile=True``) keeps one product too: XLA runs its own matrix products, and per gate
  the 256-unit benchmark model trained at 0.93x the speed under it (docs/performance.md, Text);
- the backward pass is written by hand (``tf.custom_gradient``): the reverse loop computes only the
  gates' gradients (each through one ``SigmoidGrad`` / ``TanhGrad`` kernel) and ``dh_{t-1}`` (one
  product by ``Uᵀ``, or one per gate); the weight and input gradients are products over the whole
  sequence after it;
- the batch is cut into :data:`BATCH_PARTS` parts whose recurrences are independent (rows never
  interact), so that TensorFlow's inter-op threads run them side by side.

The LSTM layer went from 13.4–14.8 ms to 8.9–11.2 ms (docs/performance.md, Text). Masking is
Keras': at a masked step the state is carried over unchanged and the output repeats the previous
step's (zeros before the first unmasked step).

Everything else runs Keras' own path, so the layers accept every Keras setting: inference
(evaluation, encoding, the exported signatures: the forward pass alone gains only 1.1–1.3x, and
Keras' loop keeps the graph small to trace and to serve), a GPU where Keras would use cuDNN (with
``use_cudnn=False`` a GPU runs the unrolled path too),
``dropout`` / ``recurrent_dropout``, ``go_backwards``, ``unroll``, ``zero_output_for_mask``,
activations other than tanh / sigmoid, no bias, a GRU with ``reset_after=False``, and an unknown or
longer time dimension (the unrolled graph grows with the length: ~0.04 s of tracing per step and
layer, and under XLA compile time and a slower program: :data:`MAX_UNROLLED_STEPS_XLA`).
"""

from __future__ import annotations

import contextlib

import keras
import tensorflow as tf

#: Longest sequence run by the unrolled path; longer ones (and an unknown length) take Keras'
#: ``while`` loop, whose graph does not grow with the length. 65: a text model with ``max_length``
#: 64 trains both recurrences unrolled (the decoder reads ``<bos>`` too: 65 steps); at 64 its
#: decoder took Keras' loop and the model trained at 18,797 tokens/s against 21,896 one word
#: shorter (docs/performance.md, "XLA and sentence length").
MAX_UNROLLED_STEPS = 65
#: The same in a step traced for XLA (:func:`traced_for_xla`). XLA compiles the unrolled graph
#: into one program whose compile time and speed worsen with its length: for the text benchmark's
#: 256-unit LSTM VAE on a 2-CPU AMD EPYC (docs/performance.md, "XLA and sentence length"), the
#: unrolled path against Keras' loop under XLA trained at 1.14x, 1.12x and 1.11x the speed for 11,
#: 17 and 21 steps, then 0.95x, 0.89x and 0.28x for 25, 33 and 64 steps, with 4-15 s more compile
#: time at 11-21 steps and 24-126 s more at 25-64 (a first run; the benchmark's table: 1.06-1.22x
#: up to 21 steps, 1.07x at 25, 0.85x at 33, 0.30x at 64). So XLA unrolls up to the longest length
#: at which both runs found it faster.
MAX_UNROLLED_STEPS_XLA = 21
#: Independent parts the batch is cut into (docs/performance.md, Text: two on a 2-CPU machine).
BATCH_PARTS = 2
#: Recurrent kernels of at least this many entries (256 KiB in float32: an LSTM of 128 units or
#: more) take one product per gate and step, smaller ones one product for all gates (module
#: docstring; docs/performance.md, Text: 50 units ran 5 % slower per gate, 128 and 256 faster).
PER_GATE_KERNEL_SIZE = 64 * 1024


# Set by traced_for_xla. A module-wide flag, not a thread's: a tf.distribute strategy traces each
# replica's step in a thread of its own. Either way of building gives the same values, so two
# traces at once in other threads could only take the slower one.
_xla_tracing = False


@contextlib.contextmanager
def traced_for_xla(on: bool = True):
    """Within this context the unrolled layers build their steps for XLA: one recurrent product for
    all gates, whatever the size (module docstring). :class:`~vae_tf.models.text.TextVAE` traces a
    training step compiled with ``jit_compile=True`` inside it."""
    global _xla_tracing
    before, _xla_tracing = _xla_tracing, bool(on)
    try:
        yield
    finally:
        _xla_tracing = before


def per_gate_products(units: int, gates: int) -> bool:
    """Whether a layer of ``units`` with ``gates`` gates (LSTM 4, GRU 3) takes one recurrent
    product per gate (:data:`PER_GATE_KERNEL_SIZE`); never in a step traced for XLA
    (:func:`traced_for_xla`)."""
    return not _xla_tracing and units * gates * units >= PER_GATE_KERNEL_SIZE


# --- one step of each cell, forward and backward ----------------------------------------------------
# forward(projected_t, states, recurrent_kernel, recurrent_bias) -> (new states, output, saved)
# backward(d_new_states, saved, states, recurrent_kernel)
#     -> (gradient of the step's input projection, of its recurrent projection (None: the same
#         tensor, as in an LSTM, whose one bias then has no recurrent twin), of the previous states)

# The gradients through sigmoid and tanh from their outputs, dy·y·(1 − y) and dy·(1 − y²), each one
# kernel (what TensorFlow's own gradients of tf.sigmoid / tf.tanh run) instead of three or four
# element-wise ops: the reverse loop's ops are small enough for each op's dispatch to count.
_sigmoid_grad, _tanh_grad = tf.raw_ops.SigmoidGrad, tf.raw_ops.TanhGrad


def _recurrent_input_gradient(d_gates, d_all, recurrent_kernel):
    """``dh`` through the recurrent products ``h U`` (``(U,)``) or ``h U_k`` (one per gate), from
    each gate's gradient (``d_gates``) or all of them side by side (``d_all``)."""
    if len(recurrent_kernel) == 1:
        return tf.matmul(d_all, recurrent_kernel[0], transpose_b=True)
    return tf.add_n([tf.matmul(d, u, transpose_b=True) for d, u in zip(d_gates, recurrent_kernel)])


@tf.function(autograph=False)
def _lstm_forward(projected, states, recurrent_kernel, recurrent_bias):
    """Keras' LSTM cell (gate order i, f, c, o); ``projected`` and ``recurrent_kernel`` are
    ``(x W,)`` and ``(U,)`` or one ``x W_k`` and ``U_k`` per gate; ``recurrent_bias`` unused (the
    LSTM has one bias)."""
    h, c = states
    if len(recurrent_kernel) == 1:  # one product for all gates
        zi, zf, zg, zo = tf.split(projected[0] + tf.matmul(h, recurrent_kernel[0]), 4, axis=1)
    else:  # one product per gate
        zi, zf, zg, zo = (x + tf.matmul(h, u) for x, u in zip(projected, recurrent_kernel))
    i, f, g, o = tf.sigmoid(zi), tf.sigmoid(zf), tf.tanh(zg), tf.sigmoid(zo)
    c_new = f * c + i * g
    tc = tf.tanh(c_new)
    h_new = o * tc
    return (h_new, c_new), h_new, (i, f, g, o, tc)


@tf.function(autograph=False)
def _lstm_backward(d_states, saved, states, recurrent_kernel):
    dh, dc = d_states
    i, f, g, o, tc = saved
    c_prev = states[1]
    dc = dc + _tanh_grad(y=tc, dy=dh * o)
    dz = (_sigmoid_grad(y=i, dy=dc * g), _sigmoid_grad(y=f, dy=dc * c_prev), _tanh_grad(y=g, dy=dc * i),
          _sigmoid_grad(y=o, dy=dh * tc))
    d_all = tf.concat(dz, axis=1)
    return d_all, None, (_recurrent_input_gradient(dz, d_all, recurrent_kernel), dc * f)


@tf.function(autograph=False)
def _gru_forward(projected, states, recurrent_kernel, recurrent_bias):
    """Keras' GRU cell with ``reset_after=True`` (gate order z, r, h; the reset gate applied to the
    recurrent projection, which has its own bias); ``projected``, ``recurrent_kernel`` and
    ``recurrent_bias`` whole or per gate, as the LSTM's."""
    (h,) = states
    if len(recurrent_kernel) == 1:  # one product for all gates
        x_z, x_r, x_h = tf.split(projected[0], 3, axis=1)
        i_z, i_r, i_h = tf.split(tf.matmul(h, recurrent_kernel[0]) + recurrent_bias[0], 3, axis=1)
    else:  # one product per gate
        x_z, x_r, x_h = projected
        i_z, i_r, i_h = (tf.matmul(h, u) + b for u, b in zip(recurrent_kernel, recurrent_bias))
    z, r = tf.sigmoid(x_z + i_z), tf.sigmoid(x_r + i_r)
    hh = tf.tanh(x_h + r * i_h)
    h_new = z * h + (1.0 - z) * hh
    return (h_new,), h_new, (z, r, hh, i_h)


@tf.function(autograph=False)
def _gru_backward(d_states, saved, states, recurrent_kernel):
    (dh,) = d_states
    z, r, hh, i_h = saved
    (h,) = states
    d_hh = _tanh_grad(y=hh, dy=dh * (1.0 - z))  # through tanh: the candidate's pre-activation
    d_z = _sigmoid_grad(y=z, dy=dh * (h - hh))
    d_r = _sigmoid_grad(y=r, dy=d_hh * i_h)
    d_inner = (d_z, d_r, d_hh * r)
    d_inner_all = tf.concat(d_inner, axis=1)
    return (tf.concat([d_z, d_r, d_hh], axis=1), d_inner_all,
            (dh * z + _recurrent_input_gradient(d_inner, d_inner_all, recurrent_kernel),))


CELLS = {"lstm": (_lstm_forward, _lstm_backward), "gru": (_gru_forward, _gru_backward)}


def _part(cell: str, x, mask, states, kernel, recurrent_kernel, bias, recurrent_bias):
    """The unrolled recurrence of one part of the batch (``mask`` None: no step masked), with its
    hand-written backward pass; returns ``(outputs [B, T, H], *final states)``."""
    forward, backward = CELLS[cell]
    steps, width = x.shape[1], x.shape[2]

    @tf.custom_gradient
    def run(x, kernel, recurrent_kernel, bias, recurrent_bias, *states):
        batch, gates = tf.shape(x)[0], kernel.shape[1]
        units = recurrent_kernel.shape[0]
        projected = tf.reshape(tf.matmul(tf.reshape(x, [-1, width]), kernel) + bias, [batch, steps, gates])
        # The recurrent kernel cut per gate where it is large enough for one product over all
        # gates to be split over threads (module docstring); each gate's inputs are then cut out once.
        n_gates = gates // units
        if per_gate_products(units, n_gates):
            gate_kernels = tuple(tf.split(recurrent_kernel, n_gates, axis=1))
            gate_biases = tuple(tf.split(recurrent_bias, n_gates))
            step_inputs = list(zip(*(tf.unstack(p, axis=1) for p in tf.split(projected, n_gates, axis=2))))
        else:
            gate_kernels, gate_biases = (recurrent_kernel,), (recurrent_bias,)
            step_inputs = [(projected[:, t],) for t in range(steps)]
        keep = None if mask is None else tf.unstack(mask[:, :, None], axis=1)  # [B, 1] per step
        y = None if keep is None else tf.zeros_like(states[0])  # the output masked steps repeat
        history = []  # per step: the states it started from, what its backward pass needs
        outputs = []
        for t in range(steps):
            new_states, h_new, saved = forward(step_inputs[t], states, gate_kernels, gate_biases)
            history.append((states, saved))
            if keep is None:
                states, y = new_states, h_new
            else:
                states = tuple(tf.where(keep[t], new, old) for new, old in zip(new_states, states))
                y = tf.where(keep[t], h_new, y)
            outputs.append(y)

        def grad(d_outputs, *d_final):
            with tf.name_scope("unrolled_backward"):  # so that a profile tells it from the forward pass
                return backward_pass(d_outputs, *d_final)

        def backward_pass(d_outputs, *d_final):
            d_y = tf.unstack(d_outputs, axis=1)
            d_states, dy_carry = d_final, None
            dx_steps, drec_steps = [None] * steps, [None] * steps
            for t in reversed(range(steps)):
                previous, saved = history[t]
                dy = d_y[t] if dy_carry is None else d_y[t] + dy_carry
                d_new = (d_states[0] + dy, *d_states[1:])  # the output is the new h
                if keep is not None:  # a masked step passed the state (and the output) through
                    zero = tf.zeros_like(dy)
                    carried = tuple(tf.where(keep[t], zero, d) for d in d_states)
                    d_new = tuple(tf.where(keep[t], d, zero) for d in d_new)
                    dy_carry = tf.where(keep[t], zero, dy)
                dx_steps[t], drec_steps[t], d_states = backward(d_new, saved, previous, gate_kernels)
                if keep is not None:
                    d_states = tuple(d + c for d, c in zip(d_states, carried))
            d_proj = tf.reshape(tf.stack(dx_steps, axis=1), [-1, gates])
            same = drec_steps[0] is None  # the input and recurrent projections share their gradient
            d_inner = d_proj if same else tf.reshape(tf.stack(drec_steps, axis=1), [-1, gates])
            h_prev = tf.reshape(tf.stack([previous[0] for previous, _ in history], axis=1), [-1, units])
            d_x = tf.reshape(tf.matmul(d_proj, kernel, transpose_b=True), [batch, steps, width])
            return (d_x, tf.matmul(tf.reshape(x, [-1, width]), d_proj, transpose_a=True),
                    tf.matmul(h_prev, d_inner, transpose_a=True), tf.reduce_sum(d_proj, axis=0),
                    tf.zeros_like(recurrent_bias) if same else tf.reduce_sum(d_inner, axis=0), *d_states)

        return (tf.stack(outputs, axis=1), *states), grad

    return run(x, kernel, recurrent_kernel, bias, recurrent_bias, *states)


def _sequence(cell: str, x, states, kernel, recurrent_kernel, bias, recurrent_bias, mask, parts: int):
    if x.shape[1] is None:
        raise ValueError(f"{cell}_sequence needs the time dimension known when the graph is built")
    if parts <= 1:
        return _part(cell, x, mask, states, kernel, recurrent_kernel, bias, recurrent_bias)
    batch = tf.shape(x)[0]
    base = batch // parts
    sizes = tf.stack([base] * (parts - 1) + [batch - base * (parts - 1)])
    pieces = [tf.split(t, sizes, axis=0, num=parts) for t in (x, *states)]
    masks = [None] * parts if mask is None else tf.split(mask, sizes, axis=0, num=parts)
    results = [_part(cell, piece[0], m, piece[1:], kernel, recurrent_kernel, bias, recurrent_bias)
               for *piece, m in zip(*pieces, masks)]
    return tuple(tf.concat([r[k] for r in results], axis=0) for k in range(len(results[0])))


def lstm_sequence(x, h0, c0, kernel, recurrent_kernel, bias, mask=None, parts: int = BATCH_PARTS):
    """Keras' LSTM (tanh / sigmoid, gate order i, f, c, o) over ``x`` ``[B, T, d]`` with a static
    ``T``, from the state ``(h0, c0)`` ``[B, H]``: returns ``(outputs [B, T, H], h_T, c_T)``, with
    Keras' masking where ``mask`` ``[B, T]`` (bool) is given (module docstring). The batch is cut
    into ``parts`` (the last ones may be empty for a small batch)."""
    return _sequence("lstm", x, (h0, c0), kernel, recurrent_kernel, bias, tf.zeros_like(bias), mask, parts)


def gru_sequence(x, h0, kernel, recurrent_kernel, bias, mask=None, parts: int = BATCH_PARTS):
    """Keras' GRU (``reset_after=True``, tanh / sigmoid, gate order z, r, h) over ``x`` ``[B, T, d]``
    with a static ``T`` from ``h0`` ``[B, H]``; ``bias`` is Keras' ``[2, 3H]`` (input bias, recurrent
    bias). Returns ``(outputs [B, T, H], h_T)``; masking and ``parts`` as :func:`lstm_sequence`."""
    return _sequence("gru", x, (h0,), kernel, recurrent_kernel, bias[0], bias[1], mask, parts)


def _keras_would_use_cudnn(layer) -> bool:
    """Keras' own test for its cuDNN path (a GPU and cuDNN-compatible settings). It lives in Keras'
    private TensorFlow backend; should it move, any visible GPU counts as cuDNN."""
    cell = layer.cell
    try:
        from keras.src.backend.tensorflow.rnn import cudnn_ok
    except ImportError:
        return bool(tf.config.list_logical_devices("GPU"))
    reset_after = getattr(cell, "reset_after", None)  # None for an LSTM: how cudnn_ok tells the two apart
    return bool(cudnn_ok(cell.activation, cell.recurrent_activation, layer.unroll, cell.use_bias, reset_after))


class _Unrolled:
    """What the two layers share: when the unrolled path applies, and the call into it."""

    #: Whether the last training call this layer traced took the unrolled path (None: none yet);
    #: the text benchmark reports it.
    unrolled_in_training = None

    def _cell_supports_unrolling(self) -> bool:
        raise NotImplementedError

    def unrolled_path(self, sequences, training=False) -> bool:
        """Whether this call runs the unrolled path (the module docstring lists when not)."""
        cell = self.cell
        steps = sequences.shape[1]
        longest = MAX_UNROLLED_STEPS_XLA if _xla_tracing else MAX_UNROLLED_STEPS
        if steps is None or steps > longest or self.go_backwards or self.unroll or self.zero_output_for_mask:
            return False
        if training is not True or cell.dropout or cell.recurrent_dropout:
            return False  # inference (or a symbolic flag): Keras' loop; dropout: Keras' masks
        if not cell.use_bias or not self._cell_supports_unrolling():
            return False
        if cell.activation is not keras.activations.tanh or cell.recurrent_activation is not keras.activations.sigmoid:
            return False
        if self.use_cudnn is True or (self.use_cudnn == "auto" and _keras_would_use_cudnn(self)):
            return False  # cuDNN asked for, or Keras would use it (a GPU)
        return True

    def _unrolled_call(self, sequences, states, mask):
        raise NotImplementedError

    def inner_loop(self, sequences, initial_state, mask, training=False):
        if isinstance(mask, (list, tuple)):
            mask = mask[0]
        unrolled = self.unrolled_path(sequences, training)
        if training is True:
            self.unrolled_in_training = unrolled
        if not unrolled:
            return super().inner_loop(sequences, initial_state, mask=mask, training=training)
        dtype = sequences.dtype
        states = [tf.cast(s, dtype) for s in (initial_state if isinstance(initial_state, (list, tuple))
                                               else [initial_state])]
        outputs, *states = self._unrolled_call(sequences, states, None if mask is None else tf.cast(mask, tf.bool))
        return outputs[:, -1], outputs, states


@keras.saving.register_keras_serializable(package="vae_tf")
class LSTM(_Unrolled, keras.layers.LSTM):
    """``keras.layers.LSTM`` that trains through :func:`lstm_sequence` where it applies (module
    docstring), Keras' own path (cuDNN on a GPU, the ``while`` loop otherwise) everywhere else."""

    def _cell_supports_unrolling(self) -> bool:
        return True

    def _unrolled_call(self, sequences, states, mask):
        dtype, cell = sequences.dtype, self.cell
        return lstm_sequence(sequences, *states, tf.cast(cell.kernel, dtype), tf.cast(cell.recurrent_kernel, dtype),
                             tf.cast(cell.bias, dtype), mask=mask)


@keras.saving.register_keras_serializable(package="vae_tf")
class GRU(_Unrolled, keras.layers.GRU):
    """``keras.layers.GRU`` that trains through :func:`gru_sequence` where it applies (module
    docstring; ``reset_after=True``, Keras' default), Keras' own path everywhere else."""

    def _cell_supports_unrolling(self) -> bool:
        return bool(self.cell.reset_after)

    def _unrolled_call(self, sequences, states, mask):
        dtype, cell = sequences.dtype, self.cell
        return gru_sequence(sequences, states[0], tf.cast(cell.kernel, dtype), tf.cast(cell.recurrent_kernel, dtype),
                            tf.cast(cell.bias, dtype), mask=mask)


__all__ = ["BATCH_PARTS", "GRU", "LSTM", "MAX_UNROLLED_STEPS", "MAX_UNROLLED_STEPS_XLA", "PER_GATE_KERNEL_SIZE", "gru_sequence",
           "lstm_sequence", "per_gate_products", "traced_for_xla"]
