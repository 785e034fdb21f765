#!/usr/bin/env bash
# Wheels the GPU check kit (scripts/gpu_check.sh) needs on a bare CUDA machine that has Python
# 3.12 and torch but no internet: downloaded here, carried there, installed there with
# `pip install --no-index --find-links DIR` (gpu_check.sh --wheels DIR).
#
#   scripts/gpu_wheels.sh DIR [--with PKG]... [--without PKG]...
#   scripts/gpu_wheels.sh DIR --opencv      OpenCV alone (see below)
#   scripts/gpu_wheels.sh DIR --numba       numba and llvmlite alone (see below)
#
# What the kit's code path imports beyond torch: diffusers (UNet, VAE, schedulers, Marigold's
# pipeline) and its import chain (huggingface_hub, safetensors, Pillow, regex, requests, ...),
# transformers (Marigold's pipeline class and the shipped nano checkpoint's text encoder, run once
# for its empty-prompt embedding), numpy, PyYAML (fiffdepth_ros.params, the training config).
# The wheels are the versions in this machine's environment where it has the package (what the
# tests here ran with). DIR/requirements.txt, what the device installs, pins diffusers and
# transformers (absent there) and gives the others requirements.txt's lower bounds, so a numpy,
# Pillow or PyYAML the machine already has stays as it is (its torch may be built against it).
#
# Left out by default, and why (the rows that need them say 'skipped: ...' with the reason):
#   opencv-python-headless  a 55 MiB wheel: beside diffusers it breaks the 64 MiB budget. The
#                           finishing path (sections finish and overlap) imports it (--opencv).
#   onnx, onnxruntime-gpu   the runtimes section's exported-graph rows (onnxruntime-gpu alone is
#                           ~200 MB); openvino (~40 MB).
#   rclpy                   not a wheel; overlap runs with its plain message backend instead.
# --with PKG adds one (the budget check still applies); --without PKG drops a default one.
# --opencv: a folder with opencv-python-headless alone (55 MiB, without its numpy, which the
# main folder has), to carry in a run of its own before the kit's when each run can carry only
# 64 MiB: `scripts/gpu_check.sh OUT --wheels .gpu_wheels_cv --install-only`, then the kit
# with --wheels .gpu_wheels (on the same machine, while it is still held).
# --numba: the same for numba and llvmlite (~46 MiB): without them the host's part of the
# scale recovery (its grid, on every path, the device's too) runs numpy only, slower than a
# deployed machine with numba; the kit's section h then says so.
#
# The total must stay within GPU_WHEELS_MAX_MIB (default 64, what a device run can carry);
# above it the script says so and exits 1 (the wheels stay in DIR to look at).
# DIR is git-ignored when it is .gpu_wheels (see .gitignore); never commit wheels.
# GPU_WHEELS_PYTHON (default 3.12): the device's Python version (another one for a rehearsal
# on a machine with another Python).
set -euo pipefail
dir="${1:?usage: scripts/gpu_wheels.sh DIR [--with PKG]... [--without PKG]...}"
shift
packages=(diffusers transformers safetensors huggingface_hub Pillow numpy PyYAML)
nodeps=""
while [ $# -gt 0 ]; do
    case "$1" in
        --opencv) packages=(opencv-python-headless); nodeps="--no-deps"; shift ;;
        --numba) packages=(numba llvmlite); nodeps="--no-deps"; shift ;;
        --with) packages+=("$2"); shift 2 ;;
        --without)
            keep=()
            for p in "${packages[@]}"; do [ "${p,,}" = "${2,,}" ] || keep+=("$p"); done
            packages=("${keep[@]}"); shift 2 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done
cd "$(dirname "$0")/.."
venv="${FIFFDEPTH_VENV:-.venv}"
if [ -f "$venv/bin/activate" ]; then . "$venv/bin/activate"; fi
mkdir -p "$dir"
rm -f "$dir"/*.whl "$dir/requirements.txt" "$dir/download.txt" "$dir/pip-options"
# pip-options: read by gpu_check.sh --wheels (--no-deps for the OpenCV folder).
echo "$nodeps" > "$dir/pip-options"
# download.txt: each at the version installed here (tested), else requirements.txt's bound;
# requirements.txt: the same, but only the kit's own additions pinned (see above).
python - "$dir" "${packages[@]}" <<'EOF'
import re
import sys
from importlib import metadata
from pathlib import Path

bounds = {}
for line in Path('requirements.txt').read_text().splitlines():
    m = re.match(r'([A-Za-z0-9_.-]+)\s*([<>=!~].*)?$', line.split('#')[0].strip())
    if m:
        bounds[m.group(1).lower().replace('_', '-')] = m.group(2) or ''
download, install = [], []
for name in sys.argv[2:]:
    bound = name + bounds.get(name.lower().replace('_', '-'), '')
    try:
        pinned = f'{name}=={metadata.version(name)}'
    except metadata.PackageNotFoundError:
        pinned = bound
    download.append(pinned)
    install.append(pinned if name.lower() in ('diffusers', 'transformers',
                                              'opencv-python-headless', 'numba',
                                              'llvmlite') else bound)
folder = Path(sys.argv[1])
(folder / 'download.txt').write_text('\n'.join(download) + '\n')
(folder / 'requirements.txt').write_text('\n'.join(install) + '\n')
EOF
echo "downloading ($dir/download.txt): $(tr '\n' ' ' < "$dir/download.txt")"
echo "installed there ($dir/requirements.txt): $(tr '\n' ' ' < "$dir/requirements.txt")"
py="${GPU_WHEELS_PYTHON:-3.12}"
target=(--only-binary=:all: --python-version "$py" --implementation cp
        --abi "cp${py/./}" --abi abi3 --abi none
        --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64
        --platform manylinux_2_27_x86_64 --platform manylinux_2_28_x86_64 --platform any)
quiet() { grep -v "is ignored: it is neither a file nor a directory" || true; }
python -m pip download --quiet $nodeps "${target[@]}" -d "$dir" -r "$dir/download.txt" 2>&1 \
    | quiet
# The folder alone must satisfy the requirements (what the device's offline install does).
python -m pip install --quiet --dry-run --ignore-installed --no-index --find-links "$dir" \
    --target "$(mktemp -d)" $nodeps "${target[@]}" -r "$dir/requirements.txt" 2>&1 | quiet
echo "offline install of $dir/requirements.txt from $dir alone (dry run, Python $py): ok"
echo "wheels in $dir:"
ls -l "$dir"/*.whl | awk '{printf "  %8.2f MiB  %s\n", $5 / 1048576, $NF}' | sort -rn
total=$(cat "$dir"/*.whl | wc -c)
max_mib="${GPU_WHEELS_MAX_MIB:-64}"
printf 'total: %d wheels, %.2f MiB (budget %s MiB)\n' "$(ls "$dir"/*.whl | wc -l)" \
    "$(echo "$total / 1048576" | bc -l)" "$max_mib"
if [ "$total" -gt $((max_mib * 1048576)) ]; then
    echo "over the budget: drop a package (--without) or raise GPU_WHEELS_MAX_MIB" >&2
    exit 1
fi
