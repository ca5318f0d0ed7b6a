#!/usr/bin/env bash
# Instructions per request of the running webhook, under callgrind (BENCHMARKS.md):
#   bash bench/profile.sh [BINARY|lean] [CONTAINERS] [PATH]  # default: target/release/portcullis, 5, /validate
# Serves the 1,000-policy / 100,000-result data set of bench/run.sh, warms it up, then
# counts about 1,000 requests of the realistic CONTAINERS-container review at 100 req/s
# to PATH (for /mutate, with bench/mutate-policy.yaml added), and
# prints the total per request and the top functions. Instruction counts do not move
# with the machine's load, so two binaries compare here even when wall-clock figures
# cannot; `callgrind_annotate` reads the profile kept in $PROFILE (default
# target/callgrind.portcullis). Needs valgrind (apt-get install valgrind).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/release/portcullis}
containers=${2:-5}
path=${3:-/validate}
out=${PROFILE:-$PWD/target/callgrind.portcullis}
command -v valgrind >/dev/null || { echo "valgrind is not installed (apt-get install valgrind)" >&2; exit 1; }
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
TOKIO_WORKER_THREADS=1 RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$out" \
  "${server[@]}" >"$work/serve.log" 2>&1 &
pid=$!
for _ in $(seq 1 120); do
  [ -f "$work/pc/ca.crt" ] && curl -s -o /dev/null --cacert "$work/pc/ca.crt" https://127.0.0.1:$port/healthz && break
  sleep 1
done
load() { $bench load --addr 127.0.0.1:$port --ca "$work/pc/ca.crt" --body "$work/body.json" --path "$path" --connections 4 "$@"; }
load --seconds 5 --rate 50 >/dev/null   # connections, caches and allocator warm
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
