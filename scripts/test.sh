#!/usr/bin/env bash
# The test command: installs dependencies, builds, and runs every test: unit, PostgreSQL,
# integration, ops and deploy tests against a throwaway PostgreSQL 15 cluster made by
# pg_virtualenv, then the fault suite (label `fault`, about 6 minutes; each scenario starts
# and crashes its own PostgreSQL, one scenario at a time).
# Usage: scripts/test.sh [ctest arguments, e.g. -L unit, -R Saga, -L fault, -LE fault].
# With arguments, runs just what they select (in parallel, -j2).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh
cd build
run() { pg_virtualenv -t -v 15 ctest --output-on-failure --timeout 300 "$@"; }
if [ $# -gt 0 ]; then
  run -j2 "$@"
  exit
fi
run -j2 -LE fault
# The scenarios assert bounds on takeover and recovery times: run them alone on the machine.
run -j1 -L fault
