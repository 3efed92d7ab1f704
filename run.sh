#!/usr/bin/env bash
# One entry point for people and CI.
#   bash run.sh demo        set up (first time) and run the built-in example
#   bash run.sh test        set up (first time) and run lint + the whole test suite
#   bash run.sh inspect F…  print what LoRA files contain
#   bash run.sh doctor|bake|merge …  the stack doctor, baking and merging (docs/doctor.md)
#   bash run.sh bench       run the benchmarks (benchmarks/README.md)
# The virtual environment lives in .venv (override with LORASTACK_VENV) and is rebuilt
# only when requirements/*.txt change.
set -euo pipefail
cd "$(dirname "$0")"
VENV="${LORASTACK_VENV:-.venv}"
PY="${LORASTACK_PYTHON:-python3}"

ensure_venv() {  # $1: requirements set (core | test)
    local reqs="requirements/$1.txt" stamp="$VENV/.lorastack-$1" want
    want="$(cat requirements/*.txt | sha256sum | cut -d' ' -f1)"
    if [[ -x "$VENV/bin/python" && "$(cat "$stamp" 2>/dev/null)" == "$want" ]]; then
        return
    fi
    echo "[lorastack] setting up $VENV ($1 requirements)…" >&2
    [[ -x "$VENV/bin/python" ]] || "$PY" -m venv "$VENV"
    # torch first and alone, pinned, so that nothing else can pull a different build.
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check "torch==2.13.0"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$reqs"
    echo "$want" >"$stamp"
}

cmd="${1:-demo}"; shift || true
case "$cmd" in
    demo)
        ensure_venv core
        exec "$VENV/bin/python" -m lib_lorastack demo "$@" ;;
    inspect)
        ensure_venv core
        exec "$VENV/bin/python" -m lib_lorastack inspect "$@" ;;
    doctor|bake|merge)
        ensure_venv core
        exec "$VENV/bin/python" -m lib_lorastack "$cmd" "$@" ;;
    test)
        ensure_venv test
        "$VENV/bin/python" -m ruff check .
        "$VENV/bin/python" -m pytest "$@" ;;
    bench)
        ensure_venv test
        exec "$VENV/bin/python" -m benchmarks "$@" ;;
    *)
        echo "usage: bash run.sh {demo|test|inspect FILE…|doctor|bake|merge|bench}" >&2; exit 2 ;;
esac
