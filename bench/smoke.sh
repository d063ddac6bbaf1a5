#!/usr/bin/env bash
# A ~10-second smoke test of the benchmark harness for CI: 300 sagas (50 warm-up), 16 in flight,
# scenarios A and B, against a throwaway PostgreSQL. Exits non-zero when an exactly-once check
# fails (3), a saga does not end (4), or the setup fails (1). Extra arguments go to run.sh
# (e.g. --no-build, --build-dir DIR).
set -euo pipefail
exec "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/run.sh" --sagas 300 --warmup 50 --in-flight 16 \
  --scenarios "A B" --duration-limit 120s "$@"
