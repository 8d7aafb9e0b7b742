"""The test run's own machinery (tests/conftest.py): the order pytest-xdist hands test files out in."""

from __future__ import annotations

import json
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_the_file_seconds_that_order_the_test_run_name_test_files_that_exist():
    """tests/file_seconds.json orders the files pytest-xdist hands out (tests/conftest.py): an entry
    for a file renamed or removed would be silently ignored, so refresh it
    (``make test PYTEST_ARGS=--record-file-seconds``) when this fails."""
    from tests.conftest import TIERS

    seconds = json.loads((REPO_ROOT / "tests" / "file_seconds.json").read_text())
    assert seconds and all(tiers and set(tiers) <= set(TIERS) and min(tiers.values()) >= 0
                           for tiers in seconds.values())
    missing = [path for path in seconds if not (REPO_ROOT / path).is_file()]
    assert not missing, f"tests/file_seconds.json names files that do not exist: {missing}"


def _items(ids, slow=()):
    import types

    return [types.SimpleNamespace(nodeid=i, get_closest_marker=lambda name, i=i: object() if name == "slow" and i in slow
                                  else None) for i in ids]


def test_xdist_gets_the_longest_files_first_each_file_whole_and_in_its_own_order(monkeypatch, tmp_path):
    """tests/conftest.py's collection hook: under a pytest-xdist worker the items are ordered by the
    recorded seconds of their file in the tiers this run has of it, longest first (an unrecorded
    file counts as the median), each file's tests stay together and in their order; without xdist
    nothing moves."""
    import tests.conftest as conftest

    (tmp_path / "seconds.json").write_text(json.dumps({
        "tests/a.py": {"fast": 5.0, "slow": 100.0}, "tests/b.py": {"fast": 50.0}, "tests/c.py": {"fast": 1.0}}))
    monkeypatch.setattr(conftest, "FILE_SECONDS", tmp_path / "seconds.json")
    ids = ["tests/a.py::t1", "tests/a.py::t2", "tests/c.py::t1", "tests/new.py::t1", "tests/b.py::t2",
           "tests/b.py::t1"]
    items = _items(ids)
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    conftest.pytest_collection_modifyitems(None, items)
    assert [i.nodeid for i in items] == ids
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw0")
    # `make test-fast`: a's slow test is not collected, so a counts 5 s: b (50 s), then a and the
    # unrecorded file at the median (5 s) in collection order, then c.
    conftest.pytest_collection_modifyitems(None, items)
    assert [i.nodeid for i in items] == ["tests/b.py::t2", "tests/b.py::t1", "tests/a.py::t1", "tests/a.py::t2",
                                         "tests/new.py::t1", "tests/c.py::t1"]
    # `make test`: a's slow test runs, so a (105 s) goes first, its three tests together; the median
    # is now 50 s, b's, and the unrecorded file comes first of the two as it did in the collection.
    items = _items(ids + ["tests/a.py::t3"], slow={"tests/a.py::t3"})
    conftest.pytest_collection_modifyitems(None, items)
    assert [i.nodeid for i in items] == ["tests/a.py::t1", "tests/a.py::t2", "tests/a.py::t3", "tests/new.py::t1",
                                         "tests/b.py::t2", "tests/b.py::t1", "tests/c.py::t1"]


def test_recording_sums_each_files_tiers_and_a_run_of_one_tier_keeps_the_other(monkeypatch, tmp_path):
    """--record-file-seconds: each file's setup + call + teardown seconds summed per tier (the
    tier each report carries, from the test's marker); a run that failed writes nothing; a run of
    the fast tier updates that tier and keeps the slow tier recorded before, and files it did not
    run; a tier a run selected that a file no longer has is dropped; a -k run drops nothing."""
    import types

    import tests.conftest as conftest

    path = tmp_path / "seconds.json"
    path.write_text(json.dumps({"tests/a.py": {"fast": 9.0, "slow": 100.0}, "tests/old.py": {"fast": 3.0},
                                "tests/c.py": {"fast": 1.0, "slow": 50.0}}))
    monkeypatch.setattr(conftest, "FILE_SECONDS", path)

    def run(reports, exitstatus=0, markexpr="", keyword=""):
        recorder = conftest._FileSeconds()
        for nodeid, duration, slow in reports:
            # a parametrize id "slow" among the keywords does not make a test slow
            recorder.pytest_runtest_logreport(types.SimpleNamespace(
                nodeid=nodeid, duration=duration, keywords={"slow": 1},
                user_properties=[("tier", "slow" if slow else "fast")]))
        session = types.SimpleNamespace(config=types.SimpleNamespace(option=types.SimpleNamespace(
            markexpr=markexpr, keyword=keyword)))
        recorder.pytest_sessionfinish(session, exitstatus)
        return json.loads(path.read_text())

    before = json.loads(path.read_text())
    assert run([("tests/a.py::t1", 1.0, False)], exitstatus=1) == before
    fast_only = run([("tests/a.py::t1", 0.25, False), ("tests/a.py::t1", 1.5, False), ("tests/a.py::t2", 0.25, False),
                     ("tests/b.py::t1", 200.0, False)], markexpr="not slow")
    assert fast_only == {"tests/b.py": {"fast": 200.0}, "tests/a.py": {"fast": 2.0, "slow": 100.0},
                         "tests/c.py": {"fast": 1.0, "slow": 50.0}, "tests/old.py": {"fast": 3.0}}
    assert list(fast_only) == ["tests/b.py", "tests/a.py", "tests/c.py", "tests/old.py"]  # longest first
    both = run([("tests/a.py::t1", 1.0, False), ("tests/a.py::t3", 7.0, True), ("tests/a.py::t3", 0.5, True),
                ("tests/c.py::t1", 2.0, False)])
    assert both["tests/a.py"] == {"fast": 1.0, "slow": 7.5}
    assert both["tests/c.py"] == {"fast": 2.0}  # its slow tests are gone: so is the tier
    # -k picks tests within the tiers: what it did not run stays recorded
    assert run([("tests/a.py::t3", 2.0, True)], keyword="t3")["tests/a.py"] == {"fast": 1.0, "slow": 2.0}
