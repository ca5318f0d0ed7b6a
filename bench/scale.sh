#!/usr/bin/env bash
# Portcullis at scale (BENCHMARKS.md): 10,000 policies and 1,000,000 cached scan results.
#   bash bench/scale.sh            # RUNS (3) starts; ROUNDS (24) × SECONDS_PER_ROUND (1 s) of load
# Writes the data set with `portcullis-bench fill` (about a minute), then measures
# `portcullis serve` on it: time from start to /readyz answering `ready` (the policies
# compiled, the store open) and to the store loaded into memory (its log line; median of
# RUNS starts each), idle RSS, and saturation throughput of
# the 5-container review against the lean ceiling holding the same counts. Each server
# runs pinned to core 0 with one tokio worker, the load client on core 1.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/servers.sh
POLICIES=${POLICIES:-10000}
SCANS=${SCANS:-1000000}
$bin/portcullis-bench body --containers 5 --out "$work/pod5.json"
$bin/portcullis-bench fill --out "$work/data" --policies "$POLICIES" --scans "$SCANS"

# Start to ready, RUNS times (the last server stays for the runs below); the median counts.
starts=()
loads=()
for i in $(seq "$RUNS"); do
  if [ "$i" -gt 1 ]; then
    kill "$(cat "$work/portcullis.pid")"; wait "$(cat "$work/portcullis.pid")" 2>/dev/null || true
  fi
  rm -rf "$work/pc"
  began=$(date +%s.%N)
  start portcullis $portcullis serve --policies "$work/data/policies" --cache-dir "$work/data/cache" \
    --cache-entries "$SCANS" --cache-memory 1Gi --listen 127.0.0.1:19461 --self-signed-dir "$work/pc"
  ready 19461 "$work/pc/ca.crt"
  starts+=("$(echo "$(date +%s.%N) - $began" | bc)")
  loaded portcullis
  loads+=("$(echo "$(date +%s.%N) - $began" | bc)")
done
median() { printf '%s\n' "$@" | sort -n | sed -n "$(( (RUNS + 1) / 2 ))p" | xargs printf '%.2f'; }
echo "portcullis: start to ready $(printf '%.2f s ' "${starts[@]}")(median $(median "${starts[@]}") s)"
echo "portcullis: start to loaded $(printf '%.2f s ' "${loads[@]}")(median $(median "${loads[@]}") s)"
start lean $ceilings lean --listen 127.0.0.1:19462 --ca-out "$work/lean.ca" \
  --policies "$POLICIES" --scans "$SCANS"
sleep 5
echo "idle RSS: portcullis $(rss portcullis VmRSS), lean $(rss lean VmRSS)"

# Throughput: ROUNDS rounds of SECONDS_PER_ROUND, lean and Portcullis taking turns (as
# bench/run.sh measures them at saturation).
RUNS=$ROUNDS SECONDS_PER_RUN=$SECONDS_PER_ROUND run saturation 5 "lean|19462|$work/lean.ca" "portcullis|19461|$work/pc/ca.crt"
echo "== median of $ROUNDS rounds, 5 containers, $POLICIES policies, $SCANS cached results"
python3 - "$results" <<'PY'
import re, sys
sys.path.insert(0, "bench")
from paired import paired
runs = {}
for line in open(sys.argv[1]):
    _, _, name, text = line.rstrip("\n").split("|", 3)
    runs.setdefault(name, []).append((float(re.search(r"([\d.]+) req/s", text).group(1)), text))
median = {name: sorted(found)[len(found) // 2] for name, found in runs.items()}
for name, (rate, text) in median.items():
    share = ""
    if name != "lean":
        share = f" ({rate / median['lean'][0]:.0%} of lean; {paired(runs[name], runs['lean'])})"
    print(f"{name}: {text}{share}")
PY
echo "RSS after the runs: portcullis $(rss portcullis VmRSS), lean $(rss lean VmRSS)"
