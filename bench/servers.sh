# Sourced by bench/run.sh and bench/scale.sh from the repository root: the run settings,
# a work directory removed at exit with every server started, and the release binaries.
RUNS=${RUNS:-3}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-8}
# Saturation rounds, Portcullis against lean (bench/run.sh, bench/scale.sh).
ROUNDS=${ROUNDS:-24}
SECONDS_PER_ROUND=${SECONDS_PER_ROUND:-1}
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
cargo build --release -q -p portcullis -p portcullis-bench
bin=target/release
# The servers measured: the release build, or others such as bench/pgo.sh's
# profile-guided build (PORTCULLIS=target/pgo/release/portcullis, and CEILINGS= for the
# lean, typed and echo ceilings of portcullis-bench).
portcullis=${PORTCULLIS:-$bin/portcullis}
ceilings=${CEILINGS:-$bin/portcullis-bench}

# Starts a server pinned to core 0 with one tokio worker (WORKERS and CORES, a taskset
# list, change that), logging warnings and the scan cache's `loaded` line to
# $work/NAME.log: name, command...
start() {
  local name=$1; shift
  TOKIO_WORKER_THREADS=${WORKERS:-1} RUST_LOG=warn,portcullis_webhook::scan::cache=info taskset -c "${CORES:-0}" "$@" >"$work/$name.log" 2>&1 &
  pids+=($!); echo $! >"$work/$name.pid"
}

# Waits until a started Portcullis answers /readyz with `ready` (policies compiled, the
# cache store open: lookups read it until it is loaded), polling every 20 ms: port, CA file.
ready() {
  until [ -f "$2" ] && [ "$(curl -s --cacert "$2" "https://127.0.0.1:$1/readyz")" = ready ]; do sleep 0.02; done
}

# Waits until a started Portcullis with --cache-dir has loaded its store into memory (it
# serves before, reading the store for what memory lacks; measurements start after): name.
loaded() {
  until grep -q "scan cache loaded" "$work/$1.log"; do sleep 0.02; done
}

# Waits until a started ceiling server answers over TLS (any status; they serve only
# /validate): port, CA file.
listening() {
  until [ -f "$2" ] && curl -s -o /dev/null --cacert "$2" "https://127.0.0.1:$1/"; do sleep 0.02; done
}

# A started server's memory: name, field of /proc/PID/status (VmRSS, VmHWM).
rss() { grep "$2" "/proc/$(cat "$work/$1.pid")/status" | awk '{printf "%.1f MiB", $2/1024}'; }

# What `run` measured, a line per run: label|containers|name|the load client's line.
results=$work/results.txt
# Loads each server ("name|port|ca") RUNS times for SECONDS_PER_RUN with the
# CONTAINERS-container body, the servers taking turns, every other turn in reverse order:
# a drift in the shared machine's speed falls on each alike, and no server always goes
# first, so shares within a call hold even when rates move between minutes.
run() { # label containers server... [-- load-flags...]
  local label=$1 containers=$2 servers=() flags=() turn name port ca i
  shift 2
  while [ $# -gt 0 ] && [ "$1" != -- ]; do servers+=("$1"); shift; done
  [ $# -gt 0 ] && shift && flags=("$@")
  for i in $(seq "$RUNS"); do
    turn=()
    for server in "${servers[@]}"; do
      if ((i % 2)); then turn+=("$server"); else turn=("$server" "${turn[@]}"); fi
    done
    for server in "${turn[@]}"; do
      IFS='|' read -r name port ca <<<"$server"
      taskset -c 1 $bin/portcullis-bench load --addr 127.0.0.1:$port --ca "$ca" --body "$work/pod$containers.json" \
        --connections 16 --seconds "$SECONDS_PER_RUN" "${flags[@]}" \
        | awk -v p="$label|$containers|$name|" '{print p $0}' | tee -a "$results"
    done
  done
}
