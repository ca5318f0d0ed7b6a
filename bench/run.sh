#!/usr/bin/env bash
# The webhook under load against its ceilings, on loopback (BENCHMARKS.md):
#   bash bench/run.sh   # saturation (lean and Portcullis: 24 rounds of 1 s; the rest 3 runs
#                       # of 8 s), 600 and 1000 req/s (3 runs of 8 s), memory
# Each server is pinned to core 0 with one tokio worker, the client to core 1; the
# summary gives the median run (by throughput at saturation, by p99 at a fixed rate).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/servers.sh

# Realistic Pod reviews of 1, 5 and 20 containers (env, probes, resources, mounts,
# managedFields, as a ReplicaSet's Pods arrive); their images are cached by fill.
for n in 1 5 20; do $bin/portcullis-bench body --containers $n --out "$work/pod$n.json"; done
# 1,000 policies (100 of them checking vulnerabilities of ghcr.io/acme/**) and 100,000
# cached scan results, the bodies' images among them.
$bin/portcullis-bench fill --out "$work/big" --policies 1000 --scans 100000
# /mutate: one more policy pins the Pod's images and fills in every security default;
# the same review is sent to /mutate.
cp bench/mutate-policy.yaml "$work/big/policies/mutate.yaml"

start portcullis $portcullis serve --policies config/samples --listen 127.0.0.1:19443 --self-signed-dir "$work/pc"
start echo $ceilings echo --listen 127.0.0.1:19444 --ca-out "$work/echo.ca"
start typed $ceilings typed --listen 127.0.0.1:19445 --ca-out "$work/typed.ca"
start lean $ceilings lean --listen 127.0.0.1:19447 --ca-out "$work/lean.ca" --policies 1000 --scans 100000
start cached $portcullis serve --policies "$work/big/policies" --cache-dir "$work/big/cache" \
  --listen 127.0.0.1:19446 --self-signed-dir "$work/cached-pc"
loaded cached
sleep 3
idle_cached=$(rss cached VmRSS)

lean="lean|19447|$work/lean.ca"
cached="portcullis-1000-policies-100k-cached|19446|$work/cached-pc/ca.crt"
# Portcullis against lean: many short rounds (ROUNDS of SECONDS_PER_ROUND). The machine's
# speed moves within seconds; rounds of 1 s side by side share the same spell, so the
# median of their paired shares is steadier than that of a few long runs (BENCHMARKS.md).
echo "== saturation, 16 connections (lean and Portcullis: $ROUNDS rounds of ${SECONDS_PER_ROUND} s)"
for n in 1 5 20; do RUNS=$ROUNDS SECONDS_PER_RUN=$SECONDS_PER_ROUND run saturation $n "$lean" "$cached"; done
run saturation 5 "typed|19445|$work/typed.ca" "echo|19444|$work/echo.ca" "portcullis-samples|19443|$work/pc/ca.crt"
run saturation 5 "portcullis-1000-policies-100k-cached /mutate|19446|$work/cached-pc/ca.crt" -- --path /mutate
for rate in 600 1000; do
  echo "== $rate req/s"
  run "$rate req/s" 5 "$lean" "$cached" -- --rate $rate
done

echo "== median run of each (of $ROUNDS rounds, or $RUNS runs); ratios: of the lean ceiling with the same body, and of typed/echo for 5 containers"
python3 - "$results" <<'PY'
import re, sys
sys.path.insert(0, "bench")
from paired import paired
runs = {}
for line in open(sys.argv[1]):
    label, containers, name, text = line.rstrip("\n").split("|", 3)
    rate = float(re.search(r"([\d.]+) req/s", text).group(1))
    runs.setdefault((label, containers, name), []).append((rate, text))
UNITS = {"ns": 1e-9, "µs": 1e-6, "us": 1e-6, "ms": 1e-3, "s": 1.0}
def p99(text):
    value, unit = re.search(r"p99 ([\d.]+)(ns|µs|us|ms|s)", text).groups()
    return float(value) * UNITS[unit]
# The median run: by throughput at saturation, by p99 at a fixed rate (where every run
# has the same throughput).
order = {key: list(found) for key, found in runs.items()}
median = {}
for (label, containers, name), found in runs.items():
    found.sort(key=lambda run: run[0] if label == "saturation" else p99(run[1]))
    median[(label, containers, name)] = found[len(found) // 2]
for (label, containers, name), (rate, text) in median.items():
    ratio = []
    if label == "saturation" and name.startswith("portcullis"):
        for ceiling in ("lean", "typed", "echo"):
            c = median.get((label, containers, ceiling))
            if c:
                ratio.append(f"{rate / c[0]:.0%} of {ceiling}")
        # Run by run against lean, which took turns with it (the spread is the noise).
        if name == "portcullis-1000-policies-100k-cached":
            ratio.append(paired(order[(label, containers, name)], order[(label, containers, "lean")]))
    suffix = f" ({', '.join(ratio)})" if ratio else ""
    print(f"{label:>12} {containers:>2} containers {name}: {text}{suffix}")
PY
echo "== memory: portcullis with 1,000 policies and 100,000 cached scan results"
echo "idle RSS $idle_cached; peak RSS under load $(rss cached VmHWM) (process lifetime, startup included)"
echo "== RSS after the runs"
for name in portcullis echo typed lean cached; do echo "$name: $(rss $name VmRSS)"; done
