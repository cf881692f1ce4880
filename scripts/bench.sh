#!/usr/bin/env bash
# Generates a crate of N trivial tests (default 1000) and the same tests as
# #[leakcheck::test] in a leakcheck::main!() target, builds both once, then
# times `cargo test` and `cargo nextest run` (plain tests), `cargo leakcheck`
# (zero-config, one process per test) and `cargo leakcheck` on the harness
# target (fork per test, heap checked), alternating, ROUNDS times each
# (default 3), and prints medians and ratios.
#
#   scripts/bench.sh [N=1000] [ROUNDS=3]
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-1000}
rounds=${2:-3}
root=$PWD
suite=$root/target/bench-suite/trivial-$n
mkdir -p "$suite/tests"
cat > "$suite/Cargo.toml" <<TOML
[package]
name = "trivial-$n"
version = "0.1.0"
edition = "2021"
publish = false

[workspace]
TOML
mkdir -p "$suite/src" && echo "" > "$suite/src/lib.rs"
{
  for i in $(seq "$n"); do
    printf '#[test]\nfn trivial_%04d() {\n    assert_eq!(%d + 1, %d);\n}\n' "$i" "$i" "$((i + 1))"
  done
} > "$suite/tests/trivial.rs"

# The same tests as #[leakcheck::test] in a leakcheck::main!() target.
harness_suite=$root/target/bench-suite/harness-$n
mkdir -p "$harness_suite/tests" "$harness_suite/src"
cat > "$harness_suite/Cargo.toml" <<TOML
[package]
name = "harness-$n"
version = "0.1.0"
edition = "2021"
publish = false

[workspace]

[dev-dependencies]
leakcheck = { path = "$root/harness" }

[[test]]
name = "trivial"
harness = false
TOML
echo "" > "$harness_suite/src/lib.rs"
{
  for i in $(seq "$n"); do
    printf '#[leakcheck::test]\nfn trivial_%04d() {\n    assert_eq!(%d + 1, %d);\n}\n' "$i" "$i" "$((i + 1))"
  done
  echo 'leakcheck::main!();'
} > "$harness_suite/tests/trivial.rs"

cargo build -q --release -p cargo-leakcheck
tool=$root/target/release/cargo-leakcheck
export CARGO_TARGET_DIR=$suite/target
(cd "$suite" && cargo test -q --no-run 2>/dev/null)
(cd "$harness_suite" && cargo test -q --no-run 2>/dev/null)

time_one() { # prints seconds; runs in $dir
  local start end
  start=$(date +%s.%N)
  (cd "${dir:-$suite}" && "$@" >/dev/null 2>&1) || true
  end=$(date +%s.%N)
  awk -v a="$start" -v b="$end" 'BEGIN { printf "%.4f", b - a }'
}
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

declare -A times
contenders=("cargo test" "cargo nextest run" "cargo leakcheck" "cargo leakcheck, harness")
for round in $(seq "$rounds"); do
  times["cargo test"]+="$(time_one cargo test -q) "
  if cargo nextest --version >/dev/null 2>&1; then
    times["cargo nextest run"]+="$(time_one cargo nextest run --no-fail-fast) "
  fi
  times["cargo leakcheck"]+="$(time_one "$tool" leakcheck --no-fail-fast) "
  times["cargo leakcheck, harness"]+="$(dir=$harness_suite time_one "$tool" leakcheck --no-fail-fast) "
done

printf '%d trivial tests, %d rounds, median wall time (this machine: %s cores)\n' "$n" "$rounds" "$(nproc)"
declare -A medians
for contender in "${contenders[@]}"; do
  [ -n "${times[$contender]:-}" ] || continue
  medians[$contender]=$(echo "${times[$contender]}" | tr ' ' '\n' | sed '/^$/d' | median)
  printf '  %-26s %8.3f s\n' "$contender" "${medians[$contender]}"
done
if [ -n "${medians["cargo nextest run"]:-}" ]; then
  printf '  ratio nextest / leakcheck harness: %.1f (goal: at least 6)\n' \
    "$(awk -v a="${medians["cargo nextest run"]}" -v b="${medians["cargo leakcheck, harness"]}" 'BEGIN { print a / b }')"
  printf '  ratio leakcheck / nextest: %.2f (goal: at most 1.0)\n' \
    "$(awk -v a="${medians["cargo leakcheck"]}" -v b="${medians["cargo nextest run"]}" 'BEGIN { print a / b }')"
fi
printf '  ratio leakcheck / cargo test: %.2f\n' "$(awk -v a="${medians["cargo leakcheck"]}" -v b="${medians["cargo test"]}" 'BEGIN { print a / b }')"
