#!/usr/bin/env bash
# Runs deploy/run-local.sh --check against the built binaries: a throwaway PostgreSQL 15, the
# example participants and two sagad replicas on free loopback ports; one saga through each
# replica; a clean SIGTERM drain. Exits with run-local.sh's status (124 on a time-out).
#
#   tests/deploy/run_local_test.sh BUILD_DIR [TIMEOUT_SECONDS]
#
# Needs pg_virtualenv and postgresql-15 (scripts/install-deps.sh); works inside another
# pg_virtualenv too (run-local.sh makes a cluster of its own).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BUILD=${1:?usage: run_local_test.sh BUILD_DIR [TIMEOUT_SECONDS]}
LIMIT=${2:-300}

if ! command -v pg_virtualenv >/dev/null; then
  echo "run_local_test: pg_virtualenv is missing (apt-get install postgresql-common postgresql-15)" >&2
  exit 1
fi

# Five distinct free loopback ports (the kernel picks them; they are released at once, so
# another process could take one in between: then sagad fails to listen and the test says so).
read -r -a ports <<<"$(python3 - <<'EOF'
import socket
socks = []
for _ in range(5):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
)"
export RUN_LOCAL_SAGAD_PORTS="${ports[0]} ${ports[1]}"
export RUN_LOCAL_METRICS_PORTS="${ports[2]} ${ports[3]}"
export RUN_LOCAL_PARTICIPANTS_PORT=${ports[4]}
export RUN_LOCAL_CHECK_TIMEOUT=$((LIMIT - 30))
export RUN_LOCAL_PIDFILE
RUN_LOCAL_PIDFILE=$(mktemp -t run-local-pids.XXXXXX)

cleanup() {
  # Last resort, if run-local.sh itself could not stop what it started: only those pids.
  local p
  while read -r p; do
    if [ -n "$p" ] && kill -0 "$p" 2>/dev/null; then
      echo "run_local_test: pid $p was left running, killing it" >&2
      kill -KILL "$p" 2>/dev/null || true
    fi
  done <"$RUN_LOCAL_PIDFILE"
  rm -f "$RUN_LOCAL_PIDFILE"
}
trap cleanup EXIT

echo "run_local_test: ports sagad ${RUN_LOCAL_SAGAD_PORTS}, metrics ${RUN_LOCAL_METRICS_PORTS}, participants ${RUN_LOCAL_PARTICIPANTS_PORT}"
rc=0
timeout --kill-after=15 "$LIMIT" "$ROOT/deploy/run-local.sh" --check --build-dir "$BUILD" || rc=$?
if [ "$rc" -eq 0 ]; then
  echo "run_local_test: 1 passed, 0 failed"
else
  echo "run_local_test: deploy/run-local.sh --check exited $rc" >&2
  echo "run_local_test: 0 passed, 1 failed"
fi
exit "$rc"
