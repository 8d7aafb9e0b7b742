"""scripts/uv_pip_options.py: the package sources pip is configured with, handed to uv by `make
install` (uv reads no pip configuration)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "uv_pip_options.py"
sys.path.insert(0, str(SCRIPT.parent))
import uv_pip_options  # noqa: E402

# What `pip config list` printed on a machine of this project's kind (pip 23.2).
LISTING = """\
:env:.cert='/etc/ssl/certs/ca-certificates.crt'
:env:.default-timeout='180'
:env:.find-links='{wheels}'
global.cert='/etc/ssl/certs/ca-certificates.crt'
global.constraint='/etc/xdg/pip/constraints.txt'
global.extra-index-url='file://{missing}/simple file://{index}'
global.find-links='{wheels}'
"""


def test_settings_are_read_per_name_split_into_locations_each_kept_once():
    settings = uv_pip_options.pip_settings(LISTING.format(wheels="/opt/wheels", missing="/nowhere", index="/srv/idx")
                                           + "a line that is not a setting\nglobal.timeout=oops\n")
    assert settings["find-links"] == ["/opt/wheels"]  # in the environment and in the file: once
    assert settings["extra-index-url"] == ["file:///nowhere/simple", "file:///srv/idx"]
    assert settings["cert"] == ["/etc/ssl/certs/ca-certificates.crt"]
    assert settings["default-timeout"] == ["180"]
    assert "timeout" not in settings  # not a quoted string: skipped, not guessed


def test_only_locations_that_exist_are_passed_all_indexes_alike_and_a_cert_means_the_system_trust_store(tmp_path):
    wheels, index = tmp_path / "wheels", tmp_path / "index"
    wheels.mkdir()
    index.mkdir()
    settings = uv_pip_options.pip_settings(LISTING.format(wheels=wheels, missing=tmp_path / "gone", index=index))
    assert uv_pip_options.uv_options(settings) == ["--find-links", str(wheels), "--extra-index-url", f"file://{index}",
                                                   "--index-strategy", "unsafe-best-match", "--system-certs"]


def test_one_index_mirror_replaces_pypi_as_pip_picks_it_and_remote_locations_are_kept():
    # pip's precedence: a user file over the global one, the environment over both.
    files = ("global.index-url='https://mirror.example/simple'\n"
             "user.index-url='https://other.example/simple'\n"
             "global.find-links='https://wheels.example/'\n")
    assert uv_pip_options.uv_options(uv_pip_options.pip_settings(files)) == [
        "--find-links", "https://wheels.example/", "--index-url", "https://other.example/simple"]
    environment = ":env:.index-url='https://env.example/simple'\n" + files  # pip lists the environment first
    assert uv_pip_options.uv_options(uv_pip_options.pip_settings(environment))[-1] == "https://env.example/simple"
    assert uv_pip_options.uv_options({}) == []


def test_the_script_prints_one_option_per_line_for_this_python():
    # Run as `make install` runs it; whatever this machine's pip configuration, every printed
    # location is one the options above accept.
    out = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, check=True).stdout.splitlines()
    flags = [item for item in out if item.startswith("--")]
    assert set(flags) <= {"--find-links", "--extra-index-url", "--index-url", "--index-strategy", "--system-certs"}
    for flag, value in zip(out, out[1:]):
        if flag in ("--find-links", "--extra-index-url", "--index-url"):
            assert uv_pip_options.exists(value)


def test_the_script_reads_pip_s_own_configuration_file(tmp_path):
    """A pip configuration file it is pointed at (PIP_CONFIG_FILE, as pip reads it) comes out as
    uv's options, each flag and each value on a line of its own."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    config = tmp_path / "pip.conf"
    config.write_text(f"[global]\nindex-url = https://mirror.example/simple\nfind-links = {wheels}\n")
    env = {**os.environ, "PIP_CONFIG_FILE": str(config)}
    env = {k: v for k, v in env.items() if not (k.startswith("PIP_") and k != "PIP_CONFIG_FILE")}
    out = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, check=True, env=env).stdout
    lines = out.splitlines()
    assert ["--index-url", "https://mirror.example/simple"] == lines[lines.index("--index-url"):][:2]
    assert ["--find-links", str(wheels)] == lines[lines.index("--find-links"):][:2]
