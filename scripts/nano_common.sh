# Shared by scripts/train_nano.sh and scripts/nano_ablation.sh (sourced, not run):
#   nano_python REPO             the Python to use: $PYTHON, else the active one, else
#                                scripts/setup.sh's .venv when no environment is active
#   timed_stage NAME DONE TIMES COMMAND...
#                                run COMMAND unless the file DONE exists; append
#                                "NAME SECONDS" to TIMES when it ran
nano_python() {
    if [ -n "${PYTHON:-}" ]; then
        echo "$PYTHON"
    elif [ -z "${VIRTUAL_ENV:-}" ] && [ -x "$1/.venv/bin/python" ]; then
        echo "$1/.venv/bin/python"
    else
        echo python
    fi
}

timed_stage() {
    local name=$1 done=$2 times=$3
    shift 3
    if [ -e "$done" ]; then
        echo "== $name: done already ($done)"
        return
    fi
    echo "== $name"
    local t0
    t0=$(date +%s)
    "$@"
    echo "$name $(( $(date +%s) - t0 ))" >> "$times"
}
