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


def _stages() -> dict[str, list[str]]:
    """Each stage's lines (continuations joined), by its name (`FROM ... AS name`)."""
    stages: dict[str, list[str]] = {}
    name = None
    text = re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text())
    for line in text.splitlines():
        line = line.strip()
        found = re.fullmatch(r"FROM (\S+) AS (\S+)", line)
        if found:
            name = found.group(2)
            stages[name] = [line]
        elif name and line and not line.startswith("#"):
            stages[name].append(line)
    return stages


def test_the_beam_worker_image_runs_the_pinned_beam_release_on_the_apps_python():
    """A Beam job needs the launcher's apache-beam release on its workers: the worker image's boot
    program (copied from Beam's SDK image) and the apache-beam installed beside it are the release
    the `beam` extra pins, on the Python of the app image."""
    stages = _stages()
    beam = Version(_dockerfile_default("BEAM_VERSION"))
    extra = {req.name: req for req in map(
        Requirement, tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["beam"])}
    assert extra["apache-beam"].specifier.contains(beam), (f"Dockerfile BEAM_VERSION={beam} is not allowed by the beam "
                                                           f"extra's apache-beam{extra['apache-beam'].specifier}")
    python = re.fullmatch(r"FROM python:(\d+)\.(\d+)-slim AS source", stages["source"][0]).groups()
    assert stages["beam-sdk"][0] == f"FROM apache/beam_python{python[0]}.{python[1]}_sdk:${{BEAM_VERSION}} AS beam-sdk"
    worker = stages["beam-worker"]
    assert worker[0] == "FROM source AS beam-worker"
    install = [line for line in worker if line.startswith("RUN pip install")]
    assert install == ['RUN pip install --no-cache-dir ".[beam]" "apache-beam[${BEAM_EXTRAS}]==${BEAM_VERSION}"'], install
    assert "ARG BEAM_VERSION" in worker  # the global default, visible to the stage's RUN
    assert "ARG BEAM_EXTRAS=" in worker  # none by default: `apache-beam[]==...` is the plain package
    for extras in ("", "gcp", "gcp,aws"):
        req = Requirement(f"apache-beam[{extras}]=={beam}")
        assert req.name == "apache-beam" and req.extras == set(filter(None, extras.split(","))) and req.specifier.contains(beam)
    assert "COPY --from=beam-sdk /opt/apache/beam /opt/apache/beam" in worker
    assert worker[-1] == 'ENTRYPOINT ["/opt/apache/beam/boot"]'
    assert "COPY ${MODEL_DIR} /models/${MODEL_NAME}/1" in worker
    # `docker build .` still builds the app image: the last stage is the default target.
    assert list(stages)[-1] == "app" and stages["app"][0] == "FROM source AS app"


def test_docs_build_the_beam_worker_image_they_name():
    docs = (ROOT / "docs" / "serving.md").read_text()
    assert "docker build --target beam-worker" in docs and "-t vae-tf-beam ." in docs
    beam = _dockerfile_default("BEAM_VERSION")
    assert f"`BEAM_VERSION` (build arg, default {beam}," in docs and f"`apache/beam_python3.11_sdk:{beam}`" in docs
