"""What the resumable studies in this folder share: their per-run JSON files (one per
condition and seed, read back for the report), how a column is written (mean ± sample std over
the seeds, ddof = 1), and how a study process meets its user (one-line errors, Ctrl-C, resuming).

A study resumes by its files: a run whose JSON exists is not trained again, provided it was made
with the settings asked for now (``epochs``, ``n_samples``, ...); a file made with others is
refused in one line rather than silently mixed into the tables, and a file that is not valid
JSON (cut off by a full disk, edited by hand) is trained again after a warning."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from vae_tf.errors import ConfigError, VaeTfError


def mean_std(values, fmt: str = "{:.2f}") -> str:
    """``mean ± std`` (sample std, ddof = 1) of a column's values; one value as itself."""
    values = np.asarray(values, dtype=float)
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(values.mean())} ± {fmt.format(values.std(ddof=1))}"


def seed_list(text: str) -> list[int]:
    """``--seeds``: comma-separated non-negative integers (``0,1,2``), as an argparse ``type``, so a
    mistake is refused before anything trains (``0,x`` trained seed 0 first)."""
    parts = [part.strip() for part in text.split(",")]
    if not text.strip() or not all(part.isdigit() for part in parts):
        raise argparse.ArgumentTypeError(f"give comma-separated non-negative integers such as 0,1,2, not {text!r}")
    seeds = [int(part) for part in parts]
    if len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"{text!r} names a seed twice")
    return seeds


def json_output(text: str) -> Path:
    """``--json FILE``, as an argparse ``type``: its folder must exist, checked before anything
    trains (a missing folder failed after all the training)."""
    path = Path(text)
    if not path.parent.is_dir():
        raise argparse.ArgumentTypeError(f"the folder of {text} does not exist; create it first")
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder; give a file name")
    return path


def json_object(text: str) -> dict:
    """An option holding a JSON object (``'{"alpha1": 21}'``), as an argparse ``type``."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not JSON ({err}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"give a JSON object such as '{{\"alpha1\": 21}}', not {text!r}")
    return value


def read_record(path: Path) -> dict | None:
    """One run's record, or None (with a warning) when the file is not valid JSON."""
    try:
        record = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        print(f"warning: {path} is not valid JSON ({err}); it is left out (a study run trains it again)",
              file=sys.stderr)
        return None
    except OSError as err:
        raise ConfigError(f"{path} cannot be read ({err.strerror or err}); fix its permissions or move it away") from None
    if not isinstance(record, dict) or "condition" not in record:
        print(f"warning: {path} is not a study run's record (no 'condition'); it is left out (a study run "
              "trains its run again over it)", file=sys.stderr)
        return None
    return record


def runs_by_condition(out: Path) -> dict[str, list[dict]]:
    """The JSON records under ``out``, grouped by their ``condition``, in file-name order;
    ConfigError when there are none (a mistyped ``--out`` printed an empty table)."""
    out = Path(out)
    paths = sorted(out.glob("*.json")) if out.is_dir() else []
    runs: dict[str, list[dict]] = {}
    for path in paths:
        record = read_record(path)
        if record is not None:
            runs.setdefault(record["condition"], []).append(record)
    if not runs:
        what = "does not exist" if not out.exists() else "holds no run's JSON file that can be read"
        raise ConfigError(f"{out} {what}; give --out the folder the study wrote (without --report it trains there)")
    return runs


def write_record(path: Path, record: dict) -> None:
    """One run's JSON, never half-written (:func:`training.atomic.write_json_atomic`: a temporary
    file of its own, fsynced, then renamed; two studies writing at once no longer share one
    ``.tmp`` name)."""
    from training.atomic import write_json_atomic

    write_json_atomic(path, record, indent=1, sort_keys=False)


def pending_runs(parser, conditions: str, table, seeds: list[int], out: Path, settings=None, recorded=None):
    """``(name, seed, path)`` of each requested run still to train (resumable): its JSON does not
    exist yet, or is not valid JSON. ``conditions`` is ``all`` or a comma-separated list of
    ``table``'s names (an unknown one is the parser's one-line error). ``settings`` (a dict, or a
    function of the condition's name giving one) are what the records must have been made with
    (``{"epochs": 30, ...}``; a record holding another value of one of them is a ConfigError,
    checked for every run before the first trains); the records keep them under ``settings``, and
    ``recorded(record)`` gives those an older record holds in other forms (e.g. ``latent_dim`` as
    the length of a per-dimension list). Says so when every run asked for is there already."""
    names = list(table) if conditions == "all" else [n.strip() for n in conditions.split(",")]
    unknown = [n for n in names if n not in table]
    if unknown:
        parser.error(f"unknown condition(s) {', '.join(unknown)}; choose from {', '.join(table)}")
    settings_of = settings if callable(settings) else (lambda name: settings or {})
    out.mkdir(parents=True, exist_ok=True)
    pending, kept = [], 0
    for name in names:
        for seed in seeds:
            path = out / f"{name}-seed{seed}.json"
            record = read_record(path) if path.exists() else None
            if record is None:
                pending.append((name, seed, path))
                continue
            wanted = settings_of(name)
            kept_settings = record.get("settings")
            made = {**(recorded(record) if recorded else {}), **{k: record[k] for k in wanted if k in record},
                    **(kept_settings if isinstance(kept_settings, dict) else {})}
            differ = {k: (made[k], v) for k, v in wanted.items() if k in made and made[k] != v}
            if differ:
                said = ", ".join(f"{k}={was}, not {now}" for k, (was, now) in differ.items())
                raise ConfigError(f"{path} was made with {said}: give another --out for these settings (or "
                                  "delete the file to replace its run)")
            kept += 1
    if not pending:
        print(f"every run asked for is in {out} already ({kept} files): nothing to train; --report prints the "
              "tables, another --out runs them again", file=sys.stderr)
    return pending


def guarded(main, resumable: bool = True):
    """``main`` as a job whose failures meet the user as the ``vae-tf`` program's do: a package
    error is one line (exit 2) and Ctrl-C says how to go on (exit 130: for a ``resumable`` study,
    that its finished runs are kept; else that it starts over) instead of a traceback.
    TensorFlow's C++ callbacks can turn a KeyboardInterrupt into pybind11's ``RuntimeError``
    naming it (``... ORIGINAL KeyboardInterrupt REPLACED BY ...``); that is an interruption too."""

    def job() -> int:
        try:
            return main()
        except VaeTfError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        except (KeyboardInterrupt, RuntimeError) as err:
            if isinstance(err, RuntimeError) and "KeyboardInterrupt" not in str(err):
                raise
            print("interrupted: the runs already written are kept; the same command goes on with the others"
                  if resumable else "interrupted: the table is written only at the end; the command starts over "
                  "when run again", file=sys.stderr)
            return 130

    return job


def run_study(main, resumable: bool = True) -> int:
    """``main()``'s exit code, :func:`guarded`, run as the one job of a study process (as a
    ``vae-tf`` program runs: no TensorFlow start-up chatter, no final garbage collections)."""
    from vae_tf_cli import quiet_libraries, run_job

    quiet_libraries()
    return run_job(guarded(main, resumable))


def study_parser(description: str) -> argparse.ArgumentParser:
    """The studies' argument parser: its errors are one line, as the ``vae-tf`` program's."""
    from vae_tf_cli import OneLineParser

    return OneLineParser(description=description)
