"""Config loading: defaults, YAML, --set overrides, and one-line errors for every mistake."""

from __future__ import annotations

import pytest

from training.config import DEFAULT_CONFIG, Config, load_config, parse_override
from vae_tf.errors import ConfigError


def test_embedded_default_config_is_valid_and_trains_digits():
    config = load_config(DEFAULT_CONFIG)
    assert config.data.name == "digits" and config.model.latent["family"] == "gaussian"
    assert config.name == "vae" and config.train.epochs > 0


def test_yaml_then_overrides_in_that_order(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: 7\n  batch_size: 32\nmodel:\n  latent: {family: gaussian, latent_dim: 3}\n")
    config = load_config(path, ["train.epochs=2", "model.latent.latent_dim=5", "objective.beta=4",
                                "data.options={image_size: 32}", "mlflow.run_name=my run"])
    assert config.train.epochs == 2 and config.train.batch_size == 32
    assert config.model.latent == {"family": "gaussian", "latent_dim": 5}
    assert config.objective.beta == 4.0 and isinstance(config.objective.beta, float)
    assert config.data.options == {"image_size": 32}
    assert config.mlflow.run_name == "my run"
    assert config.train.learning_rate == Config().train.learning_rate  # untouched default


def test_flat_params_for_mlflow():
    flat = load_config(None, ["train.epochs=3"]).flat()
    assert flat["train.epochs"] == 3 and flat["model.latent.latent_dim"] == 8
    assert flat["export.version"] is None


def test_override_values_are_parsed_as_yaml():
    assert parse_override("a.b=3") == (["a", "b"], 3)
    assert parse_override("a=[1, 2]") == (["a"], [1, 2])
    assert parse_override("a=null") == (["a"], None)
    assert parse_override("a=text") == (["a"], "text")


@pytest.mark.parametrize("overrides, match", [
    (["train.epoch=3"], "unknown config key train.epoch; did you mean train.epochs?"),
    (["trian.epochs=3"], "unknown config key trian; did you mean train?"),
    (["train.epochs=three"], "train.epochs must be int, got 'three'"),
    (["train.epochs=0"], "train.epochs must be a positive integer"),
    (["train.batch_size=2.5"], "train.batch_size must be int"),
    (["train.learning_rate=-1"], "train.learning_rate must be > 0"),
    (["train.verbose=5"], "train.verbose must be 0, 1 or 2"),
    (["data.val_fraction=0.6", "data.test_fraction=0.5"], "must be < 1 to leave training data"),
    (["model.latent.latent_dim=0"], "model.latent.latent_dim must be a positive integer"),
    (["model.latent.family=5"], "model.latent.family must name a registered latent"),
    (["objective.beta=-0.1"], "objective.beta must be >= 0"),
    (["name=a/b"], "name 'a/b' must be letters, digits"),
    (["train.epochs"], "is not of the form key.path=value"),
    (["train..epochs=1"], "is not of the form key.path=value"),
    (["seed.value=1"], "seed must be int, got {'value': 1}"),
    (["seed=1", "seed.value=1"], "seed is a value, not a section"),
    (["train=5"], "train must be a mapping"),
    (["export.version=-2"], "export.version must be a positive integer or null"),
])
def test_bad_configs_are_one_line_errors(overrides, match):
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    message = str(info.value)
    assert match in message and "\n" not in message


def test_bad_files_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found: pass an existing YAML file"):
        load_config(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("train:\n  epochs: [1,\n")
    with pytest.raises(ConfigError, match=r"is not valid YAML at line \d+"):
        load_config(broken)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="must hold a mapping of sections, found a list"):
        load_config(scalar)
