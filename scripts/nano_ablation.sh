#!/usr/bin/env bash
# FiffDepth-nano ablation, the issue's four variants with the same budget each, several seeds:
#
#   scripts/nano_ablation.sh GENERATOR_MODEL_DIR DATA_DIR OUT [STEPS]
#
#   GENERATOR_MODEL_DIR  the nano generator (scripts/train_nano.sh's OUT/generator/model)
#   DATA_DIR             its data (OUT/data: synthetic/, real/, labels/, val/)
#   STEPS                fiffdepth-stage steps per variant (default NANO_FD_STEPS or 2000, as
#                        train_nano.sh)
#
# Each variant is `fiffdepth-train --config config/nano/fiffdepth.yaml` from the same generator,
# seed, steps and learning-rate schedule:
#   full    the recipe (t = 0 on synthetic GT, t = -1 filter on real-like images, trajectory)
#   traj0   without the trajectory loss          method.weights.traj=0
#   direct  without the t = -1 filter            method.real_supervision=direct (the teacher's
#           pseudo-labels supervise U(x0_real, 0) with the same MAE + GM terms)
#   noreal  without real-domain data             data.real=null train.batch_size_real=0
# each once per seed of NANO_ABLATION_SEEDS (default "2025 2026 2027": train.seed, i.e. the data
# order, flips, crops, trajectory timesteps and noise; the generator is the same), then one table
# of the held-out procedural frames (bench/nano_quality.py --heldout-only) per run and the mean
# +- standard deviation over the seeds per variant, in OUT/ablation.txt and OUT/ablation.json.
# Runs whose export exists are not retrained. NANO_THREADS (default 2) torch threads;
# NANO_ABLATION_FRAMES (default 200) held-out frames; NANO_ABLATION_VARIANTS (default
# "full traj0 direct noreal") which variants.
set -euo pipefail
if [ $# -lt 3 ]; then
    echo "usage: $0 GENERATOR_MODEL_DIR DATA_DIR OUT [STEPS]" >&2
    exit 2
fi
GEN=$(cd "$1" && pwd)
DATA=$(cd "$2" && pwd)
OUT=$(mkdir -p "$3" && cd "$3" && pwd)
STEPS=${4:-${NANO_FD_STEPS:-2000}}
REPO=$(cd "$(dirname "$0")/.." && pwd)
THREADS=${NANO_THREADS:-2}
FRAMES=${NANO_ABLATION_FRAMES:-200}
SEEDS=${NANO_ABLATION_SEEDS:-2025 2026 2027}
VARIANTS=${NANO_ABLATION_VARIANTS:-full traj0 direct noreal}
export OMP_NUM_THREADS=$THREADS
# shellcheck source=scripts/nano_common.sh
. "$REPO/scripts/nano_common.sh"
PY=$(nano_python "$REPO")
for f in "$GEN/model_index.json" "$DATA/synthetic/frames.txt"; do
    [ -e "$f" ] || { echo "$0: missing $f" >&2; exit 2; }
done

overrides() {                     # the variant's configuration changes
    case $1 in
        full) ;;
        traj0) echo "method.weights.traj=0" ;;
        direct) echo "method.real_supervision=direct" ;;
        noreal) echo "data.real=null train.batch_size_real=0" ;;
        *) echo "$0: unknown variant $1" >&2; exit 2 ;;
    esac
}

rows=()
for seed in $SEEDS; do
    for name in $VARIANTS; do
        run="$name@s$seed"
        # shellcheck disable=SC2046
        set -- $(overrides "$name")
        echo "-- $run: $STEPS steps${*:+, $*}"
        timed_stage "$run" "$OUT/$run/model/model_index.json" "$OUT/variant_seconds.txt" \
            "$PY" -m fiffdepth_ros.cli.train --config "$REPO/config/nano/fiffdepth.yaml" \
            model.init="$GEN" data.root="$DATA" data.split_root="$DATA" \
            output_dir="$OUT/$run" train.seed="$seed" train.max_steps="$STEPS" \
            train.lr_schedule.total_steps="$STEPS" "$@"
        rows+=(--model "$run=$OUT/$run/model")
    done
done

echo "== held-out evaluation ($FRAMES frames per domain)"
"$PY" "$REPO/bench/nano_quality.py" --heldout-only --frames "$FRAMES" --threads "$THREADS" \
    "${rows[@]}" --group-seeds --json "$OUT/ablation.json" | tee "$OUT/ablation.txt"
