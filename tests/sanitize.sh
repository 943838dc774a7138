#!/usr/bin/env bash
# The sanitizer run (.ci/run calls it): the C++ unit tests and short generations of the tova CLI
# on two real models, built with AddressSanitizer + UndefinedBehaviorSanitizer (TOVA_SANITIZE)
# and run with LeakSanitizer on, under every kernel tier this CPU has (TOVA_CPU_KERNELS). Any
# report fails the run. Needs the tova package installed (it resolves the models).
#
# The build also has the CUDA backend on the CPU simulator of cuda/sim (TOVA_CUDA_SIM): short
# generations with --device cuda on synthetic models then run every kernel and the backend's host
# code under the sanitizers, a kernel's read or write past a device allocation included (what
# compute-sanitizer checks on a GPU).
#
#   bash tests/sanitize.sh [BUILD_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD="${1:-build/sanitize}"

# -g1: line tables for the reports' stack traces, without the local variables' descriptions
# (a third less compile time for the kernels than -g).
cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O2 -g1 -DNDEBUG" \
  -DTOVA_SANITIZE=ON -DTOVA_BUILD_TESTS=ON -DTOVA_CUDA=OFF -DTOVA_CUDA_SIM=ON >/dev/null
cmake --build "$BUILD" --target tova_tests tova_cli tova_cuda_sim_selftest >/dev/null

export ASAN_OPTIONS="detect_leaks=1:halt_on_error=1:abort_on_error=0"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
export LSAN_OPTIONS="exitcode=23"
# Each step says when it starts (seconds since the script began), so a slow one shows in the log.
say() { echo "sanitize [+${SECONDS}s, $(date -u +%T)]: $*"; }
say "built"

say "C++ unit tests"
"$BUILD/tova_tests" | tail -1

# A prompt longer than the store (kv_size 16) and than a chunk (8): every step evicts, chunks are
# read with exact prefill, and decode continues past the store's size. (Short: 28 or 29 tokens
# with the real models' tokenizers, 60 with the synthetic ones'; the scalar kernels under the
# sanitizers read a few tokens a second, the simulated device fewer.)
PROMPT="It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of foolishness"
TIERS="$(python -c "from tova import _core; print(' '.join(_core.cpu_tiers()))")"
for model in smollm2-135m-instruct gemma-3-270m; do
  path="$(python -m tova.models path "$model")"
  for tier in $TIERS; do
    # f16 slots with tova and the full cache; 4-bit keys (rotated) and values with tova_ema,
    # original and cache_index positions; two KV tiers (a lower type in the 4th field, "-" for
    # none; 4 tokens in the upper tier) with tova_ema and the full cache; 3-bit values (q3_0) in
    # both; float32 activations (each weight row decoded to float32) with h2o and f32 slots.
    for config in "tova f16 original" "full f16 original" "tova_ema q4_1/q4_0 original" \
                  "tova q8_0/q4_1 cache_index" "tova_ema q8_0/q4_1 original q4_0" "full f16 original q4_0/q4_1" \
                  "tova_ema q8_0/q3_0 original q4_0/q3_0" "h2o f32 original - --float-activations"; do
      # The scalar kernels (plain loops, several times slower than the vector tiers under the
      # sanitizers) take the four settings that between them hold every KV type, both position
      # modes, the lower tier and the full cache: f16 slots are in the full cache's upper tier.
      # Gemma 3 (its matrix products several times SmolLM2's) takes the first two of those: the
      # two others try the KV store's lower tier, which is the same code for either model.
      case "$tier:$config" in
        "scalar:tova f16 original" | "scalar:full f16 original" | "scalar:tova_ema q8_0/q4_1 original q4_0" | \
          "scalar:h2o f32 original - --float-activations") continue ;;
      esac
      case "$model:$tier:$config" in
        "gemma-3-270m:scalar:full f16 original q4_0/q4_1" | \
          "gemma-3-270m:scalar:tova_ema q8_0/q3_0 original q4_0/q3_0") continue ;;
      esac
      read -r policy kv positions lower extra <<<"$config"
      [ "$lower" = - ] && lower=""
      tiers=()
      [ -n "$lower" ] && tiers=(--kv-lo-type "$lower" --kv-hi-size 4)
      say "$model, kernels $tier, policy $policy, kv $kv${lower:+ + $lower}, positions $positions${extra:+, $extra}"
      # shellcheck disable=SC2086
      if ! TOVA_CPU_KERNELS="$tier" "$BUILD/tova" run -m "$path" -p "$PROMPT" -n 8 --temp 0 -t 2 \
          --policy "$policy" --kv-size 16 --chunk 8 --ctx 128 -ctk "${kv%/*}" -ctv "${kv#*/}" \
          --positions "$positions" ${tiers[@]+"${tiers[@]}"} $extra >/dev/null 2>"$BUILD/run.err"; then
        cat "$BUILD/run.err"
        exit 1
      fi
    done
  done
done
# Ctrl-C while a long prompt chunk is read (exact walk, every row evicting): the request leaves
# the step at the next layer or row, its sequence is reset, the run ends with 130. (Or 0 if the
# chunk was read first: either way no report; 130 from SIGINT's default action, before the
# handler, is a failure.)
say "smollm2-135m-instruct: Ctrl-C inside a prompt chunk"
LONG="$(for _ in $(seq 250); do printf 'It was the best of times. '; done)"
"$BUILD/tova" run -m "$(python -m tova.models path smollm2-135m-instruct)" -p "$LONG" -n 4 -t 2 --policy tova \
  --kv-size 16 --chunk 1536 --ctx 2048 >/dev/null 2>"$BUILD/run.err" &
run_pid=$!
sleep 3  # (loaded: about a second; the chunk takes far longer under the sanitizers)
kill -INT "$run_pid" 2>/dev/null || true
rc=0
wait "$run_pid" || rc=$?
if [ "$rc" != 0 ] && ! { [ "$rc" = 130 ] && grep -q "reading interrupted" "$BUILD/run.err"; }; then
  cat "$BUILD/run.err"
  exit 1
fi
say "the CUDA simulator's own checks"
"$BUILD/tova_cuda_sim_selftest" | tail -1
# Synthetic models (a llama with Q4_K matrices, a qwen2 with Q6_K, a Gemma 3), small enough for
# the simulator: every built-in policy, f16, f32 and quantized K/V, two tiers, cache_index, exact
# and chunked prefill, batching.
python - "$BUILD" <<'EOF'
import sys
sys.path.insert(0, "tests")
from reference.synthetic import write_gemma3_gguf, write_llama_gguf
write_llama_gguf(f"{sys.argv[1]}/sim-llama.gguf", seed=3, weight_type="Q4_K", n_embd=256, n_ff=512, n_head=4,
                 n_head_kv=2, n_layer=2)
write_llama_gguf(f"{sys.argv[1]}/sim-qwen2.gguf", seed=4, weight_type="Q6_K", n_embd=256, n_ff=512, n_head=4,
                 n_head_kv=1, n_layer=2, arch="qwen2", tied_output=True)
write_gemma3_gguf(f"{sys.argv[1]}/sim-gemma3.gguf", seed=5, weight_type="Q4_K", n_embd=256, n_ff=512, head_dim=64)
EOF
# Then quantized K/V (rotated), two KV tiers, positions "cache_index", prompt chunks of 64 rows
# (the tiled matrix product: the prompt is longer than its 32 rows here), and float activations
# (the float matrix-vector kernels; the others take 8-bit activations and integer products).
for config in "llama tova f16 f16 exact" "llama h2o f32 f32 chunked" "llama tova_ema f16 f16 exact" \
              "llama sink f16 f16 exact" "llama full f16 f16 exact" "qwen2 tova f16 f16 exact" \
              "gemma3 tova f16 f16 chunked" "llama tova q8_0 q4_1 chunked" \
              "llama tova_ema q8_0 q3_0 exact --kv-lo-type q4_0/q3_0 --kv-hi-size 6" \
              "qwen2 tova q4_0 f16 exact --positions cache_index" "llama window f16 f16 chunked --chunk 64" \
              "qwen2 h2o f16 f16 exact --float-activations"; do
  read -r arch policy kv_k kv_v prefill extra <<<"$config"
  say "device cuda (simulated), $arch, policy $policy, kv $kv_k/$kv_v, prefill $prefill${extra:+, $extra}"
  # shellcheck disable=SC2086
  if ! "$BUILD/tova" run -m "$BUILD/sim-$arch.gguf" -p "$PROMPT" -n 8 --temp 0 --ignore-eos --device cuda \
      --policy "$policy" --kv-size 16 --chunk 8 --ctx 128 -ctk "$kv_k" -ctv "$kv_v" --prefill "$prefill" $extra \
      >/dev/null 2>"$BUILD/run.err"; then
    cat "$BUILD/run.err"
    exit 1
  fi
done
say "device cuda (simulated), three sequences batched (tova bench --batch 3)"
"$BUILD/tova" bench -m "$BUILD/sim-llama.gguf" --device cuda -p 24 -n 8 -r 1 --batch 3 --policy tova --kv-size 16 \
  >/dev/null 2>"$BUILD/run.err" || { cat "$BUILD/run.err"; exit 1; }
say "clean"
