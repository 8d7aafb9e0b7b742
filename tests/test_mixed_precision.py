"""Mixed precision (``build_vae(precision=...)``): 16-bit networks, float32 everywhere else.

The policy is set per layer, never globally, so these tests run in-process next to float32 ones.
"""

from __future__ import annotations

import contextlib

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import assert_one_line
from vae_tf.errors import ConfigError
from vae_tf.export import export_model, load_model_info, load_vae
from vae_tf.models import PRECISIONS, build_vae

MIXED = ("mixed_bfloat16", "mixed_float16")
SMALL = {"latent": {"family": "gaussian", "latent_dim": 4}, "network": {"kind": "mlp", "hidden": [32]}}


def make(precision, objective=None, optimizer=None, **spec):
    keras.utils.set_random_seed(0)  # same initial weights for every precision (variables stay float32)
    model = build_vae((8, 8, 1), objective=objective or {}, seed=0, precision=precision,
                      **{**SMALL, **spec})
    model.compile(optimizer=optimizer or keras.optimizers.Adam(1e-3))
    return model


@pytest.fixture(scope="module")
def x(digits):
    return tf.constant(digits.x_train[:32])


@pytest.mark.parametrize("precision", MIXED)
def test_networks_compute_in_16_bits_and_every_term_is_float32(precision, x):
    model = make(precision)
    compute = "bfloat16" if precision == "mixed_bfloat16" else "float16"
    for network in (model.encoder, model.decoder):
        dense = [layer for layer in network.layers if isinstance(layer, keras.layers.Dense)]
        assert dense and all(layer.compute_dtype == compute for layer in dense)
        assert all(v.dtype == "float32" for v in network.weights)  # float32 variables
        assert network.layers[-1].name == "float32_output"
    terms = model.compute_terms(x, training=True)
    for key in ("params", "z", "out", "reconstruction", "kl_per_dim", "kl", "elbo"):
        assert terms[key].dtype == tf.float32, key
    assert model.objective_loss(terms).dtype == tf.float32
    assert model.build_spec["precision"] == precision
    assert not keras.mixed_precision.global_policy().name.startswith("mixed")  # nothing global was set


@pytest.mark.parametrize("precision, rtol", [("mixed_bfloat16", 2e-2), ("mixed_float16", 2e-3)])
def test_mixed_loss_is_close_to_the_float32_loss_at_init(precision, rtol, x):
    """Same initial weights and noise: only the networks' rounding differs."""
    reference = make("float32")
    mixed = make(precision)
    loss32 = float(reference.objective_loss(reference.compute_terms(x)))
    loss16 = float(mixed.objective_loss(mixed.compute_terms(x)))
    assert loss16 == pytest.approx(loss32, rel=rtol)


def test_mixed_float16_scales_the_loss_in_the_custom_train_step(x):
    """compile wraps the optimizer in a LossScaleOptimizer, and the step multiplies the loss by its
    scale before the gradient: with plain SGD, an unscaled loss would give updates 2^15 times too
    small (the optimizer divides the gradients by the scale)."""
    mixed = make("mixed_float16", optimizer=keras.optimizers.SGD(0.01))
    reference = make("float32", optimizer=keras.optimizers.SGD(0.01))
    assert isinstance(mixed.optimizer, keras.optimizers.LossScaleOptimizer)
    assert not isinstance(reference.optimizer, keras.optimizers.LossScaleOptimizer)
    assert not isinstance(make("mixed_bfloat16").optimizer, keras.optimizers.LossScaleOptimizer)
    before = [v.numpy().copy() for v in mixed.trainable_variables]
    reference_before = [v.numpy().copy() for v in reference.trainable_variables]
    for _ in range(3):  # a step whose scaled gradients overflow is skipped (and the scale halved)
        mixed.train_on_batch(x)
        reference.train_on_batch(x)
    moved = sum(float(np.abs(v.numpy() - b).sum()) for v, b in zip(mixed.trainable_variables, before))
    reference_moved = sum(float(np.abs(v.numpy() - b).sum())
                          for v, b in zip(reference.trainable_variables, reference_before))
    assert 0.3 < moved / reference_moved < 1.5, (moved, reference_moved)


@pytest.mark.parametrize("precision", MIXED)
@pytest.mark.parametrize("objective, latent", [
    ({}, {"family": "gaussian", "latent_dim": 4}),
    ({"regularizers": [{"kind": "mi_q", "q_network": {"kind": "mlp", "hidden": [16]}}],
      "input_noise": {"kind": "fgsm", "epsilon": 0.05}, "kl_weight": {"kind": "control", "set_point": 3.0}},
     {"family": "gaussian_categorical", "latent_dim": 2, "categories": 3}),
], ids=["elbo", "control_mi_q_fgsm"])
@pytest.mark.slow
def test_mixed_precision_trains_with_finite_metrics_and_exports_float32_signatures(precision, objective, latent,
                                                                                   digits, tmp_path):
    model = make(precision, objective=objective, latent=latent)
    if model.regularizers:
        q = model.regularizers[0]
        assert q.q_network.layers[-1].name == "float32_output"
        assert isinstance(q.q_optimizer, keras.optimizers.LossScaleOptimizer) == (precision == "mixed_float16")
    history = model.fit(digits.pipeline("train", 128), epochs=1, steps_per_epoch=4, verbose=0).history
    for key, values in history.items():
        assert np.all(np.isfinite(values)), (key, values)
    path = export_model(model, tmp_path, "mixed")
    loaded = tf.saved_model.load(str(path))
    for name, fn in loaded.signatures.items():
        inputs = fn.structured_input_signature[1]
        assert all(spec.dtype in (tf.float32, tf.int32) for spec in inputs.values()), name
        assert all(out.dtype in (tf.float32, tf.int32) for out in fn.structured_outputs.values()), name
        assert all(out.dtype == tf.float32 for key, out in fn.structured_outputs.items() if key != "category"), name
    x = digits.x_test[:4]
    tol = 2e-2 if precision == "mixed_bfloat16" else 2e-3  # a graph may round 16-bit ops differently
    served = loaded.signatures["encode"](x=tf.constant(x))["z_mean"].numpy()
    np.testing.assert_allclose(served, model.encode(x)["z_mean"].numpy(), rtol=tol, atol=tol)
    assert load_model_info(path)["build_spec"]["precision"] == precision
    rebuilt = load_vae(path)
    assert rebuilt.precision == precision
    np.testing.assert_allclose(rebuilt.encode(x)["z_mean"].numpy(), model.encode(x)["z_mean"].numpy())


def test_float32_spec_is_unchanged_and_unknown_precisions_are_config_errors():
    assert PRECISIONS == ("float32", "mixed_bfloat16", "mixed_float16")
    assert "precision" not in make("float32").build_spec
    with pytest.raises(ConfigError, match="precision must be one of float32, mixed_bfloat16, mixed_float16") as err:
        build_vae((8, 8, 1), precision="float16", **SMALL)
    assert_one_line(str(err.value))
    with pytest.raises(ConfigError, match="model.network has no option dtype"):  # not a network option: set by precision
        build_vae((8, 8, 1), latent=SMALL["latent"], network={"kind": "mlp", "hidden": [8], "dtype": "float16"})


@pytest.mark.slow
def test_train_jit_compile_reaches_the_compiled_model_and_trains(monkeypatch):
    """`train.jit_compile` is what `build_model` compiles with: `false` is the way out when XLA
    cannot compile a model (seen on an H200 under mixed precision, docs/performance.md); `auto` is
    Keras' choice (handed to `compile` as "auto"), off on this CPU-only machine; `true` compiles
    with XLA and trains."""
    from training.config import load_config
    from training.train import build_model

    if tf.config.list_physical_devices("GPU"):
        pytest.skip("`auto` is on where there is a GPU")
    handed = []
    compile_ = keras.Model.compile

    def spy(self, *args, **kwargs):
        handed.append(kwargs.get("jit_compile"))
        return compile_(self, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "compile", spy)
    seen = {}
    for value in ("auto", "true", "false"):
        config = load_config(None, [f"train.jit_compile={value}", "model.network={kind: mlp, hidden: [16]}",
                                    "model.latent.latent_dim=2", "train.steps_per_execution=1"])
        model = build_model(config, (8, 8, 1))
        seen[value] = model.jit_compile
        if value == "true":
            x = np.random.default_rng(0).uniform(size=(32, 8, 8, 1)).astype("float32")
            history = model.fit(x, epochs=1, batch_size=16, verbose=0)
            assert np.isfinite(history.history["loss"][-1])
    assert seen == {"auto": False, "true": True, "false": False}
    assert handed == ["auto", True, False]  # Keras resolved "auto" itself: nothing decided it before


@contextlib.contextmanager
def op_determinism(enabled: bool):
    """TensorFlow's process-wide op determinism set for the block, and restored after it."""
    from tensorflow.python.framework import config as tf_config

    was = tf_config.is_op_determinism_enabled()
    (tf_config.enable_op_determinism if enabled else tf_config.disable_op_determinism)()
    try:
        yield
    finally:
        (tf_config.enable_op_determinism if was else tf_config.disable_op_determinism)()


def test_train_jit_compile_true_that_keras_would_drop_is_a_one_line_config_error():
    """Keras turns `jit_compile=True` off, with only a warning, for a model with a layer that has no
    XLA kernel and under op determinism; a user who asked for XLA is told every cause, before any
    run exists, and how to train without it. A text model's tokenizer (`StringLookup`, no XLA
    kernel) is not such a layer: its sentences are tokenised in the input pipeline under XLA
    (tests/test_text_xla.py), so `train.jit_compile=true` compiles it."""
    from training.config import load_config
    from training.train import build_model
    from vae_tf.data import load_dataset
    from vae_tf.models.text import text_settings

    corpus = load_dataset("text_synthetic", seed=0, n_samples=200)
    text_config = load_config("training/configs/text_synthetic.yaml",
                              ["train.jit_compile=true", "model.network.hidden=[8]", "model.network.embedding=8"])
    tokenizer = text_settings(corpus.metadata)
    with op_determinism(False):
        assert build_model(text_config, corpus.data_shape, text=tokenizer).jit_compile is True
    # auto is Keras' choice, and for a text model it is no XLA (on a CPU, and where the tokenizer is seen)
    with op_determinism(False):
        auto = build_model(text_config.replace(train={"jit_compile": "auto"}), corpus.data_shape, text=tokenizer)
    assert auto.jit_compile is False

    image = ["train.jit_compile=true", "model.network={kind: mlp, hidden: [16]}", "model.latent.latent_dim=2"]
    # train.deterministic=true: seed_everything turns op determinism on, and Keras XLA off.
    with op_determinism(True), pytest.raises(ConfigError) as err:
        build_model(load_config(None, [*image, "train.deterministic=true"]), (8, 8, 1))
    assert_one_line(str(err.value))
    assert str(err.value).startswith("train.jit_compile=true cannot be honoured: Keras turns XLA off under "
                                     "TensorFlow's op determinism (train.deterministic=true);")
    # Determinism left on by an earlier run in this process is named as such.
    with op_determinism(True), pytest.raises(ConfigError, match=r"op determinism \(left on by an earlier run"):
        build_model(load_config(None, image), (8, 8, 1))
    # A text model under op determinism: the one cause is named, not its tokenizer.
    with op_determinism(True), pytest.raises(ConfigError) as err:
        build_model(text_config.replace(train={"deterministic": True}), corpus.data_shape, text=tokenizer)
    assert str(err.value).startswith("train.jit_compile=true cannot be honoured: Keras turns XLA off under "
                                     "TensorFlow's op determinism (train.deterministic=true);")
    assert "StringLookup" not in str(err.value)
    assert_one_line(str(err.value))


def test_a_layer_without_an_xla_kernel_is_named_with_the_other_causes(monkeypatch):
    """Both causes at once are both named, so that fixing one does not meet the other."""
    import keras

    from training.config import load_config
    from training.train import build_model

    dense_init = keras.layers.Dense.__init__

    def without_xla(self, *args, **kwargs):  # as a layer with no XLA kernel marks itself
        dense_init(self, *args, **kwargs)
        self.supports_jit = False

    monkeypatch.setattr(keras.layers.Dense, "__init__", without_xla)
    image = ["train.jit_compile=true", "model.network={kind: mlp, hidden: [16]}", "model.latent.latent_dim=2",
             "train.deterministic=true"]
    with op_determinism(True), pytest.raises(ConfigError) as err:
        build_model(load_config(None, image), (8, 8, 1))
    assert_one_line(str(err.value))
    assert str(err.value).startswith("train.jit_compile=true cannot be honoured: Dense has no XLA kernel, so Keras "
                                     "turns XLA off for this model, and Keras turns XLA off under TensorFlow's op "
                                     "determinism (train.deterministic=true);")


def test_aggressive_inference_refuses_xla_in_one_line_before_anything_is_compiled():
    """Aggressive inference reads fresh batches inside the step (a tf.data iterator, which XLA
    cannot compile): `train.jit_compile=true` is a one-line config error at build time, `auto`
    compiles without XLA, and a library user's `fit` on a model compiled with XLA says why."""
    import keras

    from training.config import load_config
    from training.train import build_model

    aggressive = ["model.network={kind: mlp, hidden: [16]}", "model.latent.latent_dim=2",
                  "objective.inference={kind: aggressive, max_inner_steps: 3, check_every: 2}"]
    with op_determinism(False), pytest.raises(ConfigError) as err:
        build_model(load_config(None, [*aggressive, "train.jit_compile=true"]), (8, 8, 1))
    assert_one_line(str(err.value))
    assert str(err.value) == ("train.jit_compile=true cannot be honoured: aggressive inference reads its fresh "
                              "batches inside the training step, from a tf.data iterator, which XLA cannot compile; "
                              "set train.jit_compile=auto (or false) to train without XLA")
    with op_determinism(False):
        model = build_model(load_config(None, [*aggressive, "train.jit_compile=auto"]), (8, 8, 1))
    assert model.jit_compile is False
    model.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=True)
    assert model.jit_compile is True
    with pytest.raises(ConfigError) as err:
        model.fit(np.zeros((8, 8, 8, 1), np.float32), epochs=1, verbose=0)
    assert_one_line(str(err.value))
    assert str(err.value).startswith("this model is compiled with jit_compile=True, but aggressive inference reads")


def test_training_in_16_bits_on_a_cpu_that_has_no_units_for_them_warns_that_it_is_slower(tmp_path, capsys):
    """`train.precision=mixed_float16` on a CPU trained at a third of float32's speed, and
    mixed_bfloat16 on a CPU without bfloat16 instructions at under half (docs/performance.md),
    with no word but TensorFlow's "oneDNN supports DT_HALF only on platforms with AVX-512"
    (printed on CPUs with AVX-512 too)."""
    from training.train import _cpu_flags, cpu_precision_warning

    # which CPUs each precision is warned of
    assert cpu_precision_warning("float32", set()) is None
    assert cpu_precision_warning("mixed_float16", {"avx512f", "amx_bf16"}) == (
        "train.precision=mixed_float16 on a CPU without float16 instructions (AMX-FP16 or AVX512_FP16): it trains "
        "slower than float32 (0.31x on a 2-CPU Xeon, docs/performance.md); it pays on GPUs and on CPUs that have them")
    assert cpu_precision_warning("mixed_float16", {"avx512_fp16"}) is None
    assert cpu_precision_warning("mixed_bfloat16", {"avx512f"}).startswith(
        "train.precision=mixed_bfloat16 on a CPU without bfloat16 instructions (AMX or AVX512_BF16)")
    assert cpu_precision_warning("mixed_bfloat16", {"avx512f", "avx512_bf16"}) is None
    assert cpu_precision_warning("mixed_bfloat16", {"amx_bf16"}) is None
    assert cpu_precision_warning("mixed_bfloat16", None) is cpu_precision_warning("mixed_float16", None) is None

    # the flags are the x86 "flags" line of /proc/cpuinfo; an ARM CPU's "Features" are not read
    x86, arm = tmp_path / "x86", tmp_path / "arm"
    x86.write_text("processor\t: 0\nmodel name\t: Xeon\nflags\t\t: fpu avx512f amx_bf16\n\nprocessor\t: 1\n")
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd bf16\n")
    assert _cpu_flags(str(x86)) == {"fpu", "avx512f", "amx_bf16"}
    assert _cpu_flags(str(arm)) is None and _cpu_flags(str(tmp_path / "missing")) is None


def test_train_says_the_cpu_precision_warning_before_anything_is_built(tmp_path, capsys):
    """The wiring of the test above: `vae-tf train`'s run prints the warning for this machine's
    CPU first (here the run stops at a run_dir that is a file)."""
    from training.config import load_config
    from training.train import _cpu_flags, cpu_precision_warning, run_training
    from vae_tf.errors import ConfigError

    if tf.config.list_physical_devices("GPU"):
        pytest.skip("a GPU is where 16-bit precision pays")
    (tmp_path / "file").write_text("")
    for precision in ("mixed_float16", "mixed_bfloat16", "float32"):
        config = load_config(None, [f"train.precision={precision}", f"train.run_dir={tmp_path / 'file'}"])
        with pytest.raises(ConfigError, match="train.run_dir"):
            run_training(config)
        expected = cpu_precision_warning(precision, _cpu_flags())
        warned = [line for line in capsys.readouterr().err.splitlines() if "slower than float32" in line]
        assert warned == ([] if expected is None else [f"warning: {expected}"]), precision
