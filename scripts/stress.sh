#!/usr/bin/env bash
# Runs cargo-leakcheck on the whole fixture workspace RUNS times for each -j
# value in JOBS and counts verdicts (outcome + leak kinds) that differ from
# fixtures/expected-outcomes.txt, and processes left behind afterwards.
#
#   scripts/stress.sh [RUNS=20] [JOBS=2, or a list: "1 2 4"] [--hog]
#
# --hog keeps one busy loop per core running meanwhile (CPU contention).
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-20}
jobs=${2:-2}
hog=${3:-}
# A copy of the tool and a target dir of its own, so that work going on in
# the checkout meanwhile does not change what is being measured.
cargo build -q -p cargo-leakcheck
tool=$PWD/target/stress/cargo-leakcheck
mkdir -p "$PWD/target/stress"
cp target/debug/cargo-leakcheck "$tool"
target_dir=$PWD/target/stress/fixtures-target
expected=$(grep -v '^#' fixtures/expected-outcomes.txt | sed '/^$/d')
hogs=()
cleanup() { for pid in "${hogs[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT
if [ "$hog" = "--hog" ]; then
  for _ in $(seq "$(nproc)"); do ( while :; do :; done ) & hogs+=($!); done
fi
# Build once, outside the measured runs.
"$tool" leakcheck --manifest-path fixtures/Cargo.toml --target-dir "$target_dir" --workspace \
  --no-fail-fast --message-format json >/dev/null 2>&1 || true
wrong=0
total=0
for j in $jobs; do
for run in $(seq "$runs"); do
  total=$((total + 1))
  actual=$("$tool" leakcheck --manifest-path fixtures/Cargo.toml --target-dir "$target_dir" --workspace \
    --no-fail-fast -j "$j" --message-format json 2>/dev/null | python3 -c '
import json, sys
for t in json.load(sys.stdin)["tests"]:
    kinds = sorted({l["kind"] for l in t["leaks"]})
    print(t["binary"], t["name"], t["outcome"], ",".join(kinds) or "-")
') || true
  diff_lines=$(diff <(echo "$expected") <(echo "$actual") | grep -c '^>' || true)
  if [ "$diff_lines" != 0 ]; then
    echo "run $run (-j $j): $diff_lines wrong verdicts:"
    diff <(echo "$expected") <(echo "$actual") | grep '^[<>]' || true
  fi
  wrong=$((wrong + diff_lines))
done
done
left=$(grep -l "LEAKCHECK_TEST_ID=" /proc/[0-9]*/environ 2>/dev/null | grep -v "/proc/$$/" | wc -l || true)
echo "stress: $total runs ($runs each at -j $jobs)${hog:+, with CPU hog}: $wrong wrong verdicts, $left processes of tests left running"
[ "$wrong" = 0 ] && [ "$left" = 0 ]
