#!/usr/bin/env bash
# The compose topology as plain processes, for a machine without a container engine: a
# throwaway PostgreSQL 15 (pg_virtualenv), the example shop participants and TWO sagad replicas
# sharing the database, all on 127.0.0.1. Needs the built binaries (scripts/build.sh) and
# postgresql-15 (scripts/install-deps.sh). Everything stops on Ctrl-C.
#
#   deploy/run-local.sh [--build-dir DIR] [--check]
#
#   --build-dir DIR  where the binaries are (default: build/; env SAGA_BUILD_DIR)
#   --check          start everything, run one order saga through each replica
#                    (sagactl saga start ... --wait), read each saga back through the other
#                    replica, stop everything (SIGTERM: sagad drains and must exit 0), and exit
#                    0 if all of it worked, 1 otherwise. Used by tests/deploy/run_local_test.sh.
#
# Ports (env): RUN_LOCAL_SAGAD_PORTS="50051 50052", RUN_LOCAL_METRICS_PORTS="9090 9091" (used
# only if `sagad --help` lists --metrics-listen), RUN_LOCAL_PARTICIPANTS_PORT=50061.
# RUN_LOCAL_CHECK_TIMEOUT (default 240 s) bounds --check; RUN_LOCAL_PIDFILE, if set, receives
# the pids of the processes started, one a line (for a caller's last-resort cleanup).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SELF="$ROOT/deploy/run-local.sh"

MODE=run
BUILD=${SAGA_BUILD_DIR:-$ROOT/build}
args=("$@")
while [ $# -gt 0 ]; do
  case "$1" in
    --check) MODE=check ;;
    --build-dir) BUILD=${2:?--build-dir needs a folder}; shift ;;
    --build-dir=*) BUILD=${1#*=} ;;
    -h|--help) sed -n '2,20p' "$SELF" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "run-local.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
BUILD=$(cd "$BUILD" 2>/dev/null && pwd) || { echo "run-local.sh: no build folder $BUILD" >&2; exit 2; }
SAGAD=$BUILD/orchestrator/server/sagad
SAGACTL=$BUILD/orchestrator/cli/sagactl
SHOP=$BUILD/examples/participants/shop-participants

if [ -z "${SAGA_RUN_LOCAL_INSIDE:-}" ]; then
  for b in "$SAGAD" "$SAGACTL" "$SHOP"; do
    [ -x "$b" ] || { echo "run-local.sh: $b is missing: build first (scripts/build.sh)" >&2; exit 2; }
  done
  command -v pg_virtualenv >/dev/null || {
    echo "run-local.sh: pg_virtualenv is missing (apt-get install postgresql-common postgresql-15)" >&2
    exit 2
  }
  export SAGA_RUN_LOCAL_INSIDE=1
  # A cluster of our own in a temporary folder (-t), even when called from inside another
  # pg_virtualenv (e.g. under ctest): forget the outer cluster's variables, or the new cluster
  # would be created on the outer one's port.
  exec env -u PGHOST -u PGPORT -u PGUSER -u PGPASSWORD -u PGDATABASE -u PGSERVICE \
    -u PGSYSCONFDIR -u PG_CLUSTER_CONF_ROOT -u PGVERSION -u PG_CONFIG \
    pg_virtualenv -t -v 15 "$SELF" "${args[@]}"
fi

# --- inside pg_virtualenv: PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE point at the cluster.
read -r -a GRPC_PORTS <<<"${RUN_LOCAL_SAGAD_PORTS:-50051 50052}"
read -r -a METRICS_PORTS <<<"${RUN_LOCAL_METRICS_PORTS:-9090 9091}"
SHOP_PORT=${RUN_LOCAL_PARTICIPANTS_PORT:-50061}
[ ${#GRPC_PORTS[@]} -eq 2 ] && [ ${#METRICS_PORTS[@]} -eq 2 ] || {
  echo "run-local.sh: RUN_LOCAL_SAGAD_PORTS and RUN_LOCAL_METRICS_PORTS take two ports each" >&2
  exit 2
}
HAS_METRICS=0
if "$SAGAD" --help 2>/dev/null | grep -q -- '--metrics-listen'; then HAS_METRICS=1; fi

WORK=$(mktemp -d -t saga-run-local.XXXXXX)
LOGS=$WORK/logs
mkdir -p "$LOGS" "$WORK/saga-defs"
names=()
pids=()

log() { echo "==> $*"; }

# GET over bash's /dev/tcp (no curl needed): prints the status line, headers and body.
http_get() {  # host port path
  local out
  out=$(timeout 10 bash -c 'exec 3<>"/dev/tcp/$1/$2" || exit 1
    printf "GET %s HTTP/1.0\r\nHost: %s\r\nConnection: close\r\n\r\n" "$3" "$1" >&3
    cat <&3' _ "$1" "$2" "$3") || return 1
  printf '%s\n' "$out" | tr -d '\r'
}

# Starts a process in a session of its own (so that a Ctrl-C on the terminal reaches only this
# script, which then stops each process with ONE SIGTERM: sagad treats a second signal as
# "exit now, skip the drain").
start() {
  local name=$1; shift
  setsid "$@" >"$LOGS/$name.log" 2>&1 </dev/null &
  names+=("$name")
  pids+=($!)
  if [ -n "${RUN_LOCAL_PIDFILE:-}" ]; then echo "$!" >>"$RUN_LOCAL_PIDFILE"; fi
}

alive() { kill -0 "$1" 2>/dev/null; }

# Stops every process (sagad replicas first, with SIGTERM, then the participants), waiting for
# each; returns 1 if a sagad did not exit 0 within its drain timeout + 10 s.
STOPPED=0
stop_all() {
  [ "$STOPPED" = 1 ] && return 0
  STOPPED=1
  local rc=0 i
  for i in "${!pids[@]}"; do
    [[ ${names[$i]} == sagad* ]] && alive "${pids[$i]}" && kill -TERM "${pids[$i]}" 2>/dev/null || true
  done
  for i in "${!pids[@]}"; do
    [[ ${names[$i]} == sagad* ]] || continue
    if ! wait_exit "${pids[$i]}" 30; then
      echo "run-local.sh: ${names[$i]} did not stop within 30s, killing it" >&2
      kill -KILL "${pids[$i]}" 2>/dev/null || true
      rc=1
    fi
    local status=0
    wait "${pids[$i]}" 2>/dev/null || status=$?
    if [ "$status" -ne 0 ]; then
      echo "run-local.sh: ${names[$i]} exited with status $status after SIGTERM" >&2
      rc=1
    fi
  done
  for i in "${!pids[@]}"; do
    [[ ${names[$i]} == sagad* ]] && continue
    alive "${pids[$i]}" && kill -TERM "${pids[$i]}" 2>/dev/null || true
    wait_exit "${pids[$i]}" 10 || kill -KILL "${pids[$i]}" 2>/dev/null || true
    wait "${pids[$i]}" 2>/dev/null || true
  done
  return $rc
}

wait_exit() {  # pid seconds
  local n=$(( $2 * 10 ))
  while alive "$1" && [ $n -gt 0 ]; do sleep 0.1; n=$((n - 1)); done
  ! alive "$1"
}

show_logs() {
  local f
  for f in "$LOGS"/*.log; do echo "--- $f (last 30 lines)"; tail -30 "$f"; done
}

KEEP_LOGS=0
on_exit() {
  local rc=$?
  trap - EXIT INT TERM
  if [ -n "${WATCHDOG:-}" ]; then kill "$WATCHDOG" 2>/dev/null || true; fi
  if [ -e "$WORK/timed-out" ]; then
    echo "run-local.sh: --check timed out after ${RUN_LOCAL_CHECK_TIMEOUT:-240}s" >&2
    show_logs >&2
    KEEP_LOGS=1
    rc=1
  fi
  stop_all || true
  if [ "$KEEP_LOGS" = 1 ]; then echo "logs kept in $LOGS"; else rm -rf "$WORK"; fi
  exit $rc
}
trap on_exit EXIT
# A stop asked for (Ctrl-C, SIGTERM) ends the foreground mode with 0; it fails --check.
trap 'echo; log "stopping"; [ "$MODE" = check ] && exit 130; exit 0' INT
trap 'log "stopping"; [ "$MODE" = check ] && exit 143; exit 0' TERM

fail() {
  echo "run-local.sh: FAILED: $*" >&2
  show_logs >&2
  KEEP_LOGS=1
  exit 1
}

if [ "$MODE" = check ]; then
  # A watchdog: --check never outlives RUN_LOCAL_CHECK_TIMEOUT.
  # Its output goes nowhere, so that no leftover holds the caller's pipes open.
  (
    trap 'kill "$sp" 2>/dev/null; exit 0' TERM
    sleep "${RUN_LOCAL_CHECK_TIMEOUT:-240}" & sp=$!
    wait "$sp" && touch "$WORK/timed-out" && kill -TERM $$
  ) </dev/null >/dev/null 2>&1 &
  WATCHDOG=$!
fi

# The definitions, with the participants' target pointed at our participants (the same
# transformation as deploy/gen-defs.sh: only the `target:` lines change).
sed -E "s|^([[:space:]]*target:[[:space:]]*).*\$|\\1127.0.0.1:$SHOP_PORT|" \
  "$ROOT/saga-defs/order-fulfillment.yaml" >"$WORK/saga-defs/order-fulfillment.yaml"

log "PostgreSQL (pg_virtualenv): $PGHOST:$PGPORT database $PGDATABASE"
log "starting shop-participants on 127.0.0.1:$SHOP_PORT"
start participants "$SHOP" --listen "127.0.0.1:$SHOP_PORT"
for _ in $(seq 1 100); do
  grep -q "listening on" "$LOGS/participants.log" 2>/dev/null && break
  alive "${pids[0]}" || fail "shop-participants exited"
  sleep 0.1
done
grep -q "listening on" "$LOGS/participants.log" || fail "shop-participants did not start in 10s"

# Both replicas start at once, as a Deployment's pods do: they run the migrations under the
# advisory lock and register the definitions concurrently.
for i in 0 1; do
  n=$((i + 1))
  extra=()
  if [ "$HAS_METRICS" = 1 ]; then extra=(--metrics-listen "127.0.0.1:${METRICS_PORTS[$i]}"); fi
  log "starting sagad-$n on 127.0.0.1:${GRPC_PORTS[$i]} (owner local-$n)${extra:+, metrics on 127.0.0.1:${METRICS_PORTS[$i]}}"
  # The database comes from pg_virtualenv's PG* variables (an empty --database-url uses them).
  start "sagad-$n" "$SAGAD" --listen "127.0.0.1:${GRPC_PORTS[$i]}" --owner-id "local-$n" \
    --definitions "$WORK/saga-defs" --proto-path "$ROOT/examples/participants/proto" \
    --drain-timeout 20s "${extra[@]}"
done

for i in 0 1; do
  n=$((i + 1)); ok=0
  for _ in $(seq 1 300); do
    if "$SAGACTL" --address "127.0.0.1:${GRPC_PORTS[$i]}" --timeout 2 health >/dev/null 2>&1; then ok=1; break; fi
    alive "${pids[$((i + 1))]}" || fail "sagad-$n exited during startup"
    sleep 0.1
  done
  [ "$ok" = 1 ] || fail "sagad-$n not SERVING after 30s"
  log "sagad-$n SERVING on 127.0.0.1:${GRPC_PORTS[$i]}"
done

if [ "$MODE" = check ]; then
  ids=()
  for i in 0 1; do
    n=$((i + 1)); addr=127.0.0.1:${GRPC_PORTS[$i]}
    key="run-local-check-$n-$$"
    log "order through sagad-$n ($addr), key $key"
    out=$("$SAGACTL" --address "$addr" --timeout 60 saga start order-fulfillment --key "$key" --wait \
      --input "{\"order_id\":\"rl-$n-$$\",\"sku\":\"book-42\",\"quantity\":1,\"amount_cents\":2599,\"address\":\"1 Main St\"}" 2>&1) \
      || { echo "$out"; fail "the saga through sagad-$n did not complete"; }
    echo "$out" | sed 's/^/    /'
    id=$(echo "$out" | grep -oE '[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}' | head -1)
    [ -n "$id" ] || fail "no saga id in sagactl's output"
    ids+=("$id")
  done
  # The replicas share the database: each saga reads back as COMPLETED through the other one.
  for i in 0 1; do
    other=$(( 1 - i ))
    got=$("$SAGACTL" --address "127.0.0.1:${GRPC_PORTS[$other]}" -o json saga get "${ids[$i]}" 2>&1) \
      || fail "saga ${ids[$i]} not found through sagad-$((other + 1)): $got"
    echo "$got" | grep -qE '"status": ?"(SAGA_STATUS_)?COMPLETED"' || fail "saga ${ids[$i]} is not COMPLETED through sagad-$((other + 1)): $got"
    log "saga ${ids[$i]} (via sagad-$((i + 1))) is COMPLETED through sagad-$((other + 1))"
  done
  if [ "$HAS_METRICS" = 1 ]; then
    for i in 0 1; do
      body=$(http_get 127.0.0.1 "${METRICS_PORTS[$i]}" /metrics) \
        || fail "sagad-$((i + 1)): GET http://127.0.0.1:${METRICS_PORTS[$i]}/metrics failed"
      # (No `echo | head`: under pipefail, head closing the pipe early fails the pipeline.)
      status_line=${body%%$'\n'*}
      [[ "$status_line" =~ ^HTTP/1\.[01]\ 200 ]] \
        || fail "sagad-$((i + 1)): /metrics answered $status_line"
      grep -q '^saga_' <<<"$body" \
        || fail "sagad-$((i + 1)): /metrics has no saga_* series"
      log "sagad-$((i + 1)) serves /metrics on 127.0.0.1:${METRICS_PORTS[$i]} ($(echo "$body" | grep -c '^saga_') saga_* samples)"
    done
  fi
  log "stopping (SIGTERM: each sagad drains and must exit 0)"
  stop_all || fail "a sagad did not stop cleanly"
  log "run-local check passed"
  exit 0
fi

cat <<EOF

Saga Orchestrator is running (logs in $LOGS):
  sagad-1             127.0.0.1:${GRPC_PORTS[0]}$([ "$HAS_METRICS" = 1 ] && echo "   metrics http://127.0.0.1:${METRICS_PORTS[0]}/metrics")
  sagad-2             127.0.0.1:${GRPC_PORTS[1]}$([ "$HAS_METRICS" = 1 ] && echo "   metrics http://127.0.0.1:${METRICS_PORTS[1]}/metrics")
  shop-participants   127.0.0.1:$SHOP_PORT
  PostgreSQL          $PGHOST:$PGPORT (user $PGUSER, throwaway: dropped on exit)

In another terminal:
  export SAGA_ADDRESS=127.0.0.1:${GRPC_PORTS[0]}     # or :${GRPC_PORTS[1]}: both replicas see every saga
  $SAGACTL health
  $SAGACTL saga start order-fulfillment --key order-7 --wait \\
    --input '{"order_id":"7","sku":"book-42","quantity":1,"amount_cents":2599,"address":"1 Main St"}'
  $SAGACTL saga list
  $SAGACTL --address 127.0.0.1:${GRPC_PORTS[1]} saga get ID --history

Stop one replica (kill -TERM ${pids[1]}: it drains and releases its leases) and the other one
goes on with its sagas.
Press Ctrl-C to stop everything.
EOF

# Until Ctrl-C: a sagad that exits (e.g. stopped by hand) is reported and the other one goes on;
# when the participants or both replicas are gone, everything stops.
declare -A reported=()
while true; do
  running=0
  for i in "${!pids[@]}"; do
    if alive "${pids[$i]}"; then
      [[ ${names[$i]} == sagad* ]] && running=$((running + 1))
      continue
    fi
    if [ -z "${reported[$i]:-}" ]; then
      reported[$i]=1
      echo "run-local.sh: ${names[$i]} (pid ${pids[$i]}) exited; its last lines:" >&2
      tail -5 "$LOGS/${names[$i]}.log" >&2
    fi
    [[ ${names[$i]} == sagad* ]] || { echo "run-local.sh: stopping everything" >&2; exit 1; }
  done
  [ "$running" -gt 0 ] || { echo "run-local.sh: no sagad left; stopping everything" >&2; exit 1; }
  sleep 1
done
