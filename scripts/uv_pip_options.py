"""Print the `uv pip install` options that give uv the package sources this machine's pip uses.

`make install` installs with uv (parallel downloads, ~3x faster than pip here), but uv reads no
pip configuration: a machine whose pip finds a local wheel through `find-links` (for example a
CPU build of torch) or an index mirror through `index-url` would send uv elsewhere, or to PyPI's
multi-gigabyte CUDA build of torch. This script reads pip's effective configuration (`pip config
list`: environment variables and configuration files) and prints one option per line:

- `--find-links X` and `--extra-index-url X`: each location that exists (pip skips a missing
  local one with a warning; uv would stop);
- `--index-url X`: a configured index in place of PyPI;
- `--index-strategy unsafe-best-match` with any extra index: pip takes the best version from all
  indexes together, uv by default only from the first index that has the package (an extra index
  holding one old release of a package made uv's resolution fail);
- `--system-certs`: when pip is told which certificates to trust (`cert`), uv uses the system's
  trust store too, instead of its own bundle.

Run with the virtual environment's Python: ``python scripts/uv_pip_options.py``.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from urllib.parse import urlparse

#: pip settings (the name after the section, as `pip config list` prints it) -> uv option.
LOCATIONS = {"find-links": "--find-links", "extra-index-url": "--extra-index-url", "index-url": "--index-url"}


def pip_settings(listing: str) -> dict[str, list[str]]:
    """``{setting: [values]}`` from `pip config list` output: ``section.name='value'`` lines
    (``:env:.name`` for environment variables), the value as Python writes a string; pip splits a
    value into whitespace-separated locations, and so does this. Values are in pip's order of
    precedence, the one that wins last: configuration files as listed (global, user, site), then
    the environment. Each location is kept once."""
    files, environment = [], []
    for line in listing.splitlines():
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            continue
        try:
            value = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            continue
        if not isinstance(value, str):
            continue
        key = key.strip()
        (environment if key.startswith(":env:") else files).append((key.rpartition(".")[2], value.split()))
    settings: dict[str, list[str]] = {}
    for name, items in files + environment:
        values = settings.setdefault(name, [])
        values += [item for item in items if item not in values]
    return settings


def exists(location: str) -> bool:
    """A URL is taken as reachable (uv reports it if not); a local path or file:// URL must exist."""
    parsed = urlparse(location)
    if parsed.scheme in ("http", "https"):
        return True
    path = parsed.path if parsed.scheme == "file" else location
    return os.path.exists(path)


def uv_options(settings: dict[str, list[str]]) -> list[str]:
    options = []
    for name, flag in LOCATIONS.items():
        found = [location for location in settings.get(name, []) if exists(location)]
        if flag == "--index-url":
            found = found[-1:]  # one index in place of PyPI: the one pip's precedence picks
        for location in found:
            options += [flag, location]
    if "--extra-index-url" in options:
        options += ["--index-strategy", "unsafe-best-match"]
    if settings.get("cert"):
        options.append("--system-certs")
    return options


def main() -> int:
    listing = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True,
                             check=False).stdout
    for option in uv_options(pip_settings(listing)):
        print(option)
    return 0


if __name__ == "__main__":
    sys.exit(main())
