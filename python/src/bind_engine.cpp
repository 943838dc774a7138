// tova._core.Engine and tova._core.Request: the compute runs with the GIL released; between
// tokens (and between prompt chunks) the GIL is taken back briefly to let Ctrl-C through.
#include <nanobind/ndarray.h>
#include <nanobind/stl/shared_ptr.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <memory>

#include "bindings.h"
#include "unlocked.h"
#include "interrupts.h"
#include "common.h"
#include "engine.h"
#include "policy_adapter.h"

using namespace tova;

namespace {

using FloatArray = nb::ndarray<nb::numpy, float>;

FloatArray to_numpy(std::vector<float>&& v, size_t rows, size_t cols) {
  auto* heap = new std::vector<float>(std::move(v));
  nb::capsule owner(heap, [](void* p) noexcept { delete static_cast<std::vector<float>*>(p); });
  if (rows == 0) {
    size_t shape[1] = {cols};
    return FloatArray(heap->data(), 1, shape, owner);
  }
  size_t shape[2] = {rows, cols};
  return FloatArray(heap->data(), 2, shape, owner);
}

nb::ndarray<nb::numpy, int32_t> to_numpy_i32(std::vector<int32_t>&& v) {
  auto* heap = new std::vector<int32_t>(std::move(v));
  nb::capsule owner(heap, [](void* p) noexcept { delete static_cast<std::vector<int32_t>*>(p); });
  size_t shape[1] = {heap->size()};
  return nb::ndarray<nb::numpy, int32_t>(heap->data(), 1, shape, owner);
}


// Raises KeyboardInterrupt (or whatever a signal handler raised) in the calling thread.
void check_signals() {
  if (tova::py::check_signals() != 0) throw nb::python_error();
}

// A request as Python holds it: the engine (kept alive by the binding) and the request. Dropping
// the handle cancels a request still running, so an abandoned one frees its sequence.
struct PyRequest {
  Engine* engine = nullptr;
  std::shared_ptr<Request> req;
  ~PyRequest() {  // (the engine outlives it: keep_alive)
    if (req && engine) engine->forget_queued(req);
  }
};

// The engine holds a Python policy object through C++: tell the cycle collector about it, so a
// policy whose class refers back to the engine (through module globals) can still be freed.
int engine_traverse(PyObject* self, visitproc visit, void* arg) {
  Py_VISIT(Py_TYPE(self));
  if (!nb::inst_ready(self)) return 0;
  Engine* e = nb::inst_ptr<Engine>(self);
  if (PyObject* p = python_policy_object(e->policy())) Py_VISIT(p);
  return 0;
}

int engine_clear(PyObject* self) {
  if (nb::inst_ready(self)) clear_python_policy(nb::inst_ptr<Engine>(self)->policy());
  return 0;
}

PyType_Slot engine_slots[] = {{Py_tp_traverse, reinterpret_cast<void*>(engine_traverse)},
                              {Py_tp_clear, reinterpret_cast<void*>(engine_clear)},
                              {0, nullptr}};

}  // namespace

nb::dict stats_dict(const Stats& s) {
  nb::dict d;
  d["prompt_tokens"] = s.prompt_tokens;
  d["cached_tokens"] = s.cached_tokens;
  d["completion_tokens"] = s.completion_tokens;
  d["answer_tokens"] = s.answer_tokens();
  d["prompt_seconds"] = s.prompt_seconds;
  d["generation_seconds"] = s.generation_seconds;
  d["prompt_tokens_per_second"] = s.prompt_tps();
  d["generation_tokens_per_second"] = s.generation_tps();
  d["finish_reason"] = finish_reason_name(s.finish);
  d["seq"] = s.seq;
  d["n_past"] = s.n_past;
  d["evictions"] = s.evictions;
  d["demotions"] = s.demotions;
  return d;
}

void bind_engine(nb::module_& m) {
  const EngineParams d;  // the defaults, written once (config.h)
  m.def("parse_bytes", &parse_bytes, nb::arg("text"), nb::arg("what"),
        "'256MiB' -> bytes (ValueError naming `what` for a malformed size)");
  m.def("cuda_device_count", &cuda_device_count,
        "CUDA devices this build can use (0: built without CUDA, or no driver / GPU)");
  m.def("cuda_built", &cuda_built, "True when this build has the CUDA backend (TOVA_CUDA)");
  m.def("_cuda_simulated", &cuda_simulated,
        "True when device 'cuda' is the CPU simulator of cuda/sim (a TOVA_CUDA_SIM test build)");
  m.def("_cuda_kernel_check", [] {
    tova::py::Unlocked unlocked;
    return cuda_kernel_check();
  }, "Every CUDA kernel against its CPU twin on random inputs: the mismatches (tests/test_cuda.py)");
  nb::class_<Engine>(m, "Engine", nb::type_slots(engine_slots))
      .def("__init__",
           [](Engine* self, nb::handle path_arg, int n_threads, nb::handle policy,
              int kv_size, int n_ctx, int n_sink, const std::string& kv_type, const std::string& kv_type_k,
              const std::string& kv_type_v,
              const std::string& prefill, int chunk, const std::string& positions,
              bool float_activations, int n_seq, uint64_t kv_budget, int n_batch, bool kv_hadamard,
              const std::string& backend, const std::string& kv_lo_type, int kv_hi_size,
              const std::string& policy_plugin, const std::string& policy_args) {
             const std::string path = fs_path(path_arg);
             EngineParams p;
             p.n_threads = n_threads;
             if (!policy_plugin.empty()) {  // a C plugin (tova.PluginPolicy)
               tova::py::Unlocked release;
               p.plugin = load_policy_plugin(policy_plugin, policy_args);
             } else if (nb::isinstance<nb::str>(policy)) {
               p.policy = parse_policy(nb::cast<std::string>(policy));
             } else {
               p.policy = PolicyKind::Plugin;
               p.plugin = make_python_policy(policy);
             }
             p.kv_size = kv_size;
             p.n_ctx = n_ctx;
             p.n_sink = n_sink;
             // kv_type sets keys and values (a type, or K/V as Engine.kv_type reads back); kv_type_k /
             // kv_type_v ("" = as kv_type) one each.
             std::tie(p.kv_type_k, p.kv_type_v) = parse_kv_type_pair(kv_type, "kv_type");
             if (!kv_type_k.empty()) p.kv_type_k = parse_kv_type(kv_type_k, "kv_type_k");
             if (!kv_type_v.empty()) p.kv_type_v = parse_kv_type(kv_type_v, "kv_type_v");
             p.prefill = parse_prefill(prefill);
             p.chunk = chunk;
             p.positions = parse_positions(positions);
             p.float_activations = float_activations;
             p.kv_hadamard = kv_hadamard;
             if (!kv_lo_type.empty()) {  // "" = one tier
               p.kv_lo = true;
               std::tie(p.kv_lo_type_k, p.kv_lo_type_v) = parse_kv_type_pair(kv_lo_type, "kv_lo_type");
             }
             p.kv_hi_size = kv_hi_size;
             p.n_seq = n_seq;
             p.kv_budget = kv_budget;
             p.n_batch = n_batch;
             p.backend = parse_backend(backend);
             {
               tova::py::Unlocked release;
               new (self) Engine(path, std::move(p));
             }
             // Ctrl-C between the chunks of a long prompt: KeyboardInterrupt, sequence reset; the
             // interpreter's exit stops it too (unlocked.h).
             self->interrupt_hook = [] {
               if (tova::py::exiting()) throw tova::py::InterpreterExiting();
               tova::py::Locked gil;
               if (tova::py::check_signals() != 0) throw nb::python_error();
             };
             // ... and during a step that reads a long prompt chunk for the main thread's call.
             self->interrupt_probe = [] { return tova::py::probe_signals(); };
           },
           nb::arg("path"), nb::arg("n_threads") = d.n_threads, nb::arg("policy") = std::string(policy_name(d.policy)),
           nb::arg("kv_size") = d.kv_size, nb::arg("n_ctx") = d.n_ctx, nb::arg("n_sink") = d.n_sink,
           nb::arg("kv_type") = std::string(kv_type_name(d.kv_type_k)), nb::arg("kv_type_k") = std::string(),
           nb::arg("kv_type_v") = std::string(),
           nb::arg("prefill") = std::string(prefill_name(d.prefill)), nb::arg("chunk") = d.chunk,
           nb::arg("positions") = std::string(positions_name(d.positions)),
           nb::arg("float_activations") = d.float_activations, nb::arg("n_seq") = d.n_seq,
           nb::arg("kv_budget") = d.kv_budget, nb::arg("n_batch") = d.n_batch,
           nb::arg("kv_hadamard") = d.kv_hadamard, nb::arg("backend") = std::string(backend_name(d.backend)),
           nb::arg("kv_lo_type") = std::string(), nb::arg("kv_hi_size") = d.kv_hi_size,
           nb::arg("policy_plugin") = std::string(), nb::arg("policy_args") = std::string())
      .def("tokenize",
           [](const Engine& e, const std::string& text, bool add_bos, bool special) {
             tova::py::Unlocked release;
             return e.tokenize(text, add_bos, special);
           },
           nb::arg("text"), nb::arg("add_bos"), nb::arg("special"))
      // (n, ids), or (n, None) where n > limit: a caller that refuses long prompts (the HTTP
      // server) never holds a Python list of a huge one. chat: `text` is a prompt rendered from
      // marked messages (mark_literal), read by Tokenizer::encode_chat (`special` unused).
      .def("tokenize_within",
           [](const Engine& e, const std::string& text, bool add_bos, bool special, int64_t limit,
              bool chat) {
             std::vector<int32_t> ids;
             {
               tova::py::Unlocked release;
               ids = chat ? e.model().tokenizer().encode_chat(text, add_bos)
                          : e.tokenize(text, add_bos, special);
             }
             const auto n = static_cast<int64_t>(ids.size());
             if (limit >= 0 && n > limit) return nb::make_tuple(n, nb::none());
             return nb::make_tuple(n, nb::cast(ids));
           },
           nb::arg("text"), nb::arg("add_bos"), nb::arg("special"), nb::arg("limit"),
           nb::arg("chat") = false)
      // A chat message's text with its spellings of control tokens marked as text
      // (Tokenizer::mark_literal), to be rendered into a prompt for tokenize_within(chat=True).
      .def("mark_literal",
           [](const Engine& e, const std::string& text) { return e.model().tokenizer().mark_literal(text); },
           nb::arg("text"))
      .def("detokenize",
           [](const Engine& e, const std::vector<int32_t>& ids, bool special) {
             std::string s = e.detokenize(ids, special);
             return nb::bytes(s.data(), s.size());
           },
           nb::arg("ids"), nb::arg("special") = false)
      .def("token_bytes",
           [](const Engine& e, int32_t id, bool special) {
             const Tokenizer& t = e.model().tokenizer();
             if (id < 0 || id >= t.n_vocab())
               throw ArgumentError(cat("token id ", id, " is out of range [0, ", t.n_vocab(), ")"));
             std::string s = t.token_bytes(id, special);
             return nb::bytes(s.data(), s.size());
           },
           nb::arg("id"), nb::arg("special") = false)
      .def("eval",
           [](Engine& e, const std::vector<int32_t>& ids, bool all_logits, int seq) {
             std::vector<float> out;
             {
               tova::py::Unlocked release;
               e.eval(seq, ids, all_logits, out);
             }
             const size_t V = static_cast<size_t>(e.model().hp().n_vocab);
             return to_numpy(std::move(out), all_logits ? ids.size() : 0, V);
           },
           nb::arg("ids"), nb::arg("all_logits") = false, nb::arg("seq") = 0)
      .def("reset", [](Engine& e, int seq) {
        tova::py::Unlocked release;
        e.reset(seq);
      }, nb::arg("seq") = 0)
      .def("set_protect_below", [](Engine& e, int64_t pos, int seq) {
        tova::py::Unlocked release;
        e.set_protect_below(pos, seq);
      }, nb::arg("pos"), nb::arg("seq") = 0)
      .def("cancel", [](Engine& e) { e.cancel_requested.store(true); })
      .def("step", [](Engine& e) {
        tova::py::Unlocked release;
        return e.step();
      }, "Runs one scheduler step if there is work and no other thread is stepping.")
      .def("n_past_of", &Engine::n_past, nb::arg("seq") = 0)
      .def("history_of", &Engine::history, nb::arg("seq") = 0)
      .def("_backend_counters", [](const Engine& e) {
        nb::dict d;
        for (const auto& [name, value] : e.backend().counters()) d[name.c_str()] = value;
        return d;
      }, "What the backend counts about its own work (the CUDA backend: CUDA graphs)")
      .def("evictions_of", [](const Engine& e, int seq) {
        tova::py::Unlocked release;
        return e.evictions(seq);
      }, nb::arg("seq") = 0)
      .def("demotions_of", [](const Engine& e, int seq) {
        tova::py::Unlocked release;
        return e.demotions(seq);
      }, nb::arg("seq") = 0)
      .def_prop_ro("n_past", [](const Engine& e) { return e.n_past(0); })
      .def_prop_ro("history", [](const Engine& e) { return e.history(0); })
      .def_prop_ro("evictions", [](const Engine& e) {
        tova::py::Unlocked release;
        return e.evictions(0);
      })
      .def_prop_ro("kv_bytes", &Engine::kv_bytes)
      .def_prop_ro("kv_bytes_per_seq", &Engine::kv_bytes_per_seq)
      .def_prop_ro("n_threads", &Engine::n_threads)
      .def_prop_ro("n_seq", &Engine::n_seq)
      .def_prop_ro("n_batch", &Engine::n_batch)
      .def_prop_ro("backend", [](const Engine& e) { return std::string(e.backend().name()); })
      .def_prop_ro("policy_name", [](const Engine& e) { return std::string(e.policy_name()); })
      .def_prop_ro("params", [](const Engine& e) {
        // The settings in effect (defaults filled in, n_seq from kv_budget).
        const EngineParams& p = e.params();
        nb::dict r;
        r["policy"] = std::string(p.policy == PolicyKind::Plugin ? e.policy_name() : policy_name(p.policy));
        r["kv_size"] = p.kv_size;
        r["n_ctx"] = p.n_ctx;
        r["n_sink"] = p.sink();
        r["kv_type"] = p.kv_type_label();
        r["kv_type_k"] = kv_type_name(p.kv_type_k);
        r["kv_type_v"] = kv_type_name(p.kv_type_v);
        r["prefill"] = prefill_name(p.prefill);
        r["positions"] = positions_name(p.positions);
        r["chunk"] = p.chunk;
        r["n_seq"] = e.n_seq();
        r["n_batch"] = e.n_batch();
        r["n_threads"] = e.n_threads();
        r["float_activations"] = p.float_activations;
        r["kv_hadamard"] = p.kv_hadamard;
        r["kv_lo_type"] = p.kv_lo_type_label();
        r["kv_hi_size"] = p.hi_size();
        r["backend"] = std::string(e.backend().name());
        return r;
      })
      .def("kv_positions", [](const Engine& e, int layer, int seq, int tier) {
        std::vector<int32_t> pos;
        {
          tova::py::Unlocked release;  // waits for a running step, whose policy may need the GIL
          pos = e.kv_positions(layer, seq, tier);
        }
        return to_numpy_i32(std::move(pos));
      }, nb::arg("layer"), nb::arg("seq") = 0, nb::arg("tier") = -1)
      .def("submit",
           [](Engine& e, const std::vector<int32_t>& prompt, int max_tokens, const std::vector<std::string>& stop,
              bool ignore_eos, const SamplingParams& sp, int seq, bool keep, int top_logprobs,
              bool reuse_prefix) {
             GenerateParams gp;
             gp.top_logprobs = top_logprobs;
             gp.max_tokens = max_tokens;
             gp.stop = stop;
             gp.ignore_eos = ignore_eos;
             gp.sampling = sp;
             auto r = std::make_unique<PyRequest>();
             r->engine = &e;
             r->req = e.submit(prompt, gp, seq, keep, reuse_prefix);
             return r.release();
           },
           nb::arg("prompt"), nb::arg("max_tokens"), nb::arg("stop"), nb::arg("ignore_eos"),
           nb::arg("sampling"), nb::arg("seq") = -1, nb::arg("keep") = false, nb::arg("top_logprobs") = -1,
           nb::arg("reuse_prefix") = false,
           nb::rv_policy::take_ownership, nb::keep_alive<0, 1>())
      .def("kv_layer_summary", [](const Engine& e, int seq) {
        std::vector<Engine::LayerSummary> layers;
        {
          tova::py::Unlocked release;
          layers = e.layer_summary(seq);
        }
        nb::list out;
        for (size_t l = 0; l < layers.size(); ++l) {
          const Engine::LayerSummary& L = layers[l];
          nb::dict d;
          d["layer"] = static_cast<int>(l);
          d["capacity"] = L.capacity;
          d["slots"] = L.slots;
          d["valid"] = L.valid;
          d["sliding"] = L.sliding;
          d["evicted"] = L.evicted;
          out.append(d);
        }
        return out;
      }, nb::arg("seq") = 0)
      .def("model_info", [](const Engine& e) {
        const Model& mo = e.model();
        const HParams& h = mo.hp();
        nb::dict d;
        d["name"] = lenient_str(mo.name());
        d["path"] = fs_str(mo.path());
        d["arch"] = h.arch;
        d["n_vocab"] = h.n_vocab;
        d["n_embd"] = h.n_embd;
        d["n_layer"] = h.n_layer;
        d["n_head"] = h.n_head;
        d["n_head_kv"] = h.n_head_kv;
        d["head_dim"] = h.head_dim;
        d["n_ff"] = h.n_ff;
        d["n_ctx_train"] = h.n_ctx_train;
        d["n_swa"] = h.n_swa;
        d["quant"] = mo.quant_summary();
        d["weight_bytes"] = mo.weight_bytes();
        d["tied_output"] = mo.tied_output;
        d["tokenizer"] = std::string(mo.tokenizer().model_name());
        d["bos_id"] = mo.tokenizer().bos_id();
        d["eos_id"] = mo.tokenizer().eos_id();
        d["add_bos"] = mo.tokenizer().add_bos_default();
        d["eog_ids"] = mo.tokenizer().end_of_generation_ids();
        d["chat_template"] = lenient_str(mo.file().get_string("tokenizer.chat_template", ""));
        return d;
      });

  nb::class_<PyRequest>(m, "Request", "A generation running in the engine's scheduler.")
      .def("next",
           [](PyRequest& r, double timeout) {
             std::string piece;
             Engine::Wait w;
             {
               tova::py::Unlocked release;
               w = r.engine->next(*r.req, piece, timeout);
             }
             tova::py::raise_if_interrupted([&] { r.req->cancel(); });
             return nb::make_tuple(static_cast<int>(w), nb::str(piece.data(), piece.size()));
           },
           nb::arg("timeout") = -1.0,
           "(0, piece) | (1, '') on timeout | (2, '') when finished and every piece was taken. "
           "Runs scheduler steps while waiting; a failed request raises its error.")
      .def("wait_prefilled", [](PyRequest& r) {
        {
          tova::py::Unlocked release;
          r.engine->wait_prefilled(*r.req);
        }
        tova::py::raise_if_interrupted([&] { r.req->cancel(); });  // (one the step's probe kept, too)
      })
      .def("cancel", [](PyRequest& r) { r.req->cancel(); })
      .def_prop_ro("finished", [](const PyRequest& r) { return r.engine->finished(*r.req); })
      .def_prop_ro("finish_reason", [](const PyRequest& r) { return finish_reason_name(r.engine->stats(*r.req).finish); })
      .def_prop_ro("tokens", [](const PyRequest& r) { return r.engine->tokens(*r.req); })
      .def("logprobs", [](const PyRequest& r, size_t from) {
        nb::list out;
        for (const TokenLogprob& t : r.engine->logprobs(*r.req, from)) {
          nb::list top;
          for (const auto& [id, lp] : t.top) top.append(nb::make_tuple(id, lp));
          out.append(nb::make_tuple(t.token, t.logprob, top));
        }
        return out;
      }, nb::arg("start") = 0,
      "[(token, logprob, [(token, logprob), ...]), ...] of the tokens generated from `start` on")
      .def_prop_ro("stats", [](const PyRequest& r) { return stats_dict(r.engine->stats(*r.req)); })
      .def_prop_ro("seq", [](const PyRequest& r) { return r.engine->stats(*r.req).seq; });
}
