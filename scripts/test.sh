#!/usr/bin/env bash
# The test command. Installs and starts whatever the tests need that is missing (see
# scripts/services.sh), then runs every test. Extra arguments go to the test runner.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/services.sh

ensure_client_tools
ensure_postgres
trap 'stop_garage; stop_nats; stop_clamd' EXIT
ensure_garage
ensure_nats
ensure_clamd

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --no-fail-fast "$@"
else
  cargo test --no-fail-fast "$@"
fi
