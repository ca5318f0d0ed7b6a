#!/usr/bin/env bash
# The webhook under load against its ceilings, on loopback (BENCHMARKS.md):
#   bash bench/run.sh            # 3 runs each: saturation, 600 and 1000 req/s, memory
# Each server is pinned to core 0 with one tokio worker, the client to core 1; the
# summary gives the median of the runs.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-8}
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

cargo build --release -q -p portcullis -p portcullis-bench
bin=target/release

# A 5-container Pod review, from the captured Pod review.
python3 - "$work/pod5.json" <<'PY'
import json, sys
review = json.load(open("../shared/fixtures/admission/validate-create-pod.json"))
spec = review["request"]["object"]["spec"]
spec["containers"] = [{"name": f"c{i}", "image": f"ghcr.io/acme/svc-{i}:1.{i}.0"} for i in range(5)]
spec.pop("initContainers", None); spec.pop("hostNetwork", None); spec.pop("volumes", None)
json.dump(review, open(sys.argv[1], "w"))
PY
# 1,000 policies (100 of them checking vulnerabilities of ghcr.io/acme/**) and 100,000
# cached scan results, the Pod's five images among them.
$bin/portcullis-bench fill --out "$work/big" --policies 1000 --scans 100000
# /mutate: one more policy pins the Pod's images (digests cached by fill) and fills in
# every security default; the same review is sent to /mutate.
cat >"$work/big/policies/mutate.yaml" <<'YAML'
apiVersion: portcullis.dev/v1alpha1
kind: ContainerPolicy
metadata: {name: pin-and-default}
spec:
  match: {images: ["ghcr.io/acme/**"]}
  mutate:
    pinDigests: true
    securityDefaults: {runAsNonRoot: true, allowPrivilegeEscalation: false, dropAllCapabilities: true, seccompProfile: RuntimeDefault}
YAML

start() { # name, command...
  local name=$1; shift
  TOKIO_WORKER_THREADS=1 RUST_LOG=warn taskset -c 0 "$@" >"$work/$name.log" 2>&1 &
  pids+=($!); echo $! >"$work/$name.pid"
}
rss() { grep "$2" "/proc/$(cat "$work/$1.pid")/status" | awk '{printf "%.1f MiB", $2/1024}'; }
start portcullis $bin/portcullis serve --policies config/samples --listen 127.0.0.1:19443 --self-signed-dir "$work/pc"
start echo $bin/portcullis-bench echo --listen 127.0.0.1:19444 --ca-out "$work/echo.ca"
start typed $bin/portcullis-bench typed --listen 127.0.0.1:19445 --ca-out "$work/typed.ca"
start cached $bin/portcullis serve --policies "$work/big/policies" --cache-dir "$work/big/cache" \
  --listen 127.0.0.1:19446 --self-signed-dir "$work/cached-pc"
sleep 3
idle_cached=$(rss cached VmRSS)

results=$work/results.txt
run() { # label server port ca rate-flag...
  local label=$1 name=$2 port=$3 ca=$4; shift 4
  for i in $(seq "$RUNS"); do
    taskset -c 1 $bin/portcullis-bench load --addr 127.0.0.1:$port --ca "$ca" --body "$work/pod5.json" \
      --connections 16 --seconds "$SECONDS_PER_RUN" "$@" | awk -v p="$label|$name|" '{print p $0}' | tee -a "$results"
  done
}
echo "== saturation, 16 connections, 5-container Pod"
run saturation typed 19445 "$work/typed.ca"
run saturation echo 19444 "$work/echo.ca"
run saturation portcullis 19443 "$work/pc/ca.crt"
run saturation portcullis-1000-policies-100k-cached 19446 "$work/cached-pc/ca.crt"
run saturation "portcullis-1000-policies-100k-cached /mutate" 19446 "$work/cached-pc/ca.crt" --path /mutate
for rate in 600 1000; do
  echo "== $rate req/s"
  run "$rate req/s" portcullis-1000-policies-100k-cached 19446 "$work/cached-pc/ca.crt" --rate $rate
done

echo "== median of $RUNS runs"
python3 - "$results" <<'PY'
import re, statistics, sys
runs = {}
for line in open(sys.argv[1]):
    label, name, text = line.rstrip("\n").split("|", 2)
    rate = float(re.search(r"([\d.]+) req/s", text).group(1))
    runs.setdefault((label, name), []).append((rate, text))
median = {}
for key, found in runs.items():
    found.sort()
    median[key] = found[len(found) // 2]
ceilings = {n: median[("saturation", n)][0] for n in ("typed", "echo") if ("saturation", n) in median}
for (label, name), (rate, text) in median.items():
    ratio = ""
    if label == "saturation" and name.startswith("portcullis") and ceilings:
        ratio = " (" + ", ".join(f"{rate / c:.0%} of {n}" for n, c in ceilings.items()) + ")"
    print(f"{label:>12} {name}: {text}{ratio}")
PY
echo "== memory: portcullis with 1,000 policies and 100,000 cached scan results"
echo "idle RSS $idle_cached; peak RSS under load $(rss cached VmHWM) (process lifetime, startup included)"
echo "== RSS after the runs"
for name in portcullis echo typed cached; do echo "$name: $(rss $name VmRSS)"; done
