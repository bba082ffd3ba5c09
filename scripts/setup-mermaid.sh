#!/usr/bin/env bash
# What the diagrams' rendering test needs (tests/engine/test_graph.py): the Mermaid library GitHub
# renders ```mermaid blocks with, pinned, installed into .venv/mermaid (ignored by git, removed
# with the venv). The test loads it in headless Chromium (scripts/setup-chromium.sh) and renders
# every figure of diagrams/, so a syntax GitHub refuses, or a figure wider than a page, fails it.
#
# Where npm is missing or the install fails it prints one line saying why and exits 0: the test
# then skips, naming the reason. With FSM_AGENT_REQUIRE_MERMAID=1 that line is an error instead.
#
# usage: scripts/setup-mermaid.sh
set -euo pipefail

VERSION=11.17.2
DEST="$(cd "$(dirname "$0")/.." && pwd)/.venv/mermaid"
LIB="$DEST/node_modules/mermaid/dist/mermaid.min.js"

unavailable() {
    if [ "${FSM_AGENT_REQUIRE_MERMAID:-}" = 1 ]; then
        echo "error: $* (FSM_AGENT_REQUIRE_MERMAID=1: the diagrams' rendering test must run here)" >&2
        exit 1
    fi
    echo "note: $*; the diagrams' rendering test will skip"
    exit 0
}

if [ -f "$LIB" ] && grep -q "\"version\": \"$VERSION\"" "$DEST/node_modules/mermaid/package.json"; then
    exit 0
fi
command -v npm >/dev/null || unavailable "npm not found, so mermaid $VERSION cannot be installed"
echo "installing mermaid $VERSION into .venv/mermaid (for the diagrams' rendering test)..."
mkdir -p "$DEST"
npm install --silent --no-audit --no-fund --prefix "$DEST" "mermaid@$VERSION" >/dev/null \
    || unavailable "npm could not install mermaid $VERSION"
[ -f "$LIB" ] || unavailable "mermaid $VERSION was installed but $LIB is missing"
