#!/usr/bin/env bash
# Herald and Centrifugo side by side, on this machine, in one run.
#
#   bench/compare.sh [--quick] [--scenarios "idle fanout channels reconnect payload storm"] [--results DIR] [--no-doc]
#                    [--args SCENARIO="herald-bench arguments"]...
#
# 1. Finds Centrifugo v6.9.1 (PATH, then $(go env GOPATH)/bin), or installs it with
#    `go install github.com/centrifugal/centrifugo/v6@v6.9.1`.
# 2. Builds Herald and herald-bench in release mode (nice -n 10).
# 3. Writes one Centrifugo-v6-shaped JSON config that both servers read (Herald warns about the few
#    Centrifugo-only keys and ignores them), on free loopback ports chosen here.
# 4. For each scenario and each server: starts the server pinned to CPU 0 (taskset), runs herald-bench
#    pinned to CPU 1 with the same parameters, stops the server. A fresh server per scenario, so that
#    memory figures start from the same baseline.
# 5. Writes both servers' figures and the ratios into docs/benchmarks.md, between the markers
#    (herald-bench compare), with the date, the machine, both versions and the exact commands.
#    Scenarios of the section that this run did not measure (--scenarios) are kept, marked with
#    the run they come from.
#
# --quick uses small numbers (seconds, hundreds of connections): a check that everything works,
# not figures to quote. Without it the run takes several minutes per server.
# --args replaces one scenario's preset, e.g. --args fanout="--subscribers 1000 --max-rate 2000".
# Everything runs on 127.0.0.1/8 and stops by itself; servers are stopped on exit.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD

QUICK=0
SCENARIOS="idle fanout channels reconnect payload storm"
RESULTS=""
WRITE_DOC=1
declare -A ARGS_OVERRIDE=()
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --scenarios) SCENARIOS=$2; shift ;;
    --results) RESULTS=$2; shift ;;
    --no-doc) WRITE_DOC=0 ;;
    --args) ARGS_OVERRIDE[${2%%=*}]=${2#*=}; shift ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done

CENTRIFUGO_VERSION=v6.9.1
LOG_TAG=compare
# shellcheck source=bench/lib.sh
. bench/lib.sh

# --- Centrifugo ---------------------------------------------------------------------------------
find_centrifugo
log "centrifugo: $CENTRIFUGO ($CENTRIFUGO_VERSION)"

# --- Herald and the load generator ---------------------------------------------------------------
build_binaries

# --- work dir, ports, config --------------------------------------------------------------------
WORK=$(mktemp -d "${TMPDIR:-/tmp}/herald-compare.XXXXXX")
RESULTS=${RESULTS:-$WORK/results}
mkdir -p "$RESULTS"

PORT=$(free_port); INTERNAL_PORT=$(free_port); UNI_GRPC_PORT=$(free_port); GRPC_API_PORT=$(free_port)

API_KEY="bench-api-key-$RANDOM$RANDOM"
SECRET="bench-secret-$RANDOM$RANDOM-0123456789abcdef0123456789abcdef"
CONFIG=$WORK/config.json
# One file for both servers, Centrifugo v6 key shape. Centrifugo-only keys (ignored by Herald, which
# warns): http_server.h2c_external + internal_port (Centrifugo serves h2c only with a separate internal
# port), http_api.external (keep its API on the main port then). Centrifugo gets its gRPC ports from
# the environment below; the file sets no port, so Herald serves gRPC on its main port only.
# client.queue_max_size is raised from 1 MiB to 64 MiB on both: the payload scenario publishes as
# fast as the servers acknowledge, and at 16-64 KiB the load generator (one core, 50 readers) is
# the slow consumer; with the default both servers rightly disconnect it (3008), which measures
# the generator, not the server.
cat > "$CONFIG" <<EOF
{
  "log": {"level": "error"},
  "http_server": {"address": "127.0.0.1", "h2c_external": true},
  "client": {"token": {"hmac_secret_key": "$SECRET"}, "allowed_origins": ["*"], "queue_max_size": 67108864},
  "http_api": {"key": "$API_KEY", "external": true},
  "grpc_api": {"enabled": true, "key": "$API_KEY", "address": "127.0.0.1"},
  "uni_grpc": {"enabled": true, "address": "127.0.0.1"},
  "sse": {"enabled": true},
  "http_stream": {"enabled": true},
  "uni_websocket": {"enabled": true},
  "uni_sse": {"enabled": true},
  "uni_http_stream": {"enabled": true},
  "channel": {"namespaces": [{"name": "bench", "history_size": 1000, "history_ttl": "300s",
    "force_recovery": true, "allow_subscribe_for_client": true}]}
}
EOF

# --- CPU pinning --------------------------------------------------------------------------------
NCPU=$(nproc)
setup_pinning server
raise_nofile

# --- scenario parameters ------------------------------------------------------------------------
if [ "$QUICK" = 1 ]; then
  IDLE_ARGS=(idle --connections 1000 --hold 2)
  FANOUT_ARGS=(fanout --subscribers 200 --rates 10,100,500 --step-secs 2)
  CHANNELS_ARGS=(channels --channels 100 --per-channel 5 --rate 500 --duration 3)
  RECONNECT_ARGS=(reconnect --clients 500 --channels 10 --rate 100 --warmup 1 --duration 4)
  PAYLOAD_ARGS=(payload --transports websocket,websocket_protobuf,uni_sse,uni_http_stream,uni_grpc
                --sizes 32,1024,65536 --subscribers 10 --duration 1)
  STORM_ARGS=(storm --clients 1000 --workers 2)
else
  # Connections stay under the per-process open-file limit on both sides (server and bench).
  N=$(( NOFILE > 20000 ? 15000 : NOFILE * 3 / 4 ))
  IDLE_ARGS=(idle --connections "$N" --hold 5)
  # 1,000 subscribers: each publication is 1,000 socket writes, and on this kind of machine
  # (a VM where a loopback write that wakes the reader costs ~10 us of kernel time) 5,000
  # subscribers take ~50 ms per publication, too close to the 100 ms p99 limit to find a
  # sustained rate. Steps rise by about 1.5x to locate each server's limit.
  FANOUT_ARGS=(fanout --subscribers 1000 --rates 20,30,50,70,100,150,200,300,500,700,1000,1500,2000
               --step-secs 5)
  CHANNELS_ARGS=(channels --channels 1000 --per-channel 5 --rate 2000 --duration 10)
  RECONNECT_ARGS=(reconnect --clients 10000 --channels 100 --rate 500 --warmup 2 --duration 15)
  PAYLOAD_ARGS=(payload --sizes 32,256,1024,4096,16384,65536 --subscribers 50 --duration 3)
  # N clients connect and subscribe at once, unpaced, from 4 worker processes (each under the
  # per-process open-file limit; the server holds all N under the same limit).
  STORM_ARGS=(storm --clients "$N" --workers 4)
fi

start_server() {
  local name=$1
  case "$name" in
    herald)
      "${SERVER_PIN[@]}" "$HERALD" serve --config "$CONFIG" --port "$PORT" >"$WORK/$name.log" 2>&1 &
      ;;
    centrifugo)
      CENTRIFUGO_HTTP_SERVER_PORT=$PORT CENTRIFUGO_HTTP_SERVER_INTERNAL_PORT=$INTERNAL_PORT \
      CENTRIFUGO_UNI_GRPC_PORT=$UNI_GRPC_PORT CENTRIFUGO_GRPC_API_PORT=$GRPC_API_PORT \
        "${SERVER_PIN[@]}" "$CENTRIFUGO" --config "$CONFIG" >"$WORK/$name.log" 2>&1 &
      ;;
  esac
  SERVER_PID=$!
  if ! wait_listening "$PORT" "$SERVER_PID"; then
    log "$name did not start; its log:"; cat "$WORK/$name.log" >&2; exit 1
  fi
  if [ "$name" = centrifugo ]; then
    wait_listening "$UNI_GRPC_PORT" "$SERVER_PID" && wait_listening "$GRPC_API_PORT" "$SERVER_PID" \
      || { log "centrifugo gRPC ports not up"; exit 1; }
  fi
  sleep 0.5
  # The backlog of the main port's listen socket (ss: Send-Q of a listener), for the report.
  BACKLOG[$name]=$(ss -Hltn "sport = :$PORT" 2>/dev/null | awk 'NR==1{print $3}')
}
declare -A BACKLOG=()

COMMANDS=$WORK/commands.txt
: > "$COMMANDS"
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
STARTED=$(date -u '+%Y-%m-%d %H:%M UTC')

for scenario in $SCENARIOS; do
  case "$scenario" in
    idle) ARGS=("${IDLE_ARGS[@]}") ;;
    fanout) ARGS=("${FANOUT_ARGS[@]}") ;;
    channels) ARGS=("${CHANNELS_ARGS[@]}") ;;
    reconnect) ARGS=("${RECONNECT_ARGS[@]}") ;;
    payload) ARGS=("${PAYLOAD_ARGS[@]}") ;;
    storm) ARGS=("${STORM_ARGS[@]}") ;;
    *) log "unknown scenario $scenario"; exit 2 ;;
  esac
  if [ -n "${ARGS_OVERRIDE[$scenario]:-}" ]; then
    read -r -a ARGS <<< "$scenario ${ARGS_OVERRIDE[$scenario]}"
  fi
  for server in herald centrifugo; do
    start_server "$server"
    COMMON=(--addr "127.0.0.1:$PORT" --api-key "$API_KEY" --secret "$SECRET"
            --server-pid "$SERVER_PID" --server-name "$server" --progress 5
            --json "$RESULTS/$server-$scenario.json")
    if [ "$server" = centrifugo ]; then
      COMMON+=(--uni-grpc-addr "127.0.0.1:$UNI_GRPC_PORT" --grpc-api-addr "127.0.0.1:$GRPC_API_PORT"
               --server-version "$CENTRIFUGO_VERSION")
    else
      COMMON+=(--server-version "${HERALD_VERSION#herald } ($GIT_REV)")
    fi
    log "$server: herald-bench ${ARGS[*]}"
    echo "herald-bench ${ARGS[*]} --addr 127.0.0.1:PORT --server-pid PID --server-name $server ..." >> "$COMMANDS"
    "${BENCH_PIN[@]}" "$BENCH" "${ARGS[@]}" "${COMMON[@]}" | tee "$RESULTS/$server-$scenario.txt" \
      || log "$server $scenario reported errors (see $RESULTS/$server-$scenario.txt)"
    stop_server; sleep 0.5
  done
done

# --- the report ---------------------------------------------------------------------------------
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
PREAMBLE=$WORK/preamble.md
{
  echo "## Herald and Centrifugo, side by side (generated)"
  echo
  echo "Run of \`bench/compare.sh$([ "$QUICK" = 1 ] && echo ' --quick')\` on $STARTED."
  echo
  echo "- Machine: $NCPU CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')), $(( $(grep MemTotal /proc/meminfo | awk '{print $2}') / 1024 )) MiB, Linux $(uname -r); load average before $LOAD_BEFORE, after $LOAD_AFTER."
  echo "- Pinning: $PINNING. Open-file limit per process: $NOFILE (connections per scenario stay under it on both sides)."
  echo "- Herald: ${HERALD_VERSION} (git $GIT_REV), release build. Centrifugo: $CENTRIFUGO_VERSION ($(go version -m "$CENTRIFUGO" 2>/dev/null | head -1 | awk '{print $2}')), memory engine."
  echo "- Same config file for both (Centrifugo v6 keys), same load generator, same parameters; a fresh server per scenario."
  echo "- Listen backlog of the main port (\`ss -ltn\` Send-Q; the kernel caps it at net.core.somaxconn = $(cat /proc/sys/net/core/somaxconn 2>/dev/null || echo '?')): Herald ${BACKLOG[herald]:-?}, Centrifugo ${BACKLOG[centrifugo]:-?}."
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
  log "no results to compare"; exit 1
fi
if [ "$WRITE_DOC" = 1 ]; then
  "$BENCH" compare --herald "${HERALD_RESULTS[@]}" --other "${OTHER_RESULTS[@]}" \
    --preamble "$PREAMBLE" --doc docs/benchmarks.md
  log "wrote docs/benchmarks.md (generated section); raw results in $RESULTS"
else
  "$BENCH" compare --herald "${HERALD_RESULTS[@]}" --other "${OTHER_RESULTS[@]}" --preamble "$PREAMBLE"
  log "raw results in $RESULTS"
fi
