#!/usr/bin/env bash
# Set up (see setup.sh), build the package with colcon in a scratch workspace, run every test.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
FIFFDEPTH_SKIP_BUILD=1 scripts/setup.sh
. "${FIFFDEPTH_VENV:-.venv}/bin/activate"
scratch=$(mktemp -d -t fiffdepth_ws.XXXXXX)
trap 'rm -rf "$scratch"' EXIT
echo "[test] colcon build in $scratch"
export FIFFDEPTH_TEST_INSTALL
FIFFDEPTH_TEST_INSTALL=$(scripts/colcon_build.sh "$scratch")
python -m pytest test "$@"
