#!/usr/bin/env bash
# The measured rows of the transport comparison table (docs/transports.md, "Measured"), on this
# machine, in one run.
#
#   bench/transports.sh [--quick] [--transports "websocket grpc uni_grpc uni_http_stream_h2c uni_sse"]
#                       [--results DIR] [--no-doc]
#
# 1. Builds Herald and herald-bench in release mode (nice -n 10).
# 2. Writes a Herald config (a `bench` namespace with history and recovery; every transport is on by
#    default) and picks a free loopback port.
# 3. For each transport and each scenario (idle, fanout, payload, reconnect): starts a fresh Herald
#    pinned to CPU 0 (taskset, with 2 CPUs or more), runs herald-bench pinned to CPU 1, stops the
#    server. Results: DIR/<transport>-<scenario>.json (and .txt, the printed summary); a run that
#    leaves no JSON leaves DIR/<transport>-<scenario>.note saying why.
# 4. Writes the table, with the date, the machine, the revision and the exact commands, into
#    docs/transports.md between the markers (herald-bench transports-table); --no-doc prints it.
#
# The article's columns and the transports measured for each: WebSocket = websocket; gRPC stream =
# grpc (Herald's bidirectional HeraldStream) and uni_grpc; HTTP/2 stream = uni_http_stream_h2c;
# SSE = uni_sse.
#
# --quick uses small numbers (500 connections, a few steps, seconds): a check that everything
# works, not figures to quote. The full run measures for about six minutes (2 CPUs), plus the build.
# Everything runs on 127.0.0.1/8 and stops by itself; the server is stopped on exit.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD

QUICK=0
TRANSPORTS="websocket grpc uni_grpc uni_http_stream_h2c uni_sse"
SCENARIOS="idle fanout payload reconnect"
RESULTS=""
WRITE_DOC=1
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --transports) TRANSPORTS=$2; shift ;;
    --scenarios) SCENARIOS=$2; shift ;;
    --results) RESULTS=$2; shift ;;
    --no-doc) WRITE_DOC=0 ;;
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done

LOG_TAG=transports
# shellcheck source=bench/lib.sh
. bench/lib.sh

# --- Herald and the load generator ---------------------------------------------------------------
REV_BEFORE=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
build_binaries
REV_NOTE=""
if [ "$REV_BEFORE" != "${GIT_REV%+*}" ]; then REV_NOTE="; HEAD moved from $REV_BEFORE during the build"; fi

# --- work dir, port, config ---------------------------------------------------------------------
WORK=$(mktemp -d "${TMPDIR:-/tmp}/herald-transports.XXXXXX")
RESULTS=${RESULTS:-$WORK/results}
mkdir -p "$RESULTS"


API_KEY="bench-api-key-$RANDOM$RANDOM"
SECRET="bench-secret-$RANDOM$RANDOM-0123456789abcdef0123456789abcdef"
CONFIG=$WORK/config.json
# Every transport (uni_websocket, uni_sse, uni_http_stream, uni_grpc, HeraldStream, the emulations)
# is enabled by default in Herald, on the one port.
cat > "$CONFIG" <<EOF
{
  "log": {"level": "error"},
  "http_server": {"address": "127.0.0.1"},
  "client": {"token": {"hmac_secret_key": "$SECRET"}, "allowed_origins": ["*"]},
  "http_api": {"key": "$API_KEY"},
  "grpc_api": {"enabled": true, "key": "$API_KEY"},
  "channel": {"namespaces": [{"name": "bench", "history_size": 1000, "history_ttl": "300s",
    "force_recovery": true, "allow_subscribe_for_client": true}]}
}
EOF

# --- CPU pinning, open files --------------------------------------------------------------------
NCPU=$(nproc)
setup_pinning Herald
raise_nofile

# --- scenario parameters ------------------------------------------------------------------------
if [ "$QUICK" = 1 ]; then
  N=500
  IDLE_ARGS=(idle --connections "$N" --hold 2)
  FANOUT_ARGS=(fanout --subscribers 100 --rates 20,100,500 --step-secs 2)
  PAYLOAD_SIZES=(--sizes 100 --subscribers 10 --duration 1)
  RECONNECT_ARGS=(reconnect --clients 500 --channels 10 --rate 100 --warmup 1 --duration 4)
else
  # One descriptor per connection on each side: stay under the per-process open-file limit.
  N=10000
  if [ "$NOFILE" != unlimited ] && [ "$NOFILE" -lt $(( N * 4 / 3 )) ]; then N=$(( NOFILE * 3 / 4 )); fi
  IDLE_ARGS=(idle --connections "$N" --hold 5)
  FANOUT_ARGS=(fanout --subscribers 1000 --rates 20,30,50,70,100,150,200,300,500,700,1000 --step-secs 4)
  PAYLOAD_SIZES=(--sizes 100 --subscribers 50 --duration 3)
  RECONNECT_ARGS=(reconnect --clients "$N" --channels 100 --rate 500 --warmup 2 --duration 15)
fi

start_server() {
  local log_file=$1
  PORT=$(free_port)
  "${SERVER_PIN[@]}" "$HERALD" serve --config "$CONFIG" --port "$PORT" >"$log_file" 2>&1 &
  SERVER_PID=$!
  if ! wait_listening "$PORT" "$SERVER_PID"; then
    log "herald did not start; its log:"; cat "$log_file" >&2; exit 1
  fi
  sleep 0.5
}

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
STARTED=$(date -u '+%Y-%m-%d %H:%M UTC')
FAILED=0

for transport in $TRANSPORTS; do
  for scenario in $SCENARIOS; do
    case "$scenario" in
      idle) ARGS=("${IDLE_ARGS[@]}" --transport "$transport") ;;
      fanout) ARGS=("${FANOUT_ARGS[@]}" --transport "$transport") ;;
      payload) ARGS=(payload --transports "$transport" "${PAYLOAD_SIZES[@]}") ;;
      reconnect) ARGS=("${RECONNECT_ARGS[@]}" --transport "$transport") ;;
      *) log "unknown scenario $scenario"; exit 2 ;;
    esac
    name="$transport-$scenario"
    rm -f "$RESULTS/$name.json" "$RESULTS/$name.note"
    start_server "$RESULTS/$name.server.log"
    log "$name: herald-bench ${ARGS[*]}"
    status=0
    "${BENCH_PIN[@]}" "$BENCH" "${ARGS[@]}" \
      --addr "127.0.0.1:$PORT" --api-key "$API_KEY" --secret "$SECRET" \
      --server-pid "$SERVER_PID" --server-name herald --server-version "${HERALD_VERSION#herald } ($GIT_REV)" \
      --progress 5 --json "$RESULTS/$name.json" \
      > "$RESULTS/$name.txt" 2> >(tee "$RESULTS/$name.err" >&2) || status=$?
    cat "$RESULTS/$name.txt"
    server_alive=1
    kill -0 "$SERVER_PID" 2>/dev/null || server_alive=0
    stop_server; sleep 0.5
    if [ "$server_alive" = 0 ]; then
      log "$name: the server exited during the run; its log:"; tail -20 "$RESULTS/$name.server.log" >&2
      FAILED=1
    fi
    if [ ! -s "$RESULTS/$name.json" ]; then
      why=$(grep -m1 -E '^(error|herald-bench|thread)' "$RESULTS/$name.err" || grep -v '^\[\|^  \|^$' "$RESULTS/$name.err" | tail -1 || true)
      {
        printf 'herald-bench exited with status %s and wrote no report' "$status"
        [ -n "$why" ] && printf ' (%s)' "$why"
        [ "$server_alive" = 0 ] && printf '; the server exited during the run'
        printf '.\n'
      } > "$RESULTS/$name.note"
      log "$name: no report: $(cat "$RESULTS/$name.note")"
      FAILED=1
    elif [ "$status" != 0 ]; then
      log "$name: herald-bench counted errors (exit $status; see $RESULTS/$name.txt)"
      FAILED=1
    fi
  done
done

# --- the table ----------------------------------------------------------------------------------
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
PREAMBLE=$WORK/preamble.md
MEM_GIB=$(awk '/MemTotal/ {printf "%.0f", $2 / 1048576}' /proc/meminfo)
{
  echo "### Measured rows (generated)"
  echo
  echo "Run of \`bench/transports.sh$([ "$QUICK" = 1 ] && echo ' --quick')\` on $STARTED, Herald ${HERALD_VERSION#herald } (git $GIT_REV$REV_NOTE, release build)."
  echo
  echo "- Machine: $NCPU CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')), $MEM_GIB GiB, Linux $(uname -r); load average before $LOAD_BEFORE, after $LOAD_AFTER."
  echo "- Pinning: $PINNING; a fresh server per run, on loopback, publishing through the HTTP API."
  echo "- Open-file limit: $NOFILE per process; the idle and reconnect runs hold $N connections, below it on both sides (server and load generator)."
  if [ "$QUICK" = 1 ]; then
    echo "- **--quick run: small numbers, seconds per step. A check that the script works; the figures are not to be quoted.**"
  fi
  if awk -v l="${LOAD_BEFORE%% *}" 'BEGIN{exit !(l > 0.6)}'; then
    echo "- **The machine was busy (load average ${LOAD_BEFORE%% *} before the run): the figures are indicative only.**"
  fi
} > "$PREAMBLE"

if [ "$WRITE_DOC" = 1 ]; then
  "$BENCH" transports-table --results "$RESULTS" --preamble "$PREAMBLE" --doc docs/transports.md
  log "wrote docs/transports.md (generated section); raw results in $RESULTS"
else
  "$BENCH" transports-table --results "$RESULTS" --preamble "$PREAMBLE"
  log "raw results in $RESULTS"
fi
if [ "$FAILED" = 1 ]; then log "some runs reported errors or left no report: see the notes under the table"; fi
