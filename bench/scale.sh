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
$bin/portcullis-bench body --containers 5 --out "$work/pod.json"
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
  start portcullis $bin/portcullis serve --policies "$work/data/policies" --cache-dir "$work/data/cache" \
    --cache-entries "$SCANS" --cache-memory 1Gi --listen 127.0.0.1:19461 --self-signed-dir "$work/pc"
  ready 19461 "$work/pc/ca.crt"
  starts+=("$(echo "$(date +%s.%N) - $began" | bc)")
  loaded portcullis
  loads+=("$(echo "$(date +%s.%N) - $began" | bc)")
done
median() { printf '%s\n' "$@" | sort -n | sed -n "$(( (RUNS + 1) / 2 ))p" | xargs printf '%.2f'; }
echo "portcullis: start to ready $(printf '%.2f s ' "${starts[@]}")(median $(median "${starts[@]}") s)"
echo "portcullis: start to loaded $(printf '%.2f s ' "${loads[@]}")(median $(median "${loads[@]}") s)"
start lean $bin/portcullis-bench lean --listen 127.0.0.1:19462 --ca-out "$work/lean.ca" \
  --policies "$POLICIES" --scans "$SCANS"
sleep 5
echo "idle RSS: portcullis $(rss portcullis VmRSS), lean $(rss lean VmRSS)"

# Throughput: ROUNDS rounds of SECONDS_PER_ROUND, lean and Portcullis taking turns, every
# other round in reverse order (as bench/run.sh does at saturation).
results=$work/results.txt
lean="lean 19462 $work/lean.ca"
portcullis="portcullis 19461 $work/pc/ca.crt"
for i in $(seq "$ROUNDS"); do
  if ((i % 2)); then turn=("$lean" "$portcullis"); else turn=("$portcullis" "$lean"); fi
  for target in "${turn[@]}"; do
    set -- $target
    taskset -c 1 $bin/portcullis-bench load --addr 127.0.0.1:$2 --ca "$3" --body "$work/pod.json" \
      --connections 16 --seconds "$SECONDS_PER_ROUND" | awk -v p="$1|" '{print p $0}' | tee -a "$results"
  done
done
echo "== median of $ROUNDS rounds, 5 containers, $POLICIES policies, $SCANS cached results"
python3 - "$results" <<'PY'
import re, statistics, sys
runs = {}
for line in open(sys.argv[1]):
    name, text = line.rstrip("\n").split("|", 1)
    runs.setdefault(name, []).append((float(re.search(r"([\d.]+) req/s", text).group(1)), text))
pairs = [ours[0] / them[0] for ours, them in zip(runs["portcullis"], runs["lean"])]
median = {name: sorted(found)[len(found) // 2] for name, found in runs.items()}
for name, (rate, text) in median.items():
    share = ""
    if name != "lean":
        q1, _, q3 = statistics.quantiles(pairs, n=4) if len(pairs) > 1 else pairs * 3
        share = (f" ({rate / median['lean'][0]:.0%} of lean; paired over {len(pairs)} rounds: "
                 f"median {statistics.median(pairs):.0%}, quartiles {q1:.0%}-{q3:.0%})")
    print(f"{name}: {text}{share}")
PY
echo "RSS after the runs: portcullis $(rss portcullis VmRSS), lean $(rss lean VmRSS)"
