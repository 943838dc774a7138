// The sampler chain: stages, their order, and the seeded draw. See sampler.h for the contract.
#include "sampler.h"

#include <algorithm>
#include <cmath>
#include <iomanip>
#include <limits>
#include <sstream>

#include "common.h"

namespace tova {

namespace {

bool is_finite(float x) { return std::isfinite(x); }

}  // namespace

void SamplingParams::validate() const {
  auto fail = [](const char* field, auto value, const char* expected) {
    std::ostringstream v;  // every digit of the value in effect: 1.00000012, not 1
    v << std::setprecision(9) << value;
    throw ArgumentError(cat("sampling parameter ", field, " = ", v.str(), " is out of range: expected ",
                            expected));
  };
  // Written as !(ok) so that NaN, which fails every comparison, is rejected too.
  if (!(temperature >= 0.0f && is_finite(temperature)))
    fail("temperature", temperature, "a finite value >= 0 (0 = greedy)");
  if (!(top_k >= 0)) fail("top_k", top_k, ">= 0 (0 = off)");
  if (!(top_p > 0.0f && top_p <= 1.0f)) fail("top_p", top_p, "0 < top_p <= 1 (1 = off)");
  if (!(min_p >= 0.0f && min_p <= 1.0f)) fail("min_p", min_p, "0 <= min_p <= 1 (0 = off)");
  if (!(repeat_penalty > 0.0f && is_finite(repeat_penalty)))
    fail("repeat_penalty", repeat_penalty, "a finite value > 0 (1 = off)");
  if (!is_finite(frequency_penalty))
    fail("frequency_penalty", frequency_penalty, "a finite value (0 = off)");
  if (!is_finite(presence_penalty))
    fail("presence_penalty", presence_penalty, "a finite value (0 = off)");
  if (!(penalty_last_n >= -1))
    fail("penalty_last_n", penalty_last_n, ">= -1 (0 = off, -1 = whole history)");
  if (!(seed >= -1)) fail("seed", seed, ">= 0, or -1 for a random seed");
}

void sort_candidates(TokenCandidates& cands) {
  if (cands.sorted) return;
  std::sort(cands.data.begin(), cands.data.end(), candidate_before);
  cands.sorted = true;
}

void softmax(TokenCandidates& cands) {
  auto& d = cands.data;
  if (d.empty()) return;
  float max_logit = -std::numeric_limits<float>::infinity();
  for (const auto& t : d) max_logit = std::max(max_logit, t.logit);
  // exp(l - max) is undefined when max is infinite: spread the mass evenly over the tokens that
  // share it (all of them when every logit is -inf, e.g. after extreme penalties).
  if (std::isinf(max_logit)) {
    size_t n_top = 0;
    for (const auto& t : d) n_top += (max_logit < 0 || t.logit == max_logit) ? 1 : 0;
    for (auto& t : d)
      t.p = (max_logit < 0 || t.logit == max_logit) ? 1.0f / static_cast<float>(n_top) : 0.0f;
    return;
  }
  double sum = 0.0;  // double: 262k small terms would lose mass in float
  for (auto& t : d) {
    t.p = std::exp(t.logit - max_logit);
    sum += t.p;
  }
  const double inv = 1.0 / sum;
  for (auto& t : d) t.p = static_cast<float>(t.p * inv);
}

namespace {

// Repetition (CTRL / llama.cpp), frequency and presence penalties over the last n accepted tokens.
// Counts are kept per token id and updated in accept(), so apply() is one pass over the candidates.
class PenaltyStage final : public SamplerStage {
 public:
  explicit PenaltyStage(const SamplingParams& p)
      : last_n_(p.penalty_last_n),
        repeat_(p.repeat_penalty),
        frequency_(p.frequency_penalty),
        presence_(p.presence_penalty) {}

  void apply(TokenCandidates& cands) override {
    for (auto& t : cands.data) {
      const size_t id = static_cast<size_t>(t.id);
      const int32_t count = id < counts_.size() ? counts_[id] : 0;
      if (count == 0) continue;
      t.logit = t.logit > 0.0f ? t.logit / repeat_ : t.logit * repeat_;
      t.logit -= static_cast<float>(count) * frequency_ + presence_;
      // Extreme penalties (a repeat_penalty of 1e-38 with a frequency penalty of 3e38) can give
      // inf - inf: a token so penalized is dropped, never a NaN that breaks the draw.
      if (std::isnan(t.logit)) t.logit = -std::numeric_limits<float>::infinity();
    }
  }

  void accept(int32_t token) override {
    if (last_n_ < 0) {  // whole history: no window to slide
      bump(token, +1);
      return;
    }
    if (ring_.size() < static_cast<size_t>(last_n_)) {
      ring_.push_back(token);  // grows only until the window is full; never allocates after
    } else {
      bump(ring_[head_], -1);
      ring_[head_] = token;
      head_ = (head_ + 1) % ring_.size();
    }
    bump(token, +1);
  }

  void reset() override {
    ring_.clear();
    head_ = 0;
    std::fill(counts_.begin(), counts_.end(), 0);
  }

  const char* name() const override { return "penalties"; }

 private:
  void bump(int32_t token, int32_t delta) {
    const size_t id = static_cast<size_t>(token);
    if (id >= counts_.size()) counts_.resize(std::max(id + 1, 2 * counts_.size()), 0);
    counts_[id] += delta;
  }

  int32_t last_n_;
  float repeat_, frequency_, presence_;
  std::vector<int32_t> ring_;    // the window, oldest at head_ once full
  size_t head_ = 0;
  std::vector<int32_t> counts_;  // occurrences of each id inside the window
};

class TopKStage final : public SamplerStage {
 public:
  explicit TopKStage(int32_t k) : k_(static_cast<size_t>(k)) {}
  void apply(TokenCandidates& cands) override {
    auto& d = cands.data;
    if (k_ >= d.size()) return;
    if (!cands.sorted)
      std::partial_sort(d.begin(), d.begin() + static_cast<std::ptrdiff_t>(k_), d.end(),
                        candidate_before);
    d.resize(k_);
    cands.sorted = true;
  }
  const char* name() const override { return "top-k"; }

 private:
  size_t k_;
};

// Keeps the smallest most-likely prefix whose probability mass reaches top_p (at least one token).
class TopPStage final : public SamplerStage {
 public:
  explicit TopPStage(float p) : p_(p) {}
  void apply(TokenCandidates& cands) override {
    auto& d = cands.data;
    softmax(cands);
    // Without top-k the candidates are the whole vocabulary, and sorting 262k entries costs tens
    // of ms. The kept set is always a most-likely prefix, so gather the tokens within a growing
    // logit gap of the maximum at the front until their mass reaches p, and sort only those.
    // Each such front is itself a prefix of the sorted order, so the cut equals a full sort's.
    if (!cands.sorted) {
      float max_logit = d[0].logit;
      for (const auto& t : d) max_logit = std::max(max_logit, t.logit);
      auto front_end = d.begin();
      double mass = 0.0;
      for (float gap : {1.0f, 2.0f, 3.0f, 4.0f, 6.0f, 8.0f, 11.0f, 16.0f}) {
        const float floor = max_logit - gap;
        auto next = std::partition(front_end, d.end(),
                                   [floor](const TokenData& t) { return t.logit >= floor; });
        for (auto it = front_end; it != next; ++it) mass += it->p;
        front_end = next;
        if (mass < p_) continue;
        std::sort(d.begin(), front_end, candidate_before);
        if (cut(d, static_cast<size_t>(front_end - d.begin()))) {
          cands.sorted = true;
          return;
        }
      }
    }
    sort_candidates(cands);
    cut(d, d.size());  // false only when rounding leaves the total just under p: all are kept
  }
  const char* name() const override { return "top-p"; }

 private:
  // Truncates after the first of the leading `m` tokens whose cumulative mass reaches p.
  bool cut(std::vector<TokenData>& d, size_t m) const {
    double cum = 0.0;
    for (size_t i = 0; i < m; ++i) {
      cum += d[i].p;
      if (cum >= p_) {
        d.resize(i + 1);
        return true;
      }
    }
    return false;
  }

  double p_;
};

// Keeps tokens with p >= min_p * p_max, i.e. exp(logit - max_logit) >= min_p; keeps the order.
class MinPStage final : public SamplerStage {
 public:
  explicit MinPStage(float min_p) : min_p_(min_p) {}
  void apply(TokenCandidates& cands) override {
    auto& d = cands.data;
    if (d.empty()) return;
    float max_logit = d[0].logit;
    if (!cands.sorted)
      for (const auto& t : d) max_logit = std::max(max_logit, t.logit);
    size_t out = 0;
    for (size_t i = 0; i < d.size(); ++i)
      if (d[i].logit == max_logit || std::exp(d[i].logit - max_logit) >= min_p_) d[out++] = d[i];
    d.resize(out);
  }
  const char* name() const override { return "min-p"; }

 private:
  float min_p_;
};

class TemperatureStage final : public SamplerStage {
 public:
  explicit TemperatureStage(float t) : t_(t) {}
  void apply(TokenCandidates& cands) override {
    float max_logit = -std::numeric_limits<float>::infinity();
    for (const auto& t : cands.data) max_logit = std::max(max_logit, t.logit);
    if (std::isfinite(max_logit) && std::isinf(max_logit / t_)) {
      // A temperature so small that the largest logit / t overflows (1e-40): those tokens would
      // tie at +inf. Divide the distance to the largest logit instead (softmax does not see the
      // shift): the largest ends at 0, the rest far below, as close to greedy as t asks for.
      for (auto& t : cands.data) t.logit = (t.logit - max_logit) / t_;
    } else {
      for (auto& t : cands.data) t.logit /= t_;
    }
    // Division can round two close logits to one value, which would break the id tie-break.
    cands.sorted = false;
  }
  const char* name() const override { return "temperature"; }

 private:
  float t_;
};

// Argmax, ties to the lowest id (what llama.cpp's greedy reference outputs assume).
class GreedyStage final : public SamplerStage {
 public:
  void apply(TokenCandidates& cands) override {
    const auto& d = cands.data;
    size_t best = 0;
    for (size_t i = 1; i < d.size(); ++i)
      if (candidate_before(d[i], d[best])) best = i;
    cands.selected = static_cast<int32_t>(best);
  }
  const char* name() const override { return "greedy"; }
};

// Inverse-CDF draw: u uniform in [0, 1) from the top 53 bits of one mt19937_64 output, then the
// first candidate whose cumulative probability exceeds u * total. Both steps are spelled out so the
// token depends only on the seed, not on the standard library.
class DistStage final : public SamplerStage {
 public:
  explicit DistStage(uint64_t seed) : seed_(seed), rng_(seed) {}
  void apply(TokenCandidates& cands) override {
    softmax(cands);
    const auto& d = cands.data;
    double total = 0.0;
    for (const auto& t : d) total += t.p;
    const double u = static_cast<double>(rng_() >> 11) * 0x1.0p-53;
    const double target = u * total;
    double cum = 0.0;
    size_t last_positive = 0;
    for (size_t i = 0; i < d.size(); ++i) {
      if (d[i].p <= 0.0f) continue;
      cum += d[i].p;
      last_positive = i;
      if (target < cum) {
        cands.selected = static_cast<int32_t>(i);
        return;
      }
    }
    // Only reachable when u * total rounds up to total: take the last token that has mass.
    cands.selected = static_cast<int32_t>(last_positive);
  }
  void reset() override { rng_.seed(seed_); }
  const char* name() const override { return "dist"; }

 private:
  uint64_t seed_;
  std::mt19937_64 rng_;
};

uint64_t resolve_seed(int64_t seed) {
  if (seed >= 0) return static_cast<uint64_t>(seed);
  // 32 bits per call: combine two, keeping 63 bits so the drawn seed is a valid params.seed
  // (int64 >= 0) and the run can be reproduced from Sampler::seed().
  std::random_device rd;
  const uint64_t bits = (static_cast<uint64_t>(rd()) << 32) ^ static_cast<uint64_t>(rd());
  return bits >> 1;
}

}  // namespace

Sampler::Sampler(const SamplingParams& params) : params_(params) {
  params_.validate();
  seed_ = resolve_seed(params_.seed);
  const SamplingParams& p = params_;
  const bool penalties_on = p.penalty_last_n != 0 &&
                            (p.repeat_penalty != 1.0f || p.frequency_penalty != 0.0f ||
                             p.presence_penalty != 0.0f);
  if (penalties_on) filters_.push_back(std::make_unique<PenaltyStage>(p));
  if (p.temperature == 0.0f) {
    selector_ = std::make_unique<GreedyStage>();
    return;
  }
  if (p.top_k > 0) filters_.push_back(std::make_unique<TopKStage>(p.top_k));
  if (p.top_p < 1.0f) filters_.push_back(std::make_unique<TopPStage>(p.top_p));
  if (p.min_p > 0.0f) filters_.push_back(std::make_unique<MinPStage>(p.min_p));
  if (p.temperature != 1.0f) filters_.push_back(std::make_unique<TemperatureStage>(p.temperature));
  selector_ = std::make_unique<DistStage>(seed_);
}

Sampler::~Sampler() = default;

void Sampler::release_buffers() {
  cands_.data.clear();
  cands_.data.shrink_to_fit();
}
Sampler::Sampler(Sampler&&) noexcept = default;
Sampler& Sampler::operator=(Sampler&&) noexcept = default;

void Sampler::run_filters(const float* logits, int32_t n_vocab) {
  if (logits == nullptr) throw ArgumentError("Sampler: logits pointer is null");
  if (n_vocab <= 0) throw ArgumentError(cat("Sampler: n_vocab must be > 0, got ", n_vocab));
  auto& d = cands_.data;
  d.resize(static_cast<size_t>(n_vocab));  // reuses capacity after the first call
  bool any_finite = false;
  for (int32_t i = 0; i < n_vocab; ++i) {
    const float l = logits[i];
    // NaN would break the strict ordering the sorts rely on; +inf has no probability meaning.
    if (std::isnan(l) || l == std::numeric_limits<float>::infinity())
      throw ArgumentError(cat("Sampler: logits[", i, "] = ", l, ": expected a finite value or -inf"));
    any_finite = any_finite || std::isfinite(l);
    d[static_cast<size_t>(i)] = TokenData{i, l, 0.0f};
  }
  if (!any_finite) throw ArgumentError(cat("Sampler: all ", n_vocab, " logits are -inf"));
  cands_.sorted = false;
  cands_.selected = -1;
  for (auto& stage : filters_) stage->apply(cands_);
  TOVA_ASSERT(!cands_.data.empty());
}

int32_t Sampler::sample(const float* logits, int32_t n_vocab) {
  run_filters(logits, n_vocab);
  selector_->apply(cands_);
  TOVA_ASSERT(cands_.selected >= 0 && static_cast<size_t>(cands_.selected) < cands_.data.size());
  return cands_.data[static_cast<size_t>(cands_.selected)].id;
}

void Sampler::accept(int32_t token) {
  if (token < 0) throw ArgumentError(cat("Sampler::accept: token id must be >= 0, got ", token));
  for (auto& stage : filters_) stage->accept(token);
  selector_->accept(token);
}

void Sampler::reset() {
  for (auto& stage : filters_) stage->reset();
  selector_->reset();
}

std::vector<std::pair<int32_t, float>> Sampler::probabilities_after_filters(const float* logits,
                                                                            int32_t n_vocab) {
  run_filters(logits, n_vocab);
  std::vector<std::pair<int32_t, float>> out;
  if (params_.temperature == 0.0f) {
    selector_->apply(cands_);  // greedy: deterministic, consumes no randomness
    out.emplace_back(cands_.data[static_cast<size_t>(cands_.selected)].id, 1.0f);
    return out;
  }
  softmax(cands_);
  out.reserve(cands_.data.size());
  for (const auto& t : cands_.data) out.emplace_back(t.id, t.p);
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) {
    return a.second > b.second || (a.second == b.second && a.first < b.first);
  });
  return out;
}

std::string Sampler::describe() const {
  std::string s;
  for (const auto& stage : filters_) {
    s += stage->name();
    s += " -> ";
  }
  return s + selector_->name();
}

}  // namespace tova
