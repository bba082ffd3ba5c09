#!/bin/sh
# The control plane with a container per session (examples/docker/fsm-agent.toml).
#
#   OPENAI_API_KEY=... examples/docker/run.sh            # listens on 127.0.0.1:8700
#
# The API key clients must present is read from key.txt (created 0600 if missing): never argv.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
key=${FSM_AGENT_API_KEY_FILE:-$root/key.txt}
if [ ! -f "$key" ]; then
    (umask 077 && python3 -c 'import secrets; print(secrets.token_urlsafe(32))' > "$key")
    echo "wrote a new API key to $key" >&2
fi
exec "$root/.venv/bin/fsm-agent" control \
    --listen "${LISTEN:-127.0.0.1:8700}" \
    --api-key-file "$key" \
    --runtime docker \
    --config "$here/fsm-agent.toml" \
    "$@"
