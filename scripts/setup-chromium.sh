#!/usr/bin/env bash
# What the dashboard's browser test needs (tests/control/test_ui_browser.py): Debian's headless
# Chromium, installed when missing and this machine can (root and apt-get). Called by `just setup`.
#
# Where it cannot be installed it prints one line saying why and exits 0: the browser test then
# skips, naming the reason. With FSM_AGENT_REQUIRE_CHROMIUM=1 that line is an error instead.
#
# usage: scripts/setup-chromium.sh
set -euo pipefail

found() { command -v chromium >/dev/null || command -v chromium-browser >/dev/null; }

unavailable() {
    if [ "${FSM_AGENT_REQUIRE_CHROMIUM:-}" = 1 ]; then
        echo "error: $* (FSM_AGENT_REQUIRE_CHROMIUM=1: the browser test must run here)" >&2
        exit 1
    fi
    echo "note: $*; the dashboard's browser test will skip"
    exit 0
}

found && exit 0
[ "$(id -u)" = 0 ] && command -v apt-get >/dev/null \
    || unavailable "chromium not installed, and installing it needs root and apt-get"
echo "installing chromium (Debian package, for the dashboard's browser test)..."
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium \
    fonts-dejavu-core >/dev/null || unavailable "apt-get could not install chromium"
found || unavailable "chromium was installed but is not on PATH"
