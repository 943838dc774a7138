#!/usr/bin/env bash
# Single-sequence speed of two tova builds in the same run (to show a change does not regress):
#   bench/compare_builds.sh OLD_TOVA NEW_TOVA MODEL [THREADS] [ROUNDS]
# Runs `tova bench -p 512 -n 128 -r 3` with each binary, alternating, ROUNDS times (default 2),
# and prints the markdown rows of every run.
set -euo pipefail
old=$1 new=$2 model=$3 threads=${4:-2} rounds=${5:-2}
for r in $(seq "$rounds"); do
  for b in "$old" "$new"; do
    echo "# round $r: $b"
    "$b" bench -m "$model" -p 512 -n 128 -r 3 -t "$threads" | grep -E '^\| [^-]' | grep -v '| model'
  done
done
