"""The Dockerfile's `serving` image matches the exporter (issue 19, item 7): its default
TF_SERVING_VERSION is a release of the TensorFlow (and tensorflow-serving-api) that pyproject.toml
pins, so the default image can load every op the pinned TensorFlow writes into an export."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def _pins() -> dict[str, Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {req.name: req for req in map(Requirement, project["dependencies"])}


def _dockerfile_default(arg: str) -> str:
    found = re.findall(rf"^ARG {arg}=(\S+)\s*$", (ROOT / "Dockerfile").read_text(), flags=re.MULTILINE)
    assert len(found) == 1, f"expected one 'ARG {arg}=<default>' line in the Dockerfile, found {found}"
    return found[0]


def test_tf_serving_default_is_the_pinned_tensorflow_release():
    serving = Version(_dockerfile_default("TF_SERVING_VERSION"))  # a tag such as 2.21.0, never "latest"
    pins = _pins()
    for package in ("tensorflow", "tensorflow-serving-api"):
        spec = pins[package].specifier
        assert spec.contains(serving), (f"Dockerfile TF_SERVING_VERSION={serving} is not allowed by pyproject.toml's "
                                         f"{package}{spec}: move them together")
    # And the pin is one release line, so "the release of the pinned TensorFlow" means one minor.
    lowest = Version(f"{serving.major}.{serving.minor}.0")
    assert pins["tensorflow"].specifier.contains(lowest)
    assert not pins["tensorflow"].specifier.contains(f"{serving.major}.{serving.minor + 1}.0")
    if serving.minor:
        assert not pins["tensorflow"].specifier.contains(f"{serving.major}.{serving.minor - 1}.99")


def test_docs_state_the_same_default():
    default = _dockerfile_default("TF_SERVING_VERSION")
    assert f"`TF_SERVING_VERSION` (build arg, default {default})" in (ROOT / "docs" / "serving.md").read_text()


def test_the_app_image_copies_every_package_the_project_installs():
    """`pip install .` in the app image installs what pyproject.toml's package patterns find; a
    package the Dockerfile does not COPY would be missing from the image (the `vae-tf` entry point
    lives in vae_tf_cli)."""

    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = sorted(p.parent.name for p in ROOT.glob("*/__init__.py")
                      if any(re.fullmatch(pattern.replace("*", ".*"), p.parent.name) for pattern in patterns))
    assert {"vae_tf", "vae_tf_cli", "training", "serving"} <= set(packages)
    copied = set(re.findall(r"^COPY (\w+) \./\1$", (ROOT / "Dockerfile").read_text(), flags=re.MULTILINE))
    assert set(packages) <= copied, sorted(set(packages) - copied)


def test_the_app_image_copies_what_the_build_reads_and_binds_every_interface_whatever_the_command(monkeypatch):
    """pyproject.toml names README.md (the readme) and LICENSE (license-files): the app image
    copied the first only, so its wheel had no licence text and setuptools warned that the build
    will fail from 2027-02-18. And the image's `--host 0.0.0.0` was in CMD, which any command
    given to `docker run` replaces: `vae-tf serve --enable-batching` bound 127.0.0.1 inside the
    container, unreachable through -p, without a word."""
    from vae_tf_cli import build_parser

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    read = {project["readme"], *project["license-files"]}
    dockerfile = (ROOT / "Dockerfile").read_text()
    copied = {name for line in re.findall(r"^COPY (.+) \./$", dockerfile, flags=re.MULTILINE) for name in line.split()}
    assert read <= copied, sorted(read - copied)
    assert "0.0.0.0" not in "".join(re.findall(r"^CMD .*$", dockerfile, flags=re.MULTILINE))
    assert re.findall(r"VAE_TF_SERVE_HOST=(\S+)", dockerfile) == ["0.0.0.0"]
    # what `vae-tf serve --enable-batching` binds with that environment, and without it
    for env, want in (("0.0.0.0", "0.0.0.0"), (None, "127.0.0.1")):
        if env is None:
            monkeypatch.delenv("VAE_TF_SERVE_HOST", raising=False)
        else:
            monkeypatch.setenv("VAE_TF_SERVE_HOST", env)
        assert build_parser()[0].parse_args(["serve", "--enable-batching"]).host == want
    assert build_parser()[0].parse_args(["serve", "--host", "10.0.0.1"]).host == "10.0.0.1"
