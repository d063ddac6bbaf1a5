#!/usr/bin/env bash
# The test command: installs dependencies, builds, and runs every test (unit, PostgreSQL,
# integration) against a throwaway PostgreSQL 15 cluster made by pg_virtualenv.
# Usage: scripts/test.sh [ctest arguments, e.g. -L unit, -R Saga, or -L fault for the fault
# suite]. Without arguments: every test except the long fault suite (label `fault`).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh
cd build
if [ $# -eq 0 ]; then set -- -LE fault; fi
pg_virtualenv -t -v 15 ctest --output-on-failure --timeout 300 -j2 "$@"
