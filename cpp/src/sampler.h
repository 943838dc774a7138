// Token sampling: SamplingParams (every default in one place) and a Sampler chain built from it.
//
// The chain follows llama.cpp's sampler design (llama_sampler_i): each stage is a small object with
// apply/accept/reset, and the chain runs them in a fixed order on one candidate buffer:
//
//   penalties -> top-k -> top-p -> min-p -> temperature -> dist        (temperature > 0)
//   penalties -> greedy                                                  (temperature == 0)
//
// Filters run on the untempered distribution (as in llama.cpp's default chain), so temperature only
// reshapes the probabilities of the tokens that survived them. A stage whose parameter turns it off
// (top_k 0, top_p 1, min_p 0, temperature 1, all penalties neutral) is left out of the chain.
// With temperature 0 the filters are skipped: none of them can remove the most likely token.
//
// Reproducibility: the draw uses std::mt19937_64 (its output sequence is fixed by the C++ standard)
// and an explicit inverse-CDF walk instead of std::*_distribution, whose results differ between
// standard libraries. The same seed, parameters, history and logits give the same token everywhere.
#pragma once

#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

namespace tova {

struct SamplingParams {
  float temperature = 0.8f;       // >= 0; 0 = greedy (argmax, ties to the lowest id)
  int32_t top_k = 40;             // >= 0; 0 = off
  float top_p = 0.95f;            // (0, 1]; 1 = off
  float min_p = 0.05f;            // [0, 1]; 0 = off; keeps tokens with p >= min_p * p_max
  float repeat_penalty = 1.0f;    // > 0; 1 = off (CTRL-style: positive logits /, negative *)
  float frequency_penalty = 0.0f; // any finite value; logit -= count * frequency_penalty
  float presence_penalty = 0.0f;  // any finite value; logit -= (count > 0) * presence_penalty
  int32_t penalty_last_n = 64;    // >= -1; tokens of history penalized: 0 = off, -1 = all since reset
  int64_t seed = -1;              // >= -1; -1 = drawn from std::random_device when a Sampler is built

  // Throws ArgumentError naming the first field out of range, its value and the allowed range.
  void validate() const;
};

// One candidate token. `p` is meaningful only after softmax().
struct TokenData {
  int32_t id;
  float logit;
  float p;
};

// The working set a chain filters. `data` keeps its capacity between calls, so steady-state
// sampling allocates nothing.
struct TokenCandidates {
  std::vector<TokenData> data;
  bool sorted = false;   // by logit descending, ties by id ascending
  int32_t selected = -1; // index into data, set by the chain's last stage
};

// The chain's one order: logit descending, ties to the lowest id (so results never depend on the
// sort algorithm's handling of equal keys).
inline bool candidate_before(const TokenData& a, const TokenData& b) {
  return a.logit > b.logit || (a.logit == b.logit && a.id < b.id);
}
// Sorts all candidates by candidate_before (no-op when already sorted).
void sort_candidates(TokenCandidates& cands);
// Fills p with softmax(logit) over the current candidates; keeps their order.
void softmax(TokenCandidates& cands);

// One step of a sampler chain (the llama_sampler_i idea): filter or reshape the candidates in
// apply(), learn from each accepted token in accept(), forget everything in reset().
class SamplerStage {
 public:
  virtual ~SamplerStage() = default;
  virtual void apply(TokenCandidates& cands) = 0;
  virtual void accept(int32_t token) {}
  virtual void reset() {}
  virtual const char* name() const = 0;
};

// A chain of stages built from SamplingParams. Not thread-safe: one Sampler per generation stream.
//
// Use: sample() picks a token from the logits of the last position; accept() must then be called
// with every token that enters the context (prompt tokens too, as llama.cpp does, so that the
// penalties see them) — sample() does not accept on its own.
class Sampler {
 public:
  explicit Sampler(const SamplingParams& params);  // validates params
  ~Sampler();
  Sampler(Sampler&&) noexcept;
  Sampler& operator=(Sampler&&) noexcept;
  Sampler(const Sampler&) = delete;
  Sampler& operator=(const Sampler&) = delete;

  // Picks a token id in [0, n_vocab). Logits may be -inf (masked) but not NaN or +inf.
  int32_t sample(const float* logits, int32_t n_vocab);
  // Records a token in the penalty history. Throws ArgumentError if token < 0.
  void accept(int32_t token);
  // Clears the history and restarts the random stream from the original (resolved) seed.
  void reset();
  // Frees the candidate buffer (n_vocab entries) until the next sample(): a finished request
  // kept by its caller holds no vocabulary-sized memory.
  void release_buffers();

  // Test / debug hook: the tokens the final draw would choose from and their probabilities, after
  // every filter and the temperature, sorted by probability descending (ties: lowest id first).
  // With temperature 0 this is the single greedy token with probability 1. Consumes no randomness.
  std::vector<std::pair<int32_t, float>> probabilities_after_filters(const float* logits,
                                                                     int32_t n_vocab);

  const SamplingParams& params() const { return params_; }
  // The seed actually in use (the drawn one, < 2^63, when params.seed was -1): passing it back as
  // params.seed reproduces the run.
  uint64_t seed() const { return seed_; }
  // Stage names in chain order, e.g. "penalties -> top-k -> top-p -> min-p -> temperature -> dist".
  std::string describe() const;

 private:
  void run_filters(const float* logits, int32_t n_vocab);

  SamplingParams params_;
  uint64_t seed_ = 0;
  std::vector<std::unique_ptr<SamplerStage>> filters_;  // everything before the selector
  std::unique_ptr<SamplerStage> selector_;              // greedy or dist: sets cands_.selected
  TokenCandidates cands_;
};

}  // namespace tova
