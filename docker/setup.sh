#!/usr/bin/env bash
# What the container tests need, where this machine can have it (called by `just setup`):
# docker.io, mmdebstrap and tini from Debian (as root, with apt), a Docker daemon that answers
# (dockerd started in the background when none does, waited for at most 30 s), and the base and
# wrapper images, built only when what goes into them changed (adapters/runtime/image.py).
#
# Where any of it is impossible (no root, no apt, no daemon) it prints one line saying so and
# exits 0: the container tests then skip, each naming why. With FSM_AGENT_REQUIRE_DOCKER=1 (CI)
# every such line is an error instead, since there the container tests must run.
#
# usage: docker/setup.sh PYTHON   (the project's venv interpreter)
set -euo pipefail
py="${1:-.venv/bin/python}"
log=/var/log/fsm-agent-dockerd.log

unavailable() {
    if [ "${FSM_AGENT_REQUIRE_DOCKER:-}" = 1 ]; then
        echo "error: $* (FSM_AGENT_REQUIRE_DOCKER=1: the container tests must run here)" >&2
        exit 1
    fi
    echo "note: $*; the container tests will skip"
    exit 0
}

answers() { docker version --format '{{.Server.APIVersion}}' >/dev/null 2>&1; }
can_apt() { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; }

missing=()
# dockerd, not docker: a machine may have the client alone (this one's image has
# /usr/local/bin/docker and no daemon).
command -v dockerd >/dev/null || missing+=(docker.io)
command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
command -v tini >/dev/null || [ -x /usr/bin/tini ] || missing+=(tini)
if [ ${#missing[@]} -gt 0 ]; then
    can_apt || unavailable "${missing[*]} not installed, and installing needs root and apt-get"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
fi

if ! answers; then
    [ "$(id -u)" = 0 ] && command -v dockerd >/dev/null \
        || unavailable "no Docker daemon answers, and this user cannot start dockerd"
    # Detached from this shell: the daemon outlives the recipe that started it.
    setsid dockerd >"$log" 2>&1 < /dev/null &
    for _ in $(seq 60); do
        answers && break
        sleep 0.5
    done
    answers || unavailable "dockerd did not answer within 30 s (its log: $log)"
fi

# Prints the tag and whether it was built or already up to date.
"$py" -m adapters.runtime.image >/dev/null || unavailable "the wrapper image did not build (above)"
