#include "engine.h"

#include <algorithm>
#include <thread>

#include "common.h"

namespace tova {

void EngineParams::validate() const {
  if (n_threads < 0) throw ArgumentError(cat("n_threads must be >= 0 (0 = all cores), got ", n_threads));
  if (kv_size < 1) throw ArgumentError(cat("kv_size must be at least 1, got ", kv_size));
  if (n_ctx < 1) throw ArgumentError(cat("n_ctx must be at least 1, got ", n_ctx));
  if (chunk < 1) throw ArgumentError(cat("chunk must be at least 1, got ", chunk));
  if (!plugin && !is_builtin_policy(policy)) make_builtin_policy(policy);  // throws the listing
  if (prefill != "exact" && prefill != "chunked")
    throw ArgumentError(cat("unknown prefill mode '", prefill, "' (known: exact, chunked)"));
  if (positions != "original" && positions != "cache_index")
    throw ArgumentError(cat("unknown positions mode '", positions, "' (known: original, cache_index)"));
  parse_kv_type(kv_type);
  const int sink = n_sink >= 0 ? n_sink : default_n_sink(policy);
  if (policy != "full" && kv_size < sink + 1)
    throw ArgumentError(cat("kv_size ", kv_size, " is too small: it must exceed n_sink ", sink,
                            " (at least ", sink + 1, ")"));
}

const char* finish_reason_name(FinishReason r) {
  switch (r) {
    case FinishReason::None: return "none";
    case FinishReason::Stop: return "stop";
    case FinishReason::Length: return "length";
    case FinishReason::Cancelled: return "cancelled";
  }
  return "?";
}

static int default_threads() {
  unsigned n = std::thread::hardware_concurrency();
  return n == 0 ? 1 : static_cast<int>(std::min(n, 16u));
}

Engine::Engine(const std::string& model_path, EngineParams params) : params_(std::move(params)) {
  params_.validate();
  model_ = std::make_unique<Model>(model_path);
  const HParams& h = model_->hp();
  const bool full = !params_.plugin && params_.policy == "full";
  if (!full && params_.kv_size > h.n_ctx_train)
    throw ArgumentError(cat("kv_size ", params_.kv_size, " is larger than the model's context ",
                            h.n_ctx_train));
  pool_ = std::make_unique<ThreadPool>(params_.n_threads > 0 ? params_.n_threads : default_threads());
  KvConfig kc;
  kc.capacity = full ? params_.n_ctx : params_.kv_size;
  kc.max_step = params_.chunk;
  kc.type = parse_kv_type(params_.kv_type);
  kc.n_sink = params_.n_sink >= 0 ? params_.n_sink : default_n_sink(params_.policy);
  store_ = std::make_unique<KvStore>(h, kc, full);
  forward_ = std::make_unique<ForwardCpu>(*model_, params_.chunk, params_.float_activations);
  policy_ = params_.plugin ? std::move(params_.plugin) : make_builtin_policy(params_.policy);
  check_policy_abi(policy_.get(), policy_.origin());
  window_ = make_builtin_policy("window");
  policies_.policy.resize(static_cast<size_t>(h.n_layer));
  for (int l = 0; l < h.n_layer; ++l)
    policies_.policy[static_cast<size_t>(l)] = h.is_swa_layer(l) ? window_.get() : policy_.get();
  policies_.never_evicts = full;
  policies_.cache_index = params_.positions == "cache_index";
  policies_.chunked = params_.prefill == "chunked";
  policies_.n_sink = kc.n_sink;
  logits_.resize(static_cast<size_t>(h.n_vocab));
}

Engine::~Engine() = default;

const char* Engine::policy_name() const { return policy_->name ? policy_->name : "plugin"; }

std::vector<int32_t> Engine::tokenize(const std::string& text, bool add_bos, bool special) const {
  return model_->tokenizer().encode(text, add_bos, special);
}

std::string Engine::detokenize(const std::vector<int32_t>& ids, bool special) const {
  const Tokenizer& t = model_->tokenizer();
  for (int32_t id : ids)
    if (id < 0 || id >= t.n_vocab())
      throw ArgumentError(cat("token id ", id, " is out of range [0, ", t.n_vocab(), ")"));
  return t.decode(ids, special);
}

int64_t Engine::remaining_context() const {
  if (policies_.never_evicts) return params_.n_ctx - n_past_;
  return -1;
}

void Engine::check_fits(int64_t n_new) const {
  const int64_t room = remaining_context();
  if (room >= 0 && n_new > room)
    throw ArgumentError(cat(n_past_ > 0 ? cat(n_past_, " cached + ") : std::string(), n_new,
                            " tokens exceed n_ctx ", params_.n_ctx,
                            " (policy 'full' never evicts: raise n_ctx or use an evicting policy)"));
}

void Engine::eval(const std::vector<int32_t>& ids, bool all_logits, std::vector<float>& logits) {
  if (ids.empty()) throw ArgumentError("eval needs at least one token");
  check_fits(static_cast<int64_t>(ids.size()));
  const int V = model_->hp().n_vocab;
  for (int32_t id : ids)
    if (id < 0 || id >= V) throw ArgumentError(cat("token id ", id, " is out of range [0, ", V, ")"));
  if (all_logits) logits.resize(ids.size() * static_cast<size_t>(V));
  const int U = params_.chunk;
  for (size_t b = 0; b < ids.size(); b += static_cast<size_t>(U)) {
    const int n = static_cast<int>(std::min(ids.size() - b, static_cast<size_t>(U)));
    const bool last = b + static_cast<size_t>(n) == ids.size();
    float* out = all_logits ? logits.data() + b * static_cast<size_t>(V) : (last ? logits_.data() : nullptr);
    try {
      if (b > 0 && interrupt_hook) interrupt_hook();
      forward_->run(*pool_, *store_, policies_, ids.data() + b, n, n_past_, all_logits, out);
    } catch (...) {
      reset();  // the store may be half-updated: start the sequence over, keep the engine usable
      throw;
    }
    n_past_ += n;
    history_.insert(history_.end(), ids.begin() + static_cast<std::ptrdiff_t>(b),
                    ids.begin() + static_cast<std::ptrdiff_t>(b) + n);
    // Fixed memory: keep only the most recent tokens (amortized: trim at twice the bound).
    if (history_.size() > 2 * kHistoryKeep)
      history_.erase(history_.begin(), history_.end() - static_cast<std::ptrdiff_t>(kHistoryKeep));
  }
  if (all_logits) {
    std::copy(logits.end() - V, logits.end(), logits_.begin());
  } else {
    logits = logits_;
  }
}

void Engine::reset() {
  store_->clear();
  if (policy_->reset) policy_->reset(policy_->user);
  history_.clear();
  n_past_ = 0;
  policies_.protect_below = -1;
}

std::vector<int32_t> Engine::kv_positions(int layer) const {
  if (layer < 0 || layer >= store_->n_layer())
    throw ArgumentError(cat("layer ", layer, " is out of range [0, ", store_->n_layer(), ")"));
  std::vector<int32_t> out;
  for (int32_t p : store_->layer(layer).pos)
    if (p >= 0) out.push_back(p);
  std::sort(out.begin(), out.end());
  return out;
}

int64_t Engine::evictions() const {
  int64_t n = 0;
  for (int l = 0; l < store_->n_layer(); ++l) n += store_->layer(l).n_evicted;
  return n;
}

// ---- Generation: the one decode loop --------------------------------------------------------

Generation::Generation(Engine& engine, const std::vector<int32_t>& prompt, const GenerateParams& params)
    : engine_(engine), params_(params), sampler_(params.sampling) {
  if (params_.max_tokens < 0)
    throw ArgumentError(cat("max_tokens must be >= 0, got ", params_.max_tokens));
  for (const auto& s : params_.stop)
    if (s.empty()) throw ArgumentError("stop strings must not be empty");
  if (prompt.empty()) throw ArgumentError("the prompt is empty (no tokens to condition on)");
  engine_.cancel_requested.store(false);
  Stats& st = engine_.last_stats;
  st = Stats{};
  st.prompt_tokens = static_cast<int64_t>(prompt.size());
  const double t0 = now_seconds();
  std::vector<float> unused;
  engine_.eval(prompt, false, unused);
  st.prompt_seconds = now_seconds() - t0;
  for (int32_t t : prompt) sampler_.accept(t);
  if (params_.max_tokens == 0) finish_ = FinishReason::Length;
  st.finish = finish_;
}

void Generation::cancel() {
  if (!finished()) finish_ = FinishReason::Cancelled;
  engine_.last_stats.finish = finish_;
}

std::string Generation::release_text(bool final) {
  if (final) {
    held_ += utf8_.flush();
    std::string out;
    out.swap(held_);
    return out;
  }
  // Hold back the longest suffix of held_ that is a prefix of a stop string.
  size_t keep = 0;
  for (const auto& s : params_.stop) {
    const size_t max_k = std::min(s.size() - 1, held_.size());
    for (size_t k = max_k; k > keep; --k)
      if (held_.compare(held_.size() - k, k, s, 0, k) == 0) {
        keep = k;
        break;
      }
  }
  std::string out = held_.substr(0, held_.size() - keep);
  held_.erase(0, held_.size() - keep);
  return out;
}

std::string Generation::next() {
  if (finished()) return "";
  Stats& st = engine_.last_stats;
  const double t0 = now_seconds();
  if (engine_.cancel_requested.load()) {
    cancel();
    return release_text(true);
  }
  if (need_eval_) {
    if (engine_.remaining_context() == 0) {
      finish_ = FinishReason::Length;
      st.finish = finish_;
      return release_text(true);
    }
    std::vector<float> unused;
    engine_.eval({last_token_}, false, unused);
    need_eval_ = false;
  }
  const Tokenizer& tok = engine_.model().tokenizer();
  const std::vector<float>& logits = engine_.last_logits();
  const int32_t t = sampler_.sample(logits.data(), static_cast<int32_t>(logits.size()));
  sampler_.accept(t);
  generated_.push_back(t);
  st.completion_tokens++;
  std::string piece;
  if (!params_.ignore_eos && tok.is_end_of_generation(t)) {
    finish_ = FinishReason::Stop;
    piece = release_text(true);
  } else {
    held_ += utf8_.push(tok.token_bytes(t));
    size_t cut = std::string::npos;
    for (const auto& s : params_.stop) cut = std::min(cut, held_.find(s));
    if (cut != std::string::npos) {
      held_.resize(cut);
      finish_ = FinishReason::Stop;
      utf8_.reset();
      piece = release_text(true);
    } else if (static_cast<int>(generated_.size()) >= params_.max_tokens) {
      finish_ = FinishReason::Length;
      piece = release_text(true);
    } else {
      need_eval_ = true;
      last_token_ = t;
      piece = release_text(false);
    }
  }
  st.finish = finish_;
  st.generation_seconds += now_seconds() - t0;
  return piece;
}

}  // namespace tova
