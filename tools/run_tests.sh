#!/usr/bin/env bash
# Set up the environment and the browser test's chromium, then run pytest with the given
# arguments; exits with pytest's code, except that "no tests collected" (5) counts as a failure.
set -euo pipefail
cd "$(dirname "$0")/.."

bash tools/setup_env.sh
bash tools/setup_browser.sh

status=0
.venv/bin/python -m pytest "$@" || status=$?
if [ "$status" -eq 5 ]; then
    echo "[run_tests] pytest collected no tests: treating that as a failure" >&2
    exit 1
fi
exit "$status"
