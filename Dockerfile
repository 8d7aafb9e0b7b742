# syntax=docker/dockerfile:1
# Images for vae-tf (docs/serving.md). Three targets:
#
#   serving: the official TensorFlow Serving image with one exported version baked in.
#     docker build --target serving --build-arg MODEL_DIR=models/vae/1 --build-arg MODEL_NAME=vae -t vae-serving .
#     docker run --rm -p 8500:8500 -p 8501:8501 vae-serving
#
#   beam-worker: the worker of `vae-tf embed --runner beam` on Dataflow, Flink or Spark (Beam's
#     worker boot program, vae-tf with the `beam` extra, one exported version baked in).
#     docker build --target beam-worker --build-arg MODEL_DIR=models/vae/1 --build-arg MODEL_NAME=vae \
#       --build-arg BEAM_EXTRAS=gcp -t vae-tf-beam .
#
#   app (the default): the vae-tf package on python:3.11-slim; `vae-tf serve` unless told otherwise.
#     docker build --target app -t vae-tf .
#     docker run --rm -p 8500:8500 -p 8501:8501 -v "$PWD/models:/models:ro" -e MODEL_NAME=vae vae-tf
#     docker run --rm -v "$PWD:/work" vae-tf train --set train.epochs=5

# TensorFlow Serving release to build `serving` from: use one at least as new as the
# TensorFlow that exported the model (ops added later are unknown to an older server). The
# default is the release of the TensorFlow pinned in pyproject.toml (tests/test_dockerfile.py
# keeps the two in step).
ARG TF_SERVING_VERSION=2.21.0
# Apache Beam release of `beam-worker`: its worker boot program and the apache-beam installed
# beside it. A job's launcher must run the same Beam release as its workers: the default is the
# release the `beam` extra pins (apache-beam==2.77.*; tests/test_dockerfile.py keeps them in step).
ARG BEAM_VERSION=2.77.0

FROM tensorflow/serving:${TF_SERVING_VERSION} AS serving
# MODEL_DIR: one version directory (models/NAME/N, with saved_model.pb) inside the build context.
ARG MODEL_DIR=models/vae/1
ARG MODEL_NAME=vae
# The image's entrypoint serves ${MODEL_BASE_PATH}/${MODEL_NAME} (MODEL_BASE_PATH=/models) on
# 8500 (gRPC) and 8501 (REST).
ENV MODEL_NAME=${MODEL_NAME}
COPY ${MODEL_DIR} /models/${MODEL_NAME}/1

# The package's source on Python 3.11, shared by `beam-worker` and `app`.
FROM python:3.11-slim AS source
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    TF_CPP_MIN_LOG_LEVEL=2
WORKDIR /opt/vae-tf
COPY pyproject.toml README.md LICENSE ./
COPY vae_tf ./vae_tf
COPY training ./training
COPY serving ./serving
COPY vae_tf_cli ./vae_tf_cli

# Beam's own SDK image of the same release, for its worker boot program only (a custom container
# as Beam's docs build one: the SDK image's preinstalled packages stay out of the worker).
FROM apache/beam_python3.11_sdk:${BEAM_VERSION} AS beam-sdk

FROM source AS beam-worker
ARG BEAM_VERSION
# MODEL_DIR: one version directory (models/NAME/N) inside the build context, copied to
# /models/NAME/1: give the job `--model /models/NAME` and launch it where that path holds the
# same export (this image: docker run --entrypoint vae-tf vae-tf-beam embed --runner beam ...).
ARG MODEL_DIR=models/vae/1
ARG MODEL_NAME=vae
# Beam's extras for the job's file systems and runner: gcp for gs:// and Dataflow, aws for s3://
# (comma-separated; none by default).
ARG BEAM_EXTRAS=
# The local package: its dependencies are pinned in pyproject.toml, and Beam to the boot's release.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".[beam]" "apache-beam[${BEAM_EXTRAS}]==${BEAM_VERSION}"
COPY --from=beam-sdk /opt/apache/beam /opt/apache/beam
COPY ${MODEL_DIR} /models/${MODEL_NAME}/1
# The runner starts the worker through Beam's boot program (it then runs the Python SDK harness).
ENTRYPOINT ["/opt/apache/beam/boot"]

# The default target (the last stage).
FROM source AS app
ENV MODEL_NAME=model \
    MODEL_BASE_PATH=/models \
    VAE_TF_SERVE_HOST=0.0.0.0
RUN pip install --no-cache-dir . \
    && groupadd --gid 1000 vae \
    && useradd --create-home --uid 1000 --gid 1000 vae \
    && mkdir -p /models /work \
    && chown 1000:1000 /models /work
# Non-root (uid/gid 1000, "vae"): mount writable work directories owned by that uid.
USER 1000:1000
WORKDIR /work
EXPOSE 8500 8501
ENTRYPOINT ["vae-tf"]
# A container must listen on all interfaces to be reachable through -p; outside one the
# server binds 127.0.0.1 by default. The address is read from VAE_TF_SERVE_HOST (above), not
# given here, so that `docker run ... vae-tf serve --enable-batching` still binds 0.0.0.0.
CMD ["serve"]
