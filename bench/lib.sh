# Shared by bench/compare.sh and bench/transports.sh (sourced, not run): building the binaries,
# free loopback ports, waiting for a server, stopping it, CPU pinning and the open-file limit.
# The sourcing script sets LOG_TAG and ROOT (the repository root, its working directory).

log() { echo "[$LOG_TAG] $*" >&2; }

# Builds Herald and herald-bench in release mode; sets HERALD, BENCH, HERALD_VERSION and GIT_REV
# ("+uncommitted" when crates/ differs from HEAD).
build_binaries() {
  log "cargo build --release -p herald -p herald-bench"
  nice -n 10 cargo build --release -q -p herald -p herald-bench
  local target_dir
  target_dir=$(cargo metadata --format-version 1 --no-deps 2>/dev/null | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
  target_dir=${target_dir:-$ROOT/target}
  HERALD=$target_dir/release/herald
  BENCH=$target_dir/release/herald-bench
  HERALD_VERSION=$("$HERALD" version 2>/dev/null | head -1)
  GIT_REV=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
  if ! git diff --quiet HEAD -- crates 2>/dev/null; then GIT_REV="$GIT_REV+uncommitted"; fi
}

# Finds Centrifugo $CENTRIFUGO_VERSION (PATH, then $(go env GOPATH)/bin), or installs it with
# `go install`; sets CENTRIFUGO.
is_pinned_centrifugo() {
  [ -x "$1" ] && command -v go >/dev/null &&
    go version -m "$1" 2>/dev/null | grep -Eq "^[[:space:]]+mod[[:space:]]+github.com/centrifugal/centrifugo/v6[[:space:]]+$CENTRIFUGO_VERSION"
}
find_centrifugo() {
  CENTRIFUGO=""
  local c
  for c in "$(command -v centrifugo || true)" "$(go env GOPATH 2>/dev/null)/bin/centrifugo" "$HOME/go/bin/centrifugo"; do
    if [ -n "$c" ] && is_pinned_centrifugo "$c"; then CENTRIFUGO=$c; return 0; fi
  done
  command -v go >/dev/null || { log "Go is needed to install Centrifugo $CENTRIFUGO_VERSION"; exit 1; }
  log "go install github.com/centrifugal/centrifugo/v6@$CENTRIFUGO_VERSION"
  nice -n 10 go install "github.com/centrifugal/centrifugo/v6@$CENTRIFUGO_VERSION"
  CENTRIFUGO="$(go env GOPATH)/bin/centrifugo"
  is_pinned_centrifugo "$CENTRIFUGO" || { log "installed $CENTRIFUGO is not $CENTRIFUGO_VERSION"; exit 1; }
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# A free port on 127.0.0.1, never one handed out before by this script.
USED_PORTS=""
free_port() {
  local p
  for _ in $(seq 1 200); do
    p=$(( (RANDOM * 32768 + RANDOM) % 30000 + 20000 ))
    case " $USED_PORTS " in *" $p "*) continue ;; esac
    if ! port_in_use "$p"; then USED_PORTS="$USED_PORTS $p"; echo "$p"; return 0; fi
  done
  log "no free port found"; return 1
}

# Waits (30 s at most) until PORT accepts connections; fails early when PID is gone.
wait_listening() {
  local port=$1 pid=$2
  for _ in $(seq 1 300); do
    port_in_use "$port" && return 0
    kill -0 "$pid" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

# The server the script started last (SERVER_PID); stopped on exit too.
SERVER_PID=""
stop_server() {
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  SERVER_PID=""
}
trap stop_server EXIT

# Server on CPU 0, load generator on CPU 1 when the machine has two CPUs and taskset; sets
# SERVER_PIN, BENCH_PIN (command prefixes) and PINNING (a sentence for the report). $1 names the server.
setup_pinning() {
  SERVER_PIN=(); BENCH_PIN=(); PINNING="none (fewer than 2 CPUs or no taskset)"
  if [ "$(nproc)" -ge 2 ] && command -v taskset >/dev/null; then
    SERVER_PIN=(taskset -c 0); BENCH_PIN=(taskset -c 1)
    PINNING="$1 on CPU 0, herald-bench on CPU 1 (taskset)"
  fi
}

# Raises the soft open-file limit to the hard one; sets NOFILE.
raise_nofile() {
  ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
  NOFILE=$(ulimit -n)
}
