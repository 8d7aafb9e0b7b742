"""What the resumable studies in this folder share: their per-run JSON files (one per
condition and seed, read back for the report) and how a column is written (mean ± sample std
over the seeds, ddof = 1)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def mean_std(values, fmt: str = "{:.2f}") -> str:
    """``mean ± std`` (sample std, ddof = 1) of a column's values; one value as itself."""
    values = np.asarray(values, dtype=float)
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(values.mean())} ± {fmt.format(values.std(ddof=1))}"


def runs_by_condition(out: Path) -> dict[str, list[dict]]:
    """The JSON records under ``out``, grouped by their ``condition``, in file-name order."""
    runs: dict[str, list[dict]] = {}
    for path in sorted(Path(out).glob("*.json")):
        record = json.loads(path.read_text())
        runs.setdefault(record["condition"], []).append(record)
    return runs


def write_record(path: Path, record: dict) -> None:
    """One run's JSON, written to a temporary name and renamed: never half-written."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(path)


def pending_runs(parser, conditions: str, table, seeds: str, out: Path):
    """``(name, seed, path)`` of each requested run whose JSON does not exist yet (resumable);
    ``conditions`` is ``all`` or a comma-separated list of ``table``'s names (an unknown one is
    the parser's one-line error)."""
    names = list(table) if conditions == "all" else conditions.split(",")
    unknown = [n for n in names if n not in table]
    if unknown:
        parser.error(f"unknown condition(s) {', '.join(unknown)}; choose from {', '.join(table)}")
    out.mkdir(parents=True, exist_ok=True)
    for name in names:
        for seed in (int(s) for s in seeds.split(",")):
            path = out / f"{name}-seed{seed}.json"
            if not path.exists():
                yield name, seed, path
