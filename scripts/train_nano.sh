#!/usr/bin/env bash
# FiffDepth-nano from scratch, the whole recipe, one command (README: "FiffDepth-nano recipe"):
#
#   scripts/train_nano.sh [--device cpu|cuda] OUT_DIR
#
#   1. procedural frames (training/data/procedural.py): synthetic domain with exact depth
#      (training), real-like domain as images only (no ground truth written), held-out
#      synthetic seeds (validation)
#   2. the tiny teacher (training/teacher.py, Depth Anything's architecture and loss) on
#      synthetic frames only                                   -> OUT/teacher
#   3. its pseudo-labels on the real-like images (fiffdepth-pseudolabel) -> OUT/data/labels
#   4. fiffdepth-train stage autoencoder (config/nano/autoencoder.yaml) -> OUT/autoencoder/model
#   5. fiffdepth-train stage generator   (config/nano/generator.yaml)   -> OUT/generator/model
#   6. fiffdepth-train stage fiffdepth   (config/nano/fiffdepth.yaml)   -> OUT/fiffdepth/model
#   7. export: OUT/model (the released DirectPipeline layout) + OUT/model/provenance.json
#
# v2: 20,000 synthetic + 5,000 real-like frames rendered at 128x96 (the size nano is trained at
# and, through its model_index.json, run at), a disparity target (config/nano/base.yaml), random
# zoom crops. --device cuda runs the teacher, the pseudo-labels and the fiffdepth-train stages on
# the GPU (the same recipe and steps); the default, cpu, is what the README's numbers come from.
#
# Sizes and steps come from the environment (defaults: the <= 120 minute budget on a 2-core CPU;
# see the README for how it was measured): NANO_SYN_FRAMES NANO_REAL_FRAMES NANO_VAL_FRAMES
# NANO_TEACHER_STEPS NANO_AE_STEPS NANO_GEN_STEPS NANO_FD_STEPS NANO_THREADS. Stages whose output
# exists are skipped and a training stage that stopped part-way resumes from its last checkpoint
# (fiffdepth-train --resume latest), so an interrupted run continues where it stopped;
# NANO_UNTIL=STAGE stops after that stage (render, teacher, pseudolabel, autoencoder, generator,
# fiffdepth).
set -euo pipefail
DEVICE=cpu
if [ "${1:-}" = "--device" ]; then
    DEVICE=${2:-}
    shift 2
fi
case $DEVICE in
    cpu) export ACCELERATE_USE_CPU=1 ;;          # fiffdepth-train (accelerate) stays on the CPU
    cuda|cuda:*) ;;                              # accelerate takes the GPU
    *) echo "$0: --device must be cpu or cuda, got '$DEVICE'" >&2; exit 2 ;;
esac
if [ $# -lt 1 ]; then
    echo "usage: $0 [--device cpu|cuda] OUT_DIR" >&2
    exit 2
fi
OUT=$(mkdir -p "$1" && cd "$1" && pwd)
REPO=$(cd "$(dirname "$0")/.." && pwd)
CONFIG="$REPO/config/nano"
SYN=${NANO_SYN_FRAMES:-20000}
REAL=${NANO_REAL_FRAMES:-5000}
VAL=${NANO_VAL_FRAMES:-200}
TEACHER_STEPS=${NANO_TEACHER_STEPS:-1000}
AE_STEPS=${NANO_AE_STEPS:-2000}
GEN_STEPS=${NANO_GEN_STEPS:-800}
FD_STEPS=${NANO_FD_STEPS:-3000}
THREADS=${NANO_THREADS:-2}
W=128; H=96                       # frames as rendered; config/nano trains at this size
TEACHER_INPUT=112
export OMP_NUM_THREADS=$THREADS
# shellcheck source=scripts/nano_common.sh
. "$REPO/scripts/nano_common.sh"
PY=$(nano_python "$REPO")
DATA="$OUT/data"
TIMES="$OUT/stage_seconds.txt"
touch "$TIMES"

stage() {                         # stage NAME DONE_MARKER COMMAND...: run unless done, timed
    timed_stage "$1" "$2" "$TIMES" "${@:3}"
    if [ "${NANO_UNTIL:-}" = "$1" ]; then
        echo "== stopping after $1 (NANO_UNTIL)"
        exit 0
    fi
}

render() {
    $PY -m fiffdepth_ros.training.data.procedural --out "$DATA/synthetic" --count "$SYN" \
        --width $W --height $H --seed-start 0 --workers "$THREADS"
    # The real-like domain: images only, its ground truth never reaches the disk.
    $PY -m fiffdepth_ros.training.data.procedural --out "$DATA/real" --count "$REAL" \
        --domain real --depth-format none --width $W --height $H --seed-start 0 \
        --workers "$THREADS"
    $PY -m fiffdepth_ros.training.data.procedural --out "$DATA/val" --count "$VAL" \
        --held-out --width $W --height $H
}

train() {                         # train STAGE [overrides...]
    local name=$1 steps resume=()
    shift
    if compgen -G "$OUT/$name/checkpoints/step-*" >/dev/null; then
        resume=(--resume latest)      # a stage that stopped part-way continues exactly
        echo "   resuming $name from its last checkpoint"
    fi
    case $name in
        autoencoder) steps=$AE_STEPS ;;
        generator) steps=$GEN_STEPS ;;
        fiffdepth) steps=$FD_STEPS ;;
    esac
    $PY -m fiffdepth_ros.cli.train --config "$CONFIG/$name.yaml" \
        data.root="$DATA" data.split_root="$DATA" output_dir="$OUT/$name" \
        train.max_steps="$steps" train.lr_schedule.total_steps="$steps" "$@" "${resume[@]}"
}

stage render "$DATA/val/frames.txt" render
stage teacher "$OUT/teacher/model.safetensors" \
    $PY -m fiffdepth_ros.training.teacher --out "$OUT/teacher" --steps "$TEACHER_STEPS" \
    --lr 1e-3 --input-size $TEACHER_INPUT --threads "$THREADS" --workers 1 --val-frames 32 \
    --device "$DEVICE"
stage pseudolabel "$DATA/labels/.complete" bash -c \
    "$PY -m fiffdepth_ros.cli.pseudolabel --teacher '$OUT/teacher' --images '$DATA/real/rgb' \
     --out '$DATA/labels' --input-size $TEACHER_INPUT --workers 1 --no-progress \
     --device '$DEVICE' \
     && touch '$DATA/labels/.complete'"
# A teacher that collapsed to a constant (too few steps) gives labels that teach nothing.
$PY - "$DATA/labels" <<'PYEOF'
import sys
from pathlib import Path
import numpy as np
files = sorted(Path(sys.argv[1]).rglob('*.npy'))[:200]
flat = sum(float(np.load(f).astype(np.float32).std()) < 1e-3 for f in files)
if not files or flat > len(files) // 2:
    sys.exit(f'pseudo-labels: {flat} of {len(files)} sampled labels are constant: the teacher '
             f'collapsed; retrain it with more steps (NANO_TEACHER_STEPS) and delete '
             f'{sys.argv[1]}')
print(f'pseudo-labels: {len(files) - flat} of {len(files)} sampled labels vary')
PYEOF
stage autoencoder "$OUT/autoencoder/model/model_index.json" train autoencoder
stage generator "$OUT/generator/model/model_index.json" \
    train generator model.init="$OUT/autoencoder/model"
stage fiffdepth "$OUT/fiffdepth/model/model_index.json" \
    train fiffdepth model.init="$OUT/generator/model"

echo "== export"
rm -rf "$OUT/model"
cp -r "$OUT/fiffdepth/model" "$OUT/model"
$PY - "$OUT" "$REPO" "$DEVICE" <<'PYEOF'
import json, os, subprocess, sys
from pathlib import Path
out, repo = Path(sys.argv[1]), Path(sys.argv[2])
state = {}
for name in ('autoencoder', 'generator', 'fiffdepth'):
    found = sorted((out / name / 'checkpoints').glob('step-*/trainer_state.json'))
    state[name] = json.loads(found[-1].read_text())['config'] if found else None
try:
    commit = subprocess.run(['git', '-C', str(repo), 'rev-parse', 'HEAD'], capture_output=True,
                            text=True, check=True).stdout.strip()
except (OSError, subprocess.CalledProcessError):
    commit = None
times = dict(line.split() for line in (out / 'stage_seconds.txt').read_text().splitlines())
cpu_file = out / 'stage_seconds.txt.cpu'
cpu = (dict(line.split() for line in cpu_file.read_text().splitlines())
       if cpu_file.is_file() else {})
sizes = {str(p.relative_to(out / 'model')): p.stat().st_size
         for p in (out / 'model').rglob('*.safetensors')}
meta = {name: json.loads((out / 'data' / name / 'meta.json').read_text())
        for name in ('synthetic', 'real', 'val')}
teacher = json.loads((out / 'teacher' / 'teacher_provenance.json').read_text())
teacher.pop('loss_history', None)
provenance = {
    'what': 'FiffDepth-nano: trained by scripts/train_nano.sh on procedural scenes only; '
            'for demonstrations and tests, not a robot model',
    'commit': commit, 'data': meta, 'teacher': teacher, 'stage_configs': state,
    'device': sys.argv[3], 'cpu_cores': len(os.sched_getaffinity(0)),
    'stage_seconds': {k: int(v) for k, v in times.items()},
    'total_seconds': sum(int(v) for v in times.values()),
    'stage_cpu_seconds': {k: int(v) for k, v in cpu.items()},
    'safetensors_bytes': sizes, 'total_safetensors_bytes': sum(sizes.values())}
(out / 'model' / 'provenance.json').write_text(json.dumps(provenance, indent=1, default=str))
print(f"model: {out / 'model'} ({sum(sizes.values()) / 2**20:.1f} MiB of weights, "
      f"{provenance['total_seconds'] / 60:.1f} min)")
PYEOF
