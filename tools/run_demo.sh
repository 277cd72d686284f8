#!/usr/bin/env bash
# The main job on a fresh machine: set up, then train then test on the embedded tiny default.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup_env.sh
.venv/bin/python tools/demo.py "$@"
