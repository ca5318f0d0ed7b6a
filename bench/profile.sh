#!/usr/bin/env bash
# Where a request's work and time go in the running webhook (BENCHMARKS.md):
#   bash bench/profile.sh [BINARY|lean] [CONTAINERS] [PATH]  # default: target/release/portcullis, 5, /validate
# Serves the 1,000-policy / 100,000-result data set of bench/run.sh, warms it up, then
# profiles the realistic CONTAINERS-container review sent to PATH (for /mutate, with
# bench/mutate-policy.yaml added):
# - by default under callgrind, about 1,000 requests at 100 req/s: instructions per
#   request and the top functions. Instruction counts do not move with the machine's
#   load, so two binaries compare here even when wall-clock figures cannot;
#   `callgrind_annotate` reads the profile kept in $PROFILE (default
#   target/callgrind.portcullis). Needs valgrind (apt-get install valgrind).
# - with SATURATION=1, natively at saturation (16 connections, server on core 0, client
#   on core 1) under `perf record -e cpu-clock --call-graph dwarf`: microseconds of
#   wall-clock per request spent in each callee of the handler and in the hottest
#   functions. This counts what instructions do not: cache misses, code layout, the
#   kernel's send path. Needs perf (apt-get install linux-perf) and python3.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/release/portcullis}
containers=${2:-5}
path=${3:-/validate}
out=${PROFILE:-$PWD/target/callgrind.portcullis}
if [ -n "${SATURATION:-}" ]; then
  command -v perf >/dev/null || { echo "perf is not installed (apt-get install linux-perf)" >&2; exit 1; }
else
  command -v valgrind >/dev/null || { echo "valgrind is not installed (apt-get install valgrind)" >&2; exit 1; }
fi
cargo build --release -q -p portcullis -p portcullis-bench
bench=target/release/portcullis-bench
work=$(mktemp -d)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

$bench body --containers "$containers" --out "$work/body.json" >/dev/null
$bench fill --out "$work/big" --policies 1000 --scans 100000 >/dev/null
[ "$path" = /mutate ] && cp bench/mutate-policy.yaml "$work/big/policies/mutate.yaml"
port=19506
if [ "$bin" = lean ]; then # the lean ceiling of bench/run.sh, for comparison
  server=("$bench" lean --listen 127.0.0.1:$port --ca-out "$work/pc/ca.crt" --policies 1000 --scans 100000)
  mkdir -p "$work/pc"
else
  server=("$bin" serve --policies "$work/big/policies" --cache-dir "$work/big/cache"
    --listen 127.0.0.1:$port --self-signed-dir "$work/pc")
fi
# The scan cache's info line says when its store is loaded: profiling starts after.
log=warn,portcullis_webhook::scan::cache=info
if [ -n "${SATURATION:-}" ]; then
  TOKIO_WORKER_THREADS=1 RUST_LOG=$log taskset -c 0 "${server[@]}" >"$work/serve.log" 2>&1 &
else
  TOKIO_WORKER_THREADS=1 RUST_LOG=$log valgrind --tool=callgrind --callgrind-out-file="$out" \
    "${server[@]}" >"$work/serve.log" 2>&1 &
fi
pid=$!
for _ in $(seq 1 120); do
  [ -f "$work/pc/ca.crt" ] && curl -s -o /dev/null --cacert "$work/pc/ca.crt" https://127.0.0.1:$port/healthz && break
  sleep 1
done
[ "$bin" = lean ] || until grep -q "scan cache loaded" "$work/serve.log"; do sleep 1; done
load() { $bench load --addr 127.0.0.1:$port --ca "$work/pc/ca.crt" --body "$work/body.json" --path "$path" --connections 4 "$@"; }
load --seconds 5 --rate 50 >/dev/null   # connections, caches and allocator warm
if [ -n "${SATURATION:-}" ]; then
  # The recording spans the load run (5 s each), so its samples are those requests'.
  perf record -q -e cpu-clock -F 1000 --call-graph dwarf,40000 -p "$pid" -o "$work/perf.data" -- sleep 5.2 2>/dev/null &
  recording=$!
  sleep 0.1
  measured=$(taskset -c 1 $bench load --addr 127.0.0.1:$port --ca "$work/pc/ca.crt" --body "$work/body.json" --path "$path" --connections 16 --seconds 5)
  wait "$recording"
  echo "$measured"
  kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
  perf script -i "$work/perf.data" 2>/dev/null | python3 bench/stacks.py "$(echo "$measured" | awk '{print $2}')" 1000
  exit 0
fi
callgrind_control -z "$pid" >/dev/null
measured=$(load --seconds 10 --rate 100)
echo "$measured"
callgrind_control -d "$pid" >/dev/null
kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
requests=$(echo "$measured" | awk '{print $2}')
total=$(callgrind_annotate "$out".1 | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
echo "instructions per request: $((total / requests)) ($bin, $containers containers, $path)"
echo "top functions by own instructions per request:"
callgrind_annotate --threshold=100 "$out".1 \
  | sed -n '/file:function/,$p' \
  | sed -E -n 's/^ *([0-9,]+) +\([^)]*\) +(.*)$/\1 \2/p' \
  | awk -v n="$requests" '{c=$1; gsub(",", "", c); $1=""; printf "%10d %s\n", c/n, substr($0, 1, 110)}' \
  | grep -v -E "clone.S|start_thread|thread_start|tokio::runtime|__rust_begin_short_backtrace|call_once" | head -15
