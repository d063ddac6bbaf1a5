#!/usr/bin/env bash
# Development mode, end to end: installs what is needed, builds, starts the example shop
# participants and `sagad --dev` (which runs a private PostgreSQL in .sagad-dev/, kept between
# runs), runs one order saga that completes and one whose payment is declined (and is
# compensated), prints both and a few metrics, and stops everything: sagad stops its
# PostgreSQL when it gets SIGTERM.
#
# Environment: SAGA_DEV_DATA_DIR (default .sagad-dev), SAGAD_PORT (50051), METRICS_PORT (9090),
# SKIP_BUILD=1 to skip installing and building, SAGA_BUILD_DIR (build) for the binaries. The participants listen on localhost:50061,
# the address saga-defs/ names.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${SKIP_BUILD:-}" ]; then
  scripts/install-deps.sh
  scripts/build.sh
fi

BIN=${SAGA_BUILD_DIR:-build}
SAGAD_PORT=${SAGAD_PORT:-50051}
METRICS_PORT=${METRICS_PORT:-9090}
DATA_DIR=${SAGA_DEV_DATA_DIR:-.sagad-dev}
LOGS=$(mktemp -d)
SAGACTL=$BIN/orchestrator/cli/sagactl
export SAGA_ADDRESS=localhost:$SAGAD_PORT

shop_pid=""
sagad_pid=""
cleanup() {
  if [ -n "$sagad_pid" ] && kill -0 "$sagad_pid" 2>/dev/null; then
    kill -TERM "$sagad_pid"  # drains, then stops the dev PostgreSQL
    for _ in $(seq 1 300); do kill -0 "$sagad_pid" 2>/dev/null || break; sleep 0.1; done
  fi
  if [ -n "$shop_pid" ]; then kill "$shop_pid" 2>/dev/null || true; fi
  wait 2>/dev/null || true
}
trap cleanup EXIT

echo "==> starting the example shop participants on localhost:50061"
$BIN/examples/participants/shop-participants --listen localhost:50061 >"$LOGS/shop.log" 2>&1 &
shop_pid=$!

echo "==> starting sagad --dev on localhost:$SAGAD_PORT (PostgreSQL in $DATA_DIR, logs in $LOGS)"
$BIN/orchestrator/server/sagad --dev --dev-data-dir "$DATA_DIR" \
  --listen "localhost:$SAGAD_PORT" --metrics-listen "127.0.0.1:$METRICS_PORT" \
  --definitions saga-defs --proto-path examples/participants/proto \
  --log-format text >"$LOGS/sagad.log" 2>&1 &
sagad_pid=$!
for _ in $(seq 1 600); do
  $SAGACTL health >/dev/null 2>&1 && break
  if ! kill -0 "$sagad_pid" 2>/dev/null; then
    echo "sagad exited; its log:" >&2
    cat "$LOGS/sagad.log" >&2
    exit 1
  fi
  sleep 0.1
done
grep "dev mode: PostgreSQL" "$LOGS/sagad.log" | sed 's/^/    /' || true
$SAGACTL health

# Fresh keys on every run: the dev database keeps the sagas of earlier runs.
run=$(date +%s)
echo
echo "==> order $run-1: everything succeeds"
ok_id=$($SAGACTL saga start order-fulfillment --key "order-$run-1" \
  --input "{\"order_id\":\"$run-1\",\"sku\":\"book-42\",\"quantity\":1,\"amount_cents\":2599,\"address\":\"1 Main St\"}" | head -1)
$SAGACTL saga watch "$ok_id" || true
echo
echo "==> order $run-2: the card is declined, so the stock reservation is released"
bad_id=$($SAGACTL saga start order-fulfillment --key "order-$run-2" \
  --input "{\"order_id\":\"$run-2\",\"sku\":\"book-42\",\"quantity\":1,\"amount_cents\":2599,\"address\":\"1 Main St\",\"behavior\":{\"charge\":{\"fail\":\"card declined\"}}}" | head -1)
$SAGACTL saga watch "$bad_id" || true
echo
echo "==> final status"
$SAGACTL saga get "$ok_id"
echo
$SAGACTL saga get "$bad_id"

echo
echo "==> a few metrics from http://127.0.0.1:$METRICS_PORT/metrics"
if exec 3<>"/dev/tcp/127.0.0.1/$METRICS_PORT"; then
  printf 'GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n' >&3
  grep -E '^saga_(started_total|finished_total|compensations_total|running)' <&3 | sed 's/^/    /' || true
  exec 3<&-
fi

echo
echo "==> stopping sagad (and its PostgreSQL) and the participants"
cleanup
sagad_pid=""
shop_pid=""
tail -n 3 "$LOGS/sagad.log" | sed 's/^/    /'
