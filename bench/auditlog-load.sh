#!/usr/bin/env bash
# Audit events a running `portcullis run` takes on POST /audit (BENCHMARKS.md):
#   bash bench/auditlog-load.sh
# Starts the test API server (../shared/kube/up.sh) for the replica to run against, one
# replica on core 0 (one tokio worker) with --audit-token-file, and posts EventLists of
# 400 events — the stream a real kube-apiserver v1.19.0 wrote with config/audit/policy.yaml
# (webhook/tests/fixtures), cycled, every detection on — from core 1 over 4 keep-alive
# connections, as the API server's batch sender would with 4 batches in flight. Prints
# batches/s, events/s, latency, and the replica's RSS before and after.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_RUN=${SECONDS_PER_RUN:-10}
work=$(mktemp -d)
pid=
kube_dir=
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null
  [ -n "$kube_dir" ] && bash ../shared/kube/down.sh "$kube_dir"
  rm -rf "$work"
}
trap cleanup EXIT

cargo build --release -q -p portcullis -p portcullis-bench
bin=target/release
eval "$(bash ../shared/kube/up.sh)"
kube_dir=$KUBE_TEST_DIR
export KUBECONFIG
kubectl apply --server-side -f crds/ >/dev/null
kubectl create namespace pc-audit-bench >/dev/null

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=bench-ca \
  -keyout "$work/ca.key" -out "$work/ca.crt" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=127.0.0.1 \
  -keyout "$work/tls.key" -out "$work/tls.csr" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n' >"$work/ext"
openssl x509 -req -in "$work/tls.csr" -CA "$work/ca.crt" -CAkey "$work/ca.key" -CAcreateserial \
  -days 1 -extfile "$work/ext" -out "$work/tls.crt" 2>/dev/null
token=bench-audit-token-0123456789
echo "$token" >"$work/token"

TOKIO_WORKER_THREADS=1 RUST_LOG=error taskset -c 0 $bin/portcullis run \
  --listen 127.0.0.1:19454 --metrics-listen 127.0.0.1:19455 --namespace pc-audit-bench \
  --webhook-configuration none --tls-cert-file "$work/tls.crt" --tls-key-file "$work/tls.key" \
  --audit-token-file "$work/token" >"$work/run.log" 2>&1 &
pid=$!
for _ in $(seq 120); do
  curl -sf --cacert "$work/ca.crt" https://127.0.0.1:19454/readyz >/dev/null && break
  sleep 0.5
done
curl -sf --cacert "$work/ca.crt" https://127.0.0.1:19454/readyz >/dev/null || { cat "$work/run.log"; exit 1; }

python3 - "$work/body.json" <<'PY'
import itertools, json, sys
lines = open("webhook/tests/fixtures/audit-kube-1.19.jsonl").read().splitlines()
items = [json.loads(l) for l in itertools.islice(itertools.cycle(lines), 400)]
json.dump({"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "metadata": {}, "items": items}, open(sys.argv[1], "w"))
PY
rss() { awk '/VmRSS/ {print $2 / 1024 " MiB"}' "/proc/$pid/status"; }
echo "body: $(wc -c <"$work/body.json") bytes, 400 events; replica RSS before: $(rss)"
result=$(taskset -c 1 $bin/portcullis-bench load --addr 127.0.0.1:19454 --path /audit --ca "$work/ca.crt" \
  --body "$work/body.json" --header "authorization: Bearer $token" --connections 4 --seconds "$SECONDS_PER_RUN")
echo "$result"
rate=$(grep -o '[0-9.]* req/s' <<<"$result" | cut -d' ' -f1)
echo "events/s: $(python3 -c "print(round($rate * 400))"); replica RSS after: $(rss)"
curl -s http://127.0.0.1:19455/metrics | grep '^portcullis_audit_events_total'
