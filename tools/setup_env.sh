#!/usr/bin/env bash
# Create or update the project's environment: .venv with the pinned torch, the pack's
# requirements, the test extra, and a real ComfyUI (tools/setup_comfyui.py).
# Idempotent: a stamp of the files that decide what is installed skips pip when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_PINS=(torch==2.14.1 torchvision==0.29.1)

if [ ! -x .venv/bin/python ]; then
    echo "[setup_env] creating .venv with $(python3 --version)" >&2
    python3 -m venv .venv
fi
PY=.venv/bin/python

stamp=.venv/.lora_lab_env_stamp
wanted=$( (echo "${TORCH_PINS[*]}"; cat requirements.txt pyproject.toml) | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
    # ComfyUI owns torch, so requirements.txt never pins it; the test environment does.
    "$PY" -m pip install --quiet "${TORCH_PINS[@]}"
    "$PY" -m pip install --quiet -r requirements.txt
    # The pack is a ComfyUI custom-node folder, not an installable library (flat layout with
    # several top-level folders), so install the test extra's requirements, not the project.
    mapfile -t test_requirements < <("$PY" -c '
import tomllib
with open("pyproject.toml", "rb") as handle:
    print("\n".join(tomllib.load(handle)["project"]["optional-dependencies"]["test"]))')
    if [ "${#test_requirements[@]}" -gt 0 ]; then
        "$PY" -m pip install --quiet "${test_requirements[@]}"
    fi
    echo "$wanted" > "$stamp"
fi

"$PY" tools/setup_comfyui.py >/dev/null
