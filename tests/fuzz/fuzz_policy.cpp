// The KV store's checks of a policy's answers (kv_store.cpp: apply_policy): a policy whose
// select() returns fuzzer-chosen slots (out of range, empty, protected, repeated, too few) or
// fails, over a store of fuzzer-chosen shape. Every bad answer must be an error that leaves the
// store consistent; the slot tables are checked after every step.
#include <exception>
#include <memory>
#include <vector>

#include "arch.h"
#include "backend.h"
#include "cpu/kv_cpu.h"
#include "fuzz_common.h"
#include "kv_store.h"

namespace {

// Only the K/V payload of a backend is needed here.
class PayloadOnly : public tova::Backend {
 public:
  const char* name() const override { return "fuzz"; }
  int n_threads() const override { return 1; }
  int max_rows() const override { return 1; }
  std::unique_ptr<tova::KvPayload> new_kv(const tova::KvLayout& l) override { return std::make_unique<tova::CpuKv>(l); }
  void copy_kv(tova::KvPayload&, const tova::KvPayload&) override { __builtin_trap(); }
  void demote_kv(tova::KvPayload& kv, int layer, int src, int dst) override {
    static_cast<tova::CpuKv&>(kv).demote(layer, src, dst);
  }
  float* buf(tova::Buf) override { __builtin_trap(); }
  void embed(const int32_t*, int, float, float*) override { __builtin_trap(); }
  void rms_norm(const float*, const tova::Vector&, float*, int64_t, int64_t, float) override { __builtin_trap(); }
  void matmul(const float*, int, const MatJob*, int) override { __builtin_trap(); }
  void matmul_to_host(const tova::Matrix&, const float*, int, float*) override { __builtin_trap(); }
  void rope(const tova::Rope&, float*, int, int, int, const int64_t*) override { __builtin_trap(); }
  void act_mul(tova::FfnActivation, float*, const float*, int64_t) override { __builtin_trap(); }
  void add(float*, const float*, int64_t) override { __builtin_trap(); }
  void write_kv(tova::KvPayload&, int, const int32_t*, int, const float*, const float*) override { __builtin_trap(); }
  void attend(const tova::AttnShape&, const tova::AttnRow*, int) override { __builtin_trap(); }
};

struct Script {
  tova_fuzz::Bytes* in;
};

int select_from_input(void* user, const tova_policy_view* v, int32_t* out) {
  auto* s = static_cast<Script*>(user);
  if (s->in->u8() == 0xFF) return 1;  // a failing policy
  for (int i = 0; i < v->n_evict; ++i) out[i] = static_cast<int32_t>(s->in->u8()) - 2;  // -2 .. 253
  return 0;
}

void check_tables(const tova::LayerCells& L) {
  int valid = 0;
  for (int s = 0; s < L.n_slots; ++s) valid += L.pos[static_cast<size_t>(s)] >= 0;
  if (valid != L.n_valid || L.n_valid > L.n_slots) __builtin_trap();
  // The position order names every occupied slot once, positions ascending.
  if (static_cast<int>(L.order.size()) != L.n_valid) __builtin_trap();
  for (size_t i = 0; i < L.order.size(); ++i) {
    const int32_t s = L.order[i];
    if (s < 0 || s >= L.n_slots || L.pos[static_cast<size_t>(s)] < 0) __builtin_trap();
    if (i > 0 && L.pos[static_cast<size_t>(L.order[i - 1])] >= L.pos[static_cast<size_t>(s)]) __builtin_trap();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  tova_fuzz::Bytes in(data, size);
  tova::HParams hp;
  hp.n_layer = 2;
  hp.n_head = 2;
  hp.n_head_kv = 1;
  hp.head_dim = 8;
  hp.n_embd = 16;
  tova::KvConfig cfg;
  cfg.capacity = 1 + in.u8() % 8;
  cfg.max_step = 1 + in.u8() % 4;
  cfg.n_sink = in.u8() % 4;
  cfg.type_k = cfg.type_v = tova::KvType::F32;
  const uint8_t flags = in.u8();
  if (flags & 0x80) {  // two tiers: an upper tier of 1 .. capacity - 1 tokens
    cfg.hi_capacity = cfg.capacity > 1 ? 1 + in.u8() % (cfg.capacity - 1) : 0;
    cfg.type_k_lo = cfg.type_v_lo = tova::KvType::F16;
  }
  PayloadOnly backend;
  tova::KvStore store(hp, cfg, backend);

  Script script{&in};
  tova_policy policy{};
  policy.abi_version = TOVA_POLICY_ABI_VERSION;
  policy.struct_size = sizeof(tova_policy);
  policy.name = "fuzz";
  policy.flags = flags & (TOVA_POLICY_NEEDS_PROBS | TOVA_POLICY_EVERY_STEP);
  policy.user = &script;
  policy.select = select_from_input;
  std::vector<float> probs(static_cast<size_t>(hp.n_head) * 16, 0.1f), mean(16, 0.1f);
  tova::PolicyCall call;
  call.policy = &policy;
  call.n_head = hp.n_head;
  if (policy.flags & TOVA_POLICY_NEEDS_PROBS) {
    call.probs = probs.data();
    call.probs_mean = mean.data();
  }
  for (int64_t t = 0; t < 64 && !in.empty(); ++t) {
    for (int l = 0; l < hp.n_layer; ++l) {
      try {
        const int slot = store.insert(l, t, -1, false, backend, t);
        store.notify_insert(l, slot, t, call);
        store.apply_policy(l, t, slot, false, call);
        if (store.layer(l).n_valid > store.layer(l).capacity) __builtin_trap();  // accepted: evicted enough
      } catch (const std::exception&) {
      }
      check_tables(store.layer(l));
    }
  }
  return 0;
}
