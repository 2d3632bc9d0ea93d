#!/usr/bin/env bash
# The test command: formatting, lints, then the whole test suite, built once.
# Everything the tests need runs in-process (embedded SQLite, queue, bus and blob store), so
# nothing has to be installed or started beyond the Rust toolchain.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo test"
cargo test --workspace --locked -- --test-threads "${TEST_THREADS:-4}"
