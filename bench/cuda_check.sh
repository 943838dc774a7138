#!/usr/bin/env bash
# The whole GPU check, on a machine with an NVIDIA GPU (run from the repository):
#
#     bash bench/cuda_check.sh                      # every stage; report: bench/results/cuda/report.md
#     bash bench/cuda_check.sh build tests speed    # some stages (in this order whatever the order given)
#     BUDGET_S=500 bash bench/cuda_check.sh         # stop starting work after 500 s (default 540)
#
# A lent GPU comes for minutes (a 10-minute limit a command, 15 for a session, the machine's start
# included), so the stages run most important first, each skipped (saying so) when the time left
# is less than it needs, and a later call on the same warm machine runs what was left: its build
# is kept (build/cuda-check, build/shapes) and the report appended to (only the stage `build`
# starts a new one). Every step runs even when an earlier one failed; the report says which failed.
#
# Before the first call, here: carry build/wheels (gguf pyyaml tqdm, about 0.9 MB; the device
# machine reaches no package index):
#    pip download gguf pyyaml tqdm --only-binary=:all: --python-version 3.12 \
#        --platform manylinux2014_x86_64 --no-deps -d build/wheels
#
# Stages:
#   build     installs the carried wheels; builds and installs tova with the CUDA backend
#             (TOVA_CUDA=ON; CUDA_ARCHS, default 90); stops everything when no GPU answers (a
#             driver older than the toolkit would make every CUDA test skip, not fail).
#   tests     the kernel checks (every kernel against its CPU twin), then pytest -m cuda (the
#             SmolLM2 case only when the model is in ~/.cache/tova). The first failing test is
#             run again with CUDA_LAUNCH_BLOCKING=1 TOVA_CUDA_GRAPHS=0 (a fault then names its
#             kernel), and with TOVA_CUDA_TAILS=0 (whether the work a kernel's last block does
#             for the kernel after it is at fault).
#   speed     writes SmolLM2-shape (Q4_1) and Qwen2.5-1.5B-shape (Q4_K_M mix) models with random
#             weights (bench/synthetic_shapes.py) and benchmarks them at batch 1 with the
#             bandwidth speed of light: first the numbers issue #13 asks for (prefill 512, decode
#             128, kv_size 512 (tova) and the full cache; decode after 1024 tokens, tova's 512
#             slots full), then what each design choice is worth (the variants below).
#   table     the paper's Table 1 on the GPU (bench/throughput.py --device cuda, budget BUDGET,
#             default 1GiB), TOVA 512 over q8_0 keys / q4_1 values as well.
#   sanitizer compute-sanitizer memcheck on short generations (each built-in policy the device
#             runs, quantized K/V, two KV tiers, positions "cache_index"), and memcheck and
#             racecheck on a 300-word prompt whose rows the attention splits into runs.
#
# Variants timed in `speed` (tova 512 unless said): default (graphs, the policy's step on the
# device, 8-bit activations, the tiled prompt product, rows split among warps); at depth 1024
# replay0 (every step captured, no relaunch as it is: TOVA_CUDA_REPLAY=0), graphs0 (issued
# directly: TOVA_CUDA_GRAPHS=0) and tails0 (the norms, quantizers, the attention's combine and
# policy step and the rotation as kernels of their own: TOVA_CUDA_TAILS=0, 174 -> 369 launches
# a step for the Qwen2.5-1.5B shape; the products that take them use more registers); then
# victims0 (the host's policy fed the head mean: TOVA_CUDA_VICTIMS=0), kvq (keys q8_0, values
# q4_1), tiled0 (the prompt's products by the warp-per-row kernels: TOVA_CUDA_TILED_FROM=0),
# split0 (both caches: one warp per matrix row, one attention block per row and K/V head:
# TOVA_CUDA_ROW_SPLIT=0 TOVA_CUDA_ATTN_RUNS=1) and float (float activations instead of 8-bit
# ones and integer products).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
OUT=${OUT:-bench/results/cuda}
PY=${PYTHON:-python3}
BUDGET_S=${BUDGET_S:-540}
START=$(date +%s)
mkdir -p "$OUT"
REPORT="$OUT/report.md"

ALL="build tests speed table sanitizer"
WANT=" ${*:-$ALL} "
for s in $WANT; do
  case " $ALL " in *" $s "*) ;; *) echo "unknown stage '$s' (stages: $ALL)"; exit 2 ;; esac
done
wanted() { [[ "$WANT" == *" $1 "* ]]; }

wanted build && : > "$REPORT"
log() { printf '%s\n' "$*" | tee -a "$REPORT"; }
step() { log ""; log "## $*"; }
status=0
fail() { log "FAILED: $*"; status=1; }
left() { echo $(( BUDGET_S - ($(date +%s) - START) )); }
# A command's time limit: `max` seconds, or what is left of the budget when that is less.
limit() { local l; l=$(left); echo $(( l < $1 ? (l > 1 ? l : 1) : $1 )); }
# Whether `need` seconds are left of the budget; else says what is not run.
has_time() {
  local need=$1 what=$2
  if [ "$(left)" -lt "$need" ]; then
    log "not run (time budget: $(left) s left, $what needs about $need s): $what"
    return 1
  fi
}

log ""
log "# CUDA check ($*), $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'), budget $BUDGET_S s"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee -a "$REPORT"

TOVA_BIN=tova
gpu_or_stop() {
  local n
  n=$("$PY" -c "import tova; print(tova.cuda_device_count() if tova.cuda_built() else -1)" 2>&1 | tail -1)
  log "CUDA built and GPUs usable: $n"
  if ! [ "$n" -gt 0 ] 2>/dev/null; then
    fail "no usable GPU (a build without CUDA, or a driver older than the toolkit): nothing else runs"
    log ""
    log "status: some steps FAILED"
    exit 1
  fi
  TOVA_BIN=$("$PY" -c "from tova._cli import binary; print(binary())" 2>/dev/null || echo tova)
}

if wanted build; then
  step "build"
  if ls build/wheels/*.whl > /dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps build/wheels/*.whl 2>&1 | tail -3 | tee -a "$REPORT" || fail "wheels"
  fi
  "$PY" -c "import gguf, numpy; print('gguf', gguf.__file__)" 2>&1 | tail -1 | tee -a "$REPORT"
  t0=$(date +%s)
  "$PY" -m pip install -q --no-index --no-deps --no-build-isolation -Cbuild-dir=build/cuda-check \
    -Ccmake.define.TOVA_CUDA=ON -Ccmake.define.CMAKE_CUDA_ARCHITECTURES="${CUDA_ARCHS:-90}" . > "$OUT/build.log" 2>&1 \
    || { tail -30 "$OUT/build.log" | tee -a "$REPORT"; fail "build"; }
  log "build: $(( $(date +%s) - t0 )) s"
fi
gpu_or_stop

if wanted tests; then
  step "tests: kernels against their CPU twins, then pytest -m cuda"
  if has_time 30 "kernel checks"; then
    timeout "$(limit 120)" "$PY" -c "import tova; bad = tova._core._cuda_kernel_check(); print('kernel checks:', bad or 'all equal'); raise SystemExit(1 if bad else 0)" \
      2>&1 | tail -20 | tee -a "$REPORT"
    [ "${PIPESTATUS[0]}" -eq 0 ] || fail "kernel checks"
  fi
  MARK="cuda and not model"
  [ -f "$HOME/.cache/tova/SmolLM2-135M-Instruct.Q4_1.gguf" ] && MARK="cuda"
  if has_time 90 "pytest -m cuda"; then
    timeout $(( $(left) - 30 )) "$PY" -m pytest -q -rs -m "$MARK" -p no:cacheprovider --durations=10 tests/test_cuda.py \
      > "$OUT/pytest.log" 2>&1 || fail "pytest (or its time budget)"
    tail -40 "$OUT/pytest.log" | tee -a "$REPORT"
    first=$(grep -m1 -o '^FAILED tests/test_cuda.py::[^ ]*' "$OUT/pytest.log" | cut -d' ' -f2)
    if [ -n "$first" ] && has_time 60 "the first failure again, launches blocking"; then
      log "the first failure again, CUDA_LAUNCH_BLOCKING=1 TOVA_CUDA_GRAPHS=0: $first"
      CUDA_LAUNCH_BLOCKING=1 TOVA_CUDA_GRAPHS=0 timeout "$(limit 120)" "$PY" -m pytest -q -x -p no:cacheprovider "$first" \
        > "$OUT/pytest_blocking.log" 2>&1
      grep -E "^E |passed|failed" "$OUT/pytest_blocking.log" | head -20 | tee -a "$REPORT"
    fi
    if [ -n "$first" ] && has_time 60 "the first failure again, no tails"; then
      log "the first failure again, TOVA_CUDA_TAILS=0: $first"
      TOVA_CUDA_TAILS=0 timeout "$(limit 120)" "$PY" -m pytest -q -x -p no:cacheprovider "$first" \
        > "$OUT/pytest_tails0.log" 2>&1
      grep -E "^E |passed|failed" "$OUT/pytest_tails0.log" | head -20 | tee -a "$REPORT"
    fi
  fi
fi

# One `tova bench` on a synthetic shape: name, model, variant, then bench arguments.
bench() {
  local m=$1 cache=$2 variant=$3 depth=$4
  local env=() kv="" args="-p 512 -n 128"
  case $variant in
    graphs0) env=(TOVA_CUDA_GRAPHS=0) ;;
    replay0) env=(TOVA_CUDA_REPLAY=0) ;;
    tails0) env=(TOVA_CUDA_TAILS=0) ;;
    victims0) env=(TOVA_CUDA_VICTIMS=0) ;;
    tiled0) env=(TOVA_CUDA_TILED_FROM=0) ;;
    split0) env=(TOVA_CUDA_ROW_SPLIT=0 TOVA_CUDA_ATTN_RUNS=1) ;;
    kvq) kv="--kv-type-k q8_0 --kv-type-v q4_1" ;;
    float) kv="--float-activations" ;;
  esac
  [ "$depth" = 1 ] && args="-p 0 -n 128 -d 1024"
  local policy="--policy tova --kv-size 512" tag="tova512"
  [ "$cache" = full ] && policy="--policy full --ctx 4096" && tag="full"
  local at="" name
  [ "$depth" = 1 ] && at=" at depth 1024"
  name="bench_${m}_${tag}${at:+_depth}_$variant.json"
  has_time 25 "bench $m $tag $variant$at" || return 0
  # shellcheck disable=SC2086
  env "${env[@]}" timeout "$(limit 120)" "$TOVA_BIN" bench -m "build/shapes/$m-shape.gguf" --device cuda $args -r 3 \
    $policy $kv --json > "$OUT/$name" 2> "$OUT/bench.err"
  local rc=$?
  [ $rc -eq 0 ] || { tail -5 "$OUT/bench.err" | tee -a "$REPORT"; fail "bench $m $tag $variant (exit $rc; 124: its time limit)"; }
}

if wanted speed; then
  step "speed (synthetic real-shape models, batch 1)"
  if has_time 60 "synthetic models and benchmarks"; then
    "$PY" bench/synthetic_shapes.py --out build/shapes 2>&1 | tee -a "$REPORT" || fail "synthetic models"
    rm -f "$OUT"/bench_*.json
    # What issue #13 asks for first: both shapes, both caches, prompt and decode, then decode in
    # fixed memory after 1024 tokens.
    for m in qwen15 smollm2; do
      for cache in tova full; do bench $m $cache default 0; done
      for cache in tova full; do bench $m $cache default 1; done
    done
    # What each design choice is worth, the largest first.
    for m in qwen15 smollm2; do
      bench $m tova replay0 1
      bench $m tova graphs0 1
      bench $m tova tails0 1
      for variant in float kvq victims0 tiled0 split0; do bench $m tova $variant 0; done
      bench $m full split0 0
    done
    "$PY" - "$OUT" << 'EOF' 2>&1 | tee -a "$REPORT"
import glob, json, shutil, subprocess, sys
out = sys.argv[1]
smi = shutil.which("nvidia-smi")
name = subprocess.run([smi, "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                      text=True).stdout.strip() if smi else ""
# Peak memory bandwidth (GB/s) of the GPUs we may be lent; others: no speed of light.
bw = next((v for k, v in {"H200": 4800, "H100": 3350, "A100": 2039, "L4": 300, "RTX 4090": 1008}.items()
           if k in name), None)
print("| model | cache | variant | test | t/s | weight bytes | speed of light t/s | ratio |")
print("| --- | --- | --- | --- | ---: | ---: | ---: | ---: |")
for f in sorted(glob.glob(f"{out}/bench_*.json")):
    try:
        rows = json.load(open(f))
    except ValueError:
        print(f"| {f}: no result (the bench failed, see above) | | | | | | | |")
        continue
    for r in rows:
        test = f"pp{r['n_prompt']}" if r["n_prompt"] else f"tg{r['n_gen']}"
        if r.get("n_depth"):
            test += f" @ d{r['n_depth']}"
        sol = bw * 1e9 / r["weight_bytes"] if bw and not r["n_prompt"] else None
        sol_s = "%.0f" % sol if sol else "-"
        ratio = "%.2f" % (r["avg_ts"] / sol) if sol else "-"
        variant = f.rsplit("_", 1)[1][: -len(".json")]
        print(f"| {r['model_filename']} | {r['policy']} {r['kv_size']} | {variant} | {test} | {r['avg_ts']:.1f} | "
              f"{r['weight_bytes']} | {sol_s} | {ratio} |")
EOF
  fi
fi

if wanted table; then
  step "the paper's Table 1 on the GPU (SmolLM2 shape, one KV budget)"
  [ -f build/shapes/smollm2-shape.gguf ] || "$PY" bench/synthetic_shapes.py --out build/shapes --only smollm2 > /dev/null 2>&1
  if has_time 90 "Table 1"; then
    timeout $(( $(left) - 20 )) "$PY" bench/throughput.py --models build/shapes/smollm2-shape.gguf --device cuda \
      --budget "${BUDGET:-1GiB}" --gen 64 --quantized-kv q8_0/q4_1 --out "$OUT/throughput.csv" 2>&1 | tail -8 | tee -a "$REPORT"
    [ "${PIPESTATUS[0]}" -eq 0 ] || fail "throughput (or its time budget)"
  fi
fi

# compute-sanitizer with a tool on `tova run` with these arguments; name, tool, then arguments.
sanitize() {
  local name=$1 tool=$2
  shift 2
  has_time 45 "compute-sanitizer $tool ($name)" || return 0
  timeout "$(limit 150)" compute-sanitizer --tool "$tool" --error-exitcode 9 "$TOVA_BIN" run -m build/shapes/smollm2-shape.gguf \
    --ignore-eos --device cuda "$@" > "$OUT/sanitizer_${name}_$tool.log" 2>&1 || fail "compute-sanitizer $tool ($name)"
  tail -3 "$OUT/sanitizer_${name}_$tool.log" | tee -a "$REPORT"
}

if wanted sanitizer; then
  step "compute-sanitizer"
  [ -f build/shapes/smollm2-shape.gguf ] || "$PY" bench/synthetic_shapes.py --out build/shapes --only smollm2 > /dev/null 2>&1
  if command -v compute-sanitizer > /dev/null; then
    # Rows of up to 320 slots: the attention's runs and their combination, the matrix rows split
    # among warps (shared-memory sums: racecheck too). TOVA, evicting from the 321st token on.
    sanitize runs memcheck -p "$(printf 'hello %.0s' $(seq 300))" -n 16 --policy tova --kv-size 320
    # Every built-in policy the device runs, evicting from the 9th token on.
    for policy in h2o tova_ema; do sanitize "$policy" memcheck -p "hello" -n 24 --policy $policy --kv-size 8; done
    # K/V quantized and rotated on the device (keys q8_0, values q4_1).
    sanitize kvq memcheck -p "hello" -n 24 --policy tova --kv-size 8 --kv-type-k q8_0 --kv-type-v q4_1
    # Two KV tiers (slots moved down to q4_0 keys / q3_0 values from the 7th token on).
    sanitize tiers memcheck -p "hello" -n 24 --policy tova --kv-size 8 --chunk 2 --kv-type q8_0 \
      --kv-lo-type q4_0/q3_0 --kv-hi-size 4
    # Positions "cache_index" (keys rotated by rank on the device), a prompt long enough for the
    # tiled product.
    sanitize cache_index memcheck -p "$(printf 'hello %.0s' $(seq 40))" -n 24 --policy tova --kv-size 16 \
      --positions cache_index --kv-type q8_0
    sanitize runs racecheck -p "$(printf 'hello %.0s' $(seq 300))" -n 16 --policy tova --kv-size 320
  else
    log "compute-sanitizer not installed: not run"
  fi
fi

log ""
log "status ($*): $([ $status -eq 0 ] && echo 'every step run passed' || echo 'some steps FAILED'); $(( $(date +%s) - START )) s"
exit $status
