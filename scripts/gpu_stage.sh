#!/usr/bin/env bash
# Stage TensorFlow 2.21 and this project's Python dependencies onto a GPU machine that has PyTorch
# and CUDA 13 but no TensorFlow and no package index (the device machines lent to this project's
# sessions), then run benchmarks/gpu_check.sh there. Used on 2026-12-04 for the H200 results in
# docs/performance.md ("On a GPU"). NOT a supported install: TensorFlow's CUDA 12 libraries are
# replaced by the machine's CUDA 13 ones under the CUDA 12 names (only the 3-MB CUDA 12 runtime is
# carried), so read what it measures as indicative. Where `pip install 'tensorflow[and-cuda]'`
# works, use that and run benchmarks/gpu_check.sh directly instead.
#
# Here, with a package index (about 10 minutes, mostly xz):
#   bash scripts/gpu_stage.sh pack            -> .gpu-stage/whl/, .gpu-stage/p00 ... pNN, .gpu-stage/sha256
# There, one call each, in this order and without long pauses (a machine left idle is taken back,
# and with it what was staged); each call carries the named paths and the script itself:
#   bash scripts/gpu_stage.sh wheels          carry .gpu-stage/whl
#   bash scripts/gpu_stage.sh part p00        carry .gpu-stage/p00          (and so on, all but the last part)
#   bash scripts/gpu_stage.sh run pNN         carry .gpu-stage/pNN .gpu-stage/sha256
# `run` adds the last part, checks the archive's SHA-256, unpacks TensorFlow, checks that it sees
# the GPU (matmul, convolution, an XLA cluster, an LSTM), then runs benchmarks/gpu_check.sh with
# OUT=$OUT (its knobs pass through: THROUGHPUT_LIMIT, SETTINGS_ARGS, ...).
set -euo pipefail
cd "$(dirname "$0")/.."
STAGE=.gpu-stage
SITE=${SITE:-/tmp/gpu-site}
PARTS=${PARTS:-/tmp/gpu-parts}
PY_TAG=${PY_TAG:-3.12}           # the GPU machine's Python
# The runtime dependencies of TensorFlow, Keras, TFP, vae-tf's model code and pythae that the
# machine's image lacks or has in versions TensorFlow 2.21 does not take (its numpy 2.5, protobuf 7).
DEPS="keras tf_keras tensorflow-probability namex optree gast astunparse google-pasta termcolor dm-tree
decorator pydantic pydantic_core annotated-types typing-inspection protobuf pythae ml_dtypes numpy wrapt
typing_extensions flatbuffers absl-py h5py opt_einsum"

pack() {
  local py=${PYTHON:-.venv/bin/python} tmp
  rm -rf "$STAGE" && mkdir -p "$STAGE/whl"
  local pins=() name
  for name in tensorflow $DEPS; do
    pins+=("$name==$("$py" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name")")
  done
  pins+=("nvidia-cuda-runtime-cu12==12.9.79")  # TensorFlow's CUDA 12 runtime (3 MB); the rest is CUDA 13 there
  "$py" -m pip download -q --no-deps --only-binary=:all: --python-version "$PY_TAG" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any -d "$STAGE/whl" "${pins[@]}"
  tmp=$(mktemp -d)
  mkdir "$tmp/site"
  (cd "$tmp/site" && unzip -q "$OLDPWD/$STAGE"/whl/tensorflow-*.whl && rm -rf tensorflow/include)
  rm "$STAGE"/whl/tensorflow-*.whl
  # One call carries at most 64 MiB with the working tree: parts of 62 MiB less the tracked files.
  local tree_mib part_mib
  tree_mib=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | awk '{print int($1 / 1048576) + 1}')
  part_mib=$((62 - tree_mib))
  (cd "$tmp/site" && tar cf - .) | xz -9 -T0 > "$tmp/tf.tar.xz"
  split -b "${part_mib}M" -d -a 2 "$tmp/tf.tar.xz" "$STAGE/p"
  sha256sum "$tmp/tf.tar.xz" | cut -d' ' -f1 > "$STAGE/sha256"
  rm -rf "$tmp"
  echo "staged in $STAGE (parts of $part_mib MiB; the wheels call carries $(du -sm "$STAGE/whl" | cut -f1) MiB):"
  ls "$STAGE"
}

wheels() {
  rm -rf "$SITE" "$PARTS" && mkdir -p "$SITE" "$PARTS"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "$STAGE"/whl/*.whl
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -V
}

part() {
  cp "$STAGE/$1" "$PARTS/"
  ls -l "$PARTS" | tail -n +2 | awk '{print $5, $9}' | tr '\n' ' '
  echo
}

run() {
  part "$1"
  local got want cu13 cudnn cuda_dir
  got=$(cat $(ls "$PARTS"/p* | sort) | sha256sum | cut -d' ' -f1)
  want=$(cat "$STAGE/sha256")
  [ "$got" = "$want" ] || { echo "the parts in $PARTS do not add up to the staged archive (a part missing?)"; exit 3; }
  cat $(ls "$PARTS"/p* | sort) | xz -dc -T0 | tar xf - -C "$SITE"
  cu13=$(dirname "$(find /opt /usr/local -name libcublas.so.13 2>/dev/null | head -1)")
  cudnn=$(dirname "$(find /opt /usr/local /usr/lib/x86_64-linux-gnu -name libcudnn.so.9 2>/dev/null | head -1)")
  cuda_dir=$(dirname "$(dirname "$(command -v ptxas || echo /usr/local/cuda/bin/ptxas)")")
  mkdir -p /tmp/cu12
  cp "$SITE/nvidia/cuda_runtime/lib/libcudart.so.12" /tmp/cu12/
  ln -sf "$cu13/libcublas.so.13" /tmp/cu12/libcublas.so.12
  ln -sf "$cu13/libcublasLt.so.13" /tmp/cu12/libcublasLt.so.12
  ln -sf "$cu13/libcufft.so.12" /tmp/cu12/libcufft.so.11
  ln -sf "$cu13/libcusolver.so.12" /tmp/cu12/libcusolver.so.11
  export PYTHONPATH="$SITE" LD_LIBRARY_PATH="/tmp/cu12:$cu13:$cudnn:${LD_LIBRARY_PATH:-}"
  export XLA_FLAGS="--xla_gpu_cuda_data_dir=$cuda_dir" TF_FORCE_GPU_ALLOW_GROWTH=true
  python3 - <<'EOF'
import tensorflow as tf
print("TensorFlow", tf.__version__, "GPUs:", tf.config.list_physical_devices("GPU"))
with tf.device("/GPU:0"):
    x = tf.random.normal([1024, 1024])
    print("matmul", float(tf.reduce_sum(x @ x)) == float(tf.reduce_sum(x @ x)))
    print("conv", tf.nn.conv2d(tf.random.normal([8, 28, 28, 1]), tf.random.normal([3, 3, 1, 4]), 2, "SAME").shape)
    print("XLA", float(tf.function(lambda a: tf.reduce_sum(tf.nn.relu(a)), jit_compile=True)(x)) >= 0)
import keras
print("LSTM", keras.layers.LSTM(8)(tf.random.normal([2, 5, 3])).shape)
EOF
  OUT="${OUT:-gpu-check-out}" PYTHON=python3 bash benchmarks/gpu_check.sh
}

case "${1:-}" in
  pack) pack ;;
  wheels) wheels ;;
  part) part "${2:?which part, e.g. p00}" ;;
  run) run "${2:?the last part, e.g. p05}" ;;
  *) echo "usage: bash scripts/gpu_stage.sh pack | wheels | part pNN | run pNN (see the header)" >&2; exit 2 ;;
esac
