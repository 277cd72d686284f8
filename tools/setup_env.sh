#!/usr/bin/env bash
# Create or update the project's environment: .venv with the pinned torch, the pack's
# requirements, the test extra, and a real ComfyUI (tools/setup_comfyui.py). Installs no browser
# and never asks for a password (the browser test's chromium is tools/setup_browser.sh's job).
# Idempotent: a stamp of the files that decide what is installed skips pip when nothing changed.
# PYTHON=/path/to/python3.x chooses the interpreter .venv is made with (default: python3).
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_PINS=(torch==2.14.1 torchvision==0.29.1)
PYTHON=${PYTHON:-python3}

# The one place the supported Python is written is pyproject.toml's requires-python (">=X.Y").
needed=$(sed -n 's/^requires-python *= *">= *\([0-9][0-9.]*\)".*/\1/p' pyproject.toml)
if [ -z "$needed" ]; then
    echo "[setup_env] pyproject.toml has no requires-python = \">=X.Y\" to read the Python version from" >&2
    exit 1
fi

require_python() {  # $1: the interpreter; $2: what to do when it is too old
    local found
    found=$("$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) || found=""
    if [ -z "$found" ] || [ "$(printf '%s\n' "$needed" "$found" | sort -V | head -n 1)" != "$needed" ]; then
        echo "[setup_env] LoRA Lab needs Python $needed or newer (requires-python in pyproject.toml), but" \
            "$1 is ${found:+Python }${found:-not a Python that runs}. $2" >&2
        exit 1
    fi
}

if [ ! -x .venv/bin/python ]; then
    require_python "$PYTHON" "Install Python $needed or newer and run again with PYTHON pointing at it, e.g.
    PYTHON=/usr/bin/python$needed bash tools/run_demo.sh"
    echo "[setup_env] creating .venv with $("$PYTHON" --version)" >&2
    "$PYTHON" -m venv .venv
fi
PY=.venv/bin/python
require_python "$PY" "Remove .venv and run again, with PYTHON=/path/to/python$needed (or newer) if python3 is older."

stamp=.venv/.lora_lab_env_stamp
wanted=$( (echo "${TORCH_PINS[*]}"; cat requirements.txt pyproject.toml) | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
    # ComfyUI owns torch, so requirements.txt never pins it; the test environment does.
    "$PY" -m pip install --quiet "${TORCH_PINS[@]}"
    "$PY" -m pip install --quiet -r requirements.txt
    # The pack is a ComfyUI custom-node folder, not an installable library (flat layout with
    # several top-level folders), so install the test extra's requirements, not the project.
    # tomllib is in the standard library from Python 3.11; older ones read TOML with its backport.
    "$PY" -m pip install --quiet 'tomli>=1.1; python_version < "3.11"'
    mapfile -t test_requirements < <("$PY" -c '
try:
    import tomllib
except ImportError:
    import tomli as tomllib
with open("pyproject.toml", "rb") as handle:
    print("\n".join(tomllib.load(handle)["project"]["optional-dependencies"]["test"]))')
    if [ "${#test_requirements[@]}" -gt 0 ]; then
        "$PY" -m pip install --quiet "${test_requirements[@]}"
    fi
    echo "$wanted" > "$stamp"
fi

"$PY" tools/setup_comfyui.py >/dev/null
