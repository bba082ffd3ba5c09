#!/usr/bin/env bash
# What the PostgreSQL store's tests need (tests/adapters/store/, tests/postgres_support.py): the
# server binaries (initdb, pg_ctl, postgres) and the `postgres` system user to run them as when
# the tests run as root. Installs Debian's `postgresql` package when they are missing and this
# machine can (root and apt-get); the package's own cluster is not used (each test session
# initdb's a throwaway one) and is stopped so it holds no port. Called by `just setup`.
#
# Where it cannot be installed it prints one line saying why and exits 0: the tests then skip,
# naming the reason. With FSM_AGENT_REQUIRE_POSTGRES=1 that line is an error instead.
#
# usage: scripts/setup-postgres.sh
set -euo pipefail

found() {
    ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || command -v pg_ctl >/dev/null
}

unavailable() {
    if [ "${FSM_AGENT_REQUIRE_POSTGRES:-}" = 1 ]; then
        echo "error: $* (FSM_AGENT_REQUIRE_POSTGRES=1: the PostgreSQL tests must run here)" >&2
        exit 1
    fi
    echo "note: $*; the PostgreSQL store's tests will skip"
    exit 0
}

if found; then
    [ "$(id -u)" != 0 ] || id postgres >/dev/null 2>&1 \
        || unavailable "PostgreSQL is installed but there is no 'postgres' user to run it as root"
    exit 0
fi
[ "$(id -u)" = 0 ] && command -v apt-get >/dev/null \
    || unavailable "PostgreSQL not installed, and installing it needs root and apt-get"
echo "installing postgresql (Debian package, for the PostgreSQL store's tests)..."
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql \
    >/dev/null || unavailable "apt-get could not install postgresql"
# The package starts a cluster on 5432 where an init system runs; the tests never use it.
if command -v pg_ctlcluster >/dev/null; then
    for conf in /etc/postgresql/*/*; do
        [ -d "$conf" ] || continue
        pg_ctlcluster "$(basename "$(dirname "$conf")")" "$(basename "$conf")" stop \
            >/dev/null 2>&1 || true
    done
fi
found || unavailable "postgresql was installed but pg_ctl is not under /usr/lib/postgresql"
