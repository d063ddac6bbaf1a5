#!/usr/bin/env bash
# The order-saga benchmark (shared workload, /work/shared/bench/README.md) in one command:
# builds Release into build-bench, starts a throwaway PostgreSQL 15 (pg_virtualenv,
# synchronous_commit=on, fsync=on), bench-participants and sagad, runs scenario A then B with
# saga-bench, prints one table row per run, and stops everything it started.
#
# Usage: bench/run.sh [options]
#   --sagas N            measured sagas per run (5000)
#   --warmup N           warm-up sagas per run (200)
#   --in-flight N        sagas in flight (64)
#   --sweep              run in-flight 1, 16, 64 and 256 (overrides --in-flight)
#   --scenarios "A B"    scenarios to run, in order ("A B")
#   --latency-ms N       participant latency per call (0)
#   --duration-limit D   time limit per run, e.g. 600s (10m)
#   --ceiling            also measure the participant server alone (bench-participants-ceiling)
#   --floor              before each run at one in flight (without --latency-ms), measure the
#                        floor of a saga's latency on this machine in the same minute, without
#                        sagad (saga-floor: 4 single-row writes and 3 calls per saga, one thread),
#                        to read sagad's figure against it
#   --preload N          before the runs, fill the tables with N finished sagas (8 events each,
#                        ids and times as sagad makes them, created over the past N/10 s), to
#                        measure with a history of that size (e.g. 1000000: about 2 GB, 1 min)
#   --explain-slow N     print the recorded events of the N slowest sagas of each run
#   --pg-waits           sample pg_stat_activity (20 Hz) during the runs and print what sagad's
#                        backends were doing (wait events and statements); costs some CPU
#   --format table|json  output (table)
#   --build-dir DIR      build directory (build-bench); --no-build uses it as it is
#   --sagad-port P       sagad's port (50051); --participant-port P (50071), --admin-port P (50072)
#   --sagad-args "..."   extra sagad flags (e.g. "--workers 2")
#   --driver-args "..."  extra saga-bench flags (e.g. "--await watch")
#   --keep-logs          keep the log folder (printed) even when everything passed
#   --pg-from-env        use the PostgreSQL server that the PG* variables point at (e.g. inside
#                        pg_virtualenv) instead of starting one; runs in a new database there,
#                        dropped at the end
# Exit status: 0 when every run passed the exactly-once check and every saga ended; 3 when an
# exactly-once check failed; 4 when sagas did not end; 1 for setup errors.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SELF="$ROOT/bench/run.sh"

SAGAS=5000
WARMUP=200
IN_FLIGHT=64
SWEEP=0
SCENARIOS="A B"
LATENCY_MS=0
DURATION_LIMIT=10m
CEILING=0
FLOOR=0
FORMAT=table
BUILD_DIR="$ROOT/build-bench"
BUILD=1
SAGAD_PORT=50051
PART_PORT=50071
ADMIN_PORT=50072
SAGAD_ARGS=""
DRIVER_ARGS=""
PRELOAD=0
KEEP_LOGS=0
PG_FROM_ENV=0
EXPLAIN_SLOW=0
PG_WAITS=0

usage() { sed -n '2,/^set -euo/p' "$SELF" | sed '$d' | sed 's/^# \{0,1\}//'; }

ORIG_ARGS=("$@")
while [[ $# -gt 0 ]]; do
  case "$1" in
    --sagas) SAGAS="$2"; shift 2 ;;
    --warmup) WARMUP="$2"; shift 2 ;;
    --in-flight) IN_FLIGHT="$2"; shift 2 ;;
    --sweep) SWEEP=1; shift ;;
    --scenarios) SCENARIOS="$2"; shift 2 ;;
    --latency-ms) LATENCY_MS="$2"; shift 2 ;;
    --duration-limit) DURATION_LIMIT="$2"; shift 2 ;;
    --ceiling) CEILING=1; shift ;;
    --floor) FLOOR=1; shift ;;
    --explain-slow) EXPLAIN_SLOW="$2"; shift 2 ;;
    --preload) PRELOAD="$2"; shift 2 ;;
    --pg-waits) PG_WAITS=1; shift ;;
    --format) FORMAT="$2"; shift 2 ;;
    --build-dir) BUILD_DIR="$2"; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    --sagad-port) SAGAD_PORT="$2"; shift 2 ;;
    --participant-port) PART_PORT="$2"; shift 2 ;;
    --admin-port) ADMIN_PORT="$2"; shift 2 ;;
    --sagad-args) SAGAD_ARGS="$2"; shift 2 ;;
    --driver-args) DRIVER_ARGS="$2"; shift 2 ;;
    --keep-logs) KEEP_LOGS=1; shift ;;
    --pg-from-env) PG_FROM_ENV=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "run.sh: unknown option $1 (see --help)" >&2; exit 1 ;;
  esac
done
case "$FORMAT" in table|json) ;; *) echo "run.sh: --format table|json" >&2; exit 1 ;; esac
[[ "$PRELOAD" =~ ^[0-9]+$ ]] || { echo "run.sh: --preload takes a number of sagas" >&2; exit 1; }

SAGAD="${SAGA_BENCH_SAGAD:-$BUILD_DIR/orchestrator/server/sagad}"  # SAGA_BENCH_SAGAD: another sagad binary, e.g. to compare two builds
SAGACTL="$BUILD_DIR/orchestrator/cli/sagactl"
PARTICIPANTS="${SAGA_BENCH_PARTICIPANTS:-$BUILD_DIR/bench/bench-participants}"  # SAGA_BENCH_PARTICIPANTS: another participant server binary
CEILING_BIN="$BUILD_DIR/bench/bench-participants-ceiling"
FLOOR_BIN="$BUILD_DIR/bench/saga-floor"
DRIVER="${SAGA_BENCH_DRIVER:-$BUILD_DIR/bench/saga-bench}"  # SAGA_BENCH_DRIVER: another driver binary

log() { echo "run.sh: $*" >&2; }

# ---------------------------------------------------------------------------------------------
# Outside PostgreSQL: build, then re-run this script inside a throwaway cluster.
if [[ -z "${SAGA_BENCH_IN_PGENV:-}" ]]; then
  if [[ "$BUILD" == 1 ]]; then
    if [[ ! -f "$BUILD_DIR/build.ninja" ]]; then
      log "configuring $BUILD_DIR (Release)"
      cmake -S "$ROOT" -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release >&2
    fi
    log "building"
    ninja -C "$BUILD_DIR" -j2 sagad sagactl bench_participants bench_participants_ceiling saga_floor \
      saga_bench >&2
  fi
  for bin in "$SAGAD" "$SAGACTL" "$PARTICIPANTS" "$DRIVER"; do
    [[ -x "$bin" ]] || { log "missing $bin (build it, or drop --no-build)"; exit 1; }
  done
  for port in "$SAGAD_PORT" "$PART_PORT" "$ADMIN_PORT"; do
    if ss -ltnH "( sport = :$port )" 2>/dev/null | grep -q .; then
      log "port $port is in use; pick other ports (--sagad-port/--participant-port/--admin-port)"
      exit 1
    fi
  done
fi
if [[ -z "${SAGA_BENCH_IN_PGENV:-}" && "$PG_FROM_ENV" != 1 ]]; then
  log "starting a throwaway PostgreSQL 15 (synchronous_commit=on, fsync=on)"
  export SAGA_BENCH_IN_PGENV=1
  # pg_virtualenv talks on stdout: the results go to descriptor 3 (our stdout), the rest to
  # stderr, so that stdout holds only the table (or JSON lines).
  export SAGA_BENCH_RESULTS_FD=3
  exec 3>&1 1>&2
  exec pg_virtualenv -t -v 15 -o synchronous_commit=on -o fsync=on \
    "$SELF" "${ORIG_ARGS[@]}" --no-build --build-dir "$BUILD_DIR"
fi

# ---------------------------------------------------------------------------------------------
# Inside pg_virtualenv: PGHOST/PGPORT/PGUSER/PGPASSWORD/PGDATABASE point at the new cluster.
OUT="${SAGA_BENCH_RESULTS_FD:-1}"
LOGDIR="$(mktemp -d /tmp/saga-bench.XXXXXX)"
PIDS=()
cleanup() {
  local rc=$?
  for pid in "${PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 1 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  if [[ -n "${BENCH_DB:-}" ]]; then
    dropdb --if-exists "$BENCH_DB" >/dev/null 2>&1 || true
  fi
  if [[ $rc -ne 0 || "$KEEP_LOGS" == 1 ]]; then
    log "logs kept in $LOGDIR"
  else
    rm -rf "$LOGDIR"
  fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [[ "$PG_FROM_ENV" == 1 ]]; then
  BENCH_DB="saga_bench_$$"
  createdb "$BENCH_DB" || { log "cannot create database $BENCH_DB"; BENCH_DB=""; exit 1; }
  export PGDATABASE="$BENCH_DB"
fi

pg_settings="$(psql -XAtc "SELECT current_setting('synchronous_commit') || ' ' ||
  current_setting('fsync') || ' ' || current_setting('server_version')")"
log "PostgreSQL $PGHOST:$PGPORT: synchronous_commit fsync version = $pg_settings"

# The definitions: the participant port is written into a copy of bench-order.yaml.
DEFS="$LOGDIR/saga-defs"
mkdir -p "$DEFS"
sed "s/localhost:50071/localhost:$PART_PORT/g" "$ROOT/bench/saga-defs/bench-order.yaml" \
  > "$DEFS/bench-order.yaml"

"$PARTICIPANTS" --grpc-port "$PART_PORT" --admin-port "$ADMIN_PORT" \
  > "$LOGDIR/participants.log" 2>&1 &
PART_PID=$!
PIDS+=("$PART_PID")
ADMIN_URL="http://localhost:$ADMIN_PORT"
for _ in $(seq 1 100); do
  curl -fsS "$ADMIN_URL/health" >/dev/null 2>&1 && break
  kill -0 "$PART_PID" 2>/dev/null || { cat "$LOGDIR/participants.log" >&2; exit 1; }
  sleep 0.1
done
log "bench-participants pid $PART_PID on :$PART_PORT (admin :$ADMIN_PORT)"

if [[ "$CEILING" == 1 && -x "$CEILING_BIN" ]]; then
  log "participant ceiling (no sagad)"
  for inflight in 64 256; do
    ceiling_args=()
    [[ "$FORMAT" == json ]] && ceiling_args=(--json)
    "$CEILING_BIN" --target "localhost:$PART_PORT" --admin "$ADMIN_URL" --calls 300000 \
      --in-flight "$inflight" --participant-pid "$PART_PID" "${ceiling_args[@]}" >&"$OUT"
  done
fi

# The floor moves with the machine's minute as much as sagad does, so it is measured right
# before each run at one in flight (the run it is the yardstick for), not once for all.
run_floor() {
  [[ "$FLOOR" == 1 ]] || return 0
  if [[ ! -x "$FLOOR_BIN" ]]; then
    log "no $FLOOR_BIN: build it (cmake --build $BUILD_DIR --target saga-floor)"
    return 0
  fi
  log "the floor of a saga at one in flight (saga-floor, no sagad), just before the run"
  "$FLOOR_BIN" --target "localhost:$PART_PORT" --sagas 1000 >&2 ||
    log "saga-floor failed (exit status $?)"
}

# shellcheck disable=SC2086  # SAGAD_ARGS is split on purpose
"$SAGAD" --listen "localhost:$SAGAD_PORT" --definitions "$DEFS" --proto-path "$ROOT/bench/proto" \
  --metrics-listen 127.0.0.1:0 \
  $SAGAD_ARGS > "$LOGDIR/sagad.log" 2>&1 &
SAGAD_PID=$!
PIDS+=("$SAGAD_PID")
healthy=0
for _ in $(seq 1 150); do
  if "$SAGACTL" --address "localhost:$SAGAD_PORT" health >/dev/null 2>&1; then
    healthy=1
    break
  fi
  kill -0 "$SAGAD_PID" 2>/dev/null || break
  sleep 0.2
done
if [[ "$healthy" != 1 ]]; then
  log "sagad did not become healthy; its log:"
  tail -n 50 "$LOGDIR/sagad.log" >&2
  exit 1
fi
log "sagad pid $SAGAD_PID on :$SAGAD_PORT"

if [[ "$PRELOAD" -gt 0 ]]; then
  log "preloading $PRELOAD finished sagas"
  started=$SECONDS
  # Ids are time-ordered UUIDs (version 7) of each saga's creation time, as sagad makes them.
  # One transaction for the rows: sagad is already running, and its purge (--retention) must
  # never see a finished saga whose events are not in yet.
  psql -XAq -v ON_ERROR_STOP=1 -v n="$PRELOAD" <<'SQL' || { log "preload failed"; exit 1; }
BEGIN;
CREATE TEMP TABLE preload AS
  SELECT i, t, (lpad(to_hex((extract(epoch FROM t) * 1000)::bigint), 12, '0') || '7' ||
                substr(md5(i::text), 1, 3) || '8' || substr(md5(i::text), 4, 15))::uuid AS id
  FROM (SELECT i, now() - (:n - i) * interval '100 ms' AS t
        FROM generate_series(1, :n) AS i) AS g;
INSERT INTO sagas (id, definition_name, definition_version, status, input, input_hash,
                   idempotency_key, traceparent, created_at, updated_at, last_seq, fence)
  SELECT id, 'bench-order',
         (SELECT max(version) FROM saga_definitions WHERE name = 'bench-order'), 'COMPLETED',
         jsonb_build_object('amount', 100 + i % 9900, 'order_id', i),
         md5(i::text) || md5(i::text), 'preload-' || i,
         '00-' || md5(i::text) || '-' || substr(md5(i::text), 1, 16) || '-01', t, t, 8, 1
  FROM preload ORDER BY i;
INSERT INTO saga_events (saga_id, seq, type, step, attempt, detail, recorded_at)
  SELECT p.id, e.seq, e.type, e.step, e.attempt,
         CASE WHEN e.type = 3
              THEN jsonb_build_object('output', jsonb_build_object('ok', true, 'ref', 'preload-' || p.i))
         END, p.t
  FROM preload p,
       (VALUES (1, 1, -1, 0), (2, 2, 0, 1), (3, 3, 0, 1), (4, 2, 1, 1), (5, 3, 1, 1),
               (6, 2, 2, 1), (7, 3, 2, 1), (8, 12, -1, 0)) AS e(seq, type, step, attempt)
  ORDER BY p.i, e.seq;
COMMIT;
VACUUM ANALYZE sagas;
VACUUM ANALYZE saga_events;
CHECKPOINT;
SQL
  log "preloaded in $((SECONDS - started)) s: database $(psql -XAtc "SELECT pg_size_pretty(pg_database_size(current_database()))")"
fi

if [[ "$SWEEP" == 1 ]]; then
  INFLIGHTS="1 16 64 256"
else
  INFLIGHTS="$IN_FLIGHT"
fi

# The machine is shared: show how busy it was before the runs.
log "load average before the runs: $(cut -d' ' -f1-3 /proc/loadavg)"

SAMPLER_PID=""
if [[ "$PG_WAITS" == 1 ]]; then
  (
    while :; do
      psql -XAt -F ' | ' -c "SELECT coalesce(wait_event_type, 'CPU'), coalesce(wait_event, '-'),
          left(regexp_replace(query, '\s+', ' ', 'g'), 90)
        FROM pg_stat_activity
        WHERE state <> 'idle' AND pid <> pg_backend_pid() AND backend_type = 'client backend'
          AND application_name <> 'psql'" 2>/dev/null || true
      sleep 0.05
    done
  ) > "$LOGDIR/pg_waits.txt" &
  SAMPLER_PID=$!
  PIDS+=("$SAMPLER_PID")
fi

status=0
driver_log_lines=0
: > "$LOGDIR/driver.log"
DRIVER_FORMAT=row
[[ "$FORMAT" == json ]] && DRIVER_FORMAT=json
[[ "$FORMAT" == table ]] && "$DRIVER" --format header >&"$OUT"
for inflight in $INFLIGHTS; do
  for scenario in $SCENARIOS; do
    rc=0
    [[ "$inflight" == 1 && "$LATENCY_MS" == 0 ]] && run_floor
    # In the background, so that a signal to this script is handled at once (bash runs traps
    # only between foreground commands, but interrupts `wait`).
    "$DRIVER" --address "localhost:$SAGAD_PORT" --scenario "$scenario" --sagas "$SAGAS" \
      --warmup "$WARMUP" --in-flight "$inflight" --latency-ms "$LATENCY_MS" \
      --participant-admin "$ADMIN_URL" --duration-limit "$DURATION_LIMIT" --pg-url env \
      --pids "sagad=$SAGAD_PID,participants=$PART_PID" --format "$DRIVER_FORMAT" \
      --explain-slow "$EXPLAIN_SLOW" $DRIVER_ARGS >&"$OUT" 2>>"$LOGDIR/driver.log" &
    DRIVER_PID=$!
    PIDS+=("$DRIVER_PID")
    wait "$DRIVER_PID" || rc=$?
    # Its notes (exactly-once details, context switches, slow sagas) on stderr.
    sed -n "$((driver_log_lines + 1)),\$p" "$LOGDIR/driver.log" >&2
    driver_log_lines=$(wc -l < "$LOGDIR/driver.log")
    if [[ $rc -ne 0 ]]; then
      log "scenario $scenario, $inflight in flight: saga-bench exit status $rc"
      if [[ $rc -eq 3 ]]; then
        status=3
      elif [[ $status -eq 0 ]]; then
        status=$rc
      fi
    fi
    if ! kill -0 "$SAGAD_PID" 2>/dev/null; then
      log "sagad exited"
      tail -n 50 "$LOGDIR/sagad.log" >&2
      exit 1
    fi
  done
done
log "load average after the runs: $(cut -d' ' -f1-3 /proc/loadavg)"
# PostgreSQL's own log: deadlocks and errors are worth seeing next to the figures.
PG_LOG="$(pg_lsclusters -h 2>/dev/null | awk -v port="${PGPORT:-5432}" '$3 == port {print $7}')"
if [[ -n "$PG_LOG" && -r "$PG_LOG" ]]; then
  cp "$PG_LOG" "$LOGDIR/postgresql.log"
  if grep -q "ERROR" "$PG_LOG"; then
    log "PostgreSQL reported errors (full log: $LOGDIR/postgresql.log, kept with --keep-logs):"
    grep -A6 "ERROR" "$PG_LOG" | head -40 >&2
  fi
fi
if [[ -n "$SAMPLER_PID" ]]; then
  kill "$SAMPLER_PID" 2>/dev/null || true
  wait "$SAMPLER_PID" 2>/dev/null || true
  log "PostgreSQL backends, by (wait event | statement), $(wc -l < "$LOGDIR/pg_waits.txt") samples:"
  sort "$LOGDIR/pg_waits.txt" | uniq -c | sort -rn | head -25 >&2
fi
exit $status
