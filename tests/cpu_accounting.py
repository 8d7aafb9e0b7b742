"""Where a test run's CPU goes: each test's CPU seconds in the test process and in the
subprocesses it started, written to a JSON file (docs/performance.md, the test loop). A plugin
loaded on demand, not by default:

    make test PYTEST_ARGS="-q -p tests.cpu_accounting --record-cpu cpu.json"

For each test phase (setup, call, teardown) it takes ``resource.getrusage`` of the test process
(``RUSAGE_SELF``: user + system, all its threads) and of its children (``RUSAGE_CHILDREN``: the
subprocesses the phase started and waited for; one never waited for is not counted) before and
after. Under pytest-xdist each worker measures its own tests and sends the figures to the
controlling process with the test's reports (``user_properties``), which writes the file after
the run: ``{"tests": {nodeid: {"wall", "self", "children"}}, "files": {path: {...}}, "total":
{...}}``, largest first.
"""

from __future__ import annotations

import json
import resource
import time
from pathlib import Path

import pytest

PROPERTY = "cpu_accounting"
FIELDS = ("wall", "self", "children")


def pytest_addoption(parser):
    parser.addoption("--record-cpu", metavar="PATH", default=None,
                     help="write each test's CPU seconds, in the test process and in its subprocesses, to PATH (JSON)")


def _now() -> tuple[float, float, float]:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.perf_counter(), own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


def _measured(item, when: str):
    before = _now()
    yield
    if item.config.getoption("--record-cpu"):
        item.user_properties.append((PROPERTY, {"when": when, **{k: b - a for k, a, b in zip(FIELDS, before, _now())}}))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item):
    yield from _measured(item, "setup")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    yield from _measured(item, "call")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item):
    yield from _measured(item, "teardown")


class _Recorder:
    """In the controlling process: the phases' figures from the reports, summed per test and file."""

    def __init__(self, path: Path):
        self.path = path
        self.phases: dict[tuple[str, str], dict] = {}  # (nodeid, phase) -> figures; a report repeats earlier phases'

    def pytest_runtest_logreport(self, report):
        for name, value in report.user_properties:
            if name == PROPERTY:
                self.phases[(report.nodeid, value["when"])] = value

    def pytest_sessionfinish(self, session):
        def summed(rows) -> dict[str, dict]:  # (key, figures) pairs -> figures summed per key
            sums: dict[str, dict] = {}
            for key, value in rows:
                total = sums.setdefault(key, dict.fromkeys(FIELDS, 0.0))
                for k in FIELDS:
                    total[k] += value[k]
            return sums

        tests = summed((nodeid, value) for (nodeid, _), value in self.phases.items())
        files = summed((nodeid.split("::")[0], row) for nodeid, row in tests.items())

        def ordered(rows):
            return {k: {f: round(v[f], 3) for f in FIELDS}
                    for k, v in sorted(rows.items(), key=lambda kv: -(kv[1]["self"] + kv[1]["children"]))}

        report = {"tests": ordered(tests), "files": ordered(files),
                  "total": {f: round(sum(r[f] for r in tests.values()), 3) for f in FIELDS}}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(self.path.name + ".partial")
        partial.write_text(json.dumps(report, indent=1) + "\n")
        partial.replace(self.path)


def pytest_configure(config):
    path = config.getoption("--record-cpu")
    if path and not hasattr(config, "workerinput"):  # the controlling process (or a run without xdist)
        config.pluginmanager.register(_Recorder(Path(path)), "cpu-accounting-recorder")
