#!/usr/bin/env bash
# Generates a crate of N trivial tests (default 1000) and the same tests as
# #[leakcheck::test] in a leakcheck::main!() target, builds both once, then
# times `cargo test` and `cargo nextest run` (plain tests), `cargo leakcheck`
# (zero-config: tests in batches, heap checked by default; with --no-heap;
# with the file check off;
# and with --isolate, one process per test) and `cargo leakcheck` on the harness
# target (heap checked; a forked child runs clean tests one after another,
# and once more with --fork-per-test: a fresh fork per test), alternating,
# ROUNDS times each (default 3), and prints medians and ratios. Then two
# real-world shapes (300 tokio `full` tests; 300 tests leaking a listener)
# against nextest. BENCH_QUICK=1 stops there.
#
#   scripts/bench.sh [N=1000] [ROUNDS=3]
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-1000}
rounds=${2:-3}
root=$PWD
test_fns() { # $1 test attribute, $2 count: that many trivial tests, numbered to the count's width
  local width=${#2} i
  for i in $(seq "$2"); do
    printf '#[%s]\nfn trivial_%0*d() {\n    assert_eq!(%d + 1, %d);\n}\n' "$1" "$width" "$i" "$i" "$((i + 1))"
  done
}
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
test_fns test "$n" > "$suite/tests/trivial.rs"

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
{ test_fns leakcheck::test "$n"; echo 'leakcheck::main!();'; } > "$harness_suite/tests/trivial.rs"

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
# The file check off (no private temp dir per process): what it costs.
files_off=$suite/files-off.toml
printf '[profile.default]\nkinds = { file = "off" }\n' > "$files_off"
contenders=("cargo test" "cargo nextest run" "cargo leakcheck" "cargo leakcheck --no-heap" "leakcheck, file off" "cargo leakcheck --isolate" "cargo leakcheck, harness" "harness, --fork-per-test")
for round in $(seq "$rounds"); do
  times["cargo test"]+="$(time_one cargo test -q) "
  if cargo nextest --version >/dev/null 2>&1; then
    times["cargo nextest run"]+="$(time_one cargo nextest run --no-fail-fast) "
  fi
  times["cargo leakcheck"]+="$(time_one "$tool" leakcheck --no-fail-fast) "
  # The default checks the heap where a LeakSanitizer runtime is found;
  # without it, what the heap check costs.
  times["cargo leakcheck --no-heap"]+="$(time_one "$tool" leakcheck --no-fail-fast --no-heap) "
  times["leakcheck, file off"]+="$(time_one "$tool" leakcheck --no-fail-fast --config-file "$files_off") "
  times["cargo leakcheck --isolate"]+="$(time_one "$tool" leakcheck --no-fail-fast --isolate) "
  times["cargo leakcheck, harness"]+="$(dir=$harness_suite time_one "$tool" leakcheck --no-fail-fast) "
  times["harness, --fork-per-test"]+="$(dir=$harness_suite time_one "$tool" leakcheck --no-fail-fast --fork-per-test) "
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
  printf '  ratio nextest / leakcheck harness --fork-per-test: %.1f\n' \
    "$(awk -v a="${medians["cargo nextest run"]}" -v b="${medians["harness, --fork-per-test"]}" 'BEGIN { print a / b }')"
  printf '  ratio leakcheck / nextest: %.2f (goal: at most 1.0)\n' \
    "$(awk -v a="${medians["cargo leakcheck"]}" -v b="${medians["cargo nextest run"]}" 'BEGIN { print a / b }')"
  printf '  ratio leakcheck --no-heap / nextest: %.2f\n' \
    "$(awk -v a="${medians["cargo leakcheck --no-heap"]}" -v b="${medians["cargo nextest run"]}" 'BEGIN { print a / b }')"
  printf '  heap check cost per test (default - --no-heap): %.2f ms of wall time\n' \
    "$(awk -v a="${medians["cargo leakcheck"]}" -v b="${medians["cargo leakcheck --no-heap"]}" -v n="$n" 'BEGIN { print (a - b) * 1000 / n }')"
fi
printf '  file check cost per test (default - file off): %.3f ms of wall time\n' \
  "$(awk -v a="${medians["cargo leakcheck"]}" -v b="${medians["leakcheck, file off"]}" -v n="$n" 'BEGIN { print (a - b) * 1000 / n }')"
printf '  ratio leakcheck / cargo test: %.2f\n' "$(awk -v a="${medians["cargo leakcheck"]}" -v b="${medians["cargo test"]}" 'BEGIN { print a / b }')"

# ---------------------------------------------------------------------------
# Real-world shapes, 300 tests each, `cargo leakcheck` against `cargo nextest
# run` in the same rounds:
#   tokio-full: clean #[tokio::test]s with tokio `full`, whose signal driver
#     keeps one unix socket pair per process (a singleton: every test must pass);
#   leaky: tests that each leak a TCP listener (per-test leaks: every test
#     must leak), the cost of settling, group runs and confirmation.
realworld_suite() { # $1 name, $2 test body, $3 attribute
  local dir=$root/target/bench-suite/$1-300 i
  mkdir -p "$dir/tests" "$dir/src"
  cat > "$dir/Cargo.toml" <<TOML
[package]
name = "$1-300"
version = "0.1.0"
edition = "2021"
publish = false

[workspace]

[dev-dependencies]
tokio = { version = "1", features = ["full"] }
TOML
  echo "" > "$dir/src/lib.rs"
  for i in $(seq 300); do
    printf '#[%s]\nasync fn case_%03d() {\n    %s\n}\n' "$3" "$i" "$2"
  done > "$dir/tests/suite.rs"
  (cd "$dir" && CARGO_TARGET_DIR=$dir/target cargo test -q --no-run 2>/dev/null)
  echo "$dir"
}
verdicts() { # $1 dir: "P passed, L leaked, F failed" of one JSON run
  (cd "$1" && CARGO_TARGET_DIR=$1/target "$tool" leakcheck --no-fail-fast --message-format json 2>/dev/null) |
    python3 -c 'import json,sys; s=json.load(sys.stdin)["summary"]; print("%d passed, %d leaked, %d failed" % (s["passed"], s["leaked"], s["failed"]))'
}
tokio_dir=$(realworld_suite tokio-full "tokio::task::yield_now().await;" tokio::test)
leaky_dir=$(realworld_suite leaky "std::mem::forget(std::net::TcpListener::bind(\"127.0.0.1:0\").unwrap());" tokio::test)
printf '\nReal-world shapes, 300 tests each, %d rounds, median wall time:\n' "$rounds"
for dir in "$tokio_dir" "$leaky_dir"; do
  t_next=""; t_leak=""
  for round in $(seq "$rounds"); do
    if cargo nextest --version >/dev/null 2>&1; then
      t_next+="$(CARGO_TARGET_DIR=$dir/target dir=$dir time_one cargo nextest run --no-fail-fast) "
    fi
    t_leak+="$(CARGO_TARGET_DIR=$dir/target dir=$dir time_one "$tool" leakcheck --no-fail-fast) "
  done
  m_leak=$(echo "$t_leak" | tr ' ' '\n' | sed '/^$/d' | median)
  printf '  %-16s cargo leakcheck %7.3f s (%s)' "$(basename "$dir")" "$m_leak" "$(verdicts "$dir")"
  if [ -n "$t_next" ]; then
    m_next=$(echo "$t_next" | tr ' ' '\n' | sed '/^$/d' | median)
    printf '; nextest %7.3f s; ratio leakcheck / nextest: %.2f' "$m_next" \
      "$(awk -v a="$m_leak" -v b="$m_next" 'BEGIN { print a / b }')"
  fi
  printf '\n'
done

# A suite whose tests start 200 short processes (20 tests x 10 `true`, found
# through PATH: one exec per PATH directory): the heap check against
# --no-heap (goal: at most 1.10). EXECS_LEAK=1 adds a test that leaks heap,
# so every test of the binary is also run preloaded (the worst case).
exec_dir=$root/target/bench-suite/execs-200
mkdir -p "$exec_dir/tests" "$exec_dir/src"
printf '[package]\nname = "execs-200"\nversion = "0.1.0"\nedition = "2021"\npublish = false\n\n[workspace]\n' \
  > "$exec_dir/Cargo.toml"
echo "" > "$exec_dir/src/lib.rs"
{
  [ "${EXECS_LEAK:-}" = 1 ] && echo '#[test] fn leaks_heap() { std::mem::forget(vec![7u8; 4096]); }'
  for i in $(seq 20); do
    printf '#[test] fn starts_ten_%02d() { for _ in 0..10 { assert!(std::process::Command::new("true").status().unwrap().success()); } }\n' "$i"
  done
} > "$exec_dir/tests/execs.rs"
(cd "$exec_dir" && CARGO_TARGET_DIR=$exec_dir/target cargo test -q --no-run 2>/dev/null)
t_heap=""; t_plain=""
for round in $(seq "$rounds"); do
  t_heap+="$(CARGO_TARGET_DIR=$exec_dir/target dir=$exec_dir time_one "$tool" leakcheck --no-fail-fast) "
  t_plain+="$(CARGO_TARGET_DIR=$exec_dir/target dir=$exec_dir time_one "$tool" leakcheck --no-fail-fast --no-heap) "
done
m_heap=$(echo "$t_heap" | tr ' ' '\n' | sed '/^$/d' | median)
m_plain=$(echo "$t_plain" | tr ' ' '\n' | sed '/^$/d' | median)
printf '  %-16s cargo leakcheck %7.3f s; --no-heap %7.3f s; ratio heap / no-heap: %.2f (goal: at most 1.10)\n' \
  execs-200 "$m_heap" "$m_plain" "$(awk -v a="$m_heap" -v b="$m_plain" 'BEGIN { print a / b }')"
[ "${BENCH_REALWORLD_ONLY:-}" = 1 ] && exit 0

# ---------------------------------------------------------------------------
# The rest: allocation-heavy tests, snapshot and allocator micro-benchmarks,
# and 10,000 tests (time and peak memory of cargo-leakcheck). Skipped with
# BENCH_QUICK=1.
[ "${BENCH_QUICK:-}" = 1 ] && exit 0

alloc_suite() { # $1: name, $2: main! argument
  local dir=$root/target/bench-suite/$1
  mkdir -p "$dir/tests" "$dir/src"
  cat > "$dir/Cargo.toml" <<TOML
[package]
name = "$1"
version = "0.1.0"
edition = "2021"
publish = false

[workspace]

[dev-dependencies]
leakcheck = { path = "$root/harness" }

[[test]]
name = "allocs"
harness = false
TOML
  echo "" > "$dir/src/lib.rs"
  {
    [ "$2" = custom_allocator ] && printf '#[global_allocator]\nstatic SYSTEM: std::alloc::System = std::alloc::System;\n'
    for i in $(seq 200); do
      printf '#[leakcheck::test]\nfn allocs_%03d() {\n    for i in 0..100_000u64 {\n        std::hint::black_box(Box::new(i));\n    }\n}\n' "$i"
    done
    echo "leakcheck::main!($2);"
  } > "$dir/tests/allocs.rs"
  (cd "$dir" && CARGO_TARGET_DIR=$dir/target cargo test -q --release --no-run 2>/dev/null)
  echo "$dir"
}
counting=$(alloc_suite allocs-counting "")
plain=$(alloc_suite allocs-system custom_allocator)
times_counting=""; times_plain=""
for round in $(seq "$rounds"); do
  times_plain+="$(CARGO_TARGET_DIR=$plain/target dir=$plain time_one "$tool" leakcheck --release --no-fail-fast) "
  times_counting+="$(CARGO_TARGET_DIR=$counting/target dir=$counting time_one "$tool" leakcheck --release --no-fail-fast) "
done
m_plain=$(echo "$times_plain" | tr ' ' '\n' | sed '/^$/d' | median)
m_counting=$(echo "$times_counting" | tr ' ' '\n' | sed '/^$/d' | median)
printf '\n200 tests of 100,000 small allocations each, harness target, --release, median of %d:\n' "$rounds"
printf '  %-34s %8.3f s\n' "system allocator (heap not measured)" "$m_plain" "leakcheck::Alloc (heap checked)" "$m_counting"
printf '  ratio counting / system: %.2f\n' "$(awk -v a="$m_counting" -v b="$m_plain" 'BEGIN { print a / b }')"

printf '\nMicro-benchmarks (cargo bench -p leakcheck --bench micro):\n'
(cd "$root" && cargo bench -q -p leakcheck --bench micro 2>/dev/null) | sed 's/^/  /'

# 10,000 tests: the same two suites, ten times larger.
big=$root/target/bench-suite/trivial-10000
big_harness=$root/target/bench-suite/harness-10000
if [ ! -f "$big/tests/trivial.rs" ]; then
  mkdir -p "$big/tests" "$big/src"
  sed 's/name = "trivial-[0-9]*"/name = "trivial-10000"/' "$suite/Cargo.toml" > "$big/Cargo.toml"
  echo "" > "$big/src/lib.rs"
  test_fns test 10000 > "$big/tests/trivial.rs"
fi
if [ ! -f "$big_harness/tests/trivial.rs" ]; then
  mkdir -p "$big_harness/tests" "$big_harness/src"
  sed 's/name = "harness-[0-9]*"/name = "harness-10000"/' "$harness_suite/Cargo.toml" > "$big_harness/Cargo.toml"
  echo "" > "$big_harness/src/lib.rs"
  { test_fns leakcheck::test 10000; echo 'leakcheck::main!();'; } > "$big_harness/tests/trivial.rs"
fi
(cd "$big" && CARGO_TARGET_DIR=$big/target cargo test -q --no-run 2>/dev/null)
(cd "$big_harness" && CARGO_TARGET_DIR=$big/target cargo test -q --no-run 2>/dev/null)

# One run of `cargo leakcheck` in $dir; prints "wall W s; peak RSS ...; own CPU time ...".
usage_run() {
  local start end
  start=$(date +%s.%N)
  (cd "$dir" && LEAKCHECK_REPORT_OWN_USAGE=1 "$tool" leakcheck --no-fail-fast >/dev/null 2>/tmp/leakcheck-bench-usage.txt) || true
  end=$(date +%s.%N)
  printf 'wall %.3f s; %s' "$(awk -v a="$start" -v b="$end" 'BEGIN { print b - a }')" \
    "$(grep 'peak RSS' /tmp/leakcheck-bench-usage.txt | sed 's/^cargo-leakcheck //')"
}
printf '\n1,000 and 10,000 trivial tests, one run each (own CPU: cargo-leakcheck itself, not cargo or the tests):\n'
printf '  zero-config, 1,000:   %s\n' "$(CARGO_TARGET_DIR=$suite/target dir=$suite usage_run)"
printf '  zero-config, 10,000:  %s\n' "$(CARGO_TARGET_DIR=$big/target dir=$big usage_run)"
printf '  harness, 1,000:       %s\n' "$(CARGO_TARGET_DIR=$suite/target dir=$harness_suite usage_run)"
printf '  harness, 10,000:      %s\n' "$(CARGO_TARGET_DIR=$big/target dir=$big_harness usage_run)"
if cargo nextest --version >/dev/null 2>&1; then
  printf '  cargo nextest run, 10,000: wall %.3f s\n' "$(CARGO_TARGET_DIR=$big/target dir=$big time_one cargo nextest run --no-fail-fast)"
fi
binary_of() { # the test executable of the suite in $1, built into $2
  (cd "$1" && CARGO_TARGET_DIR=$2 cargo test -q --no-run --message-format=json 2>/dev/null) |
    grep -o '"executable":"[^"]*"' | cut -d'"' -f4 | grep '/trivial-' | head -1
}
one_test_ms() { # ms for one `--exact` run of a libtest binary: its per-process start-up
  local binary=$1 name=$2 start end
  start=$(date +%s%N)
  for _ in $(seq 20); do "$binary" --exact "$name" >/dev/null 2>&1; done
  end=$(date +%s%N)
  awk -v a="$start" -v b="$end" 'BEGIN { printf "%.2f", (b - a) / 20 / 1e6 }'
}
printf '  one test process of the plain binary (libtest builds and filters its whole list): %s ms with 1,000 tests, %s ms with 10,000\n' \
  "$(one_test_ms "$(binary_of "$suite" "$suite/target")" trivial_0001)" \
  "$(one_test_ms "$(binary_of "$big" "$big/target")" trivial_00001)"
