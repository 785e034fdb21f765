#!/usr/bin/env bash
# GPU check kit: export the model, run it on every runtime/provider the machine has (torch CPU
# and CUDA, ONNX Runtime TensorRT / CUDA / CPU, OpenVINO), compare each with torch fp32 and time
# it; writes OUT/report.json and OUT/report.md (bench/gpu_check.py) and prints the Markdown.
#
#   scripts/gpu_check.sh [OUT] [-- extra bench/gpu_check.py arguments, e.g. --model DIR]
#
# Uses $FIFFDEPTH_VENV or .venv (scripts/setup.sh) when present; on a Jetson install NVIDIA's onnxruntime-gpu
# wheel for its JetPack first. Rows that cannot run (no CUDA, no TensorRT provider) are
# reported as skipped with the reason; a CPU-only machine gets the CPU rows.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-gpu_check}"
[ $# -gt 0 ] && shift
[ "${1:-}" = "--" ] && shift
venv="${FIFFDEPTH_VENV:-.venv}"
if [ -f "$venv/bin/activate" ]; then . "$venv/bin/activate"; fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
timeout "${GPU_CHECK_TIMEOUT:-1800}" python bench/gpu_check.py --out "$out" "$@"
