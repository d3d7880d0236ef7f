#!/usr/bin/env bash
# Runs the several-nodes benchmarks of docs/benchmarks.md: `fanout` (subscribers on two nodes,
# the publisher on a third) and `chat` (users spread over three nodes) on three release nodes
# joined by one broker, then the same scenarios on one node, each on a fresh PostgreSQL database.
#
#   priv/bench-cluster.sh nats|redis|single [OUT_DIR]
#
# Needs release binaries (cargo build --release --bins), PostgreSQL at $COURIER_BENCH_PG
# (default postgres://postgres@127.0.0.1), and the broker running. Every process it starts
# listens on 127.0.0.1 and is stopped when it ends.
set -euo pipefail
engine=${1:?nats, redis or single}
out=${2:-bench-out}
pg=${COURIER_BENCH_PG:-postgres://postgres@127.0.0.1}
bin=target/release
mkdir -p "$out"
db="courier_bench_$(date +%s)_$engine"
psql -q "$pg/postgres" -c "CREATE DATABASE $db"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  psql -q "$pg/postgres" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" || true
}
trap cleanup EXIT

case $engine in
  nats) broker=nats://127.0.0.1:4222; ports=(4101 4102 4103) ;;
  redis) broker=redis://127.0.0.1:6379; ports=(4101 4102 4103) ;;
  single) broker=; ports=(4101) ;;
  *) echo "unknown engine $engine" >&2; exit 2 ;;
esac

n=0
for port in "${ports[@]}"; do
  n=$((n + 1))
  env ${broker:+COURIER_BROKER=$broker} COURIER_NODE="courier@n$n" COURIER_CONFIG=priv/bench.toml \
    "$bin/courier" --bind "127.0.0.1:$port" --database-url "$pg/$db" 2>"$out/$engine-n$n.log" &
  pids+=($!)
  # The first node migrates the fresh database; the others find it done.
  for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break
    sleep 0.1
  done
done

url() { echo "ws://127.0.0.1:$1/socket/websocket"; }
if [ "$engine" = single ]; then
  fanout=(--url "$(url 4101)" fanout)
  chat=(--url "$(url 4101)" chat)
else
  fanout=(--urls "$(url 4101),$(url 4102)" fanout --publisher-url "$(url 4103)")
  chat=(--urls "$(url 4101),$(url 4102),$(url 4103)" chat)
fi
"$bin/courier-load" --quiet --json "$out/$engine-fanout.json" "${fanout[@]}" \
  --subscribers "${FANOUT_SUBSCRIBERS:-2000}" --rate "${FANOUT_RATE:-10}" --duration 5 | tee "$out/$engine-fanout.txt"
"$bin/courier-load" --quiet --json "$out/$engine-chat.json" "${chat[@]}" \
  --users "${CHAT_USERS:-20}" --devices 2 --rate 0 --in-flight "${CHAT_IN_FLIGHT:-8}" --duration 5 \
  | tee "$out/$engine-chat.txt"
