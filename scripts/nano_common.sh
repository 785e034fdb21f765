# Shared by scripts/train_nano.sh and scripts/nano_ablation.sh (sourced, not run):
#   nano_python REPO             the Python to use: $PYTHON, else the active one, else
#                                scripts/setup.sh's .venv when no environment is active
#   timed_stage NAME DONE TIMES COMMAND...
#                                run COMMAND unless the file DONE exists; append
#                                "NAME SECONDS" (wall) to TIMES and "NAME SECONDS" (CPU time of
#                                the stage's processes, user + system) to TIMES.cpu when it ran
nano_python() {
    if [ -n "${PYTHON:-}" ]; then
        echo "$PYTHON"
    elif [ -z "${VIRTUAL_ENV:-}" ] && [ -x "$1/.venv/bin/python" ]; then
        echo "$1/.venv/bin/python"
    else
        echo python
    fi
}

children_cpu_seconds() {           # user + system seconds of this shell's finished children
    # `times` in this shell (a pipe or $(...) would run it in a subshell with no children)
    local out
    out=$(mktemp)
    times > "$out"
    awk 'NR == 2 {
        total = 0
        for (i = 1; i <= 2; i++) {
            split($i, p, "m"); sub("s", "", p[2]); total += p[1] * 60 + p[2]
        }
        printf "%d\n", total }' "$out"
    rm -f "$out"
}

timed_stage() {
    local name=$1 done=$2 times=$3
    shift 3
    if [ -e "$done" ]; then
        echo "== $name: done already ($done)"
        return
    fi
    echo "== $name"
    local t0 c0 c1 cpu
    t0=$(date +%s)
    cpu=$(mktemp)
    children_cpu_seconds > "$cpu"; c0=$(cat "$cpu")
    "$@"
    children_cpu_seconds > "$cpu"; c1=$(cat "$cpu")
    rm -f "$cpu"
    echo "$name $(( $(date +%s) - t0 ))" >> "$times"
    echo "$name $(( c1 - c0 ))" >> "$times.cpu"
}
