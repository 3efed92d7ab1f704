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

ensure_ui_venv() {  # the panel's browser tests, each gradio in its own environment: $1 = ui (gradio 3.41.2, the
    # WebUI's pin: .venv-ui) or ui4 (gradio 4.40.0, Forge's and Forge Neo's: .venv-ui4)
    local set="${1:-ui}" ui stamp want
    if [[ "$set" == ui ]]; then ui="${LORASTACK_UI_VENV:-.venv-ui}"; else ui="${LORASTACK_UI4_VENV:-.venv-ui4}"; fi
    stamp="$ui/.lorastack-$set"
    want="$(sha256sum "requirements/$set.txt" | cut -d' ' -f1)"
    if [[ -x "$ui/bin/python" && "$(cat "$stamp" 2>/dev/null)" == "$want" ]]; then
        UI_PY="$ui/bin/python"; return
    fi
    echo "[lorastack] setting up $ui (browser-test requirements, $set.txt)…" >&2
    [[ -x "$ui/bin/python" ]] || "$PY" -m venv "$ui"
    "$ui/bin/python" -m pip install -q --disable-pip-version-check "torch==2.13.0"
    "$ui/bin/python" -m pip install -q --disable-pip-version-check -r "requirements/$set.txt"
    echo "$want" >"$stamp"
    UI_PY="$ui/bin/python"
}

ensure_browser() {  # Debian's chromium and its driver (nothing downloads a browser)
    if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then return; fi
    echo "[lorastack] installing Debian's chromium and chromium-driver…" >&2
    local sudo=""
    [[ "$(id -u)" == 0 ]] || sudo="sudo"
    $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium chromium-driver >/dev/null
}

cmd="${1:-demo}"; shift || true
case "$cmd" in
    demo)
        ensure_venv core
        exec "$VENV/bin/python" -m lib_lorastack demo "$@" ;;
    inspect)
        ensure_venv core
        exec "$VENV/bin/python" -m lib_lorastack inspect "$@" ;;
    doctor|bake|merge|preset)
        ensure_venv core
        exec "$VENV/bin/python" -m lib_lorastack "$cmd" "$@" ;;
    test)
        ensure_venv test
        "$VENV/bin/python" -m ruff check .
        if [[ $# -eq 0 ]]; then  # the whole suite: the panel in a real browser under both gradios first, then the rest
            ensure_browser
            for set in ui ui4; do
                ensure_ui_venv "$set"
                LORASTACK_UI_TESTS=1 LORASTACK_ARTIFACTS="${LORASTACK_ARTIFACTS:-tests/ui/artifacts}" "$UI_PY" -m pytest tests/ui -p no:cacheprovider
            done
        fi
        "$VENV/bin/python" -m pytest "$@" ;;
    bench)
        ensure_venv test
        exec "$VENV/bin/python" -m benchmarks "$@" ;;
    *)
        echo "usage: bash run.sh {demo|test|inspect FILE…|doctor|bake|merge|preset|bench}" >&2; exit 2 ;;
esac
