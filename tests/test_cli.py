"""`vae-tf train` end to end: MLflow run, metrics, figures, config, model version, export; and
one-line errors for bad config and bad data (the run is then marked FAILED)."""

from __future__ import annotations

import json

import mlflow
import yaml
import numpy as np
import pytest
import tensorflow as tf
from mlflow.tracking import MlflowClient

from tests.conftest import assert_one_line
from vae_tf_cli import main

FAST = ["train.epochs=2", "train.verbose=0", "model.network.hidden=[32]", "model.latent.latent_dim=4"]


def _args(*overrides):
    return ["train", *[a for o in overrides for a in ("--set", o)]]


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return tmp_path, uri


@pytest.fixture
def finished_run(workdir, capsys, digits):
    tmp_path, uri = workdir
    assert main(_args(*FAST, "mlflow.run_name=cli-test")) == 0
    out = capsys.readouterr().out
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    run = client.search_runs([client.get_experiment_by_name("vae-tf").experiment_id])[0]
    return tmp_path, uri, out, client, run, digits


@pytest.mark.slow
def test_train_logs_run_metrics_figures_config_and_model(finished_run):
    tmp_path, uri, out, client, run, digits = finished_run
    assert run.info.status == "FINISHED" and run.info.run_name == "cli-test"
    assert f"run id:        {run.info.run_id}" in out
    assert f"mlflow ui --backend-store-uri {uri}" in out

    # Flat config as params, plus data facts.
    params = run.data.params
    assert params["train.epochs"] == "2" and params["model.latent.latent_dim"] == "4"
    assert params["data.name"] == "digits" and params["data.n_train"] == str(len(digits.x_train))

    # Per-epoch train and validation metrics, and per-dimension KL.
    for key in ("loss", "elbo", "reconstruction", "kl", "beta", "val_elbo", "val_active_kl_dims", "val_kl_dim_3",
                "val_active_units", "val_mi", "val_collapsed_fraction"):
        history = client.get_metric_history(run.info.run_id, key)
        assert [m.step for m in history] == [0, 1], key
        assert all(np.isfinite(m.value) for m in history)
    assert "test_elbo" in run.data.metrics and "test_kl_dim_0" in run.data.metrics

    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    figures = {a.path for a in client.list_artifacts(run.info.run_id, "figures")}
    assert "config.yaml" in artifacts
    assert figures == {f"figures/{n}" for n in ("reconstructions.png", "samples.png", "traversals.png", "kl_per_dim.png")}
    logged = mlflow.artifacts.download_artifacts(f"runs:/{run.info.run_id}/config.yaml", dst_path=str(tmp_path / "dl"))
    assert yaml.safe_load(open(logged))["train"]["epochs"] == 2

    # Export and registry.
    export_dir = tmp_path / "models" / "vae" / "1"
    assert (export_dir / "saved_model.pb").is_file()
    assert f"export:        {export_dir}" in out
    # the registry's URI, which `vae-tf evaluate` and `mlflow models serve` take (it showed the logged model's only)
    assert "model version: vae v1 (models:/vae/1; logged model models:/m-" in out
    info = json.loads((export_dir / "assets" / "vae_tf_model.json").read_text())
    assert info["config"]["train"]["epochs"] == 2 and info["data"]["name"] == "digits"
    assert run.data.tags["vae_tf.export_dir"] == str(export_dir)
    versions = client.search_model_versions("name='vae'")
    assert [str(v.version) for v in versions] == ["1"] and versions[0].run_id == run.info.run_id
    assert (tmp_path / "runs" / run.info.run_id / "checkpoints" / "checkpoint").is_file()


@pytest.mark.slow
def test_registered_model_predicts_like_the_export(finished_run):
    tmp_path, uri, *_ = finished_run
    mlflow.set_registry_uri(uri)
    model = mlflow.pyfunc.load_model("models:/vae/1")
    x = np.random.default_rng(0).random((3, 8, 8, 1)).astype(np.float32)
    predicted = model.predict(x)
    signatures = tf.saved_model.load(str(tmp_path / "models" / "vae" / "1")).signatures
    direct = signatures["encode"](x=tf.constant(x))
    np.testing.assert_allclose(predicted["embedding"], direct["embedding"].numpy(), rtol=1e-5)
    rec = model.predict(x, params={"signature": "reconstruct"})
    direct_rec = signatures["reconstruct"](x=tf.constant(x))
    assert rec["x_mean"].shape == (3, 8, 8, 1)
    np.testing.assert_allclose(rec["x_mean"], direct_rec["x_mean"].numpy(), rtol=1e-5, atol=1e-7)
    # what each signature takes, in the model's metadata: decode's width is the code's (it read
    # "code_size", a placeholder), the width of what encode gives
    inputs = mlflow.models.get_model_info("models:/vae/1").metadata["signature_inputs"]
    assert inputs["decode"] == f"z: float32[-1, {predicted['embedding'].shape[1]}]"
    assert inputs["encode"] == "x: float32[-1, 8, 8, 1]"


@pytest.mark.slow
def test_second_run_exports_the_next_version(finished_run, capsys):
    tmp_path, uri, _, client, *_ = finished_run
    assert main(_args(*FAST, "train.epochs=1")) == 0
    assert (tmp_path / "models" / "vae" / "2" / "saved_model.pb").is_file()
    assert sorted(str(v.version) for v in client.search_model_versions("name='vae'")) == ["1", "2"]


def test_print_config(workdir, capsys):
    assert main(["train", "--print-config", "--set", "train.epochs=9"]) == 0
    assert "epochs: 9" in capsys.readouterr().out


@pytest.mark.parametrize("overrides", [
    ["model.network.kind=conv", "model.likelihood.name=gaussian_adaptive",
     "model.latent={family: gaussian_categorical, latent_dim: 3}"],
    ["model.latent={family: normal_gamma, latent_dim: 2}", "model.network.hidden=[16]"],
])
def test_print_config_shows_the_model_parts_options_a_run_uses_and_they_build_the_same_model(workdir, capsys,
                                                                                             tmp_path, overrides):
    """`--print-config` printed `network: {kind: conv}`: not what the run uses, as the README says,
    though the objective's slots were printed whole. The model parts' options left out are now
    shown with the values their builders give them; a config made of that output is the same run."""
    import keras

    from training.config import load_config
    from vae_tf.models import build_vae

    args = [a for o in overrides for a in ("--set", o)]
    assert main(["train", "--print-config", *args]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    given = load_config(None, overrides).model
    for part in ("latent", "likelihood", "network"):
        shown, kept = printed["model"][part], getattr(given, part)
        assert {k: shown[k] for k in kept} == kept  # what was given is shown as given
        if part != "likelihood" or kept["name"] != "bernoulli":  # the one part here without options
            assert len(shown) > len(kept), part  # and the options left out are there too
    (tmp_path / "printed.yaml").write_text(yaml.safe_dump(printed, sort_keys=False))
    again = load_config(tmp_path / "printed.yaml").model
    models = []
    for model in (given, again):
        keras.utils.set_random_seed(0)
        models.append(build_vae((8, 8, 1), latent=model.latent, likelihood=model.likelihood, network=model.network,
                                seed=0))
    assert [tuple(v.shape) for v in models[0].weights] == [tuple(v.shape) for v in models[1].weights]
    x = np.random.default_rng(0).uniform(size=(2, 8, 8, 1)).astype(np.float32)
    np.testing.assert_array_equal(models[0].encode(x)["embedding"].numpy(), models[1].encode(x)["embedding"].numpy())


def test_bad_config_is_a_one_line_error_before_any_run(workdir, capsys):
    tmp_path, uri = workdir
    assert main(_args("train.epoch=3")) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: unknown config key train.epoch; did you mean train.epochs?"
    assert not (tmp_path / "mlflow.db").exists()


def test_bad_data_fails_before_any_run_is_created(workdir, capsys):
    tmp_path, uri = workdir
    data = np.random.default_rng(0).random((50, 6)).astype(np.float32)
    data[3, 2] = np.nan
    np.save(tmp_path / "bad.npy", data)
    assert main(_args(*FAST, "data.name=npy", f"data.path={tmp_path / 'bad.npy'}")) == 2
    err = capsys.readouterr().err.strip()
    assert_one_line(err)
    assert err.startswith("error: ") and "NaN" in err and "remove or impute" in err
    # Bad data fails before anything is created: no MLflow run, no run directory.
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("vae-tf")
    assert experiment is None or client.search_runs([experiment.experiment_id]) == []
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_a_bad_family_option_is_the_only_line_printed(workdir, capsys):
    """The Normal-Gamma family's advice about a constant KL weight came before the error in its own
    options: two lines, the first about a model that would never be built."""
    tmp_path, uri = workdir
    assert main(_args(*FAST, "model.latent.family=normal_gamma", "model.latent.beta1=-2")) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: model.latent.beta1 must be a finite number > 0, got -2"


def test_too_few_examples_to_judge_collapse_fail_before_training(workdir, capsys):
    """12 digits leave 1 test example: the run trained, then failed on the collapse verdict with
    "error: means has 1 rows; at least 2 are needed". Refused before any run, saying what to change;
    without a test split the run is judged on the validation split, then on the training data."""
    tmp_path, uri = workdir
    assert main(_args(*FAST, "data.max_samples=12")) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("error: data set 'digits' leaves 1 example(s) in its test split, on which the run is scored and "
                   "its collapse judged (active units need at least 2); give more examples (a larger "
                   "data.max_samples or data set) or a larger data.test_fraction")
    assert main(_args(*FAST, "data.max_samples=12", "data.test_fraction=0")) == 2
    assert "leaves 1 example(s) in its val split" in capsys.readouterr().err
    assert main(_args(*FAST, "data.max_samples=1", "data.test_fraction=0", "data.val_fraction=0")) == 2
    assert capsys.readouterr().err.strip().endswith("in its train split, on which the run is scored and its collapse "
                                                    "judged (active units need at least 2); give more examples (a "
                                                    "larger data.max_samples or data set)")
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_data_outside_the_likelihood_support_is_rejected(workdir, capsys):
    tmp_path, _ = workdir
    np.save(tmp_path / "wide.npy", np.linspace(-2, 2, 60, dtype=np.float32).reshape(10, 6))
    assert main(_args(*FAST, "data.name=npy", f"data.path={tmp_path / 'wide.npy'}")) == 2
    err = capsys.readouterr().err.strip()
    assert_one_line(err)
    assert "the likelihood needs [0, 1]" in err and "bernoulli" in err
    # The same data trains under a Gaussian likelihood (vectors, MLP).
    assert main(_args(*FAST, "data.name=npy", f"data.path={tmp_path / 'wide.npy'}", "model.likelihood.name=gaussian",
                      "data.val_fraction=0.2", "data.test_fraction=0.2")) == 0


@pytest.mark.slow
def test_the_program_ends_without_collecting_what_the_command_built_and_main_leaves_the_collector_alone():
    """`vae-tf` (the console script and ``python -m vae_tf_cli``) is ``run``: main's exit code, then
    every live object frozen so that the interpreter's shutdown does not traverse them (~2 s after a
    `vae-tf train`, docs/performance.md); ``main``, which tests and scripts call in-process, leaves
    the collector as it was. Both in a fresh process (freezing this one would keep its garbage).
    A one-job command collects young objects at least ten times less often than Python's default
    (full collections walked TensorFlow's ~10^6 objects ten times in a `vae-tf train`); ``serve``, a
    server, keeps the default."""
    import subprocess
    import sys
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    scripts = tomllib.loads((root / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["vae-tf"] == "vae_tf_cli:run"
    assert "from vae_tf_cli import run" in (root / "vae_tf_cli" / "__main__.py").read_text()
    code = ("import gc, vae_tf_cli\n"
            "default = gc.get_threshold()\n"
            "print(vae_tf_cli.main(['probe', 'missing.npz']), gc.get_freeze_count(), gc.get_threshold() == default)\n"
            "print(vae_tf_cli.run(['serve', '--model-base-path', 'no-models']), gc.get_threshold() == default)\n"
            "gc.unfreeze()\n"
            "print(vae_tf_cli.run(['probe', 'missing.npz']), gc.get_freeze_count() > 0,\n"
            "      gc.get_threshold()[0] >= 10 * default[0], gc.get_threshold()[1:] == default[1:])")
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["2", "0", "True", "2", "True", "2", "True", "True", "True"], \
        done.stdout + done.stderr[-2000:]
    assert done.stderr.count("error: no such file: 'missing.npz'") == 2  # the same one-line error either way


@pytest.mark.parametrize("argv, runner", [
    (["entry.py", "train", "--epochs", "notint"], "runpy.run_path('mlflow_project/entry.py', run_name='__main__')"),
    (["compare.py", "no-such-suite", "quick", "vae", "0", "suite"], "runpy.run_module('training.compare', run_name='__main__')"),
])
def test_the_other_one_job_processes_end_as_the_program_does(argv, runner):
    """The MLflow project's entry script and a `vae-tf compare --jobs` child are one-job processes
    like `vae-tf train`: run as scripts, they collect young objects less often than Python's default
    and end frozen (the one-line error and exit 2 unchanged; the child's comes after TensorFlow's
    start-up lines, as before)."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    code = ("import atexit, gc, runpy, sys\n"
            "default = gc.get_threshold()\n"
            "atexit.register(lambda: print(gc.get_threshold()[0] >= 10 * default[0], gc.get_freeze_count() > 0,\n"
            "                              any(type(f).__name__ == '_KeepOptionalLibrariesOutOfKeras' for f in sys.meta_path)))\n"
            f"sys.argv = {argv!r}\n"
            f"{runner}\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr[-2000:]
    assert done.stdout.split() == ["True", "True", "True"], done.stdout + done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1].startswith("error: "), done.stderr[-2000:]


@pytest.mark.slow
@pytest.mark.parametrize("command", [["probe", "missing.npz"], ["serve", "--model-base-path", "no-models"]],
                         ids=["one-job command", "server"])
def test_a_vae_tf_process_imports_keras_without_its_optional_libraries_which_still_import_when_needed(command):
    """``import keras`` loads scikit-learn (and much of SciPy) for Keras' scikit-learn wrappers,
    matplotlib's pyplot for its image galleries and pandas so that ``fit`` takes DataFrames, ~1.1 s
    that no `vae-tf` command uses: in the program's processes those Keras modules find none of the
    three, and every other import of them works as usual (vae-tf's metrics fit scikit-learn models,
    its figures draw with pyplot, MLflow uses pandas). Without the hook, the same import does load
    all three (the next test: so this check is not vacuous here)."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    libraries = "('sklearn', 'matplotlib', 'pandas')"
    program = ("import sys, vae_tf_cli\n"
               f"vae_tf_cli.run({command!r})\n"
               "import keras\n"
               "from keras.src.wrappers import sklearn_wrapper\n"
               "from keras.src.visualization import plot_image_gallery\n"
               "from keras.src.trainers.data_adapters import array_slicing\n"
               f"print([m in sys.modules for m in {libraries}], sklearn_wrapper.sklearn is None,\n"
               "      plot_image_gallery.plt is None, array_slicing.pandas is None)\n"
               "from sklearn.linear_model import LogisticRegression\n"
               "import numpy as np\n"
               "x = np.arange(8.0)[:, None]\n"
               "print(LogisticRegression().fit(x, x[:, 0] > 3).predict([[0.0], [7.0]]).tolist())\n"
               "import matplotlib\n"
               "matplotlib.use('Agg')\n"
               "import matplotlib.pyplot as plt\n"
               "print(type(plt.figure()).__name__)\n"
               "import pandas\n"
               "print(int(pandas.DataFrame({'a': [1, 2]})['a'].sum()))\n")
    done = subprocess.run([sys.executable, "-c", program], cwd=root, capture_output=True, text=True, timeout=120)
    assert done.stdout.splitlines() == ["[False, False, False] True True True", "[False, True]", "Figure", "3"], (
        done.stdout + done.stderr[-2000:])


@pytest.mark.slow
def test_keras_imported_outside_a_vae_tf_process_loads_its_optional_libraries():
    """The control of the test above (run once, not per command): without the hook, ``import
    keras`` here does load scikit-learn, matplotlib and pandas."""
    import subprocess
    import sys
    from pathlib import Path

    plain = subprocess.run([sys.executable, "-c", "import sys, keras; print([m in sys.modules for m in "
                            "('sklearn', 'matplotlib', 'pandas')])"],
                           cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=120)
    assert plain.stdout.split("\n")[0] == "[True, True, True]", plain.stdout + plain.stderr[-2000:]


def test_library_calls_turn_mlflow_s_artifact_progress_bars_off_for_their_copies_only(monkeypatch):
    """A library caller of run_training saw MLflow's bar as each run's model was logged: the copy
    runs with the bars off, the caller's environment is left as it was, and a user's setting wins."""
    import os

    from training.tracking import artifact_progress_bars_off

    name = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    monkeypatch.delenv(name, raising=False)
    with artifact_progress_bars_off():
        assert os.environ[name] == "false"
    assert name not in os.environ
    with pytest.raises(RuntimeError), artifact_progress_bars_off():
        raise RuntimeError("a failed copy")
    assert name not in os.environ
    monkeypatch.setenv(name, "true")
    with artifact_progress_bars_off():
        assert os.environ[name] == "true"
    assert os.environ[name] == "true"


def test_a_vae_tf_process_turns_mlflow_s_artifact_progress_bars_off_unless_the_user_set_them():
    """Registering a run's model copies its local SavedModel, and MLflow drew a "Downloading
    artifacts: 100%|..." bar on stderr under every run; a user's own setting wins."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    code = ("import os, vae_tf_cli\nvae_tf_cli.prepare_job_process()\n"
            "print(os.environ['MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR'])\n")
    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"}
    for user, expected in ((None, "false"), ("true", "true")):
        run_env = env if user is None else {**env, "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": user}
        done = subprocess.run([sys.executable, "-c", code], cwd=root, env=run_env, capture_output=True, text=True,
                              timeout=120)
        assert done.stdout.strip() == expected, done.stderr[-2000:]
