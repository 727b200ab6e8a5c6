#!/usr/bin/env bash
# Sets up everything (scripts/setup.sh), starts the local services the tests need (Kafka, Flink,
# the SDK worker pool),
# runs the whole test suite, and stops the services it started. Extra arguments go to pytest,
# e.g. ./run_tests.sh -k simulator   or   ./run_tests.sh tests/test_contracts.py
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup.sh

started=()
for service in kafka flink workers; do
  if ! scripts/services.sh status "$service" | grep -q running; then started+=("$service"); fi
done
stop_started() { for s in "${started[@]}"; do scripts/services.sh stop "$s"; done; }
trap stop_started EXIT
scripts/services.sh start

FLEET_REQUIRE_SERVICES=1 .venv/bin/python -m pytest "$@"
