#include "bench_cli.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <random>
#include <set>

#include "cli_args.h"
#include "common.h"
#include "cpu/kernels_cpu.h"
#include "engine.h"
#include "cli_io.h"
#include "quant.h"

namespace tova {

namespace {

const std::set<std::string> kBenchValues = {
    "--model", "--prompt", "--n-predict", "--threads", "--kv-size", "--policy", "--n-sink", "--kv-type", "--kv-type-k", "--kv-type-v",
    "--kv-lo-type", "--kv-hi-size",
    "--ctx", "--chunk", "--prefill", "--positions", "--policy-plugin", "--policy-args", "--repetitions",
    "--batch", "--kv-budget", "--n-seq", "--backend", "--device", "--depth"};
const std::set<std::string> kBenchFlags = {"--json", "--help", "--no-kv-hadamard", "--float-activations"};
const std::map<std::string, std::string> kBenchAliases = {
    {"-m", "--model"}, {"-p", "--prompt"}, {"-n", "--n-predict"}, {"-t", "--threads"},
    {"-ctk", "--kv-type-k"}, {"-ctv", "--kv-type-v"},
    {"-r", "--repetitions"}, {"-d", "--depth"}, {"-h", "--help"}};

const char* kBenchUsage = R"(usage: tova bench -m MODEL [options]

llama-bench style: prompt processing (ppN: N random tokens read in chunks) and generation (tgN:
N tokens one at a time) of one sequence, each the mean and spread of its repetitions after a
warm-up; with --batch / --kv-budget, the total generation speed of sequences decoding together.

  -m, --model MODEL          model path or registry name
  -p, --prompt N             prompt tokens (default 512; 0: no pp test)
  -n, --n-predict N          generated tokens (default 128; 0: no tg test)
  -r, --repetitions N        repetitions of each test (default 3)
  -d, --depth D              run each test after D tokens of history (llama-bench -d)
      --batch N              N sequences decoding together (total tokens/s)
      --kv-budget B          as --batch, with as many sequences as fit in B bytes ("256MiB")
      --json                 a JSON array, one object per test
  The engine options of tova run (tova --help): -t, --policy (default full here), --kv-size,
  --kv-type, --ctx, --chunk, --device, ...
)";

struct MeanSd {
  double mean, sd;
};
MeanSd mean_sd(const std::vector<double>& v) {
  double m = 0;
  for (double x : v) m += x;
  m /= static_cast<double>(v.size());
  double ss = 0;
  for (double x : v) ss += (x - m) * (x - m);
  return {m, v.size() > 1 ? std::sqrt(ss / static_cast<double>(v.size() - 1)) : 0.0};
}

struct Test {
  std::string name;
  int n_prompt, n_gen, n_seq;
  std::vector<double> ts;
};

std::vector<int32_t> random_tokens(std::mt19937& rng, int n, int n_vocab) {
  std::uniform_int_distribution<int> tok(0, n_vocab - 1);
  std::vector<int32_t> ids(static_cast<size_t>(n));
  for (auto& x : ids) x = tok(rng);
  return ids;
}

// N sequences decoding together: sequence 0 reads a prompt of n_prompt tokens (not timed) and
// every other sequence starts as a copy of it (Engine::copy_sequence), so each holds the same
// context; then each generates n_gen tokens (greedy, from a different first token, ignoring
// end of generation) through the scheduler. Returns the total generated tokens per second.
double batch_decode(Engine& e, std::mt19937& rng, int n_prompt, int n_gen) {
  const int V = e.model().hp().n_vocab;
  const int N = e.n_seq();
  for (int s = 0; s < N; ++s) e.reset(s);
  std::vector<float> logits;
  if (n_prompt > 0) e.eval(0, random_tokens(rng, n_prompt, V), false, logits);
  for (int s = 1; s < N; ++s) e.copy_sequence(0, s);
  GenerateParams gp;
  gp.max_tokens = n_gen;
  gp.ignore_eos = true;
  gp.sampling.temperature = 0;
  std::vector<std::shared_ptr<Request>> reqs;
  const double t0 = now_seconds();
  for (int s = 0; s < N; ++s) reqs.push_back(e.submit(random_tokens(rng, 1, V), gp, s, true));
  while (e.step()) {
  }
  const double dt = now_seconds() - t0;
  int64_t total = 0;
  for (auto& r : reqs) total += e.stats(*r).completion_tokens;
  return static_cast<double>(total) / dt;
}

}  // namespace

int cmd_bench(const std::vector<std::string>& argv, std::string (*resolve_model)(const std::string&)) {
  CliArgs a(argv, kBenchValues, kBenchFlags, kBenchAliases);
  if (a.has("--help")) {
    std::fputs(kBenchUsage, stdout);
    return 0;
  }
  if (!a.positional().empty()) throw ArgumentError(cat("unexpected argument '", a.positional()[0], "' (see tova bench --help)"));
  const int n_prompt = a.integer("--prompt", 512);
  const int n_gen = a.integer("--n-predict", 128);
  const int reps = a.integer("--repetitions", 3);
  // --depth D: each test runs after D tokens of history (read first, not timed), as llama-bench -d.
  const int depth = a.integer("--depth", 0);
  if (n_prompt < 0 || n_gen < 0 || reps < 1 || depth < 0) throw ArgumentError("-p, -n, -d must be >= 0 and -r >= 1");
  const bool batch = a.has("--batch") || a.has("--kv-budget");
  if (a.has("--n-seq"))  // (it would hold N caches and still measure one sequence)
    throw ArgumentError("--n-seq is not a bench option: --batch N measures N sequences decoding together");
  // The context a test needs (the default --ctx): counted in 64 bits, named by the options.
  const int64_t need = int64_t{depth} + n_prompt + n_gen + (batch ? 1 : 0);
  if (need > Limits::kMaxCtx)
    throw ArgumentError(cat("-d + -p + -n = ", need, " tokens: more than the largest context, ", Limits::kMaxCtx));
  if (batch && depth > 0) throw ArgumentError("--depth applies to single-sequence tests, not --batch / --kv-budget");
  if (batch && n_gen < 1) throw ArgumentError("--batch / --kv-budget measure decoding: -n must be at least 1");
  EngineParams ep = engine_params_from(a, "full");
  if (a.has("--batch")) ep.n_seq = a.integer("--batch", 1);
  if (a.has("--batch") && a.has("--kv-budget")) throw ArgumentError("give --batch or --kv-budget, not both");
  if (!a.has("--ctx")) ep.n_ctx = std::max(static_cast<int>(need), 16);
  const std::string path = resolve_model(a.str("--model", ""));
  Engine engine(path, std::move(ep));
  const int V = engine.model().hp().n_vocab;
  std::mt19937 rng(1234);
  std::vector<float> logits;
  std::vector<Test> tests;
  if (batch) {
    tests.push_back({cat("pp", n_prompt, "+tg", n_gen, " x", engine.n_seq()), n_prompt, n_gen, engine.n_seq(), {}});
  } else {
    const std::string at = depth > 0 ? cat(" @ d", depth) : std::string();
    if (n_prompt > 0) tests.push_back({cat("pp", n_prompt, at), n_prompt, 0, 1, {}});
    if (n_gen > 0) tests.push_back({cat("tg", n_gen, at), 0, n_gen, 1, {}});
  }
  for (Test& t : tests) {
    for (int r = -1; r < reps; ++r) {  // r = -1: warm-up
      if (t.n_seq > 1 || batch) {
        const double ts = batch_decode(engine, rng, t.n_prompt, t.n_gen);
        if (r >= 0) t.ts.push_back(ts);
        continue;
      }
      engine.reset();
      if (depth > 0) engine.eval(random_tokens(rng, depth, V), false, logits);
      const int n = t.n_prompt > 0 ? t.n_prompt : t.n_gen;
      const std::vector<int32_t> ids = random_tokens(rng, n, V);
      const double t0 = now_seconds();
      if (t.n_prompt > 0) {
        engine.eval(ids, false, logits);
      } else {
        for (int i = 0; i < n; ++i) engine.eval({ids[static_cast<size_t>(i)]}, false, logits);
      }
      const double dt = now_seconds() - t0;
      if (r >= 0) t.ts.push_back(n / dt);
    }
  }
  const std::string model_name = path.substr(path.rfind('/') + 1);
  const EngineParams& P = engine.params();
  const int kv = P.full() ? P.n_ctx : P.kv_size;
  if (a.has("--json")) {
    std::printf("[\n");
    for (size_t i = 0; i < tests.size(); ++i) {
      const Test& t = tests[i];
      MeanSd ms = mean_sd(t.ts);
      std::printf("  {\"model_filename\": %s, \"model_type\": %s, \"n_threads\": %d, "
                  "\"n_prompt\": %d, \"n_gen\": %d, \"n_depth\": %d, \"n_seq\": %d, \"policy\": \"%s\", \"kv_size\": %d, "
                  "\"type_k\": \"%s\", \"type_v\": \"%s\", \"kv_lo_type\": \"%s\", \"kv_hi_size\": %d, "
                  "\"kv_bytes\": %llu, \"backend\": \"%s\", "
                  "\"weight_bytes\": %llu, \"cpu_kernels\": \"%s\", \"avg_ts\": %.6f, "
                  "\"stddev_ts\": %.6f, \"samples_ts\": [",
                  json_string(model_name).c_str(),
                  json_string(cat(engine.model().hp().arch, " ", engine.model().quant_summary())).c_str(),
                  engine.n_threads(), t.n_prompt, t.n_gen, depth, t.n_seq, engine.policy_name(), kv,
                  kv_type_name(P.kv_type_k), kv_type_name(P.kv_type_v), P.kv_lo_type_label().c_str(), P.hi_size(),
                  static_cast<unsigned long long>(engine.kv_bytes()),
                  engine.backend().name(), static_cast<unsigned long long>(engine.model().weight_bytes()), kernel_isa(),
                  ms.mean, ms.sd);
      for (size_t k = 0; k < t.ts.size(); ++k) std::printf("%s%.6f", k ? ", " : "", t.ts[k]);
      std::printf("]}%s\n", i + 1 < tests.size() ? "," : "");
    }
    std::printf("]\n");
  } else {
    std::printf("| model | arch | quant | threads | policy | kv | seqs | kv memory | test | t/s |\n");
    std::printf("| --- | --- | --- | ---: | --- | ---: | ---: | ---: | --- | ---: |\n");
    for (const Test& t : tests) {
      MeanSd ms = mean_sd(t.ts);
      std::printf("| %s | %s | %s | %d | %s | %d | %d | %s | %s | %.2f ± %.2f |\n", model_name.c_str(),
                  engine.model().hp().arch.c_str(), engine.model().quant_summary().c_str(), engine.n_threads(),
                  engine.policy_name(), kv, t.n_seq, format_bytes(engine.kv_bytes()).c_str(), t.name.c_str(),
                  ms.mean, ms.sd);
    }
  }
  return 0;
}

}  // namespace tova
