#!/usr/bin/env bash
# colcon build of this package in a workspace folder: colcon_build.sh WORKSPACE
# Builds into WORKSPACE/{build,install,log} and prints the install prefix.
set -euo pipefail
src="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ws="$(mkdir -p "$1" && cd "$1" && pwd)"
cd "$ws"
colcon --log-base "$ws/log" build --base-paths "$src" --build-base "$ws/build" \
  --install-base "$ws/install" --packages-select fiffdepth_ros \
  --event-handlers console_cohesion- status- summary- >&2
echo "$ws/install"
