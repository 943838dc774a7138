#!/usr/bin/env bash
# The whole GPU check in one command, on a machine with an NVIDIA GPU (run from the repository):
#
#     bash bench/cuda_check.sh            # report: bench/results/cuda/report.md (+ JSON beside it)
#
# 1. installs wheels carried in build/wheels (a machine without a package index; here first:
#    pip download gguf pyyaml tqdm --only-binary=:all: --python-version 3.12 \
#        --platform manylinux2014_x86_64 --no-deps -d build/wheels
#    and carry build/wheels: about 0.9 MB);
# 2. builds and installs tova with the CUDA backend (TOVA_CUDA=ON; CUDA_ARCHS, default 90);
# 3. runs the CUDA tests (pytest -m cuda; the SmolLM2 one only when the model is in ~/.cache/tova);
# 4. writes SmolLM2-shape (Q4_1) and Qwen2.5-1.5B-shape (Q4_K_M mix) models with random weights
#    (bench/synthetic_shapes.py) and benchmarks them on the GPU: prefill 512 and decode 128 at
#    batch 1, kv_size 512 (tova) and the full cache, with the bandwidth speed of light, decode
#    steps as CUDA graphs and (tova 512) without them (TOVA_CUDA_GRAPHS=0), and (tova 512) with
#    the victims selected by the host's tova from the head mean copied back (TOVA_CUDA_VICTIMS=0),
#    (tova 512) with keys in q8_0 and values in q4_1 (kvq), and (tova 512) with the prompt's
#    products by the warp-per-row kernels instead of the tiled one (TOVA_CUDA_TILED_FROM=0, tiled0),
#    and (both caches) with one warp per matrix row and one attention block per row and K/V head
#    (TOVA_CUDA_ROW_SPLIT=0 TOVA_CUDA_ATTN_RUNS=1, split0), and (tova 512) with float activations
#    (--float-activations, float) instead of the default 8-bit ones and integer products;
#    and decode after 1024 tokens (-d 1024: tova's 512 slots full, every step the same, its graph
#    relaunched as it is) against the same steps captured every time (TOVA_CUDA_REPLAY=0,
#    replay0) and issued directly (graphs0), and the full cache at that depth;
#    Then the paper's Table 1 there (bench/throughput.py --device cuda, budget BUDGET, 1GiB), with
#    TOVA 512 over q8_0 keys / q4_1 values as well;
# 5. runs short generations under compute-sanitizer when it is installed (each built-in policy
#    the device runs, quantized K/V, two KV tiers, positions "cache_index" after a 40-word prompt,
#    and a 300-word prompt whose rows the attention splits into runs, under memcheck and racecheck).
# Every step runs even when an earlier one failed; the report says which failed.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results/cuda}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
REPORT="$OUT/report.md"
: > "$REPORT"
log() { printf '%s\n' "$*" | tee -a "$REPORT"; }
step() { log ""; log "## $*"; }
status=0
fail() { log "FAILED: $*"; status=1; }

log "# CUDA check, $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee -a "$REPORT"

step "1. carried wheels"
if ls build/wheels/*.whl > /dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps build/wheels/*.whl 2>&1 | tail -3 | tee -a "$REPORT" || fail "wheels"
fi
"$PY" -c "import gguf, numpy; print('gguf', gguf.__file__)" 2>&1 | tail -1 | tee -a "$REPORT"

step "2. build with CUDA"
t0=$(date +%s)
"$PY" -m pip install -q --no-index --no-deps --no-build-isolation -Cbuild-dir=build/cuda-check \
  -Ccmake.define.TOVA_CUDA=ON -Ccmake.define.CMAKE_CUDA_ARCHITECTURES="${CUDA_ARCHS:-90}" . > "$OUT/build.log" 2>&1 \
  || { tail -30 "$OUT/build.log" | tee -a "$REPORT"; fail "build"; }
log "build: $(( $(date +%s) - t0 )) s"
"$PY" -c "import tova; print('cuda built:', tova.cuda_built(), '| devices:', tova.cuda_device_count())" 2>&1 \
  | tee -a "$REPORT"

TOVA_BIN=$("$PY" -c "from tova._cli import binary; print(binary())" 2>/dev/null || echo tova)

step "3. CUDA tests (pytest -m cuda)"
MARK="cuda and not model"
[ -f "$HOME/.cache/tova/SmolLM2-135M-Instruct.Q4_1.gguf" ] && MARK="cuda"
"$PY" -m pytest -q -rs -m "$MARK" -p no:cacheprovider tests/test_cuda.py > "$OUT/pytest.log" 2>&1 || fail "pytest"
tail -40 "$OUT/pytest.log" | tee -a "$REPORT"

step "4. speed (synthetic real-shape models, batch 1)"
"$PY" bench/synthetic_shapes.py --out build/shapes 2>&1 | tee -a "$REPORT" || fail "synthetic models"
for m in smollm2 qwen15; do
  for cache in "--policy tova --kv-size 512" "--policy full --ctx 4096"; do
    # The default (graphs, the policy's step on the device), every operation issued directly
    # (graphs0), the host's policy fed the head mean (victims0), quantized K/V (kvq), no tiled
    # product (tiled0), no split of rows among warps and of slots among attention blocks (split0),
    # float activations instead of 8-bit ones and integer products (float).
    for variant in default graphs0 victims0 kvq tiled0 split0 float; do
      [ "$variant" != default ] && [ "$variant" != split0 ] && [ "$cache" != "--policy tova --kv-size 512" ] && continue
      env=()
      [ "$variant" = graphs0 ] && env=(TOVA_CUDA_GRAPHS=0)
      [ "$variant" = victims0 ] && env=(TOVA_CUDA_VICTIMS=0)
      [ "$variant" = tiled0 ] && env=(TOVA_CUDA_TILED_FROM=0)
      [ "$variant" = split0 ] && env=(TOVA_CUDA_ROW_SPLIT=0 TOVA_CUDA_ATTN_RUNS=1)
      kv=""
      [ "$variant" = kvq ] && kv="--kv-type-k q8_0 --kv-type-v q4_1"
      [ "$variant" = float ] && kv="--float-activations"
      # shellcheck disable=SC2086
      env "${env[@]}" "$TOVA_BIN" bench -m "build/shapes/$m-shape.gguf" --device cuda -p 512 -n 128 -r 3 \
        $cache $kv --json > "$OUT/bench_${m}_${cache//[ -]/_}_$variant.json" 2> "$OUT/bench.err" \
        || { tail -5 "$OUT/bench.err" | tee -a "$REPORT"; fail "bench $m $cache $variant"; }
    done
  done
done
# Decode in fixed memory: tg128 after 1024 tokens of history (-d 1024), so that tova's 512 slots
# are full and every step is the same (its graph relaunched as it is), against the same steps
# captured every time (replay0) and issued directly (graphs0), and the full cache at that depth.
for m in smollm2 qwen15; do
  for cache in "--policy tova --kv-size 512" "--policy full --ctx 4096"; do
    for variant in default replay0 graphs0; do
      [ "$variant" != default ] && [ "$cache" != "--policy tova --kv-size 512" ] && continue
      env=()
      [ "$variant" = replay0 ] && env=(TOVA_CUDA_REPLAY=0)
      [ "$variant" = graphs0 ] && env=(TOVA_CUDA_GRAPHS=0)
      # shellcheck disable=SC2086
      env "${env[@]}" "$TOVA_BIN" bench -m "build/shapes/$m-shape.gguf" --device cuda -p 0 -n 128 -d 1024 -r 3 \
        $cache --json > "$OUT/bench_${m}_${cache//[ -]/_}_depth_$variant.json" 2> "$OUT/bench.err" \
        || { tail -5 "$OUT/bench.err" | tee -a "$REPORT"; fail "bench $m $cache depth $variant"; }
    done
  done
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

step "4b. the paper's Table 1 on the GPU (SmolLM2 shape, one KV budget)"
timeout 300 "$PY" bench/throughput.py --models build/shapes/smollm2-shape.gguf --device cuda --budget "${BUDGET:-1GiB}" \
  --gen 64 --quantized-kv q8_0/q4_1 --out "$OUT/throughput.csv" 2>&1 | tail -8 | tee -a "$REPORT" || fail "throughput"

step "5. compute-sanitizer"
if command -v compute-sanitizer > /dev/null; then
  # Every built-in policy the device runs, evicting from the 9th token on.
  for policy in tova h2o tova_ema; do
    compute-sanitizer --tool memcheck --error-exitcode 9 "$TOVA_BIN" run -m build/shapes/smollm2-shape.gguf \
      -p "hello" -n 24 --ignore-eos --policy $policy --kv-size 8 --device cuda > "$OUT/sanitizer_$policy.log" 2>&1 \
      || fail "compute-sanitizer ($policy)"
    tail -3 "$OUT/sanitizer_$policy.log" | tee -a "$REPORT"
  done
  # K/V quantized and rotated on the device (keys q8_0, values q4_1).
  compute-sanitizer --tool memcheck --error-exitcode 9 "$TOVA_BIN" run -m build/shapes/smollm2-shape.gguf \
    -p "hello" -n 24 --ignore-eos --policy tova --kv-size 8 --kv-type-k q8_0 --kv-type-v q4_1 --device cuda \
    > "$OUT/sanitizer_kvq.log" 2>&1 || fail "compute-sanitizer (quantized K/V)"
  tail -3 "$OUT/sanitizer_kvq.log" | tee -a "$REPORT"
  # Two KV tiers (slots moved down to q4_0 keys / q3_0 values from the 7th token on).
  compute-sanitizer --tool memcheck --error-exitcode 9 "$TOVA_BIN" run -m build/shapes/smollm2-shape.gguf \
    -p "hello" -n 24 --ignore-eos --policy tova --kv-size 8 --chunk 2 --kv-type q8_0 --kv-lo-type q4_0/q3_0 \
    --kv-hi-size 4 --device cuda > "$OUT/sanitizer_tiers.log" 2>&1 || fail "compute-sanitizer (two KV tiers)"
  tail -3 "$OUT/sanitizer_tiers.log" | tee -a "$REPORT"
  # Positions "cache_index" (keys rotated by rank on the device), a prompt long enough for the
  # tiled product.
  compute-sanitizer --tool memcheck --error-exitcode 9 "$TOVA_BIN" run -m build/shapes/smollm2-shape.gguf \
    -p "$(printf 'hello %.0s' $(seq 40))" -n 24 --ignore-eos --policy tova --kv-size 16 --positions cache_index \
    --kv-type q8_0 --device cuda > "$OUT/sanitizer_cache_index.log" 2>&1 || fail "compute-sanitizer (cache_index)"
  tail -3 "$OUT/sanitizer_cache_index.log" | tee -a "$REPORT"
  # Rows of up to 320 slots: the attention's runs and their combination, the matrix rows split
  # among warps (shared-memory sums: racecheck too).
  for tool in memcheck racecheck; do
    compute-sanitizer --tool $tool --error-exitcode 9 "$TOVA_BIN" run -m build/shapes/smollm2-shape.gguf \
      -p "$(printf 'hello %.0s' $(seq 300))" -n 16 --ignore-eos --policy tova --kv-size 320 --device cuda \
      > "$OUT/sanitizer_runs_$tool.log" 2>&1 || fail "compute-sanitizer $tool (attention runs)"
    tail -3 "$OUT/sanitizer_runs_$tool.log" | tee -a "$REPORT"
  done
else
  log "compute-sanitizer not installed: not run"
fi

log ""
log "status: $([ $status -eq 0 ] && echo 'all steps passed' || echo 'some steps FAILED')"
exit $status
