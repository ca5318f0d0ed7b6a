#!/usr/bin/env bash
# A profile-guided build of `portcullis` (BENCHMARKS.md, "Profile-guided build"):
#   bash bench/pgo.sh             # writes target/pgo/release/portcullis
#   PGO_LEAN=1 bash bench/pgo.sh  # and target/pgo/release/portcullis-bench, its lean
#                                 # ceiling trained alike, for a like-for-like comparison
# Builds instrumented, trains on bench/run.sh's data set (1,000 policies, 100,000 cached
# results; the 1-, 5- and 20-container reviews on /validate, the 5-container one on
# /mutate), then builds again with that profile: the request path's code laid out hot
# first, its branches and inlining chosen by what it runs. Measure the result with
# PORTCULLIS=target/pgo/release/portcullis bash bench/run.sh (CEILINGS= likewise for the
# lean ceiling). Needs an llvm-profdata that reads rustc's raw profiles: Debian's
# llvm-profdata-19 does (apt-get install llvm-19), or set LLVM_PROFDATA.
set -euo pipefail
cd "$(dirname "$0")/.."
profdata=${LLVM_PROFDATA:-$(command -v llvm-profdata-19 || command -v llvm-profdata || true)}
[ -n "$profdata" ] || { echo "llvm-profdata is not installed (apt-get install llvm-19)" >&2; exit 1; }
source bench/servers.sh
packages=(-p portcullis)
[ -n "${PGO_LEAN:-}" ] && packages+=(-p portcullis-bench)
# Fixed paths, so an unchanged tree's instrumented build is reused.
generate=$PWD/target/pgo-generate
raw=$generate/profiles
RUSTFLAGS="-Cprofile-generate=$raw" cargo build --release -q "${packages[@]}" --target-dir "$generate"
# Build scripts ran instrumented too: only the servers' runs below make the profile.
rm -rf "$raw"

$bin/portcullis-bench fill --out "$work/big" --policies 1000 --scans 100000 >/dev/null
cp bench/mutate-policy.yaml "$work/big/policies/mutate.yaml"
for n in 1 5 20; do $bin/portcullis-bench body --containers "$n" --out "$work/pod$n.json" >/dev/null; done
# Loads the server on port 19460 with each review in turn (servers.sh's `run`, once for
# TRAIN_SECONDS each): CA file, paths.
train() {
  local ca=$1 path n
  shift
  for path in "$@"; do
    for n in 1 5 20; do
      [ "$path" = /mutate ] && [ "$n" != 5 ] && continue
      RUNS=1 SECONDS_PER_RUN=${TRAIN_SECONDS:-5} run training "$n" "trained|19460|$ca" -- --path "$path" >/dev/null
    done
  done
}
# Stops a started server with SIGTERM; its profile is written as it exits: name.
stop() {
  kill -TERM "$(cat "$work/$1.pid")"
  wait "$(cat "$work/$1.pid")" || true
}
start portcullis "$generate/release/portcullis" serve --policies "$work/big/policies" \
  --cache-dir "$work/big/cache" --listen 127.0.0.1:19460 --self-signed-dir "$work/pc"
loaded portcullis; ready 19460 "$work/pc/ca.crt"
train "$work/pc/ca.crt" /validate /mutate
stop portcullis
if [ -n "${PGO_LEAN:-}" ]; then
  start lean "$generate/release/portcullis-bench" lean --listen 127.0.0.1:19460 --ca-out "$work/lean.ca" \
    --policies 1000 --scans 100000
  listening 19460 "$work/lean.ca"
  train "$work/lean.ca" /validate
  stop lean
fi
"$profdata" merge -o "$work/merged.profdata" "$raw"
# Named by its content: a new profile is a new RUSTFLAGS, so cargo rebuilds with it.
profile=$generate/$(sha256sum "$work/merged.profdata" | cut -c1-16).profdata
mv "$work/merged.profdata" "$profile"
RUSTFLAGS="-Cprofile-use=$profile" cargo build --release -q "${packages[@]}" --target-dir target/pgo
echo "built ${packages[*]} into target/pgo/release with $profile ($(ls "$raw" | wc -l) runs)"
