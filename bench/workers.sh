#!/usr/bin/env bash
# How Portcullis's request path would scale from one tokio worker to two (BENCHMARKS.md):
#   bash bench/workers.sh            # RUNS (3) × SECONDS_PER_RUN (8) at RATE (4000) req/s
# On a 2-core machine two workers cannot be saturated with a core left for the client, so
# this measures what limits scaling instead: the server's CPU time per request (user +
# system, from /proc/PID/stat) with one worker and with two, at the same fixed rate of
# the 5-container review on the 1,000-policy / 100,000-result data set of bench/run.sh,
# server and client unpinned, the servers taking turns. Shared state that serializes
# (locks, contended atomics, cache-line ping-pong) shows as more CPU per request with two
# workers; with none, two cores give 2 × (one worker's CPU / two workers' CPU) of one.
# An estimate: idle workers looking for work also count, and at a fixed rate the workers
# overlap less than when saturated. The lean ceiling is measured the same way, for what
# the runtime alone costs.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/servers.sh
RATE=${RATE:-4000}
$bin/portcullis-bench body --containers 5 --out "$work/pod.json" >/dev/null
$bin/portcullis-bench fill --out "$work/big" --policies 1000 --scans 100000 >/dev/null

# CPU seconds a process has used: user + system ticks of /proc/PID/stat.
cpu() { awk -v hz="$(getconf CLK_TCK)" '{print ($14 + $15) / hz}' "/proc/$1/stat"; }

# Each server, as name:workers, on port 1947N in this order, on both cores.
servers=(portcullis:1 portcullis:2 lean:1 lean:2)
for n in "${!servers[@]}"; do
  name=${servers[$n]%:*} workers=${servers[$n]#*:}
  if [ "$name" = lean ]; then # the lean ceiling of bench/run.sh, for how the runtime alone scales
    mkdir -p "$work/pc$n"
    WORKERS=$workers CORES=0,1 start "server$n" $ceilings lean --listen "127.0.0.1:1947$n" \
      --ca-out "$work/pc$n/ca.crt" --policies 1000 --scans 100000
    listening "1947$n" "$work/pc$n/ca.crt"
  else
    cp -r "$work/big/cache" "$work/cache$n" # the store is locked by the process that opens it
    WORKERS=$workers CORES=0,1 start "server$n" $portcullis serve --policies "$work/big/policies" \
      --cache-dir "$work/cache$n" --listen "127.0.0.1:1947$n" --self-signed-dir "$work/pc$n"
    ready "1947$n" "$work/pc$n/ca.crt"
    loaded "server$n"
  fi
done

load() { # server number, seconds: prints the requests answered
  $bin/portcullis-bench load --addr "127.0.0.1:1947$1" --ca "$work/pc$1/ca.crt" --body "$work/pod.json" \
    --connections 16 --seconds "$2" --rate "$RATE" | sed -E 's/^requests ([0-9]+) .*/\1/'
}
for n in "${!servers[@]}"; do load "$n" 3 >/dev/null; done # connections, caches and allocator warm

results=()
for i in $(seq "$RUNS"); do
  for n in "${!servers[@]}"; do
    pid=$(cat "$work/server$n.pid")
    before=$(cpu "$pid")
    requests=$(load "$n" "$SECONDS_PER_RUN")
    after=$(cpu "$pid")
    micros=$(echo "($after - $before) * 1000000 / $requests" | bc -l)
    printf 'run %d, %s: %d requests at %d req/s, %.1f µs of server CPU per request\n' \
      "$i" "${servers[$n]}" "$requests" "$RATE" "$micros"
    results+=("${servers[$n]} $micros")
  done
done
printf '%s\n' "${results[@]}" | python3 -c '
import statistics, sys
by = {}
for line in sys.stdin:
    server, micros = line.split()
    by.setdefault(server, []).append(float(micros))
for name in ("portcullis", "lean"):
    one, two = statistics.median(by[name + ":1"]), statistics.median(by[name + ":2"])
    print(f"{name}, median: {one:.1f} µs of CPU per request with one worker, {two:.1f} with two;"
          f" two cores would answer {2 * one / two:.2f}x what one does")'
