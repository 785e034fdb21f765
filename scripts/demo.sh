#!/usr/bin/env bash
# Run the demonstration with the package built by setup.sh (./install). Arguments go to
# fiffdepth-demo (--output DIR, --model PATH_OR_ID (default: the built-in nano), --frames N, ...).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. "${FIFFDEPTH_VENV:-.venv}/bin/activate"
# colcon's setup scripts reference unset variables: source them without -u.
set +u
. install/setup.bash
set -u
exec install/fiffdepth_ros/lib/fiffdepth_ros/fiffdepth-demo "$@"
