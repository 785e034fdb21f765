#!/usr/bin/env bash
# Set up fiffdepth_ros on a fresh machine: a virtual environment in .venv with torch, the Python
# dependencies and (when no ROS 2 is sourced) ROS 2 Kilted's rclpy and message wheels from PyPI,
# then the package itself into the environment (editable: the console scripts process_bag,
# fiffdepth-predict, fiffdepth-align, depth_node, ... land in $VENV/bin and run this checkout) and a
# colcon build of it into ./install (for ros2 run / ros2 launch). Safe to run again: finished
# steps are skipped.
#
#   TORCH_SPEC   torch requirement installed when the environment has no torch yet
#                (default torch==2.13.0; on a GPU machine bring your CUDA/Jetson build)
#   FIFFDEPTH_VENV  where the virtual environment lives (default .venv)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV=${FIFFDEPTH_VENV:-.venv}
PYTHON=${PYTHON:-python3}

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating virtual environment $VENV"
  "$PYTHON" -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"

stamp="$VENV/.fiffdepth-setup"
want=$(cat requirements.txt requirements-test.txt requirements-ros-wheels.txt | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  python -m pip install -q --upgrade pip
  # torch first: a bare 'torch' requirement would pull a multi-GB CUDA build.
  python -c 'import torch' 2>/dev/null || python -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
  python -m pip install -q -r requirements.txt -r requirements-test.txt
  if python -c 'import rclpy, sensor_msgs, stereo_msgs, diagnostic_msgs' 2>/dev/null \
      && command -v colcon >/dev/null; then
    echo "[setup] using the ROS 2 installation already sourced"
  else
    python -m pip install -q -r requirements-ros-wheels.txt
  fi
  echo "$want" > "$stamp"
fi

# The README's tools on PATH once the environment is active, without ROS (no --deps: the
# requirements above are the dependencies; no build isolation: nothing to download).
# Again when setup.py changes (a new console script).
pkg_stamp="$VENV/.fiffdepth-package"
pkg_want=$(cat setup.py setup.cfg | sha256sum | cut -c1-16)
if [ "$(cat "$pkg_stamp" 2>/dev/null)" != "$pkg_want" ] \
    || ! python -m pip show -q fiffdepth_ros >/dev/null 2>&1; then
  echo "[setup] installing fiffdepth_ros into $VENV (editable: console scripts in $VENV/bin)"
  # setuptools' editable-install warnings go to a log; shown only if the install fails.
  if ! python -m pip install -q --no-deps --no-build-isolation -e . \
      >"$VENV/.fiffdepth-install.log" 2>&1; then
    cat "$VENV/.fiffdepth-install.log" >&2
    exit 1
  fi
  echo "$pkg_want" > "$pkg_stamp"
fi

if [ "${FIFFDEPTH_SKIP_BUILD:-0}" != 1 ]; then
  echo "[setup] colcon build -> ./install"
  scripts/colcon_build.sh "$PWD" >/dev/null
fi
