"""CPU time of ``serving.json_codec.parse_document`` (how `vae-tf serve` reads a REST body) now,
against the same module at another commit, side by side in one process.

The body is a TF Serving row-format ``encode`` request of ``--rows`` random 28x28x1 float32 images
(``json.dumps`` of ``tolist()``, as a Python client writes it) and one of 8x8x1 images (the
default serving model's input). Both modules must parse each body to the same document. Rounds
alternate the two, each timing ``--calls`` parses; the table gives each one's best round.

    python benchmarks/json_parse.py --before 9f0c1de --rounds 7
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import timeit
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import command_line, machine_info  # noqa: E402


def module_at(revision: str):
    """``serving/json_codec.py`` as it was at ``revision``, imported under another name."""
    source = subprocess.run(["git", "-C", str(REPO), "show", f"{revision}:serving/json_codec.py"], check=True,
                            capture_output=True).stdout
    with tempfile.TemporaryDirectory(prefix="json-codec-") as folder:
        path = Path(folder) / "json_codec_before.py"
        path.write_bytes(source)
        spec = importlib.util.spec_from_file_location("json_codec_before", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)  # read now: the file may go
    return module


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="the commit to compare with")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 32])
    args = parser.parse_args(argv)
    from serving import json_codec as now

    before = module_at(args.before)
    info = machine_info()
    print(f"`{command_line()}`\n")
    print(f"{info['cpu']} ({info['cpus_usable']} usable CPUs), commit {info['git_commit']}"
          f"{' (modified)' if info['git_dirty'] else ''}, load average {info['load_average']}; best of "
          f"{args.rounds} rounds.\n")
    print(f"| image | rows | body bytes | {args.before} (ms) | now (ms) | now / before |")
    print("|---|---:|---:|---:|---:|---:|")
    for side in (28, 8):
        for rows in args.rows:
            x = np.random.default_rng(0).random((rows, side, side, 1)).astype(np.float32)
            body = json.dumps({"signature_name": "encode", "instances": x.tolist()}).encode()
            if before.parse_document(body) != now.parse_document(body):
                raise SystemExit("the two versions parse the body differently")
            calls = max(10, int(2e6 // len(body)))
            best = {"before": float("inf"), "now": float("inf")}
            for _ in range(args.rounds):
                for name, module in (("before", before), ("now", now)):
                    seconds = timeit.timeit(lambda m=module: m.parse_document(body), number=calls) / calls
                    best[name] = min(best[name], seconds)
            print(f"| {side}x{side} | {rows} | {len(body):,} | {best['before'] * 1e3:.3f} | {best['now'] * 1e3:.3f} | "
                  f"{best['now'] / best['before']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
