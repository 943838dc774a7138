#include "kv_policy.h"

#include <cstddef>

#include <cerrno>
#include <dlfcn.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstring>
#include <utility>

#include "common.h"

namespace tova {

namespace {

// Writes to out the `n` unprotected valid slots with the lowest (key(slot), pos), skipping those
// for which skip(slot) is true. Deterministic: ties go to the smallest position.
template <class Key, class Skip>
int select_lowest(const tova_policy_view* v, int32_t* out, Key key, Skip skip) {
  std::vector<int32_t> cand;
  cand.reserve(static_cast<size_t>(v->n_slots));
  for (int32_t s = 0; s < v->n_slots; ++s)
    if (v->pos[s] >= 0 && !v->protect[s] && !skip(s)) cand.push_back(s);
  if (static_cast<int32_t>(cand.size()) < v->n_evict) return 1;
  auto less = [&](int32_t a, int32_t b) {
    float ka = key(a), kb = key(b);
    if (ka != kb) return ka < kb;
    return v->pos[a] < v->pos[b];
  };
  std::partial_sort(cand.begin(), cand.begin() + v->n_evict, cand.end(), less);
  std::copy(cand.begin(), cand.begin() + v->n_evict, out);
  return 0;
}

const char* not_enough(void*) { return "fewer evictable slots than must be evicted"; }

// window / sink: the oldest unprotected token goes (sinks are protected by the store).
int window_select(void*, const tova_policy_view* v, int32_t* out) {
  return select_lowest(v, out, [](int32_t) { return 0.0f; }, [](int32_t) { return false; });
}

// tova: the lowest attention from the current query, averaged over all query heads.
int tova_select(void*, const tova_policy_view* v, int32_t* out) {
  return select_lowest(v, out, [v](int32_t s) { return v->probs_mean[s]; },
                       [](int32_t) { return false; });
}

// h2o: accumulated head-mean attention; the C/2 most recent positions are protected.
int h2o_select(void*, const tova_policy_view* v, int32_t* out) {
  for (int32_t s = 0; s < v->n_slots; ++s)
    if (v->pos[s] >= 0) v->state[s] += v->probs_mean[s];
  if (v->n_evict == 0) return 0;
  const int32_t threshold = h2o_recent_start(v->pos, v->n_slots, v->capacity);
  return select_lowest(v, out, [v](int32_t s) { return v->state[s]; },
                       [v, threshold](int32_t s) { return v->pos[s] >= threshold; });
}

// tova_ema (docs/policies.md): TOVA's head-mean attention smoothed over steps, every step:
// state = a * state + (1 - a) * p_mean for the kept tokens, p_mean for the tokens written in this
// step (the new one; a chunk's in chunked prefill); evict the lowest state. A token written is
// marked unseen (kTovaEmaUnseen: an average is never negative) until its first select().
void tova_ema_insert(void*, const tova_policy_view* v, int32_t slot) { v->state[slot] = kTovaEmaUnseen; }

int tova_ema_select(void*, const tova_policy_view* v, int32_t* out) {
  const float a = kTovaEmaDecay, b = 1.0f - kTovaEmaDecay;
  for (int32_t s = 0; s < v->n_slots; ++s) {
    if (v->pos[s] < 0) continue;
    v->state[s] = v->state[s] < 0.0f ? v->probs_mean[s] : a * v->state[s] + b * v->probs_mean[s];
  }
  if (v->n_evict == 0) return 0;
  return select_lowest(v, out, [v](int32_t s) { return v->state[s]; }, [](int32_t) { return false; });
}

int full_select(void*, const tova_policy_view* v, int32_t*) { return v->n_evict == 0 ? 0 : 1; }
const char* full_error(void*) { return "the full policy never evicts: the context is full"; }

tova_policy* new_builtin(const char* name, uint32_t flags,
                         int (*select)(void*, const tova_policy_view*, int32_t*),
                         const char* (*err)(void*)) {
  auto* p = new tova_policy{};
  p->abi_version = TOVA_POLICY_ABI_VERSION;
  p->struct_size = sizeof(tova_policy);
  p->name = name;
  p->flags = flags;
  p->select = select;
  p->last_error = err;
  p->destroy = [](tova_policy* self) { delete self; };
  return p;
}

}  // namespace

PolicyHandle::PolicyHandle(tova_policy* p, std::shared_ptr<void> library, std::string origin)
    : p_(p), library_(std::move(library)), origin_(std::move(origin)) {}

PolicyHandle::~PolicyHandle() {
  if (p_ && p_->destroy) p_->destroy(p_);
}

PolicyHandle::PolicyHandle(PolicyHandle&& o) noexcept
    : p_(std::exchange(o.p_, nullptr)), library_(std::move(o.library_)), origin_(std::move(o.origin_)) {}

PolicyHandle& PolicyHandle::operator=(PolicyHandle&& o) noexcept {
  if (this != &o) {
    if (p_ && p_->destroy) p_->destroy(p_);
    p_ = std::exchange(o.p_, nullptr);
    library_ = std::move(o.library_);
    origin_ = std::move(o.origin_);
  }
  return *this;
}

const std::vector<std::string>& builtin_policy_names() {
  static const std::vector<std::string> names = {"tova", "h2o", "sink", "window", "full", "tova_ema"};
  return names;
}

bool is_builtin_policy(const std::string& name) {
  const auto& n = builtin_policy_names();
  return std::find(n.begin(), n.end(), name) != n.end();
}

// The positions are distinct, so the recent window is every slot at or above this one.
int32_t h2o_recent_start(const int32_t* pos, int32_t n_slots, int32_t capacity) {
  const int32_t recent = capacity / 2;
  std::vector<int32_t> ps;
  for (int32_t s = 0; s < n_slots; ++s)
    if (pos[s] >= 0) ps.push_back(pos[s]);
  if (recent <= 0 || ps.empty()) return INT32_MAX;
  const size_t k = std::min(ps.size(), static_cast<size_t>(recent));
  std::nth_element(ps.begin(), ps.begin() + (k - 1), ps.end(), std::greater<int32_t>());
  return ps[k - 1];
}

BuiltinRule builtin_rule(const tova_policy* p) {
  if (!p) return BuiltinRule::None;
  if (p->select == tova_select) return BuiltinRule::Tova;
  if (p->select == h2o_select) return BuiltinRule::H2o;
  if (p->select == tova_ema_select) return BuiltinRule::TovaEma;
  return BuiltinRule::None;
}

int default_n_sink(const std::string& policy) { return policy == "sink" ? 4 : 0; }

PolicyHandle make_builtin_policy(const std::string& name) {
  tova_policy* p = nullptr;
  // The built-ins read the head mean only (TOVA_POLICY_MEAN_ONLY).
  constexpr uint32_t kMean = TOVA_POLICY_NEEDS_PROBS | TOVA_POLICY_MEAN_ONLY;
  if (name == "tova") p = new_builtin("tova", kMean, tova_select, not_enough);
  else if (name == "h2o")
    p = new_builtin("h2o", kMean | TOVA_POLICY_EVERY_STEP, h2o_select, not_enough);
  else if (name == "tova_ema") {
    p = new_builtin("tova_ema", kMean | TOVA_POLICY_EVERY_STEP, tova_ema_select, not_enough);
    p->on_insert = tova_ema_insert;
  }
  else if (name == "window") p = new_builtin("window", 0, window_select, not_enough);
  else if (name == "sink") p = new_builtin("sink", 0, window_select, not_enough);
  else if (name == "full") p = new_builtin("full", 0, full_select, full_error);
  if (!p) {
    std::string known;
    for (const auto& n : builtin_policy_names()) known += cat(known.empty() ? "" : ", ", n);
    throw ArgumentError(cat("unknown policy '", name, "' (known: ", known, ")"));
  }
  return PolicyHandle(p, nullptr, "built-in policy '" + name + "'");
}

void check_policy_abi(const tova_policy* p, const std::string& origin) {
  if (!p) throw Error(cat(origin, ": returned no policy (NULL)"));
  if (p->abi_version < TOVA_POLICY_ABI_VERSION_MIN || p->abi_version > TOVA_POLICY_ABI_VERSION)
    throw Error(cat(origin, ": policy ABI version ", p->abi_version, ", this tova speaks versions ",
                    TOVA_POLICY_ABI_VERSION_MIN, " to ", TOVA_POLICY_ABI_VERSION));
  const size_t need = p->abi_version >= 2 ? sizeof(tova_policy) : TOVA_POLICY_V1_SIZE;
  if (p->struct_size < need)
    throw Error(cat(origin, ": policy struct is ", p->struct_size, " bytes, ABI version ", p->abi_version,
                    " needs at least ", need));
  if (!p->select) throw Error(cat(origin, ": policy has no select callback"));
}

PolicyHandle load_policy_plugin(const std::string& path, const std::string& args) {
  // dlopen searches the library path for a name without a slash: a file of that name here is
  // the one meant (as a shell user expects of `--policy-plugin libmine.so`).
  std::string open_as = path;
  struct stat st {};
  if (path.find('/') == std::string::npos && ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode))
    open_as = "./" + path;
  // A path to no file (a name searched in the library path aside) is FileNotFound; a file that
  // is not a plugin, an argument error (Python: FileNotFoundError, ValueError).
  if (path.find('/') != std::string::npos && ::stat(path.c_str(), &st) != 0 && errno == ENOENT)
    throw FileNotFound(cat("cannot load policy plugin '", path, "': no such file"));
  void* lib = ::dlopen(open_as.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!lib) {
    const char* e = ::dlerror();
    throw ArgumentError(cat("cannot load policy plugin '", path, "': ", e ? e : "unknown error"));
  }
  std::shared_ptr<void> holder(lib, [](void* h) { ::dlclose(h); });
  auto create = reinterpret_cast<tova_policy_create_fn>(::dlsym(lib, "tova_policy_create"));
  if (!create)
    throw ArgumentError(cat("policy plugin '", path, "' does not export tova_policy_create"));
  tova_policy* p = create(args.c_str());
  const std::string origin = cat("policy plugin '", path, "'");
  try {
    check_policy_abi(p, origin);
  } catch (...) {
    // Refused, but still the plugin's object: released through its destroy callback when the
    // struct is large enough to hold that field (before the library is closed).
    if (p && p->struct_size >= offsetof(tova_policy, destroy) + sizeof(p->destroy) && p->destroy) p->destroy(p);
    throw;
  }
  return PolicyHandle(p, std::move(holder), origin);
}

}  // namespace tova
