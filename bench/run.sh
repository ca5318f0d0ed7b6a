#!/usr/bin/env bash
# The webhook under load against its ceilings, on loopback (BENCHMARKS.md):
#   bash bench/run.sh            # 3 runs each: saturation, 600 and 1000 req/s
# Each server is pinned to core 0 with one tokio worker, the client to core 1.
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

start() { # name, command...
  local name=$1; shift
  TOKIO_WORKER_THREADS=1 RUST_LOG=warn taskset -c 0 "$@" >"$work/$name.log" 2>&1 &
  pids+=($!); echo $! >"$work/$name.pid"
}
start portcullis $bin/portcullis serve --policies config/samples --listen 127.0.0.1:19443 --self-signed-dir "$work/pc"
start echo $bin/portcullis-bench echo --listen 127.0.0.1:19444 --ca-out "$work/echo.ca"
start typed $bin/portcullis-bench typed --listen 127.0.0.1:19445 --ca-out "$work/typed.ca"
sleep 2
ca_portcullis=$work/pc/ca.crt; ca_echo=$work/echo.ca; ca_typed=$work/typed.ca

run() { # server port ca rate-flag...
  local name=$1 port=$2 ca=$3; shift 3
  for i in $(seq "$RUNS"); do
    taskset -c 1 $bin/portcullis-bench load --addr 127.0.0.1:$port --ca "$ca" --body "$work/pod5.json" \
      --connections 16 --seconds "$SECONDS_PER_RUN" "$@" | sed "s/^/$name: /"
  done
}
echo "== saturation, 16 connections, 5-container Pod"
run typed 19445 "$ca_typed"; run echo 19444 "$ca_echo"; run portcullis 19443 "$ca_portcullis"
for rate in 600 1000; do
  echo "== $rate req/s"
  run portcullis 19443 "$ca_portcullis" --rate $rate
done
echo "== RSS (KiB) after load"
for name in portcullis echo typed; do
  echo "$name: $(grep VmRSS /proc/$(cat "$work/$name.pid")/status | awk '{print $2}')"
done
