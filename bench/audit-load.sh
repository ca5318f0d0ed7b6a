#!/usr/bin/env bash
# Admission throughput while the background audit re-audits 10,000 Pods × 100 policies
# in a loop, both on one core (BENCHMARKS.md):   bash bench/audit-load.sh
# The webhook (one tokio worker) and the re-audit loop are pinned to core 0, the re-audit
# at nice 10 as the audit thread runs; the load client is on core 1. Runs alternate
# without and with the re-audit; the summary gives the medians and their ratio.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-8}
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill -- "$p" 2>/dev/null || true; done; pkill -f 'audit-.*--profile-time' 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

cargo build --release -q -p portcullis -p portcullis-bench
cargo bench -q -p portcullis --bench audit --no-run 2>/dev/null
bin=target/release
$bin/portcullis-bench body --containers 5 --out "$work/pod.json"
TOKIO_WORKER_THREADS=1 RUST_LOG=warn taskset -c 0 $bin/portcullis serve --policies config/samples \
  --listen 127.0.0.1:19453 --self-signed-dir "$work/pc" >"$work/serve.log" 2>&1 &
pids+=($!)
sleep 2
load() {
  taskset -c 1 $bin/portcullis-bench load --addr 127.0.0.1:19453 --ca "$work/pc/ca.crt" --body "$work/pod.json" \
    --connections 16 --seconds "$SECONDS_PER_RUN" | grep -o '[0-9.]* req/s' | cut -d' ' -f1
}
for i in $(seq "$RUNS"); do
  echo "without $(load)" | tee -a "$work/results"
  taskset -c 0 nice -n 10 cargo bench -q -p portcullis --bench audit -- --profile-time $((SECONDS_PER_RUN + 30)) >/dev/null 2>&1 &
  reaudit=$!
  sleep 25 # building the 10,000 Pods, then the re-audit loop runs
  echo "during re-audit $(load)" | tee -a "$work/results"
  kill -- "$reaudit" 2>/dev/null || true
  pkill -f 'audit-.*--profile-time' 2>/dev/null || true
  wait "$reaudit" 2>/dev/null || true
done
python3 - "$work/results" <<'PY'
import statistics, sys
runs = {}
for line in open(sys.argv[1]):
    label, rate = line.rsplit(" ", 1)
    runs.setdefault(label, []).append(float(rate))
without, during = statistics.median(runs["without"]), statistics.median(runs["during re-audit"])
print(f"median: without {without:.0f} req/s, during a re-audit {during:.0f} req/s: {during / without:.0%}")
PY
