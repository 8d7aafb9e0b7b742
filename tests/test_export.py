"""SavedModel export: the serving contract (signatures, shapes, names, assets, atomic versions)."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from vae_tf import export as export_mod
from vae_tf.errors import ConfigError, ModelNotFoundError
from vae_tf.export import export_model, list_versions, load_model_info, resolve_version_dir
from vae_tf.models import build_vae


@pytest.fixture(scope="module")
def trained(digits):
    keras.utils.set_random_seed(0)
    model = build_vae(digits.data_shape, latent={"family": "gaussian", "latent_dim": 6},
                      network={"kind": "conv", "filters": [8, 16], "dense": 32}, seed=0)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    model.fit(digits.pipeline("train", 64), epochs=1, verbose=0, shuffle=False)
    return model


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    base = tmp_path_factory.mktemp("models")
    path = export_model(trained, base, "digits-vae", config={"name": "digits-vae"},
                        data_info={"value_range": (0.0, 1.0), "name": "digits"})
    return path, tf.saved_model.load(str(path))


def test_layout_and_signatures(exported):
    path, loaded = exported
    assert path.name == "1" and path.parent.name == "digits-vae"
    assert (path / "saved_model.pb").is_file() and (path / "variables").is_dir()
    assert set(loaded.signatures) == {"encode", "decode", "reconstruct", "sample", "serving_default"}
    # No leftovers from the temporary directory.
    assert [p.name for p in path.parent.iterdir()] == ["1"]


def _spec(signature):
    args, kwargs = signature.structured_input_signature
    return {name: (tuple(s.shape.as_list()), s.dtype) for name, s in kwargs.items()}


def test_signature_inputs_and_outputs_are_batch_leading(exported):
    _, loaded = exported
    sig = loaded.signatures
    assert _spec(sig["encode"]) == {"x": ((None, 8, 8, 1), tf.float32)}
    assert _spec(sig["serving_default"]) == _spec(sig["encode"])
    assert _spec(sig["decode"]) == {"z": ((None, 6), tf.float32)}
    assert _spec(sig["reconstruct"]) == {"x": ((None, 8, 8, 1), tf.float32)}
    assert _spec(sig["sample"]) == {"seed": ((None, 2), tf.int32)}
    for name, fn in sig.items():
        for key, out in fn.structured_outputs.items():
            assert out.shape.rank >= 1 and out.shape[0] is None, (name, key, out.shape)


def test_every_signature_returns_correct_shapes(exported, digits):
    _, loaded = exported
    x = tf.constant(digits.x_test[:5])
    enc = loaded.signatures["encode"](x=x)
    assert {k: tuple(v.shape) for k, v in enc.items()} == {"embedding": (5, 6), "z_mean": (5, 6), "z_log_var": (5, 6)}
    dec = loaded.signatures["decode"](z=enc["z_mean"])
    assert {k: tuple(v.shape) for k, v in dec.items()} == {"x_mean": (5, 8, 8, 1), "x_sample": (5, 8, 8, 1)}
    rec = loaded.signatures["reconstruct"](x=x)
    np.testing.assert_allclose(rec["x_mean"].numpy(), dec["x_mean"].numpy(), rtol=1e-5, atol=1e-6)
    drawn = loaded.signatures["sample"](seed=tf.constant([[1, 2], [3, 4], [5, 6]]))
    assert {k: tuple(v.shape) for k, v in drawn.items()} == {"z": (3, 6), "x_mean": (3, 8, 8, 1), "x_sample": (3, 8, 8, 1)}


def test_encode_matches_the_in_memory_model(exported, trained, digits):
    _, loaded = exported
    x = digits.x_test[:32]
    served = loaded.signatures["encode"](x=tf.constant(x))
    local = trained.encode(x)
    for key in local:
        np.testing.assert_allclose(served[key].numpy(), local[key].numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(loaded.signatures["reconstruct"](x=tf.constant(x))["x_mean"].numpy(),
                               trained.reconstruct(x)["x_mean"].numpy(), rtol=1e-5, atol=1e-6)


def test_sample_is_reproducible_per_seed_row(exported, trained):
    _, loaded = exported
    seeds = tf.constant([[7, 1], [7, 2], [7, 3]])
    first = loaded.signatures["sample"](seed=seeds)
    second = loaded.signatures["sample"](seed=seeds)
    alone = loaded.signatures["sample"](seed=seeds[1:2])
    for key in ("z", "x_mean", "x_sample"):
        np.testing.assert_array_equal(first[key].numpy(), second[key].numpy())
        # The decoder mean of one row may differ in the last bit with the batch size (BLAS
        # blocking); the random draws themselves do not depend on the other rows.
        same = np.testing.assert_array_equal if key != "x_mean" else (
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7))
        same(first[key].numpy()[1], alone[key].numpy()[0])
        same(first[key].numpy(), trained.sample(seeds)[key].numpy())
    assert not np.allclose(first["z"].numpy()[0], first["z"].numpy()[1])


@pytest.mark.parametrize("likelihood, expected", [({"name": "gaussian"}, None), ({"name": "bernoulli"}, [0.0, 1.0]),
                                                   ({"name": "continuous_bernoulli"}, [0.0, 1.0])])
def test_an_export_without_data_info_records_the_likelihoods_bounded_support_as_its_value_range(likelihood, expected):
    """Standardised tabular data (about [-3, 3]) exported by a library user without data_info was
    recorded as lying in [0, 1]."""
    model = build_vae((20,), latent={"family": "gaussian", "latent_dim": 2}, likelihood=likelihood,
                      network={"kind": "mlp", "hidden": [8]})
    assert export_mod.model_info(model, "tabular", 1, (20,), endpoints={})["value_range"] == expected
    given = export_mod.model_info(model, "tabular", 1, (20,), endpoints={}, data_info={"value_range": (-3.2, 2.7)})
    assert given["value_range"] == [-3.2, 2.7]


def test_assets_describe_the_model(exported):
    path, _ = exported
    info = load_model_info(path)
    assert info == json.loads((path / "assets" / "vae_tf_model.json").read_text())
    assert info["name"] == "digits-vae" and info["version"] == 1 and info["format_version"] == 1
    assert info["data_shape"] == [8, 8, 1] and info["value_range"] == [0.0, 1.0]
    assert info["latent"] == {"family": "gaussian", "latent_dim": 6, "code_size": 6, "embedding_size": 6, "param_size": 12}
    assert info["likelihood"]["name"] == "bernoulli"
    assert info["signatures"]["encode"]["outputs"] == ["embedding", "z_log_var", "z_mean"]
    assert info["config"] == {"name": "digits-vae"}


def test_variables_are_stored_once(exported, trained):
    """The checkpoint holds each weight the endpoints use exactly once. ExportArchive.track(model)
    (keras-team/keras#23553) would store them twice, under ``_all_variables/`` and ``variables/``
    keys: twice the values, twice the bytes. This conv model's endpoints read its trainable
    weights and nothing else (no BatchNorm statistics; beta and the step counter are training
    state)."""
    path, _ = exported
    prefix = str(path / "variables" / "variables")
    reader = tf.train.load_checkpoint(prefix)
    stored = [reader.get_tensor(name) for name, _ in tf.train.list_variables(prefix)
              if name != "_CHECKPOINTABLE_OBJECT_GRAPH"]
    weights = [w.numpy() for w in trained.trainable_weights]
    assert sum(a.size for a in stored) == sum(w.size for w in weights)
    for weight in weights:  # each weight's values are stored, once
        matches = [i for i, a in enumerate(stored) if a.shape == weight.shape and np.array_equal(a, weight)]
        assert len(matches) == 1, (weight.shape, len(matches))
        stored.pop(matches[0])
    assert stored == []


def test_versions_increment_and_are_immutable(trained, tmp_path):
    first = export_model(trained, tmp_path, "m")
    second = export_model(trained, tmp_path, "m")
    assert (first.name, second.name) == ("1", "2")
    assert list_versions(tmp_path / "m") == [1, 2]
    assert resolve_version_dir(tmp_path / "m") == second
    with pytest.raises(ConfigError, match="already exists"):
        export_model(trained, tmp_path, "m", version=2)
    with pytest.raises(ConfigError, match="positive integer"):
        export_model(trained, tmp_path, "m", version=0)
    with pytest.raises(ConfigError, match="not usable as a directory name"):
        export_model(trained, tmp_path, "../escape")
    # another Keras model (it was AttributeError: 'Sequential' object has no attribute 'data_shape')
    with pytest.raises(ConfigError, match=r"^export_model writes a vae_tf VAE .* got a Sequential; export other Keras "):
        export_model(keras.Sequential([keras.layers.Dense(2)]), tmp_path, "other")
    assert not (tmp_path / "other").exists()


def test_a_failed_export_leaves_no_version_behind(trained, tmp_path, monkeypatch):
    def broken_fsync(root):
        raise OSError("disk full")

    monkeypatch.setattr(export_mod, "_fsync_tree", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        export_model(trained, tmp_path, "m")
    assert list((tmp_path / "m").iterdir()) == []  # neither a version nor a temp directory
    monkeypatch.undo()
    assert export_model(trained, tmp_path, "m").name == "1"


def test_a_version_taken_by_another_process_meanwhile_moves_the_export_to_the_next_one(trained, tmp_path, monkeypatch):
    """``vae-tf compare --jobs 2`` trains a run's two seeds at once: both chose version 1 and the
    second export failed (``OSError: Directory not empty``), failing its child. Here the other
    process's version 1 (and 2) land while this export writes its files."""
    real_fsync = export_mod._fsync_tree

    def others_export_first(root):
        real_fsync(root)
        for taken in ("1", "2"):
            (tmp_path / "m" / taken).mkdir(exist_ok=True)
            (tmp_path / "m" / taken / "saved_model.pb").write_bytes(b"another process's")

    monkeypatch.setattr(export_mod, "_fsync_tree", others_export_first)
    final = export_model(trained, tmp_path, "m")
    assert final == tmp_path / "m" / "3"
    assert load_model_info(final)["version"] == 3  # the assets say the version it is served as
    assert (tmp_path / "m" / "1" / "saved_model.pb").read_bytes() == b"another process's"  # untouched
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["1", "2", "3"]  # no temporary left
    # an explicit version is the caller's choice: taken meanwhile, it is refused, not moved
    monkeypatch.setattr(export_mod, "_fsync_tree", lambda root: (real_fsync(root), (tmp_path / "m" / "7").mkdir(),
                                                                 (tmp_path / "m" / "7" / "x").write_text("x")))
    with pytest.raises(OSError):
        export_model(trained, tmp_path, "m", version=7)
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["1", "2", "3", "7"]


def test_missing_exports_are_one_line_errors(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no SavedModel at"):
        resolve_version_dir(tmp_path / "nothing")
    # load_vae("models:/vae/3") said "no SavedModel at models:/vae/3", as if a folder were missing
    for uri in ("models:/vae/3", "runs:/abc/model"):
        with pytest.raises(ModelNotFoundError, match=rf"^{uri} is an MLflow model URI, not a directory: download it "
                                                     r"first, e\.g\. training\.evaluate\.resolve_model"):
            resolve_version_dir(uri)
    with pytest.raises(ModelNotFoundError, match="is not a vae-tf export"):
        load_model_info(tmp_path)


def test_the_shared_signatures_see_the_weights_as_they_are_when_called(digits):
    """serving_functions(model) is traced once and kept: it must capture the variables, not their
    values, so figures drawn before more training and an export after it both see the current
    weights (the eager methods are the reference)."""
    from vae_tf.export import serving_functions

    model = build_vae(digits.data_shape, latent={"family": "gaussian", "latent_dim": 6},
                      network={"kind": "conv", "filters": [8, 16], "dense": 32}, seed=2)
    x = digits.split("test")[0][:5].astype(np.float32)
    signatures = serving_functions(model)
    before = signatures["reconstruct"](x)["x_mean"].numpy()
    np.testing.assert_allclose(before, model.reconstruct(x)["x_mean"].numpy(), rtol=1e-5, atol=1e-6)
    model.set_weights([w + 0.05 for w in model.get_weights()])
    after = signatures["reconstruct"](x)["x_mean"].numpy()
    assert serving_functions(model) is signatures
    assert np.abs(after - before).max() > 1e-3
    np.testing.assert_allclose(after, model.reconstruct(x)["x_mean"].numpy(), rtol=1e-5, atol=1e-6)
    seeds = np.array([[0, 1], [0, 2]], np.int32)
    for key in ("z", "x_mean", "x_sample"):
        np.testing.assert_allclose(signatures["sample"](seeds)[key].numpy(), model.sample(seeds)[key].numpy(),
                                   rtol=1e-5, atol=1e-6)


def _op_counts(path) -> dict:
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel()
    saved.ParseFromString((path / "saved_model.pb").read_bytes())
    counts: dict = {}
    for graph in saved.meta_graphs:
        nodes = list(graph.graph_def.node) + [n for f in graph.graph_def.library.function for n in f.node_def]
        for node in nodes:
            counts[node.op] = counts.get(node.op, 0) + 1
    return counts


def test_endpoints_traced_without_autograph_are_the_graphs_autograph_would_build(trained, digits, tmp_path, monkeypatch):
    # The endpoints skip AutoGraph (it only rewrites Python control flow, which the model code does
    # not use on tensors); an export traced with it forced back on has the same ops and outputs.
    # Both are exported now, one after the other: the sampling signatures' seed state is saved.
    info = {"config": {"name": "digits-vae"}, "data_info": {"value_range": (0.0, 1.0), "name": "digits"}}
    ours = export_model(trained, tmp_path / "ours", "digits-vae", **info)
    traced_with = []
    plain_function = tf.function

    def autograph_on(*args, **kwargs):
        traced_with.append(kwargs.get("autograph", True))
        kwargs["autograph"] = True
        return plain_function(*args, **kwargs)

    monkeypatch.setattr(tf, "function", autograph_on)
    theirs = export_model(trained, tmp_path / "theirs", "digits-vae", **info)
    monkeypatch.undo()
    assert traced_with.count(False) >= 4  # the four endpoints asked for none: the comparison is not vacuous
    assert _op_counts(ours) == _op_counts(theirs)
    ours, theirs = tf.saved_model.load(str(ours)), tf.saved_model.load(str(theirs))
    x = tf.constant(digits.x_test[:5])
    z = tf.constant(np.random.default_rng(0).normal(size=(5, 6)), tf.float32)
    seed = tf.constant([[1, 2], [3, 4]], tf.int32)
    for name, kwargs in {"encode": {"x": x}, "reconstruct": {"x": x}, "decode": {"z": z}, "sample": {"seed": seed}}.items():
        a, b = ours.signatures[name](**kwargs), theirs.signatures[name](**kwargs)
        assert set(a) == set(b)
        for key in a:
            np.testing.assert_array_equal(a[key].numpy(), b[key].numpy())


def test_each_endpoint_is_traced_once_and_its_graph_stored_once(digits, tmp_path, monkeypatch):
    """TensorFlow keys its trace cache on the save context, so an endpoint traced before
    ``tf.saved_model.save`` (Keras traces it to find its variables) would be traced again inside it
    and its graph stored twice. The model's methods run once per model (the figures of a run and
    every export of it share the traced signatures, vae_tf.export.serving_functions), and the
    SavedModel holds the encoder's two convolutions once for each of the two endpoints that encode
    (``encode`` and ``reconstruct``): 4 ``Conv2D`` ops, where a second copy of every graph would
    make 8."""
    from vae_tf import plots

    fresh = build_vae(digits.data_shape, latent={"family": "gaussian", "latent_dim": 6},
                      network={"kind": "conv", "filters": [8, 16], "dense": 32}, seed=1)
    runs: dict = {}
    for name in ("encode", "decode", "reconstruct", "sample"):
        method = getattr(type(fresh), name)

        def counted(self, *args, _method=method, _name=name, **kwargs):
            runs[_name] = runs.get(_name, 0) + 1
            return _method(self, *args, **kwargs)

        monkeypatch.setattr(type(fresh), name, counted)
    x = digits.split("test")[0][:4]
    figures = plots.model_figures(fresh, x, kl=np.arange(6, dtype=float))
    import matplotlib.pyplot as plt

    for figure in figures.values():
        plt.close(figure)
    # Each signature traced once (`sample` decodes its draws, so `decode` runs in two traces).
    once = {"encode": 1, "decode": 2, "reconstruct": 1, "sample": 1}
    assert runs == once
    path = export_model(fresh, tmp_path, "m")
    second = export_model(fresh, tmp_path, "m")
    monkeypatch.undo()
    assert runs == once  # the exports wrote the figures' traces
    assert _op_counts(second) == _op_counts(path)
    convolutions = [layer for layer in fresh.encoder._flatten_layers() if isinstance(layer, keras.layers.Conv2D)]
    assert len(convolutions) == 2
    assert _op_counts(path)["Conv2D"] == 2 * len(convolutions)
    # The loaded object's methods (not only its signatures) still run the model.
    x = tf.constant(np.random.default_rng(0).random((3, 8, 8, 1), dtype=np.float32))
    loaded = tf.saved_model.load(str(path))
    np.testing.assert_array_equal(loaded.encode(x)["z_mean"].numpy(), loaded.signatures["encode"](x=x)["z_mean"].numpy())


@pytest.mark.slow
def test_load_vae_with_an_optimizer_continues_the_runs_optimizer_at_the_rate_given(trained, exported, digits):
    """`load_vae` built an uncompiled model, so fine-tuning restarted Adam from step 0 (the export
    holds its state); loading the weights after compiling restored the state but also the saved
    learning rate over the one given."""
    import warnings

    from vae_tf.export import load_vae

    path, _ = exported
    model = load_vae(path, optimizer=keras.optimizers.Adam(1e-5))
    assert int(model.optimizer.iterations) == int(trained.optimizer.iterations) > 0
    assert float(model.optimizer.learning_rate.numpy()) == pytest.approx(1e-5)
    # iterations and the moments of every weight, in creation order (paths carry process counters)
    saved, loaded = ([v for v in m.optimizer.variables if not v.path.endswith("learning_rate")] for m in (trained, model))
    assert len(saved) == len(loaded) == 1 + 2 * len(trained.trainable_variables)
    for a, b in zip(saved, loaded):
        np.testing.assert_array_equal(b.numpy(), a.numpy(), err_msg=a.path)
    model.fit(digits.x_train[:64], epochs=1, verbose=0)  # trains on from there
    assert int(model.optimizer.iterations) == int(trained.optimizer.iterations) + 2

    assert load_model_info(path)["optimizer"] == {"class": "Adam", "learning_rate_schedule": False}

    # Exported again after fine-tuning: the training record of the export it came from (it was
    # empty, and vae-tf evaluate evaluated it on the default data set without a word).
    with pytest.warns(UserWarning, match=r"exporting with the training config and data facts of .*; give config= "
                                         r"and data_info= if it was trained on other data since"):
        again = export_model(model, path.parent.parent / "tuned", "digits-vae")
    first, tuned = load_model_info(path), load_model_info(again)
    assert tuned["config"] == first["config"] == {"name": "digits-vae"}
    assert tuned["data"] == first["data"] == {"name": "digits"} and tuned["value_range"] == [0.0, 1.0]
    assert tuned["fine_tuned_from"] == {"export": str(path.resolve()), "mlflow_run_id": first.get("mlflow_run_id")}
    # a config given to export_model is the one recorded
    given = export_model(model, path.parent.parent / "tuned", "digits-vae", config={"name": "other"})
    assert load_model_info(given)["config"] == {"name": "other"} and "fine_tuned_from" not in load_model_info(given)

    def refused(optimizer, why, where=path):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            other = load_vae(where, optimizer=optimizer)
        said = [str(w.message) for w in caught if "optimizer" in str(w.message)]
        assert said == [f"{where} {why}: fine-tuning starts the optimizer afresh"]
        assert int(other.optimizer.iterations) == 0
        np.testing.assert_array_equal(other.encode(digits.x_test[:4])["z_mean"].numpy(),
                                      trained.encode(digits.x_test[:4])["z_mean"].numpy())  # the weights are loaded
        other.fit(digits.x_train[:64], epochs=1, verbose=0)

    # Keras' weights file matches optimizer variables by count alone: Adamax has Adam's, and read
    # its second moments as infinity norms; a schedule had one variable less and was said to be
    # "another optimizer".
    refused("sgd", "holds the state of an Adam optimizer, not of SGD (pass one to continue it)")
    refused(keras.optimizers.Adamax(1e-4), "holds the state of an Adam optimizer, not of Adamax (pass one to continue it)")
    refused(keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(1e-4, 100)),
            "holds the state of an optimizer that ran with a constant learning rate, which this one does not")
    assert not hasattr(load_vae(path), "optimizer") or load_vae(path).optimizer is None  # uncompiled, as before


def test_load_vae_of_an_export_that_did_not_record_its_optimizer_falls_back_without_a_traceback(trained, tmp_path):
    """Exports made before the optimizer was recorded: RMSprop with momentum has as many variables
    as Adam in another order, and Keras raised a shape ValueError from inside the weights file."""
    import shutil
    import warnings

    from vae_tf.export import load_vae

    path = export_model(trained, tmp_path)
    info_file = path / "assets" / "vae_tf_model.json"
    info = json.loads(info_file.read_text())
    del info["optimizer"]
    info_file.write_text(json.dumps(info))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = load_vae(path, optimizer=keras.optimizers.RMSprop(1e-4, momentum=0.9))
    assert [str(w.message) for w in caught if "afresh" in str(w.message)] == [
        f"{path} holds an optimizer state that does not fit this optimizer: fine-tuning starts the optimizer afresh"]
    assert int(model.optimizer.iterations) == 0
    assert int(load_vae(path, optimizer="adam").optimizer.iterations) == int(trained.optimizer.iterations)
    shutil.rmtree(path)


def test_a_loaded_model_draws_the_noise_of_its_seed_every_time(exported, digits):
    """The seed of the model's random stream was not in the build spec: two `load_vae` of one
    export drew different reparameterisation noise, so `evaluate` gave two ELBOs."""
    from vae_tf.export import load_vae

    path, _ = exported
    assert load_model_info(path)["build_spec"]["seed"] == 0
    def evaluated():
        model = load_vae(path)
        model.compile()
        return model.evaluate(digits.x_val, return_dict=True, verbose=0)

    first, second = evaluated(), evaluated()
    assert first["elbo"] == second["elbo"]


def test_a_model_of_ones_own_networks_is_exported_with_its_weights_and_load_vae_says_how_to_rebuild_it(tmp_path):
    """Without a build spec, `export_model` wrote no weights and `load_vae` said to "export it
    again", which could not help."""
    from vae_tf.export import WEIGHTS_NAME, load_vae
    from vae_tf.latents import build_latent
    from vae_tf.likelihoods import build_likelihood
    from vae_tf.models import VAE

    def own():
        keras.utils.set_random_seed(3)
        enc_in, dec_in = keras.Input((8, 8, 1)), keras.Input((2,))
        encoder = keras.Model(enc_in, keras.layers.Dense(4)(keras.layers.Flatten()(enc_in)), name="enc")
        decoder = keras.Model(dec_in, keras.layers.Reshape((8, 8, 1))(keras.layers.Dense(64)(dec_in)), name="dec")
        return VAE(encoder, decoder, build_latent("gaussian", latent_dim=2), build_likelihood("bernoulli", data_rank=3))

    model = own()
    x = np.random.default_rng(0).uniform(size=(4, 8, 8, 1)).astype(np.float32)
    model.compile(optimizer="adam")
    model.fit(x, epochs=2, verbose=0)
    path = export_model(model, tmp_path)
    weights = path / "assets" / WEIGHTS_NAME
    with pytest.raises(ModelNotFoundError) as err:
        load_vae(path)
    assert str(err.value) == (f"{path} is a model of networks not built by build_vae (no build spec): it can be "
                              f"served, but load_vae cannot rebuild it; build the same model in Python and call "
                              f"model.load_weights('{weights}')")
    rebuilt = own()
    rebuilt.load_weights(str(weights))
    np.testing.assert_array_equal(rebuilt.encode(x)["z_mean"].numpy(), model.encode(x)["z_mean"].numpy())


def test_a_registered_network_kind_builds_exports_and_loads_as_the_shipped_ones(tmp_path):
    """What the README tells a user with networks of their own: register an (encoder, decoder)
    pair of builders and name it; load_vae (in a process where it is registered) rebuilds it."""
    from vae_tf.export import load_vae
    from vae_tf.networks import NETWORKS

    def encoder(data_shape, out_dim, *, name="encoder", dtype=None, width: int = 16):
        inputs = keras.Input(data_shape)
        hidden = keras.layers.Dense(width, activation="tanh", dtype=dtype)(keras.layers.Flatten()(inputs))
        return keras.Model(inputs, keras.layers.Dense(out_dim, dtype=dtype)(hidden), name=name)

    def decoder(code_size, data_shape, out_channels, *, dtype=None, width: int = 16):
        inputs = keras.Input((code_size,))
        hidden = keras.layers.Dense(width, activation="tanh", dtype=dtype)(inputs)
        flat = keras.layers.Dense(int(np.prod(data_shape[:-1])) * out_channels, dtype=dtype)(hidden)
        return keras.Model(inputs, keras.layers.Reshape((*data_shape[:-1], out_channels))(flat), name="decoder")

    NETWORKS.register("test_dense_pair")((encoder, decoder))
    try:
        with pytest.raises(ConfigError, match=r"unknown option model.network.widht; did you mean model.network.width"):
            build_vae((8, 8, 1), network={"kind": "test_dense_pair", "widht": 8})
        keras.utils.set_random_seed(0)
        model = build_vae((8, 8, 1), latent={"family": "gaussian", "latent_dim": 3},
                          network={"kind": "test_dense_pair", "width": 8}, seed=0)
        x = np.random.default_rng(0).uniform(size=(16, 8, 8, 1)).astype(np.float32)
        model.compile(optimizer="adam")
        model.fit(x, epochs=1, verbose=0)
        exported = export_model(model, tmp_path)
        loaded = load_vae(exported)
        assert loaded.encoder.layers[2].units == 8  # Input, Flatten, the hidden Dense
        np.testing.assert_array_equal(loaded.encode(x)["z_mean"].numpy(), model.encode(x)["z_mean"].numpy())
    finally:
        NETWORKS.unregister("test_dense_pair")
    # in a process where it is not registered: the error says what to do, not only what is known
    with pytest.raises(ConfigError, match=r"was built with a part this process does not know \(unknown network "
                                          r"'test_dense_pair'; choose one of: .*\); if it is one registered where the model was trained, "
                                          r"register it \(e.g. "
                                          r"vae_tf.networks.NETWORKS.register\) before load_vae") as err:
        load_vae(exported)
    assert "\n" not in str(err.value)
