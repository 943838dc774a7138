#!/usr/bin/env bash
# tova vs llama.cpp on the same machine in the same run: prompt processing (pp) and generation
# (tg) tokens/s, llama-bench style.
#
#   bench/compare_llamacpp.sh [MODEL_NAME] [THREADS]
#
# llama.cpp is built from the copy vendored in the llama-cpp-python sdist on PyPI (the version the
# reference data in shared/reference was made with), in $LLAMACPP_DIR (default
# /tmp/llamacpp); nothing of it is kept in this repository.
set -euo pipefail
MODEL_NAME="${1:-smollm2-135m-instruct}"
THREADS="${2:-2}"
LLAMACPP_DIR="${LLAMACPP_DIR:-/tmp/llamacpp}"
VERSION=0.3.36

MODEL="$(python3 -m tova.models path "$MODEL_NAME")"
SRC="$LLAMACPP_DIR/llama_cpp_python-$VERSION/vendor/llama.cpp"
if [ ! -x "$SRC/build/bin/llama-bench" ]; then
  mkdir -p "$LLAMACPP_DIR"
  (cd "$LLAMACPP_DIR" && python3 -m pip download --no-deps --no-binary :all: --no-build-isolation \
      "llama-cpp-python==$VERSION" -d . >/dev/null && tar xzf "llama_cpp_python-$VERSION.tar.gz")
  cmake -S "$SRC" -B "$SRC/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF \
      -DLLAMA_BUILD_TESTS=OFF >/dev/null
  cmake --build "$SRC/build" --target llama-bench llama-perplexity
fi

echo "## llama.cpp ($VERSION vendored), $THREADS threads"
"$SRC/build/bin/llama-bench" -m "$MODEL" -p 512 -n 128 -t "$THREADS" -r 3 -o json > /tmp/llamacpp-bench.json
python3 - <<'PY'
import json
for r in json.load(open("/tmp/llamacpp-bench.json")):
    test = f"pp{r['n_prompt']}" if r["n_prompt"] else f"tg{r['n_gen']}"
    print(f"| llama.cpp | {test} | {r['avg_ts']:.2f} ± {r['stddev_ts']:.2f} |")
PY
echo "## tova, $THREADS threads (policy full, like llama.cpp)"
tova bench -m "$MODEL" -p 512 -n 128 -t "$THREADS" -r 3 --json > /tmp/tova-bench.json
python3 - <<'PY'
import json
ll = {(r["n_prompt"], r["n_gen"]): r["avg_ts"] for r in json.load(open("/tmp/llamacpp-bench.json"))}
for r in json.load(open("/tmp/tova-bench.json")):
    test = f"pp{r['n_prompt']}" if r["n_prompt"] else f"tg{r['n_gen']}"
    base = ll.get((r["n_prompt"], r["n_gen"]))
    ratio = f"{r['avg_ts'] / base:.2f}x llama.cpp" if base else ""
    print(f"| tova | {test} | {r['avg_ts']:.2f} ± {r['stddev_ts']:.2f} | {ratio} |")
PY
