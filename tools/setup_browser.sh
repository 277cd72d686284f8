#!/usr/bin/env bash
# The browser for tests/integration/test_browser.py, and nothing else: only tools/run_tests.sh calls
# this, never the demo. Debian's chromium package, driven by Playwright from the test extra that
# tools/setup_env.sh installs. Never `playwright install`: nothing is downloaded besides the
# distribution's package. Never asks for a password: as root it runs apt-get, otherwise only
# `sudo -n` (which fails instead of prompting). When it cannot install, it says so and goes on: the
# browser test then skips locally, and fails where CI or LORA_LAB_REQUIRE_BROWSER is set.
set -euo pipefail

# The test reads LORA_LAB_CHROMIUM too: a browser of your own there needs nothing installed.
chromium=${LORA_LAB_CHROMIUM:-/usr/bin/chromium}
if [ -x "$chromium" ]; then
    exit 0
fi

say() { echo "[setup_browser] $*" >&2; }

if ! command -v apt-get >/dev/null 2>&1; then
    say "no $chromium and no apt-get: the browser test will not run"
    exit 0
fi
if [ "$(id -u)" -eq 0 ]; then
    as_root=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    as_root=(sudo -n)
else
    say "no $chromium, and installing it needs root (sudo would ask for a password, which this script" \
        "never does): the browser test will not run. To run it: sudo apt-get install chromium"
    exit 0
fi
say "installing Debian's chromium for the browser test"
{ "${as_root[@]}" apt-get update -qq \
    && "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
    || say "could not install chromium; the browser test will not run"
