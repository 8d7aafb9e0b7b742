"""The test run's own machinery (tests/conftest.py): the order pytest-xdist hands test files out in."""

from __future__ import annotations

import json
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_the_file_seconds_that_order_the_test_run_name_test_files_that_exist():
    """tests/file_seconds.json orders the files pytest-xdist hands out (tests/conftest.py): an entry
    for a file renamed or removed would be silently ignored, so refresh it
    (``make test PYTEST_ARGS=--record-file-seconds``) when this fails."""
    seconds = json.loads((REPO_ROOT / "tests" / "file_seconds.json").read_text())
    assert seconds and all(value >= 0 for value in seconds.values())
    missing = [path for path in seconds if not (REPO_ROOT / path).is_file()]
    assert not missing, f"tests/file_seconds.json names files that do not exist: {missing}"


def test_xdist_gets_the_longest_files_first_each_file_whole_and_in_its_own_order(monkeypatch, tmp_path):
    """tests/conftest.py's collection hook: under a pytest-xdist worker the items are ordered by the
    recorded seconds of their file, longest first (an unrecorded file counts as the median), each
    file's tests stay together and in their order; without xdist nothing moves."""
    import types

    import tests.conftest as conftest

    (tmp_path / "seconds.json").write_text(json.dumps({"tests/a.py": 5.0, "tests/b.py": 50.0, "tests/c.py": 1.0}))
    monkeypatch.setattr(conftest, "FILE_SECONDS", tmp_path / "seconds.json")
    ids = ["tests/a.py::t1", "tests/a.py::t2", "tests/c.py::t1", "tests/new.py::t1", "tests/b.py::t2",
           "tests/b.py::t1"]
    items = [types.SimpleNamespace(nodeid=i) for i in ids]
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    conftest.pytest_collection_modifyitems(None, items)
    assert [i.nodeid for i in items] == ids
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw0")
    conftest.pytest_collection_modifyitems(None, items)
    # b (50 s), then a (5 s) and the unrecorded file at the median (5 s) in collection order, then c.
    assert [i.nodeid for i in items] == ["tests/b.py::t2", "tests/b.py::t1", "tests/a.py::t1", "tests/a.py::t2",
                                         "tests/new.py::t1", "tests/c.py::t1"]
