#!/usr/bin/env bash
# Issue #20, item 5: every GPU measurement in one run of a few minutes (at most 9.5), results
# in $OUT (default: ./gpu-check-<date>), each step under its own time limit so one hang does not
# cost the others:
#
#   env.txt                 nvidia-smi, the Python packages, which devices TensorFlow and PyTorch see
#   throughput.md/.json     benchmarks/train_throughput.py on the GPU: vae-tf, bare Keras, PyTorch
#                           eager, PyTorch torch.compile (inductor: Triton kernels), pythae's
#                           BaseTrainer, conv reference model, interleaved rounds, ratios
#   settings.md/.json       benchmarks/train_settings.py: jit_compile off/on x float32 /
#                           mixed_bfloat16 / mixed_float16 at steps_per_execution 4, and PyTorch
#                           eager at each precision (float32, autocast bf16 / fp16): the ratio at
#                           the same precision
#   text.md/.json           the text benchmark (benchmarks/text_throughput.py) when it exists, vae-tf
#                           without and with XLA (--jit-compile both; the report says whether XLA
#                           was on: Keras turns it off for cuDNN LSTMs) against PyTorch eager
#   log.txt                 everything printed, in order
#
# Needs the project installed with a GPU build of both frameworks, e.g.
#   pip install -e '.[bench]' 'tensorflow[and-cuda]==2.21.*'   (and a CUDA build of torch)
# Run from the repository root:  bash benchmarks/gpu_check.sh   (OUT=/some/dir to choose the folder).
# Knobs (environment): PYTHON (python3); THROUGHPUT_ARGS, SETTINGS_ARGS, TEXT_ARGS (arguments of
# each benchmark, defaults below; later ones win); THROUGHPUT_LIMIT, SETTINGS_LIMIT, TEXT_LIMIT (each
# step's seconds, for a shorter lease); ALLOW_CPU=1 runs without a GPU (the smoke test).
# TensorFlow and PyTorch share the GPU in one process, so TensorFlow is told to take its memory as it
# needs it (TF_FORCE_GPU_ALLOW_GROWTH=true) instead of all of it at start.
# Paste the Markdown files into docs/performance.md with the device named (env.txt).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-check-$(date +%Y%m%d-%H%M%S)}
PYTHON=${PYTHON:-python3}
THROUGHPUT_ARGS=${THROUGHPUT_ARGS:-"--rounds 5 --min-epoch-seconds 0.5 --matmul-size 4096"}
SETTINGS_ARGS=${SETTINGS_ARGS:-"--steps 4 --jit false true --precision float32 mixed_bfloat16 mixed_float16 --torch --rounds 3 --examples 32768"}
TEXT_ARGS=${TEXT_ARGS:-"--rounds 3 --jit-compile both"}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export TF_FORCE_GPU_ALLOW_GROWTH=${TF_FORCE_GPU_ALLOW_GROWTH:-true}
export PYTHONFAULTHANDLER=1  # a crash in native code (a CUDA library, say) still prints where Python was

step() {  # step NAME SECONDS COMMAND...: run it under a time limit, say how it ended
  local name=$1 limit=$2
  shift 2
  echo "=== $name (limit ${limit}s): $*"
  local start=$SECONDS
  timeout --kill-after=10 "$limit" "$@"
  local rc=$?
  echo "=== $name: exit $rc after $((SECONDS - start))s"
  return 0
}

main() {
{
  date -u +"date: %Y-%m-%dT%H:%M:%SZ"
  echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' + uncommitted changes')"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1 || echo "nvidia-smi: not found"
  "$PYTHON" - <<'EOF'
import importlib, importlib.metadata, platform
print("python", platform.python_version())
for name in ("tensorflow", "keras", "tensorflow_probability", "torch", "pythae", "numpy"):
    try:
        module = importlib.import_module(name)  # imported, not only looked up: a broken install shows here
        version = getattr(module, "__version__", None) or importlib.metadata.version(name)  # pythae has none
        print(name, version)
    except Exception as err:  # report, do not stop: the steps below say what they need
        print(name, "MISSING:", type(err).__name__, str(err).splitlines()[0][:200])
try:
    import tensorflow as tf
    print("tensorflow GPUs:", [tf.config.experimental.get_device_details(g).get("device_name", g.name)
                               for g in tf.config.list_physical_devices("GPU")])
except Exception as err:
    print("tensorflow GPUs: unknown:", err)
try:
    import torch
    print("torch cuda:", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
except Exception as err:
    print("torch cuda: unknown:", err)
EOF
} | tee "$OUT/env.txt"

if [ "${ALLOW_CPU:-0}" != 1 ] && ! "$PYTHON" -c 'import sys, tensorflow as tf; sys.exit(0 if tf.config.list_physical_devices("GPU") else 1)' 2>/dev/null; then
  echo "TensorFlow sees no GPU (or is not installed): the vae-tf side cannot run here."
  echo "Install a GPU build: pip install -e '.[bench]' 'tensorflow[and-cuda]==2.21.*'  (see $OUT/env.txt)"
  exit 2
fi

# TensorFlow 2.21 is built on CUDA 12. A PyTorch built on another CUDA major (the cu13 wheels) in
# the same process died of SIGFPE in its first CUDA kernels on the H200 (torch.randn_like) once
# TensorFlow had loaded libcudart.so.12, and ran once its own libcudart was preloaded: do that.
if [ "${ALLOW_CPU:-0}" != 1 ] && [ -z "${LD_PRELOAD:-}" ]; then
  preload=$("$PYTHON" -c 'from benchmarks.common import cuda_runtime_to_preload_here as f; print(f() or "")' 2>/dev/null)
  if [ -n "$preload" ]; then
    export LD_PRELOAD=$preload
    echo "PyTorch and TensorFlow are built on different CUDA versions: PyTorch's runtime preloaded ($preload)"
  fi
fi

# 1. The training comparison (issue #20 item 1 on the GPU). The matmul probe measures the GPU's
#    fp32 peak for the efficiency column; 4096² keeps it short.
# shellcheck disable=SC2086  # the *_ARGS are lists of arguments
step throughput "${THROUGHPUT_LIMIT:-270}" "$PYTHON" benchmarks/train_throughput.py --arch conv $THROUGHPUT_ARGS --json "$OUT/throughput.json"
[ -f "$OUT/throughput.json" ] && "$PYTHON" - "$OUT/throughput.json" "$OUT/throughput.md" <<'EOF'
import json, sys
sys.path.insert(0, ".")
from benchmarks.train_throughput import render
report = json.load(open(sys.argv[1]))
open(sys.argv[2], "w").write(render(report) + "\n")
EOF

# 2. vae-tf's settings on the GPU: XLA x precision (6 variants) at the default steps_per_execution,
#    and PyTorch eager at each precision (3 more).
# shellcheck disable=SC2086
step settings "${SETTINGS_LIMIT:-180}" "$PYTHON" benchmarks/train_settings.py $SETTINGS_ARGS --json "$OUT/settings.json"
[ -f "$OUT/settings.json" ] && "$PYTHON" - "$OUT/settings.json" "$OUT/settings.md" <<'EOF'
import json, sys
sys.path.insert(0, ".")
from benchmarks.train_settings import render
open(sys.argv[2], "w").write(render(json.load(open(sys.argv[1]))) + "\n")
EOF

# 3. The text benchmark (its script decides what it compares); skipped where it does not exist yet.
if [ -f benchmarks/text_throughput.py ]; then
  # shellcheck disable=SC2086
  step text "${TEXT_LIMIT:-120}" "$PYTHON" benchmarks/text_throughput.py $TEXT_ARGS --json "$OUT/text.json"
else
  echo "=== text: benchmarks/text_throughput.py does not exist in this checkout; skipped"
fi

echo "results in $OUT:"
ls -l "$OUT"
}

main 2>&1 | tee "$OUT/log.txt"
exit "${PIPESTATUS[0]}"
