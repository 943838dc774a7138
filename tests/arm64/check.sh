#!/usr/bin/env bash
# The AArch64 build (edge boards: Raspberry Pi, Jetson, phones) checked without ARM hardware:
# cross-compiles the core, the CLI and the C++ unit tests with Debian's aarch64 cross compiler
# and runs them under qemu-user.
# - The unit tests under each kernel tier (cpp/tests/test_kernel_tiers.cpp compares every tier
#   with the portable kernels): neon_dot (qemu's default CPU has the dot-product extension),
#   neon and scalar (TOVA_CPU_KERNELS).
# - The tier detection: neon_dot on qemu's default CPU, neon on a Cortex-A72 (the Raspberry Pi
#   4's core, without dot products), where the unit tests run once more.
# - With SmolLM2 in the model cache (tova pull smollm2-135m-instruct): a greedy generation under
#   neon_dot and neon that must be byte for byte the scalar tier's, computed by an x86-64 build of
#   the CLI (HOST_TOVA, default build/ci-cmake/tova when present; else this build's scalar tier
#   under qemu), and, given that build, the perplexity of a text read through a 32-token TOVA
#   cache, which must print the same numbers as that build's scalar tier
#   (the NEON kernels compute the scalar tier's results bit for bit, and the core is compiled
#   without contraction on both); Gemma 3's too when it is cached.
# The Python tests on AArch64: tests/arm64/pytest_arm64.sh.
#
#   bash tests/arm64/check.sh [BUILD_DIR]     (default build/arm64; installs the cross tools
#                                             with apt-get when they are missing)
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD="${1:-build/arm64}"

need=()
command -v aarch64-linux-gnu-g++ >/dev/null 2>&1 || need+=(g++-aarch64-linux-gnu)
command -v qemu-aarch64 >/dev/null 2>&1 || need+=(qemu-user)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]}"
  if ! { apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null; }; then
    # (as .ci/run does for tmux: a machine that cannot install them cannot run this check)
    echo "SKIPPED: the AArch64 check needs ${need[*]} (apt-get install failed); nothing was checked"
    exit 0
  fi
fi

cmake -S . -B "$BUILD" -DCMAKE_TOOLCHAIN_FILE=tests/arm64/aarch64-linux-gnu.cmake -DCMAKE_BUILD_TYPE=Release \
  -DTOVA_CUDA=OFF -DTOVA_BUILD_TESTS=ON >/dev/null
cmake --build "$BUILD" --target tova_tests tova_cli
export QEMU_LD_PREFIX=/usr/aarch64-linux-gnu

fail=0
expect() {  # expect WHAT WANT GOT (an empty or failed WANT is a failure too)
  if [ -n "$2" ] && [ "$2" = "$3" ] && [[ $2 != *"tova: error"* ]]; then echo "ok: $1"; else
    echo "FAILED: $1: want '$2', got '$3'"; fail=1
  fi
}
tier_of() { "$@" "$BUILD/tova" --version | sed -n 's/.*kernels: \([a-z_0-9]*\);.*/\1/p'; }

expect "qemu's default CPU runs the neon_dot tier" neon_dot "$(tier_of qemu-aarch64)"
expect "a Cortex-A72 (no dot products) runs the neon tier" neon "$(tier_of qemu-aarch64 -cpu cortex-a72)"
for tier in neon_dot neon scalar; do
  expect "TOVA_CPU_KERNELS=$tier is honoured" "$tier" "$(tier_of env TOVA_CPU_KERNELS=$tier qemu-aarch64)"
done

unit() {  # unit LABEL COMMAND...: the C++ unit tests
  local label=$1 out
  shift
  if out=$("$@" "$BUILD/tova_tests" 2>&1); then
    echo "ok: unit tests, $label: $(tail -n 1 <<<"$out")"
  else
    echo "FAILED: unit tests, $label:"; tail -n 30 <<<"$out"; fail=1
  fi
}
for tier in neon_dot neon scalar; do unit "tier $tier" env TOVA_CPU_KERNELS=$tier qemu-aarch64; done
unit "Cortex-A72" qemu-aarch64 -cpu cortex-a72

model="${TOVA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tova}/SmolLM2-135M-Instruct.Q4_1.gguf"
host="${HOST_TOVA:-build/ci-cmake/tova}"
if [ -f "$model" ]; then
  gen() {  # gen TIER OUT PROGRAM...: SmolLM2's greedy text under TIER
    local tier=$1 out=$2
    shift 2
    TOVA_CPU_KERNELS=$tier "$@" run -m "$model" -p "The three primary colours are" -n 12 --temp 0 -t 2 \
      > "$out" 2> "$out.err" || { echo "FAILED: tova run, tier $tier ($*):"; cat "$out.err"; fail=1; }
  }
  # The scalar tier's text: the x86-64 build's when there is one (the kernels give the same bits
  # on both), else this build's under qemu.
  if [ -x "$host" ]; then
    gen scalar "$BUILD/gen-scalar.out" "$host"
    label="x86-64 scalar tier"
  else
    gen scalar "$BUILD/gen-scalar.out" qemu-aarch64 "$BUILD/tova"
    label="scalar tier"
  fi
  for tier in neon neon_dot; do gen $tier "$BUILD/gen-$tier.out" qemu-aarch64 "$BUILD/tova"; done
  want=$(cat "$BUILD/gen-scalar.out")
  echo "SmolLM2, $label: $want"
  expect "SmolLM2 greedy, neon = $label" "$want" "$(cat "$BUILD/gen-neon.out")"
  expect "SmolLM2 greedy, neon_dot = $label" "$want" "$(cat "$BUILD/gen-neon_dot.out")"
  if [ -x "$host" ]; then
    text=$(mktemp)
    head -c 240 "${TOVA_SHARED:-../shared}/texts/botchan_natsume_en1919.txt" > "$text" 2>/dev/null ||
      printf 'The quick brown fox jumps over the lazy dog. %.0s' $(seq 6) > "$text"
    ppl() { "$@" perplexity -m "$model" -f "$text" --policy tova --kv-size 32 -t 2 --no-progress 2>&1 | tail -n 1 |
              sed 's/, [0-9.]* tokens\/s//'; }
    want=$(TOVA_CPU_KERNELS=scalar ppl "$host")
    echo "SmolLM2 perplexity, kv_size 32, x86-64 scalar tier: $want"
    expect "the same perplexity on AArch64 (neon_dot)" "$want" "$(ppl qemu-aarch64 "$BUILD/tova")"
    # Gemma 3 as well when cached (the test suite fetches it): Q4_K / Q6_K / Q5_0 weights, GELU,
    # sliding-window layers; the first 120 bytes of the text (48 tokens: 3 times the store).
    gemma="$(dirname "$model")/gemma-3-270m-q4_k_m.gguf"
    if [ -f "$gemma" ]; then
      head -c 120 "$text" > "$text.head"
      gppl() { "$@" perplexity -m "$gemma" -f "$text.head" --policy tova --kv-size 16 -t 2 --no-progress 2>&1 |
                 tail -n 1 | sed 's/, [0-9.]* tokens\/s//'; }
      want=$(TOVA_CPU_KERNELS=scalar gppl "$host")
      echo "Gemma 3 perplexity, kv_size 16, x86-64 scalar tier: $want"
      expect "the same perplexity on AArch64 (neon_dot)" "$want" "$(gppl qemu-aarch64 "$BUILD/tova")"
      rm -f "$text.head"
    fi
    rm -f "$text"
  else
    echo "skipped: the comparison with x86-64 ($host is not built)"
  fi
else
  echo "skipped: the generation check ($model is not in the model cache)"
fi
exit $fail
