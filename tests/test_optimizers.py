"""vae_tf.optimizers.FusedAdam: the same trajectories as keras.optimizers.Adam (with clipping,
schedules, weight decay, AMSGrad, under MirroredStrategy), really the fused kernel, and
checkpoints interchangeable with Keras' Adam."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from vae_tf.optimizers import FusedAdam

ROOT = Path(__file__).resolve().parents[1]
SHAPES = [(5, 7), (7,), (3, 3, 2, 4), (4,)]


def _variables(seed=0):
    rng = np.random.default_rng(seed)
    return [keras.Variable(rng.normal(size=s).astype("float32"), name=f"w{i}") for i, s in enumerate(SHAPES)]


def _gradients(steps, seed=1):
    rng = np.random.default_rng(seed)
    # Scales from 1e-4 to 1e2 so that both the bias correction and epsilon matter.
    return [[tf.constant(rng.normal(scale=10.0 ** rng.integers(-4, 3), size=s).astype("float32")) for s in SHAPES]
            for _ in range(steps)]


def _train(optimizer, steps=25, variables=None, grads=None):
    variables = variables if variables is not None else _variables()
    for g in grads if grads is not None else _gradients(steps):
        optimizer.apply_gradients(zip(g, variables))
    return [v.numpy() for v in variables]


@pytest.mark.parametrize("kwargs", [
    {"learning_rate": 1e-3},
    {"learning_rate": 3e-2, "beta_1": 0.5, "beta_2": 0.9, "epsilon": 1e-3},
    {"learning_rate": 1e-2, "global_clipnorm": 1.0},
    {"learning_rate": 1e-2, "clipnorm": 0.5, "weight_decay": 0.1},
    {"learning_rate": keras.optimizers.schedules.ExponentialDecay(1e-2, decay_steps=5, decay_rate=0.5)},
    {"learning_rate": 1e-2, "amsgrad": True},  # no fused kernel: Keras' own ops
])
def test_trajectory_equals_keras_adam(kwargs):
    expected = _train(keras.optimizers.Adam(**kwargs))
    fused = _train(FusedAdam(**kwargs, min_fused_size=1))  # the kernel on every variable
    element_wise = _train(FusedAdam(**kwargs))  # every variable below the threshold: Keras' ops
    start = [v.numpy() for v in _variables()]
    for e, f, w, s in zip(expected, fused, element_wise, start):
        assert np.abs(e - s).max() > 1e-3  # the run moved the weights: the comparison means something
        np.testing.assert_allclose(f, e, rtol=2e-5, atol=1e-6)
        # Keras' element-wise ops, in Keras' order, on the same scalars: the same numbers, bit for bit.
        np.testing.assert_array_equal(w, e)


def _update_ops(optimizer, variables, grads) -> list[str]:
    optimizer.build(variables)
    graph = tf.function(lambda: optimizer.apply_gradients(zip(grads, variables))).get_concrete_function().graph
    return [op.type for op in graph.get_operations()]


def test_the_update_is_the_fused_kernel():
    ops = _update_ops(FusedAdam(1e-3, min_fused_size=1), _variables(), _gradients(1)[0])
    assert ops.count("ResourceApplyAdam") == len(SHAPES)
    assert "Sqrt" not in ops  # none of Keras' element-wise update ops are left


def test_small_variables_keep_keras_ops_and_large_ones_get_the_kernel():
    """Default threshold: a 131,072-value variable is fused, a 131,071-value one and the small
    ones are not; the mixed update still follows Keras' Adam."""
    shapes = [(512, 256), (131_071,), (7,), (3, 4)]
    rng = np.random.default_rng(0)
    start = [rng.normal(size=s).astype("float32") for s in shapes]
    grads = [[tf.constant(rng.normal(size=s).astype("float32")) for s in shapes] for _ in range(3)]
    fused_vars = [keras.Variable(v) for v in start]
    optimizer = FusedAdam(1e-2)
    assert [optimizer.uses_fused_kernel(v) for v in fused_vars] == [True, False, False, False]
    ops = _update_ops(optimizer, fused_vars, grads[0])
    assert ops.count("ResourceApplyAdam") == 1
    # Keras' element-wise update on the three small ones: one AssignSub and one √v each, and one √
    # for the step size they share (Keras computes it for each variable).
    assert ops.count("AssignSubVariableOp") == 3 and ops.count("Sqrt") == 3 + 1
    keras_vars = [keras.Variable(v) for v in start]
    _train(keras.optimizers.Adam(1e-2), variables=keras_vars, grads=grads)
    _train(optimizer, variables=fused_vars, grads=grads)
    for got, want, s in zip(fused_vars, keras_vars, start):
        assert np.abs(want.numpy() - s).max() > 1e-3
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("min_fused_size", [1, 10**9])
def test_the_step_scalars_are_made_once_per_step_not_per_variable(min_fused_size):
    """Keras' Adam computes β₁ᵗ and β₂ᵗ (two Pow ops) and reads the iteration counter for each
    variable; FusedAdam once for all of them, fused (1) or element-wise (10⁹)."""
    shapes = [(5, 7), (7,), (3, 3, 2, 4), (4,), (6, 2), (9,)]
    rng = np.random.default_rng(0)
    variables = [keras.Variable(rng.normal(size=s).astype("float32")) for s in shapes]
    grads = [tf.constant(rng.normal(size=s).astype("float32")) for s in shapes]
    ops = _update_ops(FusedAdam(1e-3, min_fused_size=min_fused_size), variables, grads)
    keras_ops = _update_ops(keras.optimizers.Adam(1e-3), [keras.Variable(v.numpy()) for v in variables], grads)
    assert keras_ops.count("Pow") == 2 * len(shapes)  # what the test would see if the sharing were lost
    assert ops.count("Pow") == 2
    assert len(ops) < 0.7 * len(keras_ops)  # 6 variables: 257 graph ops for Keras, 157 (element-wise) here
    optimizer = FusedAdam(1e-3, min_fused_size=min_fused_size)
    optimizer.apply_gradients(zip(grads, variables))
    assert optimizer._terms_of_this_step is None  # nothing kept from the step's graph


def _traced_run(make, dtype, steps=6, loss_scale=False):
    """``steps`` updates of four ``dtype`` variables through one ``tf.function`` (the way ``fit``
    applies them), optionally through a LossScaleOptimizer; the final values."""
    rng = np.random.default_rng(0)
    variables = [keras.Variable(rng.normal(size=s).astype("float32"), dtype=dtype) for s in SHAPES]
    optimizer = make()
    if loss_scale:
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer, initial_scale=4.0)
    step = tf.function(lambda grads: optimizer.apply_gradients(zip(grads, variables)))
    for _ in range(steps):
        grads = [tf.constant(rng.normal(size=s) * (4.0 if loss_scale else 1.0), dtype=dtype) for s in SHAPES]
        step(grads)
    return [v.numpy() for v in variables]


@pytest.mark.parametrize("dtype, kwargs, loss_scale", [
    ("float64", {}, False),  # Keras converts ε and 1 − β straight to float64: so must the shared scalars
    ("float64", {"epsilon": 1e-4, "beta_1": 0.8}, False),
    ("float32", {"gradient_accumulation_steps": 2, "use_ema": True, "ema_overwrite_frequency": 3}, False),
    ("float32", {"weight_decay": 0.01, "global_clipnorm": 0.5}, True),
])
def test_element_wise_update_equals_keras_adam_bit_for_bit_in_a_traced_step(dtype, kwargs, loss_scale):
    """The scalars shared within a step (inside gradient accumulation's and loss scaling's
    branches too) are Keras' own values, in every dtype."""
    expected = _traced_run(lambda: keras.optimizers.Adam(1e-2, **kwargs), dtype, loss_scale=loss_scale)
    got = _traced_run(lambda: FusedAdam(1e-2, **kwargs), dtype, loss_scale=loss_scale)
    start = _traced_run(lambda: keras.optimizers.Adam(0.0), dtype, steps=0)
    for e, g, s in zip(expected, got, start):
        assert np.abs(e - s).max() > 1e-4
        np.testing.assert_array_equal(g, e)


def test_the_step_cache_is_no_checkpoint_dependency():
    optimizer = FusedAdam(1e-3)
    _train(optimizer, steps=2)
    assert "_terms_of_this_step" not in optimizer._trackable_children()


@pytest.mark.parametrize("bad", [0, -5, 2.5, True, "big"])
def test_bad_min_fused_size_is_refused_in_one_line(bad):
    with pytest.raises(ValueError, match="min_fused_size must be a positive integer") as info:
        FusedAdam(1e-3, min_fused_size=bad)
    assert "\n" not in str(info.value)


def test_checkpoints_are_interchangeable_with_keras_adam(tmp_path):
    grads = _gradients(20)
    # 10 steps with Keras' Adam, saved; restored into FusedAdam for 10 more: Keras' 20 steps.
    variables = _variables()
    keras_adam = keras.optimizers.Adam(1e-2)
    _train(keras_adam, variables=variables, grads=grads[:10])
    path = tf.train.Checkpoint(variables=variables, optimizer=keras_adam).write(str(tmp_path / "ckpt"))
    restored = _variables(seed=5)
    fused = FusedAdam(1e-2, min_fused_size=1)
    fused.build(restored)
    tf.train.Checkpoint(variables=restored, optimizer=fused).read(path).assert_consumed()
    assert int(fused.iterations.numpy()) == 10
    got = _train(fused, variables=restored, grads=grads[10:])
    expected = _train(keras.optimizers.Adam(1e-2), grads=grads)
    for e, g in zip(expected, got):
        np.testing.assert_allclose(g, e, rtol=2e-5, atol=1e-6)


def test_serialises_by_name():
    optimizer = FusedAdam(2e-3, beta_1=0.8, global_clipnorm=3.0, min_fused_size=4096)
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
    assert type(restored) is FusedAdam
    assert restored.get_config() == optimizer.get_config()


def test_loss_scaled_mixed_precision_update_is_finite_and_moves():
    variables = _variables()
    optimizer = keras.optimizers.LossScaleOptimizer(FusedAdam(1e-2, min_fused_size=1))
    start = [v.numpy() for v in variables]
    got = _train(optimizer, steps=5, variables=variables)
    assert all(np.isfinite(g).all() for g in got)
    assert all(np.abs(g - s).max() > 1e-4 for g, s in zip(got, start))


MIRRORED = """
import os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
sys.path.insert(0, {root!r})
import vae_tf_cli
vae_tf_cli.keep_optional_libraries_out_of_keras()  # as a vae-tf process starts (~1 s less)
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
from vae_tf.optimizers import FusedAdam

x = np.random.default_rng(0).normal(size=(64, 6)).astype("float32")
y = (x @ np.arange(6, dtype="float32")[:, None]).astype("float32")


def run(optimizer_class, strategy):
    with strategy.scope():
        keras.utils.set_random_seed(3)
        model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(1)])
        model.compile(optimizer=optimizer_class(1e-2, global_clipnorm=5.0), loss="mse")
    model.fit(x, y, batch_size=16, epochs=3, shuffle=False, verbose=0)
    return model.get_weights()


mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
single = tf.distribute.get_strategy()
fused = lambda *a, **k: FusedAdam(*a, min_fused_size=1, **k)  # the kernel on every variable
fused_2 = run(fused, mirrored)
keras_2 = run(keras.optimizers.Adam, mirrored)
element_wise_2 = run(FusedAdam, mirrored)  # every variable below the threshold: Keras' ops, shared scalars
fused_1 = run(fused, single)
keras_1 = run(keras.optimizers.Adam, single)
print("DIFF_MIRRORED", max(float(np.abs(a - b).max()) for a, b in zip(fused_2, keras_2)))
print("DIFF_SINGLE", max(float(np.abs(a - b).max()) for a, b in zip(fused_1, keras_1)))
print("DIFF_ELEMENT_WISE", max(float(np.abs(a - b).max()) for a, b in zip(element_wise_2, keras_2)))
print("MOVED", min(float(np.abs(a - b).max()) for a, b in zip(fused_2, fused_1)))
"""


@pytest.mark.slow
def test_under_mirrored_strategy_equals_keras_adam():
    script = MIRRORED.format(root=str(ROOT))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], check=False, capture_output=True, text=True,
                         env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    values = dict(line.split() for line in out.stdout.splitlines() if line.startswith(("DIFF_", "MOVED")))
    # The kernel runs on each replica's copy of the variables, as Keras' ops do: under both
    # strategies FusedAdam ends where Keras' Adam does.
    assert float(values["DIFF_MIRRORED"]) < 1e-5
    assert float(values["DIFF_SINGLE"]) < 1e-5
    assert float(values["DIFF_ELEMENT_WISE"]) < 1e-5  # the step's scalars shared on each replica too
    # This Keras-compiled model ends elsewhere on 2 replicas than on one device, so the mirrored
    # comparison above did exercise a distributed update (vae-tf's own replica scaling is
    # checked in tests/test_distributed.py).
    assert float(values["MOVED"]) > 1e-3
