#!/usr/bin/env bash
# The test command. Makes sure the real servers the tests talk to are up — Postgres, Redis and
# the AWS APIs through moto's server (installed from PyPI, pinned) — then checks formatting and
# lints (the code; the deployment template with cfn-lint and checkov) and runs the whole suite,
# built once: on SQLite and again on Postgres, then the reference
# GraphQL clients from npm (tests/node, installed from its lockfile) against the built binary.
set -euo pipefail
cd "$(dirname "$0")/.."

MOTO_VERSION=5.2.5
CFN_LINT_VERSION=1.58.0
CHECKOV_VERSION=3.3.30
step() { printf '\n==> %s\n' "$*"; }
wait_for() { # wait_for <what> <command...>
    local what=$1; shift
    for _ in $(seq 1 100); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
    echo "$what did not come up" >&2; return 1
}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

step "services: Postgres, Redis, moto"
if ! pg_isready -h 127.0.0.1 -p 5432 -q; then
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
fi
wait_for Postgres pg_isready -h 127.0.0.1 -p 5432 -q
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
fi
wait_for Redis redis-cli -h 127.0.0.1 -p 6379 ping
if ! python3 -c "import moto, sys; sys.exit(moto.__version__ != '$MOTO_VERSION')" 2>/dev/null; then
    python3 -m pip install --quiet "moto[server]==$MOTO_VERSION"
fi
moto_port=$(free_port)
python3 -m moto.server -H 127.0.0.1 -p "$moto_port" >"${TMPDIR:-/tmp}/voicegraph-moto.log" 2>&1 &
moto_pid=$!
trap 'kill $moto_pid 2>/dev/null || true' EXIT
wait_for moto curl -sf "http://127.0.0.1:$moto_port/moto-api/"
# Databases left by earlier runs.
psql -h 127.0.0.1 -U postgres -Atc "SELECT datname FROM pg_database WHERE datname LIKE 'vg\_t\_%'" \
    | while read -r db; do psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS \"$db\"" || true; done

export VOICEGRAPH_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432
export VOICEGRAPH_TEST_REDIS_URL=redis://127.0.0.1:6379
export AWS_ENDPOINT_URL="http://127.0.0.1:$moto_port" AWS_REGION=us-east-1
export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "deploy/voicegraph.template.yaml: cfn-lint and checkov (PyPI, pinned, in their own venv)"
tools="${XDG_CACHE_HOME:-$HOME/.cache}/voicegraph-tools/cfn-lint-$CFN_LINT_VERSION-checkov-$CHECKOV_VERSION"
if [ ! -x "$tools/bin/checkov" ] || [ ! -x "$tools/bin/cfn-lint" ]; then
    rm -rf "$tools"
    python3 -m venv "$tools"
    "$tools/bin/pip" install --quiet "cfn-lint==$CFN_LINT_VERSION" "checkov==$CHECKOV_VERSION"
fi
"$tools/bin/cfn-lint" deploy/voicegraph.template.yaml
echo "cfn-lint: no findings"
# Waivers are in the template's metadata, each with its reason (tests/api/deploy.rs checks that).
"$tools/bin/checkov" --file deploy/voicegraph.template.yaml --framework cloudformation \
    --compact --skip-download --quiet

step "cargo test (build)"
cargo test --workspace --locked --lib --bins --tests --no-run
cargo build --locked --bin voicegraph

step "npm clients for tests/node (from its lockfile)"
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    echo "Node.js and npm are needed for tests/node (Debian: apt-get install nodejs npm)" >&2
    exit 1
fi
if ! cmp -s tests/node/package-lock.json tests/node/node_modules/.package-lock.json 2>/dev/null; then
    (cd tests/node && npm ci --no-audit --no-fund --loglevel=error)
fi
# The playground's browser test drives Debian's Chromium (playwright-core cannot fetch a browser).
if ! command -v chromium >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get install -y -qq chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }
    else
        echo "the playground's browser test needs Chromium (Debian: sudo apt-get install chromium)" >&2
        exit 1
    fi
fi

log=$(mktemp)
trap 'kill $moto_pid 2>/dev/null || true; rm -f "$log"' EXIT
threads=${TEST_THREADS:-4}
status=0
step "cargo test: every test, embedded database (SQLite)"
cargo test --workspace --locked --lib --bins --tests -- --test-threads "$threads" --skip scale_out --skip on_a_quiet_database 2>&1 | tee -a "$log" || status=1
step "cargo test: the integration suite again on Postgres"
VOICEGRAPH_TEST_DB=postgres cargo test --locked --test api -- --test-threads "$threads" --skip scale_out --skip on_a_quiet_database 2>&1 | tee -a "$log" || status=1
step "node: graphql-ws, graphql-sse, Apollo persisted queries, graphql-http audit, standardwebhooks, the playground and dashboard in Chromium"
(cd tests/node && VOICEGRAPH_BIN="$PWD/../../target/debug/voicegraph" node --test --test-concurrency=1 --test-reporter=spec) 2>&1 \
    | tee "$log.node" || status=1
node_passed=$(grep -Eo '^ℹ pass [0-9]+' "$log.node" | grep -Eo '[0-9]+' || echo 0)
node_failed=$(grep -Eo '^ℹ fail [0-9]+' "$log.node" | grep -Eo '[0-9]+' || echo 0)
echo "test result: node clients. ${node_passed} passed; ${node_failed} failed" | tee -a "$log"
rm -f "$log.node"
step "cargo test: scale-out with separate processes (one at a time)"
cargo test --locked --test api scale_out -- --test-threads 1 --nocapture 2>&1 | tee -a "$log" || status=1
step "cargo test: the response cache on Postgres, with nothing else writing (one at a time)"
VOICEGRAPH_TEST_DB=postgres cargo test --locked --test api on_a_quiet_database -- --test-threads 1 2>&1 | tee -a "$log" || status=1

passed=$(grep -Eo '^test result: .* [0-9]+ passed' "$log" | grep -Eo '[0-9]+ passed' | awk '{s+=$1} END {print s+0}')
failed=$(grep -Eo '; [0-9]+ failed' "$log" | grep -Eo '[0-9]+' | awk '{s+=$1} END {print s+0}')
echo
echo "${passed} passed, ${failed} failed"
exit "$status"
