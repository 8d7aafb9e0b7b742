# syntax=docker/dockerfile:1
# Images for vae-tf. This is the training image; the serving targets (`serving`: the official
# tensorflow/serving image with an exported model, `app`: our TF-Serving-compatible server) come
# with the serving issue.
#
#   docker build --target app -t vae-tf .
#   docker run --rm -v "$PWD/work:/work" -w /work vae-tf train --set train.epochs=5

FROM python:3.11-slim AS app
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 TF_CPP_MIN_LOG_LEVEL=2
WORKDIR /opt/vae-tf
COPY pyproject.toml README.md ./
COPY vae_tf ./vae_tf
COPY training ./training
COPY serving ./serving
RUN pip install . && useradd --create-home --uid 1000 vae
USER vae
WORKDIR /work
ENTRYPOINT ["vae-tf"]
CMD ["--help"]
