#!/usr/bin/env bash
# Runs each cargo-fuzz target for a bounded time and prints the executions per target and in
# total. Not part of CI (CI replays the seeds and every past crash as unit tests:
# `cargo test --lib fuzzing`).
#
#   FUZZ_SECONDS=600 bash scripts/fuzz.sh              # every target, 600 s each
#   FUZZ_SECONDS=30 FUZZ_TARGETS=proto bash scripts/fuzz.sh
#
# Needs the nightly toolchain and cargo-fuzz (installed here if missing). Sanitizer: none
# (the crate forbids unsafe code; a panic, an overflow or a failed property is the crash),
# with debug assertions and overflow checks on. A crash is copied to
# fuzz/regressions/<target>/, where `cargo test --lib fuzzing` replays it from then on, and
# the script exits non-zero.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds="${FUZZ_SECONDS:-600}"
targets="${FUZZ_TARGETS:-notification doku_response proto}"

if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi
# The sidecar's own lock file: the same dependency versions as the tested build.
cp ../Cargo.lock Cargo.lock

mkdir -p logs
cargo +nightly fuzz build -s none -a >logs/build.log 2>&1 || {
  tail -50 logs/build.log
  exit 1
}

total=0
failed=0
printf '%-15s %8s %14s %10s %s\n' target seconds executions exec/s result
for t in $targets; do
  mkdir -p "corpus/$t" "artifacts/$t" "../fuzz/regressions/$t"
  cp -n seeds/"$t"/* regressions/"$t"/* "corpus/$t/" 2>/dev/null || true
  log="logs/$t.log"
  result=ok
  if ! cargo +nightly fuzz run -s none -a "$t" "corpus/$t" -- \
      -max_total_time="$seconds" -print_final_stats=1 -rss_limit_mb=2048 \
      -artifact_prefix="artifacts/$t/" >"$log" 2>&1; then
    result=CRASH
    failed=1
    for a in artifacts/"$t"/*; do
      [ -f "$a" ] && cp "$a" "regressions/$t/"
    done
  fi
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | tail -1 | grep -o '[0-9]*$' || echo 0)
  total=$((total + runs))
  printf '%-15s %8s %14s %10s %s\n' "$t" "$seconds" "$runs" "$((runs / seconds))" "$result"
done
printf '%-15s %8s %14s\n' total "" "$total"
if [ "$failed" -ne 0 ]; then
  echo "crash inputs copied to fuzz/regressions/<target>/; logs in fuzz/logs/" >&2
  exit 1
fi
