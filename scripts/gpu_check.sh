#!/usr/bin/env bash
# GPU check kit (bench/gpu_check.py): precision (fp16/bf16 against fp32 per family, tiny and
# SD2 size), SD2-size timings at 480x640 (eager, channels_last, CUDA graph, torch.compile),
# torch finishing against numpy, bench/overlap.py with the model on the GPU, one training
# step, and the exported graph on the runtimes present. Writes OUT/report.json and
# OUT/report.md and prints the Markdown; rows that cannot run say 'skipped: <reason>'.
#
#   scripts/gpu_check.sh OUT [--wheels DIR]... [--install-only] [-- arguments of bench/gpu_check.py]
#
# On a bare CUDA machine (Python 3.12 and torch, no internet): first, on a machine with
# internet, scripts/gpu_wheels.sh .gpu_wheels; carry the folder along; then
#   scripts/gpu_check.sh OUT --wheels .gpu_wheels
# installs what is missing from those wheels alone (pip install --no-index --find-links) and
# runs the kit (--install-only: installs and stops; for an OpenCV folder carried in a run of
# its own, scripts/gpu_wheels.sh DIR --opencv). The whole stays within GPU_CHECK_TOTAL seconds (default 480: the install
# first, the kit gets what is left less 20 s, and stops itself at that limit with the report
# written). Uses $FIFFDEPTH_VENV or .venv (scripts/setup.sh) when present, else the python3
# on PATH. Hugging Face libraries run offline (HF_HUB_OFFLINE=1): nothing is downloaded.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-gpu_check}"
[ $# -gt 0 ] && shift
wheels=()
install_only=""
while [ $# -gt 0 ]; do
    case "$1" in
        --wheels) wheels+=("$2"); shift 2 ;;
        --install-only) install_only=1; shift ;;
        --) shift; break ;;
        *) break ;;
    esac
done
venv="${FIFFDEPTH_VENV:-.venv}"
if [ -f "$venv/bin/activate" ]; then . "$venv/bin/activate"; fi
python=$(command -v python || command -v python3)
mkdir -p "$out"
for dir in "${wheels[@]}"; do
    if [ ! -f "$dir/requirements.txt" ]; then
        echo "--wheels $dir: no requirements.txt there (made by scripts/gpu_wheels.sh)" >&2
        exit 2
    fi
    options=$(cat "$dir/pip-options" 2>/dev/null || true)
    echo "installing what is missing from $dir (offline)"
    # Only missing or unsatisfied requirements are installed; torch is never touched.
    if ! "$python" -m pip install --quiet --no-index --find-links "$dir" $options \
            -r "$dir/requirements.txt" 2>>"$out/pip_install.log"; then
        # A system Python that refuses pip (PEP 668): into it anyway, it is a check machine.
        "$python" -m pip install --quiet --no-index --find-links "$dir" $options \
            --break-system-packages -r "$dir/requirements.txt" 2>>"$out/pip_install.log" \
            || echo "pip install failed (see $out/pip_install.log); the kit runs with what is there"
    fi
    echo "installed in ${SECONDS} s"
done
[ -n "$install_only" ] && exit 0
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
limit=$(( ${GPU_CHECK_TOTAL:-480} - SECONDS - 20 ))
[ "$limit" -lt 60 ] && limit=60
# The kit stops itself at --time-limit; timeout is the backstop (a hung CUDA call).
timeout --kill-after=10 $(( limit + 15 )) "$python" bench/gpu_check.py --out "$out" \
    --time-limit "$limit" "$@"
