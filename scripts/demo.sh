#!/usr/bin/env bash
# One command, end to end: installs what is needed, builds, starts a throwaway PostgreSQL, the
# example shop participants and sagad, runs one order saga that completes and one whose
# payment is declined (and is compensated), prints both sagas, and stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${SAGA_DEMO_INSIDE:-}" ]; then
  scripts/install-deps.sh
  scripts/build.sh
  export SAGA_DEMO_INSIDE=1
  exec pg_virtualenv -t -v 15 "$0" "$@"
fi

BIN=build
LOGS=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

echo "==> starting the example shop participants on localhost:50061"
$BIN/examples/participants/shop-participants --listen localhost:50061 >"$LOGS/shop.log" 2>&1 &
pids+=($!)
echo "==> starting sagad on localhost:50051 (PostgreSQL from pg_virtualenv: $PGHOST:${PGPORT:-5432})"
$BIN/orchestrator/server/sagad --listen localhost:50051 --definitions saga-defs \
  --proto-path examples/participants/proto >"$LOGS/sagad.log" 2>&1 &
pids+=($!)
export SAGA_ADDRESS=localhost:50051
for _ in $(seq 1 100); do
  $BIN/orchestrator/cli/sagactl health >/dev/null 2>&1 && break
  sleep 0.1
done
$BIN/orchestrator/cli/sagactl health

SAGACTL=$BIN/orchestrator/cli/sagactl
echo
echo "==> order 1001: everything succeeds"
ok_id=$($SAGACTL saga start order-fulfillment --key order-1001 \
  --input '{"order_id":"1001","sku":"book-42","quantity":1,"amount_cents":2599,"address":"1 Main St"}' | head -1)
$SAGACTL saga watch "$ok_id" || true
echo
echo "==> order 1002: the card is declined, so the stock reservation is released"
bad_id=$($SAGACTL saga start order-fulfillment --key order-1002 \
  --input '{"order_id":"1002","sku":"book-42","quantity":1,"amount_cents":2599,"address":"1 Main St","behavior":{"charge":{"fail":"card declined"}}}' | head -1)
$SAGACTL saga watch "$bad_id" || true
echo
echo "==> final status"
$SAGACTL saga get "$ok_id"
echo
$SAGACTL saga get "$bad_id"
