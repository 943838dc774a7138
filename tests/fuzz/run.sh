#!/usr/bin/env bash
# Builds the libFuzzer targets (clang, CMake -DTOVA_FUZZ=ON: ASan + UBSan) and runs each for
# SECONDS from the seed corpus here, printing per target the executions, coverage (edges, features)
# and corpus size libFuzzer reports. A crash, sanitizer report, timeout (10 s on one input) or an
# input using over 2 GiB fails the run; the input is kept in BUILD/crashes/TARGET/. Each finding
# becomes a regression test in the normal suite: fix it, copy the input to
# tests/fuzz/regressions/TARGET/, and tests/test_fuzz_regressions.py replays it (with the seeds)
# on every test run.
#
#   bash tests/fuzz/run.sh [SECONDS=60] [TARGET...]     (targets: model_load tokenizer chat policy)
set -euo pipefail
cd "$(dirname "$0")/../.."
SECONDS_EACH="${1:-60}"
shift || true
TARGETS=("${@:-model_load tokenizer chat policy}")
read -r -a TARGETS <<<"${TARGETS[*]}"
BUILD="${TOVA_FUZZ_BUILD:-build/fuzz}"

if ! command -v clang++ >/dev/null 2>&1; then
  (apt-get update -qq && apt-get install -y -qq clang >/dev/null) || { echo "fuzz: clang is needed"; exit 1; }
fi
CC=clang CXX=clang++ cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DTOVA_FUZZ=ON \
  -DTOVA_BUILD_TESTS=OFF -DTOVA_BUILD_CLI=OFF >/dev/null
cmake --build "$BUILD" --target "${TARGETS[@]/#/fuzz_}" >/dev/null

status=0
for t in "${TARGETS[@]}"; do
  corpus="$BUILD/corpus/$t"
  crashes="$BUILD/crashes/$t"
  mkdir -p "$corpus" "$crashes"
  cp -n tests/fuzz/corpus/"$t"/* "$corpus"/ 2>/dev/null || true
  log="$BUILD/$t.log"
  set +e
  UBSAN_OPTIONS=print_stacktrace=1 "$BUILD/fuzz_$t" "$corpus" -max_total_time="$SECONDS_EACH" -timeout=10 \
    -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="$crashes/" >"$log" 2>&1
  rc=$?
  set -e
  execs=$(grep -o 'stat::number_of_executed_units: [0-9]*' "$log" | awk '{print $2}')
  done_line=$(grep -E '^#[0-9]+.*(DONE|pulse|NEW)' "$log" | tail -1)
  cov=$(echo "$done_line" | grep -o 'cov: [0-9]*' | awk '{print $2}')
  ft=$(echo "$done_line" | grep -o 'ft: [0-9]*' | awk '{print $2}')
  corp=$(echo "$done_line" | grep -o 'corp: [0-9]*/[0-9]*[a-zA-Z]*' | awk '{print $2}')
  if [ "$rc" -ne 0 ]; then
    status=1
    echo "fuzz_$t: FAILED after ${SECONDS_EACH}s (rc $rc), input in $crashes/:"
    grep -E 'ERROR|SUMMARY|#[0-9]+ 0x' "$log" | head -20
  else
    echo "fuzz_$t: ${SECONDS_EACH}s, ${execs:-?} executions, coverage ${cov:-?} edges / ${ft:-?} features, corpus ${corp:-?}, no crash"
  fi
done
exit $status
