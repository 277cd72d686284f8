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

# --- Browser for tests/integration/test_browser.py ------------------------------------------
# Debian's chromium package, driven by Playwright from the test extra above. Never
# `playwright install`: nothing is downloaded besides the distribution's package. Only when the
# browser is missing; a machine without apt-get (or root/sudo) skips the test locally, and fails
# it where CI or LORA_LAB_REQUIRE_BROWSER is set.
if [ ! -x /usr/bin/chromium ]; then
    if command -v apt-get >/dev/null 2>&1; then
        as_root=""
        if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then
            as_root="sudo"
        fi
        echo "[setup_env] installing Debian's chromium for the browser test" >&2
        { $as_root apt-get update -qq \
            && $as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
            || echo "[setup_env] could not install chromium; the browser test will not run" >&2
    else
        echo "[setup_env] no /usr/bin/chromium and no apt-get: the browser test will not run" >&2
    fi
fi
