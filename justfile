# fsm-agent tasks. `just setup` is idempotent; every other recipe runs it first.

set shell := ["bash", "-euo", "pipefail", "-c"]

venv := ".venv"
py := venv + "/bin/python"
kilo_version := "7.7.9"

# List the recipes.
default:
    @just --list

# Install the project (editable), its dev tools, the pinned Kilo, Graphviz, Docker and the images,
# PostgreSQL, Chromium and Mermaid where possible (each says in one line why not, where it cannot).
setup:
    @[ -t 2 ] && echo "setup 1/7: the project and its tools (pip)..." >&2 || true
    test -x {{py}} || python3 -m venv {{venv}}
    {{py}} -m pip install -q --disable-pip-version-check -e '.[dev]'
    @[ -t 2 ] && echo "setup 2/7: Kilo {{kilo_version}} and OpenCode (npm)..." >&2 || true
    # Kilo: pin the platform package (the meta package @kilocode/cli@7.8.1 does not install).
    test -x .kilo/node_modules/@kilocode/cli-linux-x64/bin/kilo || npm install --silent --no-audit --no-fund --prefix .kilo @kilocode/cli-linux-x64@{{kilo_version}}
    # Upstream OpenCode, the second agent behind the same port (docs/agents.md).
    bash scripts/setup-opencode.sh
    @[ -t 2 ] && echo "setup 3/7: Graphviz..." >&2 || true
    # Graphviz renders the SVG diagrams; without it `fsm-agent graph` still writes the other formats.
    command -v dot >/dev/null || { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null && (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq graphviz >/dev/null) || echo "note: Graphviz 'dot' not installed; SVG diagrams will be skipped"; }
    @[ -t 2 ] && echo "setup 4/7: PostgreSQL (the PostgreSQL store's tests)..." >&2 || true
    bash scripts/setup-postgres.sh
    @[ -t 2 ] && echo "setup 5/7: Chromium (the dashboard's browser test)..." >&2 || true
    bash scripts/setup-chromium.sh
    @[ -t 2 ] && echo "setup 6/7: Mermaid (the diagrams' rendering test)..." >&2 || true
    bash scripts/setup-mermaid.sh
    @[ -t 2 ] && echo "setup 7/7: containers (a first image build takes minutes)..." >&2 || true
    # Containers: docker.io, mmdebstrap, tini (root + apt), dockerd if none answers, the images
    # (rebuilt only when their content hash changed); else one line saying why the tests skip.
    bash docker/setup.sh {{py}}

# Build the base and wrapper images if their content changed; prints the wrapper image's tag.
image:
    {{py}} -m adapters.runtime.image

# The main job: the demo (control plane + wrapper + real Kilo + a scripted model, one prompt).
run: setup
    {{venv}}/bin/fsm-agent demo

# Only the demo, without re-running setup.
demo:
    {{venv}}/bin/fsm-agent demo

# Lint, types and the whole test suite: two workers, each test file on one of them (module
# fixtures such as a built image are shared within a file). Most tests wait on real processes.
test: setup lint types
    {{py}} -m pytest -n 2 --dist loadfile

# ruff over everything.
lint:
    {{venv}}/bin/ruff check fsm adapters tests bench
    {{venv}}/bin/ruff format --check fsm adapters tests bench

# mypy --strict over the shipped packages.
types:
    {{venv}}/bin/mypy --strict fsm adapters

# Regenerate diagrams/ from the machine declarations.
graph: setup
    {{venv}}/bin/fsm-agent graph

# The fuzzers, long: schemathesis against both live APIs, hypothesis on ingest frames
# (the suite runs them with few examples; FSM_AGENT_FUZZ_EXAMPLES sets how many).
fuzz examples="3000": setup
    FSM_AGENT_FUZZ_EXAMPLES={{examples}} {{py}} -m pytest -q tests/fuzz -p no:cacheprovider

# Every benchmark (engine, simulator, relay, control plane, detection, container): one table, bench/results.{json,md}.
bench *args: setup
    {{py}} -m pip install -q --disable-pip-version-check -e '.[bench]'
    {{py}} -m bench.run {{args}}
