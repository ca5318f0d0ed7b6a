#!/usr/bin/env bash
# The e2e tests against a real API server, in one command: `bash e2e/run.sh`.
# Starts kube-apiserver v1.19 with etcd from ../shared/kube, builds the release binary,
# runs `cargo nextest run` with the arguments given (default: the e2e package), and
# stops the API server however the run ends. CI runs the whole workspace this way.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x ../shared/kube/up.sh ] && [ ! -f ../shared/kube/up.sh ]; then
  echo "../shared/kube/up.sh is missing: the e2e tests need the test API server beside the checkout" >&2
  exit 1
fi
cargo build --release --locked -p portcullis
eval "$(bash ../shared/kube/up.sh)"
trap 'bash ../shared/kube/down.sh "$KUBE_TEST_DIR"' EXIT
export KUBECONFIG PORTCULLIS_BIN="$PWD/target/release/portcullis"
# In e2e runs nothing may be skipped.
export CI="${CI:-1}"
if [ "$#" -eq 0 ]; then
  set -- -p portcullis-e2e
fi
cargo nextest run "$@"
