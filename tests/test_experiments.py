"""The resumable studies in experiments/: what a user meets before, during and after a run
(their training itself is what docs/results.md reports; nothing here trains). Each check below
was a traceback, a silent mix of settings or a run trained before a typo was noticed."""

from __future__ import annotations

import argparse
import json

import pytest

from experiments import capacity_study, ng_vae_study, selective_collapse, study_files
from tests.conftest import assert_one_line
from vae_tf.errors import ConfigError


@pytest.mark.parametrize("text, seeds", [("0,1,2", [0, 1, 2]), (" 3 ", [3]), ("4, 7", [4, 7])])
def test_seeds_are_read_before_anything_trains(text, seeds):
    assert study_files.seed_list(text) == seeds


@pytest.mark.parametrize("text", ["0,x", "", "0,,1", "0 1 2", "-1", "1,1", "1.5"])
def test_a_bad_seed_list_is_refused_by_the_parser(text):
    with pytest.raises(argparse.ArgumentTypeError):
        study_files.seed_list(text)


@pytest.mark.parametrize("study", [capacity_study, ng_vae_study])
def test_a_bad_seed_list_stops_the_study_in_one_line_before_a_run_trains(study, monkeypatch, capsys, tmp_path):
    """``--seeds 0,x`` trained and wrote seed 0, then failed with int()'s traceback."""
    monkeypatch.setattr(study, "run_one", lambda *a, **k: pytest.fail("a run trained"))
    with pytest.raises(SystemExit) as stopped:
        study.main(["--seeds", "0,x", "--out", str(tmp_path)])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert_one_line(err.strip())
    assert "argument --seeds: give comma-separated non-negative integers such as 0,1,2, not '0,x'" in err
    assert not list(tmp_path.iterdir())


def _record(path, **fields):
    path.write_text(json.dumps({"condition": "ng", "seed": 0, **fields}))


def test_a_run_made_with_other_settings_is_refused_not_mixed_into_the_tables(tmp_path, monkeypatch):
    """Resuming looked only at the file's name: ``--epochs 2`` kept a 1-epoch run beside 2-epoch
    ones and the report averaged them without a word. Old records (no ``settings``) are compared
    by the fields they hold."""
    _record(tmp_path / "ng-seed0.json", epochs=1, n_samples=20000)
    monkeypatch.setattr(ng_vae_study, "run_one", lambda *a, **k: pytest.fail("a run trained"))
    with pytest.raises(ConfigError) as refused:
        ng_vae_study.main(["--conditions", "ng", "--seeds", "0,1", "--epochs", "2", "--out", str(tmp_path)])
    assert str(refused.value) == (f"{tmp_path / 'ng-seed0.json'} was made with epochs=1, not 2: give another --out "
                                  "for these settings (or delete the file to replace its run)")
    # the committed records predate "settings": their latent_dim is the length of their per-dim MI
    _record(tmp_path / "ng-seed0.json", epochs=30, n_samples=20000, mi_per_dim=[0.1] * 10)
    with pytest.raises(ConfigError, match="was made with latent_dim=10, not 5"):
        ng_vae_study.main(["--conditions", "ng", "--seeds", "0,3", "--latent-dim", "5", "--out", str(tmp_path)])
    # the pixels reference trains no model: another --epochs does not concern it
    (tmp_path / "pixels-seed0.json").write_text(json.dumps(
        {"condition": "pixels", "seed": 0, "family": "pixels", "n_samples": 20000,
         "settings": {"n_samples": 20000}}))
    (tmp_path / "ng-seed0.json").unlink()
    assert ng_vae_study.main(["--conditions", "pixels", "--seeds", "0", "--epochs", "2", "--out", str(tmp_path)]) == 0
    # what a new record keeps, under "settings", is compared too
    _record(tmp_path / "ng-seed0.json", settings={"n_samples": 500, "epochs": 2, "latent_dim": 10})
    with pytest.raises(ConfigError, match="was made with n_samples=500, not 20000"):
        ng_vae_study.main(["--conditions", "ng", "--seeds", "0", "--epochs", "2", "--out", str(tmp_path)])


def test_the_runs_still_to_train_are_those_without_a_readable_file(tmp_path, capsys):
    table = {"vae": {}, "beta": {}}
    settings = {"epochs": 3}
    _record(tmp_path / "vae-seed0.json", epochs=3)
    (tmp_path / "vae-seed1.json").write_text('{"condition": "vae", "seed": 1, "epo')  # cut off mid-write
    pending = study_files.pending_runs(None, "all", table, [0, 1], tmp_path, settings)
    assert [(name, seed) for name, seed, _ in pending] == [("vae", 1), ("beta", 0), ("beta", 1)]
    err = capsys.readouterr().err
    assert f"warning: {tmp_path / 'vae-seed1.json'} is not valid JSON" in err and "trains it again" in err
    # nothing left to train: said, not a silent exit 0 (the docs' commands on the committed folders)
    for name, seed, path in pending:
        _record(path, epochs=3)
    assert study_files.pending_runs(None, "vae,beta", table, [0, 1], tmp_path, settings) == []
    assert capsys.readouterr().err == (f"every run asked for is in {tmp_path} already (4 files): nothing to train; "
                                       "--report prints the tables, another --out runs them again\n")


def test_report_of_a_folder_without_runs_is_an_error_and_a_bad_file_is_named(tmp_path, capsys):
    with pytest.raises(ConfigError) as refused:
        study_files.runs_by_condition(tmp_path / "typo")
    assert str(refused.value) == (f"{tmp_path / 'typo'} does not exist; give --out the folder the study wrote "
                                  "(without --report it trains there)")
    (tmp_path / "vae-seed0.json").write_text("{")
    with pytest.raises(ConfigError, match="holds no run's JSON file that can be read"):
        study_files.runs_by_condition(tmp_path)
    assert str(tmp_path / "vae-seed0.json") in capsys.readouterr().err
    _record(tmp_path / "ng-seed1.json")
    assert list(study_files.runs_by_condition(tmp_path)) == ["ng"]  # the bad file left out, the good one read


@pytest.mark.parametrize("raised, code, said", [
    (KeyboardInterrupt(), 130, "interrupted: the runs already written are kept; the same command goes on with the "
                               "others"),
    # what TensorFlow's pybind11 callbacks raise when Ctrl-C lands inside them (seen in ng_vae_study)
    (RuntimeError("pybind11::error_already_set: MISMATCH of original and normalized active exception types: "
                  "ORIGINAL KeyboardInterrupt REPLACED BY KeyboardInterrupt: <EMPTY MESSAGE>"), 130, "interrupted:"),
    (ConfigError("unknown latent family 'gausian'; choose from gaussian, normal_gamma"), 2,
     "error: unknown latent family 'gausian'; choose from gaussian, normal_gamma"),
])
def test_an_interrupted_or_failed_study_says_so_in_one_line(raised, code, said, capsys):
    def main():
        raise raised

    assert study_files.guarded(main)() == code
    err = capsys.readouterr().err
    assert_one_line(err.strip())
    assert err.startswith(said)


def test_a_script_that_writes_at_its_end_says_nothing_was_kept(capsys):
    def main():
        raise KeyboardInterrupt

    assert study_files.guarded(main, resumable=False)() == 130
    assert capsys.readouterr().err == ("interrupted: the table is written only at the end; the command starts over "
                                       "when run again\n")


def test_another_runtime_error_is_not_taken_for_an_interruption():
    def main():
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError, match="a bug"):
        study_files.guarded(main)()


def test_single_run_scripts_check_their_options_before_training(tmp_path, monkeypatch, capsys):
    """A --json into a missing folder failed after all the training; so did a typo in --families
    (after the first family) and a --ng that is not a JSON object."""
    monkeypatch.setattr(selective_collapse, "train_one", lambda *a, **k: pytest.fail("a run trained"))
    for argv, said in [
        (["--json", str(tmp_path / "missing" / "out.json")], f"the folder of {tmp_path / 'missing' / 'out.json'} does "
                                                             "not exist; create it first"),
        (["--families", "gaussian,gausian"], "--families: unknown latent family gausian; choose from"),
        (["--ng", "[1]"], "argument --ng: give a JSON object such as"),
        (["--ng", "{alpha1: 2}"], "argument --ng: not JSON"),
    ]:
        with pytest.raises(SystemExit) as stopped:
            selective_collapse.main(argv)
        assert stopped.value.code == 2
        err = capsys.readouterr().err
        assert_one_line(err.strip())
        assert said in err, err
