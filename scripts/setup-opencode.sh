#!/usr/bin/env bash
# Install the pinned upstream OpenCode server next to Kilo, into .opencode/ (idempotent).
#
# Why the platform package and not `opencode-ai`: the meta package's postinstall links the real
# binary, and npm 11 skips that postinstall, leaving a launcher with nothing to launch. The platform
# package carries the binary itself (node_modules/opencode-linux-x64/bin/opencode), as Kilo's
# platform package does in the justfile's setup recipe. Without npm (or offline) this says so in one
# line and the OpenCode tests skip naming the missing binary.
set -euo pipefail

version="${OPENCODE_VERSION:-1.18.33}"

note() {  # one line saying why not; an error where CI requires OpenCode (FSM_AGENT_REQUIRE_OPENCODE=1)
    if [ "${FSM_AGENT_REQUIRE_OPENCODE:-}" = 1 ]; then
        echo "error: $* (FSM_AGENT_REQUIRE_OPENCODE=1: the OpenCode tests must run here)" >&2
        exit 1
    fi
    echo "note: $*"
    exit 0
}
prefix="${1:-.opencode}"
bin="$prefix/node_modules/opencode-linux-x64/bin/opencode"

if [ -x "$bin" ] && [ "$("$bin" --version 2>/dev/null)" = "$version" ]; then
    exit 0
fi
if ! command -v npm >/dev/null; then
    note "npm not found; OpenCode $version not installed, its tests will skip"
fi
if npm install --silent --no-audit --no-fund --prefix "$prefix" "opencode-linux-x64@$version"; then
    test -x "$bin" || note "$bin missing after install; OpenCode tests will skip"
else
    note "npm could not install opencode-linux-x64@$version; OpenCode tests will skip"
fi
