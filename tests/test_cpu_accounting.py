"""tests/cpu_accounting.py, the plugin that says where a test run's CPU goes: run on a small test
file whose tests burn a known amount of CPU in the test process or in a subprocess, with and
without pytest-xdist, it charges each test's CPU to the right place."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.benchmark_helpers import REPO_ROOT

BURN = "import time\nend = time.process_time() + {seconds}\nwhile time.process_time() < end: pass\n"

TESTS = f'''
import subprocess, sys, time

def burn(seconds):
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass

def test_in_process():
    burn(0.6)

def test_in_a_subprocess():
    subprocess.run([sys.executable, "-c", {BURN.format(seconds=0.8)!r}], check=True)

def test_waits():
    time.sleep(0.5)
'''


@pytest.mark.slow
@pytest.mark.parametrize("workers", [None, "2"], ids=["one process", "xdist"])
def test_each_tests_cpu_is_charged_to_the_process_that_spent_it(tmp_path, workers):
    (tmp_path / "test_work.py").write_text(TESTS)
    out = tmp_path / "out" / "cpu.json"
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.cpu_accounting",
               "--record-cpu", str(out), "--rootdir", str(tmp_path), str(tmp_path / "test_work.py"),
               *(["-n", workers] if workers else [])]
    proc = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=240,
                          env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads(out.read_text())
    tests = {nodeid.split("::")[1]: row for nodeid, row in report["tests"].items()}
    assert set(tests) == {"test_in_process", "test_in_a_subprocess", "test_waits"}
    # process_time counts user + system, as getrusage does; the upper bounds leave room for the test's
    # own overhead and the child's start-up, not for a phase counted twice (a report repeats earlier phases')
    assert 0.55 <= tests["test_in_process"]["self"] < 1.1 and tests["test_in_process"]["children"] < 0.05
    assert 0.75 <= tests["test_in_a_subprocess"]["children"] < 1.5
    assert tests["test_in_a_subprocess"]["self"] < 0.5
    waits = tests["test_waits"]
    assert waits["wall"] >= 0.5 and waits["self"] < 0.2 and waits["children"] < 0.05
    (path,) = report["files"]
    for field in ("wall", "self", "children"):
        assert report["files"][path][field] == pytest.approx(sum(row[field] for row in tests.values()), abs=0.01)
        assert report["total"][field] == pytest.approx(report["files"][path][field], abs=0.01)
    assert next(iter(report["tests"])).endswith("test_in_a_subprocess")  # largest CPU first
    assert not out.with_name("cpu.json.partial").exists()
