#!/usr/bin/env bash
# The CUDA backend without a GPU: builds tova with cuda/ compiled against the CPU simulator of
# cuda/sim (TOVA_CUDA_SIM) and runs the CUDA tests on it (pytest -m cuda: every kernel against
# its CPU twin, logits and kept positions against the CPU backend, batched sequences, the
# simulator's own checks). It proves the kernels and the backend's host code right, not fast:
# the speed and the device's own math need a GPU (bench/cuda_check.sh).
#
#     bash tests/cuda_sim.sh [BUILD_DIR] [pytest args...]     # default build/cuda-sim
#     TOVA_SIM_SHARDS=2 bash tests/cuda_sim.sh ...               # the tests in two processes
#
# Needs the Python of the test suite (numpy, pytest, gguf, nanobind) on PATH. SmolLM2 itself
# (the `model` test) runs when it is already downloaded, for TOVA_CUDA_STEPS decode steps
# (default here 8, about a minute for its two cases; the test's own default is 256);
# TOVA_SIM_MODELS=0 skips it; TOVA_SIM_MODELS=only runs it alone, on the build and package an
# earlier run of this script made (it touches neither, so that run's tests may still be going:
# .ci/run runs the two side by side).
set -euo pipefail
cd "$(dirname "$0")/.."
B=${1:-build/cuda-sim}
shift || true
PY=${PYTHON:-python}

PKG="$B/python"
if [ "${TOVA_SIM_MODELS:-1}" != only ]; then
  "$PY" -c "import nanobind" 2> /dev/null || "$PY" -m pip install -q "nanobind>=2.0"
  cmake -S . -B "$B" -DCMAKE_BUILD_TYPE=Release -DTOVA_CUDA=OFF -DTOVA_CUDA_SIM=ON -DTOVA_BUILD_PYTHON=ON \
    -DTOVA_BUILD_TESTS=OFF -DPython_EXECUTABLE="$(command -v "$PY")" > "$B.configure.log" 2>&1 \
    || { tail -20 "$B.configure.log"; exit 1; }
  cmake --build "$B" --target _core tova_cli tova_cuda_sim_selftest

  # The package as an install would lay it out, from the source tree and this build.
  rm -rf "$PKG"
  mkdir -p "$PKG/tova/bin"
  cp -r python/tova/. "$PKG/tova/"
  cp "$B"/_core*.so models/registry.json "$PKG/tova/"
  cp "$B/tova" "$PKG/tova/bin/"
  cp "$B/tova_cuda_sim_selftest" "$PKG/tova/bin/"
elif [ ! -d "$PKG/tova" ]; then
  echo "TOVA_SIM_MODELS=only: no simulator build packaged in $PKG (run this script without it first)" >&2
  exit 1
fi

MARK="cuda and not model"
SMOL="$(PYTHONPATH="$PWD/$PKG" "$PY" -c "from tova.models import resolve; print(resolve('smollm2-135m-instruct', download=False))" 2>/dev/null || true)"
case "${TOVA_SIM_MODELS:-1}:${SMOL:+found}" in
  1:found) MARK="cuda" ;;
  only:found) MARK="cuda and model" ;;
  only:) echo "TOVA_SIM_MODELS=only: SmolLM2 is not downloaded" >&2; exit 1 ;;
esac
export TOVA_CUDA_STEPS="${TOVA_CUDA_STEPS:-8}"
PYTHONPATH="$PWD/$PKG${PYTHONPATH:+:$PYTHONPATH}" "$PY" -c \
  "import tova; assert tova._core._cuda_simulated(), tova._core.__file__; print('device cuda: the CPU simulator,', tova._core.__file__)"
echo "built; the tests start at $(date -u +%T)"
run_tests() {
  PYTHONPATH="$PWD/$PKG${PYTHONPATH:+:$PYTHONPATH}" "$PY" -m pytest -q -rs -p no:cacheprovider --durations=10 -m "$MARK" \
    tests/test_cuda.py tests/test_cuda_sim.py "$@"
}
# The simulator runs one thread: TOVA_SIM_SHARDS=n splits the tests over n processes
# (TOVA_TEST_SHARD, tests/conftest.py), each with its own log, shown in turn when all are done.
SHARDS="${TOVA_SIM_SHARDS:-1}"
if [ "$SHARDS" -le 1 ]; then
  run_tests "$@"
  exit
fi
pids=()
for ((k = 0; k < SHARDS; ++k)); do
  TOVA_TEST_SHARD="$k/$SHARDS" run_tests --basetemp="$B/tmp-shard-$k" "$@" > "$B/shard-$k.log" 2>&1 &
  pids+=("$!")
done
rc=0
for ((k = 0; k < SHARDS; ++k)); do
  wait "${pids[$k]}" || rc=1
  echo "-- tests, part $((k + 1)) of $SHARDS (TOVA_TEST_SHARD=$k/$SHARDS), ended at $(date -u +%T):"
  cat "$B/shard-$k.log"
done
exit "$rc"
