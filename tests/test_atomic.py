"""training.atomic: what every report, result and run record is written with."""

from __future__ import annotations

import json
import os
import stat

import pytest

from training.atomic import replace_atomic, write_json_atomic, write_text_atomic


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_a_new_file_gets_the_permissions_any_new_file_gets(tmp_path, umask_022):
    """They were 0600 (tempfile.mkstemp's), so a suite's report.md and children.json, an
    evaluation's JSON and the run records were unreadable by anyone else sharing the results."""
    (tmp_path / "plain.txt").write_text("x")  # what open() gives under this umask
    write_text_atomic(tmp_path / "report.md", "# report\n")
    write_json_atomic(tmp_path / "children.json", {"a": 1})
    assert _mode(tmp_path / "report.md") == _mode(tmp_path / "plain.txt") == 0o644
    assert _mode(tmp_path / "children.json") == 0o644
    assert json.loads((tmp_path / "children.json").read_text()) == {"a": 1}


def test_a_replaced_file_keeps_its_permissions(tmp_path, umask_022):
    target = tmp_path / "run.json"
    target.write_text("{}")
    os.chmod(target, 0o640)
    write_text_atomic(target, '{"status": "finished"}')
    assert _mode(target) == 0o640 and target.read_text() == '{"status": "finished"}'


def test_a_failed_write_leaves_the_old_file_and_no_temporary_behind(tmp_path):
    target = tmp_path / "report.md"
    target.write_text("old")

    def fail(handle):
        handle.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        replace_atomic(target, fail)
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.md"]


def test_private_files_are_the_writers_only_even_when_replacing_a_readable_one(tmp_path, umask_022):
    """Run records hold the tracking URI, with any password in it (postgresql://user:pw@host/db)."""
    target = tmp_path / "run.json"
    write_json_atomic(target, {"tracking_uri": "postgresql://user:pw@db/mlflow"}, private=True)
    assert _mode(target) == 0o600
    os.chmod(target, 0o644)
    write_json_atomic(target, {"status": "finished"}, private=True)
    assert _mode(target) == 0o600


def test_a_run_record_and_its_journal_are_private(tmp_path, umask_022):
    from training.tracking import RUN_RECORD_NAME, TrackedRun

    run = TrackedRun.__new__(TrackedRun)  # only the file-writing parts, no MLflow
    run.run_dir = tmp_path
    run.tracking_uri, run.experiment, run.run_name, run.tags, run.run_id = "postgresql://u:pw@h/db", "e", "n", {}, "r"
    run.save_record()
    assert _mode(tmp_path / RUN_RECORD_NAME) == 0o600
    run._pending = 0
    run._append("log_params", {"params": {"a": 1}})
    assert _mode(run.journal_path) == 0o600
