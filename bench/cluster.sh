#!/usr/bin/env bash
# Two nodes on one Redis: Herald and Centrifugo side by side, in one run.
#
#   bench/cluster.sh [--quick] [--servers "herald centrifugo"] [--scenarios "fanout payload"] [--results DIR] [--no-doc]
#
# 1. Finds Centrifugo v6.9.1 (as bench/compare.sh does) and Debian's redis-server (install the package
#    `redis-server` when it is missing; nothing is installed here).
# 2. Builds Herald and herald-bench in release mode (nice -n 10).
# 3. For each scenario and each server: starts a fresh redis-server on a free loopback port (no persistence),
#    starts two nodes of the server on it (one config file, Centrifugo v6 keys, `engine.type` "redis"), and runs
#    herald-bench with its subscribers spread over both nodes (round robin) while every publication goes
#    through node A's API, so each one crosses Redis to reach node B's subscribers:
#      fanout   1,000 subscribers (500 per node), rising publish rate: the highest rate sustained with
#               p99 under 100 ms, and the latency at each step.
#      payload  10 subscribers, 128-byte publications from 16 concurrent publishers as fast as node A acknowledges: publish
#               throughput through Redis.
# 4. Writes both servers' figures into docs/benchmarks.md between the markers (herald-bench:cluster), with
#    the date, the machine and the commands.
#
# Nodes and redis-server share CPU 0 and herald-bench runs on CPU 1 (taskset) when the machine has two CPUs.
# Everything runs on 127.0.0.1 and stops by itself; servers are stopped on exit.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD

QUICK=0
SERVERS="herald centrifugo"
SCENARIOS="fanout payload"
RESULTS=""
WRITE_DOC=1
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --servers) SERVERS=$2; shift ;;
    --scenarios) SCENARIOS=$2; shift ;;
    --results) RESULTS=$2; shift ;;
    --no-doc) WRITE_DOC=0 ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done

CENTRIFUGO_VERSION=v6.9.1
LOG_TAG=cluster
# shellcheck source=bench/lib.sh
. bench/lib.sh

REDIS_SERVER=$(command -v redis-server || true)
[ -n "$REDIS_SERVER" ] || { log "redis-server is missing: apt-get install redis-server"; exit 1; }
case " $SERVERS " in *" centrifugo "*) find_centrifugo; log "centrifugo: $CENTRIFUGO ($CENTRIFUGO_VERSION)" ;; esac
build_binaries

WORK=$(mktemp -d "${TMPDIR:-/tmp}/herald-cluster.XXXXXX")
RESULTS=${RESULTS:-$WORK/results}
mkdir -p "$RESULTS"

API_KEY="bench-api-key-$RANDOM$RANDOM"
SECRET="bench-secret-$RANDOM$RANDOM-0123456789abcdef0123456789abcdef"
REDIS_PORT=$(free_port)
# Node A and node B: main port, and Centrifugo's internal, uni gRPC and gRPC API ports.
declare -A PORT INTERNAL UNI_GRPC GRPC_API
for node in a b; do
  PORT[$node]=$(free_port); INTERNAL[$node]=$(free_port); UNI_GRPC[$node]=$(free_port); GRPC_API[$node]=$(free_port)
done

CONFIG=$WORK/config.json
# As bench/compare.sh's config (see the reasons there), plus the Redis engine.
cat > "$CONFIG" <<EOF
{
  "log": {"level": "error"},
  "engine": {"type": "redis", "redis": {"address": "redis://127.0.0.1:$REDIS_PORT"}},
  "http_server": {"address": "127.0.0.1", "h2c_external": true},
  "client": {"token": {"hmac_secret_key": "$SECRET"}, "allowed_origins": ["*"], "queue_max_size": 67108864},
  "http_api": {"key": "$API_KEY", "external": true},
  "grpc_api": {"enabled": true, "key": "$API_KEY", "address": "127.0.0.1"},
  "uni_grpc": {"enabled": true, "address": "127.0.0.1"},
  "channel": {"namespaces": [{"name": "bench", "history_size": 1000, "history_ttl": "300s",
    "force_recovery": true, "allow_subscribe_for_client": true}]}
}
EOF

NCPU=$(nproc)
setup_pinning "the two nodes and redis-server"
raise_nofile

if [ "$QUICK" = 1 ]; then
  FANOUT_ARGS=(fanout --subscribers 200 --rates 10,100,500 --step-secs 2)
  PAYLOAD_ARGS=(payload --transports websocket --sizes 128 --subscribers 10 --duration 2)
else
  FANOUT_ARGS=(fanout --subscribers 1000 --rates 20,30,50,70,100,150,200,300,500,700,1000,1500,2000
               --step-secs 5)
  PAYLOAD_ARGS=(payload --transports websocket --sizes 128 --subscribers 10 --duration 5 --publishers 16)
fi

# Everything this script started, stopped on exit.
PIDS=()
stop_all() {
  local pid
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  PIDS=()
}
trap stop_all EXIT

start_redis() {
  "${SERVER_PIN[@]}" "$REDIS_SERVER" --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
    --daemonize no --logfile "$WORK/redis.log" &
  PIDS+=("$!")
  wait_listening "$REDIS_PORT" "$!" || { log "redis-server did not start"; cat "$WORK/redis.log" >&2; exit 1; }
}

# start_node SERVER NODE: sets NODE_PID.
start_node() {
  local server=$1 node=$2
  case "$server" in
    herald)
      "${SERVER_PIN[@]}" "$HERALD" serve --config "$CONFIG" --port "${PORT[$node]}" >"$WORK/$server-$node.log" 2>&1 &
      ;;
    centrifugo)
      CENTRIFUGO_HTTP_SERVER_PORT=${PORT[$node]} CENTRIFUGO_HTTP_SERVER_INTERNAL_PORT=${INTERNAL[$node]} \
      CENTRIFUGO_UNI_GRPC_PORT=${UNI_GRPC[$node]} CENTRIFUGO_GRPC_API_PORT=${GRPC_API[$node]} \
        "${SERVER_PIN[@]}" "$CENTRIFUGO" --config "$CONFIG" >"$WORK/$server-$node.log" 2>&1 &
      ;;
  esac
  NODE_PID=$!
  PIDS+=("$NODE_PID")
  if ! wait_listening "${PORT[$node]}" "$NODE_PID"; then
    log "$server node $node did not start; its log:"; cat "$WORK/$server-$node.log" >&2; exit 1
  fi
}

COMMANDS=$WORK/commands.txt
: > "$COMMANDS"
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
STARTED=$(date -u '+%Y-%m-%d %H:%M UTC')

for scenario in $SCENARIOS; do
  case "$scenario" in
    fanout) ARGS=("${FANOUT_ARGS[@]}") ;;
    payload) ARGS=("${PAYLOAD_ARGS[@]}") ;;
    *) log "unknown scenario $scenario"; exit 2 ;;
  esac
  for server in $SERVERS; do
    start_redis
    start_node "$server" a; PID_A=$NODE_PID
    start_node "$server" b
    sleep 1
    COMMON=(--addr "127.0.0.1:${PORT[a]}" --nodes "127.0.0.1:${PORT[b]}" --api-key "$API_KEY" --secret "$SECRET"
            --server-pid "$PID_A" --server-name "$server" --progress 5
            --json "$RESULTS/$server-$scenario.json")
    if [ "$server" = centrifugo ]; then
      COMMON+=(--uni-grpc-addr "127.0.0.1:${UNI_GRPC[a]}" --grpc-api-addr "127.0.0.1:${GRPC_API[a]}"
               --server-version "$CENTRIFUGO_VERSION")
    else
      COMMON+=(--server-version "${HERALD_VERSION#herald } ($GIT_REV)")
    fi
    log "$server: herald-bench ${ARGS[*]} (two nodes on redis-server)"
    echo "herald-bench ${ARGS[*]} --addr 127.0.0.1:PORT_A --nodes 127.0.0.1:PORT_B --server-pid PID_A --server-name $server ..." >> "$COMMANDS"
    "${BENCH_PIN[@]}" "$BENCH" "${ARGS[@]}" "${COMMON[@]}" | tee "$RESULTS/$server-$scenario.txt" \
      || log "$server $scenario reported errors (see $RESULTS/$server-$scenario.txt)"
    stop_all; sleep 0.5
  done
done

LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
PREAMBLE=$WORK/preamble.md
{
  echo "## Two nodes on one Redis, side by side (generated)"
  echo
  echo "Run of \`bench/cluster.sh$([ "$QUICK" = 1 ] && echo ' --quick')\` on $STARTED."
  echo
  echo "- Machine: $NCPU CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')), $(( $(grep MemTotal /proc/meminfo | awk '{print $2}') / 1024 )) MiB, Linux $(uname -r); load average before $LOAD_BEFORE, after $LOAD_AFTER."
  echo "- Pinning: $PINNING. Open-file limit per process: $NOFILE."
  echo "- $("$REDIS_SERVER" --version | cut -d' ' -f1-3), no persistence, one instance for both nodes; a fresh one per scenario and server."
  echo "- Herald: ${HERALD_VERSION} (git $GIT_REV), release build. Centrifugo: $CENTRIFUGO_VERSION. Both: \`engine.type\` redis, same config file (Centrifugo v6 keys)."
  echo "- Subscribers alternate between node A and node B; publications go through node A's HTTP API, so half of the deliveries cross Redis. CPU and memory figures are node A's."
  if [ "$QUICK" = 1 ]; then
    echo "- **--quick run: small numbers, seconds per step. A check that the comparison works; the figures are not to be quoted.**"
  fi
  if awk -v l="${LOAD_BEFORE%% *}" 'BEGIN{exit !(l > 0.5)}'; then
    echo "- **The machine was busy (load average ${LOAD_BEFORE%% *} before the run): the figures are indicative only.**"
  fi
  echo
  echo "Commands (per server; ports, keys and PIDs chosen by the script):"
  echo
  echo '```'
  awk '!seen[$0]++' "$COMMANDS"
  echo '```'
  echo
  echo "Ratios are Herald ÷ Centrifugo; \"better\" says which server wins that row (within 2 % is a tie)."
} > "$PREAMBLE"

HERALD_RESULTS=(); OTHER_RESULTS=()
for scenario in $SCENARIOS; do
  [ -f "$RESULTS/herald-$scenario.json" ] && HERALD_RESULTS+=("$RESULTS/herald-$scenario.json")
  [ -f "$RESULTS/centrifugo-$scenario.json" ] && OTHER_RESULTS+=("$RESULTS/centrifugo-$scenario.json")
done
if [ "${#HERALD_RESULTS[@]}" -eq 0 ] || [ "${#OTHER_RESULTS[@]}" -eq 0 ]; then
  log "results of both servers are needed for the side-by-side report; raw results in $RESULTS"
  exit 0
fi
if [ "$WRITE_DOC" = 1 ]; then
  "$BENCH" compare --section cluster --herald "${HERALD_RESULTS[@]}" --other "${OTHER_RESULTS[@]}" \
    --preamble "$PREAMBLE" --doc docs/benchmarks.md
  log "wrote docs/benchmarks.md (cluster section); raw results in $RESULTS"
else
  "$BENCH" compare --herald "${HERALD_RESULTS[@]}" --other "${OTHER_RESULTS[@]}" --preamble "$PREAMBLE"
  log "raw results in $RESULTS"
fi
