"""Config loading: one schema and one set of defaults, YAML, --set overrides, presets of the
earlier objective form, and one-line errors for every mistake (before anything is created)."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
import yaml

from training.config import DEFAULT_CONFIG, Config, from_dict, load_config, parse_override, read_yaml
from vae_tf.errors import ConfigError

README = Path(__file__).resolve().parents[1] / "README.md"


def test_embedded_default_config_is_the_built_in_defaults_and_the_readme_shows_them():
    # One source of truth (training/config.py): the embedded file names the run and nothing else,
    # --print-config's output is the built-in defaults, and the README's config block is exactly it.
    assert set(read_yaml(DEFAULT_CONFIG)) == {"name"}
    config = load_config(DEFAULT_CONFIG)
    assert config.to_dict() == Config().to_dict()
    block = re.search(r"```yaml\n(name: vae\n.*?)```", README.read_text(), re.S)
    assert block, "README.md lost its config block"
    assert yaml.safe_load(block.group(1)) == config.to_dict()


def test_pretraining_defaults_agree_with_the_library():
    from vae_tf.remedies.pretraining import pretrain_encoder

    default = inspect.signature(pretrain_encoder).parameters["epochs"].default
    assert Config().train.pretrain.epochs == default == 30


def test_yaml_then_overrides_in_that_order(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: 7\n  batch_size: 32\nmodel:\n  latent: {family: gaussian, latent_dim: 3}\n")
    config = load_config(path, ["train.epochs=2", "model.latent.latent_dim=5", "objective.kl_weight.beta=4",
                                "data.name=dsprites", "data.options={image_size: 32}", "mlflow.run_name=my run"])
    assert config.train.epochs == 2 and config.train.batch_size == 32
    assert config.model.latent == {"family": "gaussian", "latent_dim": 5}
    assert config.objective.kl_weight == {"kind": "constant", "beta": 4.0}
    assert config.data.options == {"image_size": 32}
    assert config.mlflow.run_name == "my run"
    assert config.train.learning_rate == Config().train.learning_rate  # untouched default


def test_slots_are_filled_with_their_defaults_and_a_new_kind_does_not_inherit_options(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("objective:\n  kl_weight: {kind: control, set_point: 15}\n  inference: aggressive\n")
    config = load_config(path, ["objective.kl_weight.kind=linear", "objective.kl_weight.steps=50"])
    # --set changed the kind: the controller's set_point does not leak into the schedule
    assert config.objective.kl_weight == {"kind": "linear", "beta": 1.0, "steps": 50, "start": 0.0, "stop": 1.0}
    assert config.objective.inference == {"kind": "aggressive", "max_inner_steps": 100, "check_every": 10,
                                          "heldout_size": 500, "leave_phase": "mi_falls"}
    assert config.objective.input_noise == {"kind": "none"} and config.objective.regularizers == []
    # and --set model.network.kind=conv does not keep the mlp's hidden sizes
    assert load_config(None, ["model.network.kind=conv"]).model.network == {"kind": "conv"}


def test_exponent_floats_read_as_numbers_as_yaml_1_2_reads_them(tmp_path):
    """PyYAML (YAML 1.1) reads 1e-4 (no dot) as a string: `learning_rate: 1e-4`, the usual way to
    write one, was refused as 'not a valid number'. Strings stay strings."""
    assert load_config(None, ["train.learning_rate=1e-4"]).train.learning_rate == 1e-4
    path = tmp_path / "c.yaml"
    path.write_text("train: {learning_rate: 3E-4, clip_norm: 1e+1}\nmodel: {latent: {latent_dim: 4}}\n"
                    "objective: {kl_weight: {kind: constant, beta: .5e1}}\n")
    config = load_config(path)
    assert (config.train.learning_rate, config.train.clip_norm) == (3e-4, 10.0)
    assert config.objective.kl_weight["beta"] == 5.0
    assert parse_override("mlflow.run_name=1e-4x")[1] == "1e-4x" and parse_override("a.b=e5")[1] == "e5"
    assert parse_override("a.b=12")[1] == 12 and parse_override("a.b=1.5")[1] == 1.5


def test_a_relative_data_path_is_kept_as_the_absolute_path_of_the_working_directory(tmp_path, monkeypatch):
    """The config a run logs and its export keep is read again elsewhere (`vae-tf evaluate` from
    another directory): a path relative to where training ran would then point nowhere."""
    monkeypatch.chdir(tmp_path)
    for made in ("in/corpus.txt", "home/x.npz"):
        (tmp_path / made).parent.mkdir()
        (tmp_path / made).touch()
    config = load_config(None, ["data.name=text_file", "data.path=in/corpus.txt"])
    assert config.data.path == str(tmp_path / "in" / "corpus.txt")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert load_config(None, ["data.name=npz", "data.path=~/x.npz"]).data.path == str(tmp_path / "home" / "x.npz")
    absolute = str(tmp_path / "home" / "x.npz")
    assert load_config(None, ["data.name=npz", f"data.path={absolute}"]).data.path == absolute
    assert load_config(None, ["data.name=text_file", "data.path=https://example.org/x.txt"]).data.path == "https://example.org/x.txt"
    assert Config.model_validate(config.to_dict()).data.path == config.data.path  # read back: unchanged


@pytest.mark.slow
def test_config_errors_outside_the_registries_of_model_parts_and_remedies_need_no_tensorflow():
    """A typo in a config is reported before TensorFlow and Keras are imported (seconds on 2 CPUs):
    the section schemas, the data set registry and the objective's presets are TensorFlow-free;
    only the model's parts and the objective's remedies (Keras layers) are checked after it. Run in
    a fresh interpreter, as `vae-tf train --set ...` runs; each error is the one-line ConfigError /
    DataError the CLI prints."""
    import subprocess
    import sys

    program = (
        "import sys\n"
        "from training.config import load_config\n"
        "from vae_tf.errors import VaeTfError\n"
        "for override in sys.argv[1:]:\n"
        "    try:\n"
        "        load_config(None, override.split(' & '))\n"
        "    except VaeTfError as err:\n"
        "        print(type(err).__name__, str(err).splitlines()[0])\n"
        "    print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))\n")
    bad = ["train.epochs=abc", "train.bogus=1", "data.val_fraction=0.95", "data.name=bogus", "data.options.bogus=1",
           "data.path=/x.npz", "data.name=npy & data.path=/no/such.npy",
           "objective.kl_weight.kind=control"]  # the last: a remedy's options (Keras)
    out = subprocess.run([sys.executable, "-c", program, *bad], capture_output=True, text=True, timeout=300,
                         cwd=str(Path(__file__).resolve().parents[1]))
    assert out.returncode == 0, out.stderr[-2000:]
    expected = [
        "ConfigError train.epochs: input should be a valid integer", "[]",
        "ConfigError unknown config key train.bogus; valid options: epochs,", "[]",
        "ConfigError data: data.val_fraction + data.test_fraction must be < 1", "[]",
        "DataError unknown data set 'bogus'; choose one of: digits,", "[]",
        "DataError data set 'digits' has no option(s) 'bogus'", "[]",
        "DataError data set 'digits' takes no path (got '/x.npz')", "[]",
        "DataError no such file: '/no/such.npy' (data.path); check the path", "[]",
        "ConfigError objective.kl_weight.set_point is required", "['keras', 'tensorflow']"]
    lines = out.stdout.splitlines()
    assert len(lines) == len(expected) and all(line.startswith(e) for line, e in zip(lines, expected)), lines


def test_another_data_set_keeps_the_generic_data_settings_but_not_the_options(tmp_path):
    """A suite size or --set that changes data.name must not silently drop the binarisation or
    the splits (a binarised study moved to mnist_5k stays binarised, so its IW-NLL is still an
    NLL); the data set's own options and path do not carry over."""
    path = tmp_path / "c.yaml"
    path.write_text("data: {name: dsprites, binarize: sample, val_fraction: 0.2, max_samples: 300, "
                    "path: /x, options: {image_size: 32}}\n")
    config = load_config(path, ["data.name=digits"])
    assert config.data.name == "digits" and config.data.binarize == "sample"
    assert config.data.val_fraction == 0.2 and config.data.max_samples == 300
    assert config.data.options == {} and config.data.path is None
    # a value given with the new name wins over the kept one
    assert load_config(path, ["data={name: digits, binarize: none}"]).data.binarize == "none"
    # the remedy study at its mnist_5k size is binarised like its digits size
    from training.compare import child_configs, load_suite

    sized = {size: child_configs(load_suite("remedy_matrix"), size)[0][2].data for size in ("full", "full_mnist_5k")}
    assert sized["full_mnist_5k"].name == "mnist_5k" and sized["full_mnist_5k"].binarize == "sample" == sized["full"].binarize


def test_presets_of_the_earlier_form_become_slots(tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text("objective:\n  name: control_vae\n  options: {kl_set_point: 5.0, kp: 0.5}\n")
    config = load_config(path)
    assert config.objective.preset == "control_vae"
    assert config.objective.kl_weight["kind"] == "control" and config.objective.kl_weight["set_point"] == 5.0
    assert config.objective.kl_weight["kp"] == 0.5 and config.objective.kl_weight["ki"] == 0.001
    cli = load_config(None, ["objective.name=aggressive", "objective.options={max_inner_steps: 7, check_every: 7}",
                             "objective.beta=2"])
    assert cli.objective.inference["kind"] == "aggressive" and cli.objective.inference["max_inner_steps"] == 7
    assert cli.objective.kl_weight == {"kind": "constant", "beta": 2.0}
    scheduled = load_config(None, ["objective.name=mi_max", "objective.beta=3",
                                   "objective.options={mi_weight: 0.5, beta_schedule: {kind: linear, steps: 9}}"])
    assert scheduled.objective.kl_weight == {"kind": "linear", "beta": 3.0, "steps": 9, "start": 0.0, "stop": 1.0}
    assert scheduled.objective.regularizers[0]["kind"] == "mi_q" and scheduled.objective.regularizers[0]["weight"] == 0.5


def test_flat_params_for_mlflow():
    flat = load_config(None, ["train.epochs=3"]).flat()
    assert flat["train.epochs"] == 3 and flat["model.latent.latent_dim"] == 8
    assert flat["objective.kl_weight.kind"] == "constant" and flat["objective.inference.kind"] == "standard"
    assert flat["export.version"] is None


def test_override_values_are_parsed_as_yaml():
    assert parse_override("a.b=3") == (["a", "b"], 3)
    assert parse_override("a=[1, 2]") == (["a"], [1, 2])
    assert parse_override("a=null") == (["a"], None)
    assert parse_override("a=text") == (["a"], "text")


@pytest.mark.parametrize("overrides, match", [
    (["train.epoch=3"], "unknown config key train.epoch; did you mean train.epochs?"),
    (["trian.epochs=3"], "unknown config key trian; did you mean train?"),
    (["train.epochs=three"], "train.epochs: input should be a valid integer, got 'three'"),
    (["train.epochs=0"], "train.epochs: input should be greater than 0, got 0"),
    (["train.batch_size=2.5"], "train.batch_size: input should be a valid integer, got 2.5"),
    (["train.learning_rate=-1"], "train.learning_rate: input should be greater than 0, got -1"),
    (["train.learning_rate=.nan"], "train.learning_rate: input should be a finite number"),
    (["train.verbose=5"], "train.verbose: input should be 0, 1 or 2, got 5"),
    (["train.strategy=ring"], "train.strategy: input should be 'none', 'mirrored' or 'multi_worker', got 'ring'"),
    (["train.jit_compile=sometimes"], "train.jit_compile: input should be 'auto', True or False, got 'sometimes'"),
    (["data.val_fraction=0.6", "data.test_fraction=0.5"], "must be < 1 to leave training data"),
    (["model.latent.latent_dim=0"], "model.latent.latent_dim must be a positive integer"),
    (["model.latent.family=5"], "model.latent.family must name a registered latent family"),
    (["model.latent.lattent_dim=3"], "unknown option model.latent.lattent_dim; did you mean model.latent.latent_dim?"),
    (["model.likelihood.name=poisson"], "unknown likelihood 'poisson'"),
    (["model.network.hiden=[3]"], "unknown option model.network.hiden; did you mean model.network.hidden?"),
    # A union's member names (hidden's list[int] | tuple) are not keys: they stay out of the path.
    (["model.network.hidden=[512,256"], "model.network.hidden: input should be a valid list, got '[512,256'"),
    (["model.network.hidden=[16, a]"], "model.network.hidden.1: input should be a valid integer, got 'a'"),
    (["objective.kl_weight.beta=-0.1"], "objective.kl_weight.beta: input should be greater than or equal to 0, got -0.1"),
    (["objective.kl_weight.kind=controll"], "unknown objective.kl_weight.kind 'controll'; did you mean control?"),
    (["objective.kl_weight={kind: control}"], "objective.kl_weight.set_point is required"),
    (["objective.kl_weight={kind: control, setpoint: 3}"], "unknown option objective.kl_weight.setpoint; did you mean "
                                                           "objective.kl_weight.set_point?"),
    (["objective.regularizers=[{kind: mi_q, wieght: 2}]"], "unknown option objective.regularizers[0].wieght; did you "
                                                           "mean objective.regularizers[0].weight?"),
    (["objective.input_noise={kind: fgsm, sigma: 0.1}"], "unknown option objective.input_noise.sigma; valid options: "
                                                         "kind, epsilon, clip"),
    (["objective.inference={kind: aggressive, check_every: 5, max_inner_steps: 2}"],
     "objective.inference: check_every (5) must be <= max_inner_steps (2)"),
    (["objective.inference=aggressive", "data.val_fraction=0"], "needs held-out data for its per-epoch MI check"),
    (["objective.name=ar_elbo"], "objective ar_elbo needs model.likelihood.name=gaussian_adaptive"),
    (["objective.name=control_vae", "objective.inference=aggressive"], "objective mixes the preset form"),
    (["objective.name=control_vae", "objective.options={kl_set_point: 1, beta_schedule: {kind: linear}}"],
     "objective control_vae sets the KL weight itself: remove objective.options.beta_schedule"),
    (["objective.name=magic"], "unknown objective.name 'magic'; presets: elbo, capacity"),
    (["objective.klweight={kind: control}"], "unknown config key objective.klweight; did you mean objective.kl_weight?"),
    (["name=a/b"], "name: string should match pattern"),
    (["train.epochs"], "is not of the form key.path=value"),
    (["train..epochs=1"], "is not of the form key.path=value"),
    (["seed.value=1"], "seed: input should be a valid integer, got {'value': 1}"),
    (["seed=1", "seed.value=1"], "seed is a value, not a section"),
    (["train=5"], "train: input should be a valid dictionary or instance of TrainConfig, got 5"),
    (["export.version=-2"], "export.version: input should be greater than 0, got -2"),
])
def test_bad_configs_are_one_line_errors(overrides, match):
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    message = str(info.value)
    assert match in message and "\n" not in message, message


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


def test_shipped_configs_and_suites_validate():
    from training.compare import child_configs, list_suites, load_suite

    for path in sorted(DEFAULT_CONFIG.parent.glob("*.yaml")):
        load_config(path)
    for name in list_suites():
        suite = load_suite(name)
        for size in suite.sizes:
            assert child_configs(suite, size)


def test_registry_uri_follows_the_tracking_uri_unless_the_user_chose_one(monkeypatch):
    """MLflow's setters export MLFLOW_REGISTRY_URI: a value this process set for an earlier run,
    even one an environment restore brings back later, is not the user's choice; the user's own
    value is kept run after run."""
    from training import tracking

    monkeypatch.setattr(tracking, "_registry_uris_we_set", set())
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.delenv(key, raising=False)
    assert tracking.use_tracking("sqlite:///a.db") == "sqlite:///a.db"
    assert tracking.use_tracking("sqlite:///b.db") == "sqlite:///b.db"
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", "sqlite:///a.db")  # an older value of ours, restored
    assert tracking.use_tracking("sqlite:///c.db") == "sqlite:///c.db"
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", "sqlite:///registry.db")  # the user's
    assert tracking.use_tracking("sqlite:///d.db") == "sqlite:///registry.db"
    assert tracking.use_tracking("sqlite:///e.db") == "sqlite:///registry.db"


def test_a_tracking_uri_of_an_unknown_scheme_is_one_line_before_anything_runs(tmp_path, monkeypatch, capsys):
    """`mlflow.tracking_uri=sqllite:///x.db` trained on and then failed with MLflow's 20-line
    traceback about the model registry; it is now refused with the config, and a misspelt
    MLFLOW_TRACKING_URI when it is read."""
    from tests.conftest import assert_one_line
    from training.config import tracking_uri_problem
    from training.tracking import resolve_tracking_uri
    from vae_tf_cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["train", "--set", "mlflow.tracking_uri=sqllite:///x.db"]) == 2
    err = capsys.readouterr().err.strip()
    assert_one_line(err)
    assert "'sqllite:///x.db' has an unknown scheme 'sqllite:'; did you mean sqlite://...? MLflow keeps runs at " in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no run folder, store or model
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "htp://127.0.0.1:5000")
    with pytest.raises(ConfigError, match=r"^MLFLOW_TRACKING_URI 'htp://127.0.0.1:5000' has an unknown scheme "
                                          r"'htp:'; did you mean http://\.\.\.\?"):
        resolve_tracking_uri(None)
    for fine in ("sqlite:///a.db", "postgresql+psycopg2://u@h/db", "mysql://h/db", "https://mlflow.example",
                 "databricks"):
        assert tracking_uri_problem(fine) is None, fine
    # A folder store: MLflow 3.17 refuses it (51 lines of traceback, after the data was read) unless
    # MLFLOW_ALLOW_FILE_STORE=true, as its message says; refused here in one line, accepted with it.
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    folders = ("/tmp/mlruns", "mlruns", "file:///tmp/m", "file:/tmp/m", "C:\\mlruns")
    for folder in folders:
        assert tracking_uri_problem(folder, opening=True) == (
            f"{folder!r} is a folder store, which MLflow 3.17 refuses (its file store is in maintenance mode); use "
            "sqlite:///PATH.db, or set MLFLOW_ALLOW_FILE_STORE=true to keep logging to the folder"), folder
        # a config read back (an export's, a run's) is not refused: `evaluate --no-mlflow` opens no store
        assert tracking_uri_problem(folder) is None and from_dict({"mlflow": {"tracking_uri": folder}})
    with pytest.raises(ConfigError, match=r"^mlflow.tracking_uri 'mlruns' is a folder store"):
        load_config(None, ["mlflow.tracking_uri=mlruns"])
    with pytest.raises(ConfigError, match=r"^mlflow.tracking_uri 'mlruns' is a folder store"):
        resolve_tracking_uri("mlruns")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "file:/tmp/m")
    with pytest.raises(ConfigError, match=r"^MLFLOW_TRACKING_URI 'file:/tmp/m' is a folder store"):
        resolve_tracking_uri(None)
    # `vae-tf train` says it before the training module (TensorFlow, MLflow: ~5 s) is imported:
    # here that import would fail, so a refusal after it would be another error
    import sys

    monkeypatch.setitem(sys.modules, "training.train", None)
    capsys.readouterr()
    assert main(["train", "--set", "train.epochs=1"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(
        "error: MLFLOW_TRACKING_URI 'file:/tmp/m' is a folder store, which MLflow 3.17 refuses")
    monkeypatch.delitem(sys.modules, "training.train")
    for allowed in ("true", "TRUE", "1"):
        monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", allowed)
        for folder in folders:
            assert tracking_uri_problem(folder, opening=True) is None, folder
    for bad in (" true", "yes"):  # MLflow refuses them (a ValueError deep inside); said here in one line
        monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", bad)
        assert tracking_uri_problem("mlruns", opening=True) == (
            f"is a folder store ('mlruns') and MLFLOW_ALLOW_FILE_STORE={bad!r} is none of true, false, 1, 0, which "
            "MLflow refuses; set it to true")
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE")
    assert main(["train", "--set", "mlflow.experiment=" + "x" * 501]) == 2
    assert "error: mlflow.experiment: string should have at most 500 characters, got" in capsys.readouterr().err


def test_a_run_or_model_of_before_symbol_clusters_rebuilds_its_text_data_as_then(tmp_path):
    """Resuming a text_file run started before symbol clusters (its run.json records no tokenizer)
    or evaluating its model rebuilt the vocabulary with them: "❤️" one token instead of two, every
    id after it shifted under the restored weights."""
    from training.config import tokenizer_of_then

    corpus = tmp_path / "c.txt"
    corpus.write_text("a b\n")
    text = load_config(None, ["data.name=text_file", f"data.path={corpus}", "model.network.kind=lstm",
                              "model.likelihood.name=categorical"])
    assert tokenizer_of_then(text, None).data.options == {"symbol_clusters": False}
    assert tokenizer_of_then(text, {"lowercase": True, "split_punctuation": True}).data.options == \
        {"symbol_clusters": False}  # a model's codec described without the key
    assert tokenizer_of_then(text, {"symbol_clusters": True}) is text
    given = text.replace(data={"options": {"symbol_clusters": True}})
    assert tokenizer_of_then(given, None) is given  # what the config says itself is kept
    digits = load_config(None, [])
    assert tokenizer_of_then(digits, None) is digits  # no tokenizer to pin


def test_a_key_an_older_run_record_lacks_is_no_change_on_resume():
    from training.train import resume_changes

    config = load_config(None, ["train.epochs=3"])
    before = config.to_dict()
    del before["train"]["deterministic"], before["mlflow"]["retry_seconds"]  # written by an older vae-tf
    assert resume_changes(before, config) == []
    assert resume_changes(before, config.replace(train={"epochs": 5})) == ["train.epochs: 3 -> 5"]


@pytest.mark.parametrize("uri, shown", [
    ("postgresql://mlflow:s3cret@db.example:5432/mlflow", "postgresql://db.example:5432/mlflow"),
    ("mysql+pymysql://user@db/mlflow", "mysql+pymysql://db/mlflow"),
    ("https://user:token@mlflow.example/", "https://mlflow.example/"),
    ("sqlite:////data/mlflow.db", "sqlite:////data/mlflow.db"),
    ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
])
def test_what_others_see_of_a_config_holds_no_password(uri, shown):
    """MLflow params and config.yaml (readable by everyone with the store) and an export's assets
    (shipped with the model) carried mlflow.tracking_uri with its password; the run record, which a
    resume reconnects with, keeps it (0600)."""
    config = load_config(DEFAULT_CONFIG).replace(mlflow={"tracking_uri": uri})
    assert config.shareable()["mlflow"]["tracking_uri"] == shown
    assert config.flat()["mlflow.tracking_uri"] == shown
    assert config.to_dict()["mlflow"]["tracking_uri"] == uri  # what the run itself connects with
