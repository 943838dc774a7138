#!/usr/bin/env bash
# Old against new x86 k-quant kernels (cpp/src/cpu/quant_avx2_k.cpp, quant_avx512_k.cpp) in one
# process, alternated (bench/kernel_ab.cpp): decode's product streamed from memory.
#   git worktree add /tmp/old HEAD~1
#   bench/kernel_ab.sh /tmp/old . [avx512|avx2] [Q4_K|Q5_K|Q6_K] [n] [MiB] [passes] [runs]
# Needs a built core library of the new tree (BUILD, default build/dev-cmake; the activations are
# quantized with it). Each of the `runs` (default 4) lines is one run of `passes` passes.
set -euo pipefail
old=$1 new=$2 tier=${3:-avx512} type=${4:-Q4_K} n=${5:-1536} mib=${6:-192} passes=${7:-6} runs=${8:-4}
build=${BUILD:-build/dev-cmake}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
f512="-O3 -DNDEBUG -std=c++17 -mavx2 -mfma -mf16c -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512vnni -ffp-contract=fast"
f2="-O3 -DNDEBUG -std=c++17 -mavx2 -mfma -mf16c -ffp-contract=fast"
for side in old new; do
  src=$old
  [ "$side" = new ] && src=$new
  g++ $f512 -Dtova=tova_$side -I"$src/cpp/src" -c "$src/cpp/src/cpu/quant_avx512_k.cpp" -o "$out/${side}512.o"
  g++ $f2 -Dtova=tova_$side -I"$src/cpp/src" -c "$src/cpp/src/cpu/quant_avx2_k.cpp" -o "$out/${side}2.o"
done
g++ $f2 -I"$new/cpp/src" "$new/bench/kernel_ab.cpp" "$out"/*.o "$new/$build/libtova_core.a" -lpthread -o "$out/kernel_ab"
for r in $(seq "$runs"); do "$out/kernel_ab" "$tier" "$type" "$n" "$mib" "$passes"; done
