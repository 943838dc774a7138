// C++ unit tests of the core that need no Python and no model: run by .ci/run (and by pytest's
// test_cpp_units.py when the binary is built). Prints one line per failure and a closing
// "N passed, N failed" line; exits non-zero on any failure.
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <thread>
#include <cmath>
#include <cstddef>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "common.h"
#include "gguf.h"
#include "kv_policy.h"
#include "perplexity.h"
#include "quant.h"
#include "quant_blocks.h"
#include "cpu/kernels_cpu.h"
#include "cpu/kv_cpu.h"
#include "cpu/quant_kernels.h"
#include "cpu/thread_pool.h"
#include "tokenizer.h"
#include "token_texts.h"
#include "dequant.cuh"  // cuda/: the CUDA kernels' dequantizers, plain C++ without nvcc
#include "dequant_chunks.cuh"
#include "kv_quant.cuh"

#include "check.h"

using namespace tova;
using tova_test::throws;

namespace {
int g_passed = 0, g_failed = 0;
}  // namespace

void tova_test::check(bool ok, const char* what, const char* file, int line) {
  if (ok) {
    ++g_passed;
  } else {
    ++g_failed;
    std::printf("FAILED %s:%d: %s\n", file, line, what);
  }
}

namespace {

void test_thread_pool() {
  for (int n : {1, 2, 4}) {
    ThreadPool pool(n);
    for (int rep = 0; rep < 200; ++rep) {
      std::vector<std::atomic<int>> hits(1000);
      pool.run(1000, [&](int64_t t, int th) {
        hits[static_cast<size_t>(t)]++;
        (void)th;
      });
      bool all_once = true;
      for (auto& h : hits) all_once &= h.load() == 1;
      CHECK(all_once);
    }
    std::atomic<int64_t> sum{0};
    pool.parallel_for(12345, [&](int64_t b, int64_t e, int) {
      int64_t s = 0;
      for (int64_t i = b; i < e; ++i) s += i;
      sum += s;
    });
    CHECK(sum.load() == 12345LL * 12344 / 2);
  }
  CHECK(throws<ArgumentError>([] { ThreadPool p(0); }, "n_threads must be at least 1"));
  // Workers that fell asleep between jobs (gaps longer than their spin) never hold a job back,
  // and every task still runs exactly once.
  {
    ThreadPool pool(3);
    for (int rep = 0; rep < 20; ++rep) {
      std::this_thread::sleep_for(std::chrono::milliseconds(rep % 3 == 0 ? 2 : 0));
      std::vector<std::atomic<int>> hits(257);
      pool.run(257, [&](int64_t t, int) { hits[static_cast<size_t>(t)]++; });
      bool all_once = true;
      for (auto& h : hits) all_once &= h.load() == 1;
      CHECK(all_once);
    }
  }
  // A task that throws: the exception reaches the caller (never std::terminate), the job's other
  // tasks are skipped or finished, and the pool stays usable.
  for (int n : {1, 2, 4}) {
    ThreadPool pool(n);
    CHECK(throws<Error>([&] {
      pool.run(100, [&](int64_t t, int) {
        if (t == 37) throw Error("task 37 failed");
      });
    }, "task 37 failed"));
    std::atomic<int> count{0};
    pool.run(100, [&](int64_t, int) { count++; });
    CHECK(count.load() == 100);
  }
}

// A minimal GGUF v3 file in memory: one uint32 key, one 2x32 F32 tensor.
std::vector<uint8_t> tiny_gguf() {
  std::vector<uint8_t> b;
  auto put = [&](const void* p, size_t n) { b.insert(b.end(), (const uint8_t*)p, (const uint8_t*)p + n); };
  auto u32 = [&](uint32_t v) { put(&v, 4); };
  auto u64 = [&](uint64_t v) { put(&v, 8); };
  auto str = [&](const std::string& s) { u64(s.size()); put(s.data(), s.size()); };
  put("GGUF", 4);
  u32(3);
  u64(1);  // tensors
  u64(1);  // kv
  str("test.key");
  u32(4);  // uint32
  u32(42);
  str("w");
  u32(2);
  u64(32);
  u64(2);
  u32(0);  // F32
  u64(0);  // offset
  while (b.size() % 32) b.push_back(0);
  for (int i = 0; i < 64; ++i) {
    float f = static_cast<float>(i) * 0.5f;
    put(&f, 4);
  }
  return b;
}

void test_gguf_buffer() {
  auto b = tiny_gguf();
  GgufFile f(b.data(), b.size(), "tiny");
  CHECK(f.version() == 3);
  CHECK(f.get_int("test.key", 0) == 42);
  CHECK(f.tensors().size() == 1);
  const GgufTensor& t = f.require_tensor("w");
  CHECK(t.ne[0] == 32 && t.ne[1] == 2 && t.nbytes == 256);
  float v;
  std::memcpy(&v, t.data + 4 * 63, 4);
  CHECK(v == 31.5f);
  CHECK(throws<FormatError>([&] { f.require_string("test.key"); }, "should be a string"));
  CHECK(throws<FormatError>([&] { f.require_tensor("nope"); }, "required tensor 'nope' is missing"));
  // every truncation is rejected with a FormatError, never a crash
  int rejected = 0;
  for (size_t n = 0; n < b.size(); ++n) {
    try {
      GgufFile g(b.data(), n, "cut");
    } catch (const FormatError&) {
      ++rejected;
    }
  }
  CHECK(rejected == static_cast<int>(b.size()));
}

// A chunked dequantizer of cuda/dequant_chunks.cuh, type-erased for the test below.
struct ChunkDecoder {
  void (*decode)(const uint8_t*, int, float*, int*) = nullptr;
  int chunks = 0, runs = 0;
};
template <class Ch>
ChunkDecoder chunk_decoder() {
  return {Ch::decode, Ch::kChunks, Ch::kRuns};
}

// Every chunk of every block decodes to the values `want` holds for its elements, bit for bit,
// and the chunks of a block cover each of its elements exactly once.
bool chunks_match(const ChunkDecoder& ch, const std::vector<uint8_t>& raw, size_t block_bytes, int block,
                  const std::vector<float>& want) {
  bool same = true;
  for (size_t blk = 0; blk < raw.size() / block_bytes; ++blk) {
    std::vector<int> seen(static_cast<size_t>(block), 0);
    for (int c = 0; c < ch.chunks; ++c) {
      float w[16];
      int start[4];
      ch.decode(raw.data() + blk * block_bytes, c, w, start);
      for (int r = 0; r < ch.runs; ++r)
        for (int i = 0; i < 4; ++i) {
          const int e = start[r] + i;
          if (e < 0 || e >= block) return false;
          ++seen[static_cast<size_t>(e)];
          same &= std::memcmp(&w[4 * r + i], &want[blk * static_cast<size_t>(block) + static_cast<size_t>(e)], 4) == 0;
        }
    }
    for (int n : seen) same &= n == 1;
  }
  return same;
}

// Every CPU tier's dequantizer, the CUDA backend's per-element dequantizers (cuda/dequant.cuh)
// and its chunked dequantizers (cuda/dequant_chunks.cuh) equal the portable CPU kernels bit for
// bit on random blocks of every weight type they handle: checked here, where no GPU is needed.
void test_dequantizers_agree() {
  uint32_t seed = 12345;
  auto next = [&] {
    seed = seed * 1664525u + 1013904223u;
    return seed >> 8;
  };
  auto small_half = [&] { return fp32_to_fp16((static_cast<float>(next() % 2001) - 1000.0f) / 4096.0f); };
  struct Case {
    GgmlType type;
    float (*elem)(const uint8_t*, int64_t);
    std::vector<size_t> half_fields;  // offsets of float16 scales inside a block
    ChunkDecoder chunk = {};          // the matvec kernel's decoder, for the types it handles
  };
  const std::vector<Case> cases = {
      {GgmlType::F16, cuda::DqF16::elem, {0}},
      {GgmlType::BF16, cuda::DqBF16::elem, {}},
      {GgmlType::F32, cuda::DqF32::elem, {}},
      {GgmlType::Q4_0, cuda::DqQ4_0::elem, {offsetof(BlockQ4_0, d)}, chunk_decoder<cuda::ChQ4_0>()},
      {GgmlType::Q4_1, cuda::DqQ4_1::elem, {offsetof(BlockQ4_1, d), offsetof(BlockQ4_1, m)},
       chunk_decoder<cuda::ChQ4_1>()},
      {GgmlType::Q5_0, cuda::DqQ5_0::elem, {offsetof(BlockQ5_0, d)}, chunk_decoder<cuda::ChQ5_0>()},
      {GgmlType::Q5_1, cuda::DqQ5_1::elem, {offsetof(BlockQ5_1, d), offsetof(BlockQ5_1, m)}},
      {GgmlType::Q8_0, cuda::DqQ8_0::elem, {offsetof(BlockQ8_0, d)}, chunk_decoder<cuda::ChQ8_0>()},
      {GgmlType::Q2_K, cuda::DqQ2_K::elem, {offsetof(BlockQ2_K, d), offsetof(BlockQ2_K, dmin)}},
      {GgmlType::Q3_K, cuda::DqQ3_K::elem, {offsetof(BlockQ3_K, d)}},
      {GgmlType::Q4_K, cuda::DqQ4_K::elem, {offsetof(BlockQ4_K, d), offsetof(BlockQ4_K, dmin)},
       chunk_decoder<cuda::ChQ4_K>()},
      {GgmlType::Q5_K, cuda::DqQ5_K::elem, {offsetof(BlockQ5_K, d), offsetof(BlockQ5_K, dmin)}},
      {GgmlType::Q6_K, cuda::DqQ6_K::elem, {offsetof(BlockQ6_K, d)}, chunk_decoder<cuda::ChQ6_K>()},
  };
  for (const Case& c : cases) {
    const TypeTraits& t = type_traits(c.type);
    const int64_t n = t.block_size * (t.block_size == 1 ? 300 : 3);  // odd sizes for the float types
    std::vector<uint8_t> raw(row_bytes(c.type, n));
    for (auto& b : raw) b = static_cast<uint8_t>(next());
    const size_t stride = t.type_size;
    for (size_t blk = 0; blk < raw.size() / stride; ++blk)
      for (size_t off : c.half_fields) {
        const uint16_t h = small_half();
        std::memcpy(raw.data() + blk * stride + off, &h, 2);
      }
    if (c.type == GgmlType::F32)
      for (int64_t i = 0; i < n; ++i) {
        const float f = (static_cast<float>(next() % 20001) - 10000.0f) / 1000.0f;
        std::memcpy(raw.data() + 4 * i, &f, 4);
      }
    if (c.type == GgmlType::BF16)
      for (int64_t i = 0; i < n; ++i) raw[static_cast<size_t>(2 * i + 1)] &= 0x3F;  // finite values
    std::vector<float> want(static_cast<size_t>(n));
    tier_kernels(CpuTier::Scalar, static_cast<uint32_t>(c.type)).dequantize(raw.data(), want.data(), n);
    for (CpuTier tier : kCpuTiers) {
      if (tier == CpuTier::Scalar || !tier_supported(tier)) continue;
      std::vector<float> got(static_cast<size_t>(n));
      tier_kernels(tier, static_cast<uint32_t>(c.type)).dequantize(raw.data(), got.data(), n);
      const bool tier_same = std::memcmp(got.data(), want.data(), got.size() * sizeof(float)) == 0;
      if (!tier_same) std::printf("  %s dequantizer differs for %s\n", tier_name(tier), t.name);
      CHECK(tier_same);
    }
    bool same = true;
    for (int64_t i = 0; i < n; ++i) {
      const float got = c.elem(raw.data(), i);
      same &= std::memcmp(&got, &want[static_cast<size_t>(i)], 4) == 0;
    }
    if (!same) std::printf("  cuda dequantizer differs for %s\n", t.name);
    CHECK(same);
    if (c.chunk.decode) {
      const bool chunks_same = chunks_match(c.chunk, raw, stride, static_cast<int>(t.block_size), want);
      if (!chunks_same) std::printf("  cuda chunk dequantizer differs for %s\n", t.name);
      CHECK(chunks_same);
    }
  }
}

// The CUDA backend's K/V formats (cuda/kv_quant.cuh) against the CPU backend's, without a GPU:
// for every quantized KV type, a block stores the bytes CpuKv stores (random blocks, zeros, a
// constant block, a tie of magnitudes, values on rounding ties), decodes to the CPU decoder's
// floats, and (key types) scores against a query block as the scalar vec_dot does, the query
// quantized to the vec_dot_type as the CPU quantizes it.
void test_cuda_kv_formats() {
  uint32_t seed = 777;
  auto next = [&] {
    seed = seed * 1664525u + 1013904223u;
    return seed >> 8;
  };
  auto uniform = [&] { return (static_cast<float>(next() % 60001) - 30000.0f) / 10000.0f; };
  std::vector<std::vector<float>> blocks;
  for (int i = 0; i < 300; ++i) {
    std::vector<float> b(kQK);
    const float scale = i % 3 == 0 ? 1e-3f : (i % 3 == 1 ? 1.0f : 40.0f);
    for (float& x : b) x = uniform() * scale;
    blocks.push_back(b);
  }
  blocks.push_back(std::vector<float>(kQK, 0.0f));
  blocks.push_back(std::vector<float>(kQK, 1.25f));
  std::vector<float> tie(kQK, 0.5f);
  tie[3] = -2.0f;
  tie[9] = 2.0f;  // the first of equal magnitudes sets the sign
  blocks.push_back(tie);
  std::vector<float> halves(kQK);
  for (int j = 0; j < kQK; ++j) halves[static_cast<size_t>(j)] = static_cast<float>(j % 9 - 4) * 0.25f;
  blocks.push_back(halves);

  struct KeyDot {
    QuantizeFn quantize_query;
    VecDotFn vec_dot;
  };
  const std::vector<std::pair<KvType, KeyDot>> types = {
      {KvType::Q8_0, {scalar::quantize_q8_0, scalar::vec_dot_q8_0_q8_0}},
      {KvType::Q4_0, {scalar::quantize_q8_0, scalar::vec_dot_q4_0_q8_0}},
      {KvType::Q4_1, {scalar::quantize_q8_1, scalar::vec_dot_q4_1_q8_1}},
      {KvType::Q5_0, {scalar::quantize_q8_0, scalar::vec_dot_q5_0_q8_0}},
      {KvType::Q5_1, {scalar::quantize_q8_1, scalar::vec_dot_q5_1_q8_1}},
      {KvType::Q3_0, {nullptr, nullptr}},  // values only
  };
  for (const auto& [t, dot] : types) {
    KvLayout lo;
    lo.n_head_kv = 1;
    lo.head_dim = kQK;
    lo.n_slots = {1};
    lo.type_k = lo.type_v = t;
    lo.k_row_bytes = lo.v_row_bytes = kv_row_bytes(t, kQK);
    CpuKv cpu(lo);
    bool bytes_same = true, decode_same = true, score_same = true;
    std::vector<uint8_t> got(lo.v_row_bytes);
    for (size_t i = 0; i < blocks.size(); ++i) {
      const std::vector<float>& x = blocks[i];
      uint8_t* want = cpu.v_row(0, 0, 0);
      cpu.store_v(want, x.data());
      cuda::quantize_kv_block(t, x.data(), got.data());
      bytes_same &= std::memcmp(got.data(), want, got.size()) == 0;
      float deq[kQK];
      kv_dequantizer(t)(want, deq, kQK);
      for (int j = 0; j < kQK; ++j) {
        const float e = cuda::kv_elem(t, want, j);
        decode_same &= std::memcmp(&e, &deq[j], 4) == 0;
      }
      if (!dot.vec_dot) continue;
      const std::vector<float>& y = blocks[(i * 7 + 3) % blocks.size()];
      uint8_t qy[sizeof(BlockQ8_1)];
      dot.quantize_query(y.data(), qy, kQK);
      const float want_score = dot.vec_dot(kQK, want, qy);
      int8_t qq[kQK];
      float qd, qs;
      cuda::quantize_query_block(y.data(), qq, &qd, &qs);
      int sumi = 0;
      for (int j = 0; j < kQK; ++j) sumi += cuda::key_quant(t, want, j).q * qq[j];
      float score = 0.0f;  // accumulated from zero, as both sums are (0 + -0 is +0)
      score += cuda::key_block_score(sumi, cuda::key_quant(t, want, 0), qd, qs, cuda::key_has_min(t));
      score_same &= std::memcmp(&score, &want_score, 4) == 0;
    }
    if (!bytes_same || !decode_same || !score_same)
      std::printf("  cuda kv format %s differs: bytes %d decode %d score %d\n", kv_type_name(t), bytes_same,
                  decode_same, score_same);
    CHECK(bytes_same);
    CHECK(decode_same);
    CHECK(score_same);
  }
}

void test_half_precision() {
  int exact = 0;
  for (uint32_t h = 0; h < 65536; ++h) {
    float f = fp16_to_fp32(static_cast<uint16_t>(h));
    if (std::isnan(f)) {
      ++exact;
      continue;
    }
    exact += fp32_to_fp16(f) == h;
  }
  CHECK(exact == 65536);
  CHECK(bf16_to_fp32(fp32_to_bf16(1.5f)) == 1.5f);
}

// The registry contract: the type table (layout, quant.h) and the CPU kernel table
// (cpu/kernels_cpu.h) agree. Every computable type has CPU kernels in both the best and the
// scalar table; layout-only and unknown ids have none; the computable block formats' sizes are
// their structs'; each vec_dot_type is a computable type the CPU can quantize to.
void test_type_registry() {
  struct Block {
    GgmlType id;
    int64_t block_size;
    size_t type_size;
  };
  const Block blocks[] = {
      {GgmlType::Q4_0, kQK, sizeof(BlockQ4_0)},    {GgmlType::Q4_1, kQK, sizeof(BlockQ4_1)},
      {GgmlType::Q5_0, kQK, sizeof(BlockQ5_0)},    {GgmlType::Q5_1, kQK, sizeof(BlockQ5_1)},
      {GgmlType::Q8_0, kQK, sizeof(BlockQ8_0)},    {GgmlType::Q8_1, kQK, sizeof(BlockQ8_1)},
      {GgmlType::Q2_K, kQK_K, sizeof(BlockQ2_K)},  {GgmlType::Q3_K, kQK_K, sizeof(BlockQ3_K)},
      {GgmlType::Q4_K, kQK_K, sizeof(BlockQ4_K)},  {GgmlType::Q5_K, kQK_K, sizeof(BlockQ5_K)},
      {GgmlType::Q6_K, kQK_K, sizeof(BlockQ6_K)},  {GgmlType::Q8_K, kQK_K, sizeof(BlockQ8_K)},
  };
  for (const Block& b : blocks) {
    const TypeTraits& t = type_traits(b.id);
    CHECK(t.computable && t.is_quantized);
    CHECK(t.block_size == b.block_size);
    CHECK(t.type_size == b.type_size);
  }
  int n_computable = 0, n_layout_only = 0;
  for (uint32_t id = 0; id < kGgmlTypeLimit + 2; ++id) {
    const TypeTraits& t = type_traits(id);
    const CpuKernels& best = cpu_kernels(id);
    const CpuKernels& portable = tier_kernels(CpuTier::Scalar, id);
    CHECK(type_known(id) == (t.name != nullptr));
    CHECK(type_supported(id) == (t.name != nullptr && t.computable));
    if (t.name == nullptr) {
      CHECK(!t.computable);
      CHECK(best.dequantize == nullptr && best.vec_dot == nullptr && portable.dequantize == nullptr);
      continue;
    }
    CHECK(t.block_size >= 1 && t.type_size >= 1);
    CHECK(row_bytes(static_cast<GgmlType>(id), t.block_size * 3) == t.type_size * 3);
    if (!t.computable) {
      ++n_layout_only;
      CHECK(t.is_quantized);
      CHECK(best.dequantize == nullptr && best.quantize == nullptr && best.vec_dot == nullptr &&
            best.vec_dot_f32 == nullptr && best.gemm == nullptr);
      CHECK(portable.dequantize == nullptr && portable.vec_dot == nullptr);
      continue;
    }
    ++n_computable;
    // Every supported tier's table is complete for every computable type.
    for (CpuTier tier : kCpuTiers) {
      if (!tier_supported(tier)) continue;
      const CpuKernels& k = tier_kernels(tier, id);
      CHECK(k.dequantize != nullptr && k.vec_dot != nullptr && k.vec_dot_f32 != nullptr && k.gemm != nullptr);
      CHECK((k.quantize != nullptr) == (portable.quantize != nullptr));
    }
    CHECK(best.dequantize != nullptr && best.vec_dot != nullptr && best.vec_dot_f32 != nullptr && best.gemm != nullptr);
    CHECK((best.quantize != nullptr) == (portable.quantize != nullptr));
    CHECK(t.is_quantized == (t.block_size > 1));
    // The activation format: computable, quantizable by the CPU, and the same block size.
    const TypeTraits& act = type_traits(t.vec_dot_type);
    CHECK(act.computable);
    CHECK(act.block_size == t.block_size);
    CHECK(t.vec_dot_type == GgmlType::F32 || cpu_kernels(t.vec_dot_type).quantize != nullptr);
  }
  CHECK(n_computable == 20);
  CHECK(n_layout_only == 12);
  CHECK(throws<FormatError>([] { require_computable(static_cast<uint32_t>(GgmlType::IQ2_XXS), "t"); },
                            "IQ2_XXS is not supported"));
  CHECK(throws<FormatError>([] { require_computable(4, "t"); }, "unknown type id 4"));
  CHECK(throws<ArgumentError>([] {
    float out[256];
    const uint8_t raw[66] = {};
    dequantize_row(GgmlType::IQ2_XXS, raw, out, 256);
  }, "no CPU kernel"));
  // dequantize_row is the best table's kernel.
  BlockQ8_0 q{};
  q.d = fp32_to_fp16(0.5f);
  for (int i = 0; i < kQK; ++i) q.qs[i] = static_cast<int8_t>(i - 16);
  float out[kQK];
  dequantize_row(GgmlType::Q8_0, &q, out, kQK);
  bool same = true;
  for (int i = 0; i < kQK; ++i) same = same && out[i] == 0.5f * static_cast<float>(i - 16);
  CHECK(same);
  CHECK(std::strcmp(kernel_isa(), tier_name(active_tier())) == 0);
  CHECK(tier_supported(CpuTier::Scalar) && tier_supported(active_tier()));
}

void test_builtin_policies() {
  // 6 slots, capacity 4, one to evict; slot 3 is protected.
  int32_t pos[6] = {0, 5, 2, 1, 4, -1};
  uint8_t prot[6] = {0, 0, 0, 1, 0, 0};
  float probs[6] = {0.5f, 0.1f, 0.1f, 0.0f, 0.3f, 0.0f};
  float state[6] = {0};
  tova_policy_view v{};
  v.capacity = 4;
  v.n_slots = 6;
  v.n_valid = 5;
  v.n_evict = 1;
  v.n_heads = 1;
  v.pos = pos;
  v.protect = prot;
  v.probs = probs;
  v.probs_mean = probs;
  v.state = state;
  int32_t out = -1;
  PolicyHandle window = make_builtin_policy("window");
  CHECK(window->select(window->user, &v, &out) == 0 && out == 0);  // oldest unprotected
  PolicyHandle tova = make_builtin_policy("tova");
  CHECK(tova->select(tova->user, &v, &out) == 0 && out == 2);  // lowest score, tie -> smaller pos
  CHECK(throws<ArgumentError>([] { make_builtin_policy("lru"); }, "unknown policy 'lru'"));
}

void test_utf8_stream() {
  Utf8Stream s;
  const std::string emoji = "\xF0\x9F\x98\x80";  // U+1F600
  CHECK(s.push(emoji.substr(0, 1)).empty());
  CHECK(s.push(emoji.substr(1, 2)).empty());
  CHECK(s.push(emoji.substr(3) + "a") == emoji + "a");
}

void test_perplexity_plan() {
  PerplexityParams p;
  PerplexityPlan s = plan_perplexity(10, p, true);  // streaming: one window, no BOS replaced
  CHECK(s.windows.size() == 1 && s.windows[0].length == 10 && s.score_from == 0 && !s.replace_bos);
  p.context = 32;
  PerplexityPlan w = plan_perplexity(100, p, true);  // 3 windows, rows 16..30
  CHECK(w.windows.size() == 3 && w.windows[2].start == 64 && w.score_from == 16 && w.replace_bos);
  CHECK(w.total_tokens() == 96);
  p.stride = 8;
  PerplexityPlan o = plan_perplexity(80, p, false);  // 7 windows, each scoring its last 8
  CHECK(o.windows.size() == 7 && o.score_from == 23 && o.windows[6].start == 48);
  p.chunks = 2;
  CHECK(plan_perplexity(80, p, false).windows.size() == 2);
  p.stride_name = "--stride";
  p.stride = 32;
  CHECK(throws<ArgumentError>([&] { plan_perplexity(80, p, false); }, "--stride must be smaller"));
  PerplexityParams q;
  q.stride = 4;
  CHECK(throws<ArgumentError>([&] { plan_perplexity(80, q, false); }, "stride needs context"));
  q = PerplexityParams();
  CHECK(throws<ArgumentError>([&] { plan_perplexity(1, q, false); }, "at least 2"));
}

void test_nll_stats() {
  const NllStats s = nll_stats({1.0, 2.0, 3.0, 4.0});
  CHECK(s.nll == 2.5 && std::fabs(s.nll_stderr - std::sqrt(1.25 / 3)) < 1e-15);
  CHECK(std::fabs(s.ppl_stderr - std::exp(2.5) * std::sqrt(1.25 / 3)) < 1e-12);
  CHECK(nll_stats(std::vector<double>(5, 0.7)).ppl_stderr == 0.0);
  CHECK(throws<ArgumentError>([] { nll_stats({}); }, "no tokens were scored"));
  const float row[3] = {1.0f, 2.0f, 3.0f};
  CHECK(std::fabs(row_nll(row, 3, 2) - (std::log(std::exp(-2.0) + std::exp(-1.0) + 1.0))) < 1e-6);
}

// tova's 3-bit KV value format: exact on its own grid, within one step of any block, 14 bytes.
void test_q3_0_codec() {
  CHECK(kv_row_bytes(KvType::Q3_0, 64) == 28 && kv_block_size(KvType::Q3_0) == 32);
  const DequantizeFn decode = kv_dequantizer(KvType::Q3_0);
  BlockQ3_0 b[2];
  float x[64], y[64];
  for (int j = 0; j < 64; ++j) x[j] = 0.25f * static_cast<float>((j * 5) % 8 - 4);  // -1 .. 0.75
  x[3] = -1.0f;  // the largest magnitude is -4 steps: d = 0.25 exactly
  x[40] = -1.0f;
  scalar::quantize_q3_0(x, b, 64);
  decode(b, y, 64);
  CHECK(std::memcmp(x, y, sizeof(x)) == 0);
  uint32_t r = 7;
  bool within = true, same = true;
  for (int rep = 0; rep < 200; ++rep) {
    for (float& v : x) {
      r = r * 1664525u + 1013904223u;
      v = (static_cast<float>(r >> 8) / 16777216.0f - 0.5f) * static_cast<float>(1 + rep % 7);
    }
    scalar::quantize_q3_0(x, b, 64);
    decode(b, y, 64);
#if defined(TOVA_X86)
    if (tier_supported(CpuTier::Avx2)) {  // the SIMD decoder equals the portable one bit for bit
      float z[64];
      avx2::dequantize_q3_0(b, z, 64);
      scalar::dequantize_q3_0(b, y, 64);
      same = same && std::memcmp(y, z, sizeof(z)) == 0;
    }
#endif
    for (int blk = 0; blk < 2; ++blk) {
      const float d = std::fabs(fp16_to_fp32(b[blk].d));
      for (int j = blk * 32; j < blk * 32 + 32; ++j) within = within && std::fabs(y[j] - x[j]) <= d * 1.001f;
    }
  }
  CHECK(within && same);
  for (float& v : x) v = 0.0f;
  scalar::quantize_q3_0(x, b, 64);
  decode(b, y, 64);
  bool zeros = true;
  for (float v : y) zeros = zeros && v == 0.0f;  // (-0 where d is -0)
  CHECK(zeros);
}

// Tokens known by their text (token_texts.h): the families' exceptions on small vocabularies.
void test_token_texts() {
  auto run = [](std::vector<std::string> texts, std::vector<TokenType>& types, std::vector<int32_t> file_ids,
                const int32_t (&fim)[6]) {
    types.assign(texts.size(), TokenType::Normal);
    auto lookup = [&texts](std::string_view t) {
      for (size_t i = 0; i < texts.size(); ++i)
        if (texts[i] == t) return static_cast<int32_t>(i);
      return int32_t{-1};
    };
    return recognize_token_texts(lookup, types, file_ids, fim);
  };
  const int32_t none[6] = {-1, -1, -1, -1, -1, -1};
  std::vector<TokenType> types;
  // A normal "</s>" ends generation and becomes control; a FIM pad found by text too.
  std::vector<int32_t> eog = run({"a", "</s>", "<|fim_pad|>", "<|channel|>"}, types, {0}, none);
  CHECK((eog == std::vector<int32_t>{0, 1, 2}));
  CHECK(types[1] == TokenType::Control && types[2] == TokenType::Control && types[0] == TokenType::Normal);
  CHECK(types[3] == TokenType::UserDefined);
  // A FIM kind the file names by id: its texts are left alone (pad named: id 0 ends generation).
  const int32_t pad0[6] = {-1, -1, -1, 0, -1, -1};
  eog = run({"a", "<|fim_pad|>"}, types, {}, pad0);
  CHECK((eog == std::vector<int32_t>{0}) && types[1] == TokenType::Normal);
  // harmony: <|end|> does not end generation and is user-defined.
  eog = run({"<|return|>", "<|call|>", "<|end|>"}, types, {}, none);
  CHECK((eog == std::vector<int32_t>{0, 1}) && types[2] == TokenType::UserDefined);
  // plamo: with its EOS "<|plamo:eos|>", "</s>" is a normal token.
  eog = run({"<|plamo:eos|>", "</s>"}, types, {0}, none);
  CHECK((eog == std::vector<int32_t>{0}) && types[1] == TokenType::Normal);
}

// The memory an engine may still take: known on Linux, within the machine's, not more than
// MemAvailable says.
void test_available_memory() {
  const uint64_t have = available_memory_bytes();
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
  CHECK(have > 0 && have != UINT64_MAX);
  CHECK(have <= static_cast<uint64_t>(pages) * static_cast<uint64_t>(page));
  FILE* f = std::fopen("/proc/meminfo", "r");
  char line[256];
  unsigned long long kib = 0;
  while (f && std::fgets(line, sizeof line, f))
    if (std::sscanf(line, "MemAvailable: %llu", &kib) == 1) break;
  if (f) std::fclose(f);
  // (read a moment later: within 1 GiB of it)
  CHECK(kib == 0 || have <= kib * 1024 + (uint64_t{1} << 30));
}

}  // namespace

int main() {
  test_available_memory();
  test_token_texts();
  test_thread_pool();
  test_gguf_buffer();
  test_half_precision();
  test_dequantizers_agree();
  test_cuda_kv_formats();
  test_type_registry();
  test_builtin_policies();
  test_utf8_stream();
  test_perplexity_plan();
  test_nll_stats();
  test_q3_0_codec();
  tova_test::test_kernel_tiers();
  std::printf("%d passed, %d failed\n", g_passed, g_failed);
  return g_failed == 0 ? 0 : 1;
}
