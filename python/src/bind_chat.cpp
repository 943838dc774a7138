// tova._core chat pieces: the C++ renderers and format recognition (Python's fallback when a
// file has no template, and the tests comparing them with jinja2); ChatFeed, the conversation
// held in the engine's sequence that Engine.chat renders its jinja prompts into (the same core
// the CLI's `tova chat` runs); and ChatSession, the CLI's message-keeping layer over it.
#include <nanobind/stl/optional.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/unique_ptr.h>
#include <nanobind/stl/vector.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "bindings.h"
#include "unlocked.h"
#include "interrupts.h"
#include "chat.h"
#include "chat_session.h"
#include "common.h"
#include "engine.h"

using namespace tova;

namespace {

using Pairs = std::vector<std::pair<std::string, std::string>>;

// A ChatFeed and the Python engine it feeds, held where the garbage collector sees it: an engine
// whose Python policy refers back to the tova.Engine holding this feed (through module globals)
// forms a cycle the collector can then free. Members go in reverse order: the feed first, then
// the reference that keeps its engine alive until then.
struct PyChatFeed {
  nb::object engine;
  ChatFeed feed;
  PyChatFeed(nb::object e, Engine& core) : engine(std::move(e)), feed(core) {}
};

int chat_feed_traverse(PyObject* self, visitproc visit, void* arg) {
  Py_VISIT(Py_TYPE(self));
  if (!nb::inst_ready(self)) return 0;
  Py_VISIT(nb::inst_ptr<PyChatFeed>(self)->engine.ptr());
  return 0;
}

// Nothing to clear: the engine's own tp_clear (dropping its Python policy) breaks the cycle, and
// the feed must keep its engine until the feed itself goes.
int chat_feed_clear(PyObject*) { return 0; }

PyType_Slot chat_feed_slots[] = {{Py_tp_traverse, reinterpret_cast<void*>(chat_feed_traverse)},
                                 {Py_tp_clear, reinterpret_cast<void*>(chat_feed_clear)},
                                 {0, nullptr}};

std::vector<ChatMessage> to_messages(const Pairs& in) {
  std::vector<ChatMessage> out;
  out.reserve(in.size());
  for (const auto& [role, content] : in) out.push_back({role, content});
  return out;
}

nb::dict format_dict(const ChatFormatChoice& c) {
  nb::dict d;
  d["family"] = chat_family_name(c.format.family);
  d["bos"] = c.format.bos;
  d["default_system"] = c.format.default_system;
  d["recognized"] = c.recognized;
  d["source"] = c.source;
  return d;
}

nb::dict counters_dict(const ChatCounters& c) {
  nb::dict d;
  d["turns"] = c.turns;
  d["fed_tokens"] = c.fed_tokens;
  d["last_fed_tokens"] = c.last_fed_tokens;
  d["full_refeeds"] = c.full_refeeds;
  return d;
}

}  // namespace

void bind_chat(nb::module_& m) {
  m.def("render_chat",
        [](const std::string& family, const Pairs& messages, bool add_generation_prompt,
           const std::string& bos_token, const std::string& default_system) {
          ChatFormat f;
          f.family = parse_chat_family(family);
          f.bos = bos_token;
          f.default_system = default_system;
          return render_chat(f, to_messages(messages), add_generation_prompt);
        },
        nb::arg("family"), nb::arg("messages"), nb::arg("add_generation_prompt") = true,
        nb::arg("bos_token") = "", nb::arg("default_system") = "",
        "The C++ renderer's prompt text for [(role, content), ...].");
  m.def("chat_family_from_template",
        [](const std::string& tmpl) -> std::optional<std::string> {
          auto f = chat_family_from_template(tmpl);
          if (!f) return std::nullopt;
          return std::string(chat_family_name(*f));
        },
        nb::arg("template"));
  m.def("chatml_default_system", &chatml_default_system, nb::arg("template"));
  m.def("chat_format",
        [](const Engine& e, const std::string& forced) {
          return format_dict(choose_chat_format(e.model(), forced));
        },
        nb::arg("engine"), nb::arg("forced") = "",
        "The chat format chosen for an engine's model: {family, bos, default_system, recognized, source}.");

  // The C++ session's reply in progress (one request on sequence 0).
  nb::class_<Generation>(m, "Generation")
      .def("next", [](Generation& g) {
        std::string piece;
        {
          tova::py::Unlocked release;
          piece = g.next();
        }
        tova::py::raise_if_interrupted([&] { g.cancel(); });
        return nb::str(piece.data(), piece.size());
      })
      .def("run_to_end", [](Generation& g) {
        std::string text;
        while (!g.finished()) {
          {
            tova::py::Unlocked release;
            text += g.next();
          }
          tova::py::raise_if_interrupted([&] { g.cancel(); });
        }
        return nb::str(text.data(), text.size());
      })
      .def("cancel", &Generation::cancel)
      .def_prop_ro("stats", [](const Generation& g) { return stats_dict(g.stats()); })
      .def_prop_ro("finished", &Generation::finished)
      .def_prop_ro("finish_reason", [](const Generation& g) { return finish_reason_name(g.finish_reason()); })
      .def_prop_ro("tokens", &Generation::tokens);

  nb::class_<PyChatFeed>(m, "ChatFeed", nb::type_slots(chat_feed_slots),
                         "The conversation held in an engine's sequence 0: feeds only what each "
                         "rendered prompt adds to what the sequence holds.")
      .def("__init__",
           [](PyChatFeed* self, nb::handle engine) {
             Engine& e = nb::cast<Engine&>(engine);
             new (self) PyChatFeed(nb::borrow(engine), e);
           },
           nb::arg("engine"))
      .def("start_reply",
           [](PyChatFeed& f, const std::string& prompt, std::optional<std::pair<std::string, std::string>> pin,
              int max_tokens, const std::vector<std::string>& stop, bool ignore_eos, const SamplingParams& sp) {
             GenerateParams gp;
             gp.max_tokens = max_tokens;
             gp.stop = stop;
             gp.ignore_eos = ignore_eos;
             gp.sampling = sp;
             SystemPinProbes probes;
             if (pin) probes = {pin->first, pin->second};
             tova::py::Unlocked release;
             return f.feed.start_reply(prompt, pin ? &probes : nullptr, gp);
           },
           nb::arg("prompt"), nb::arg("pin").none(), nb::arg("max_tokens"), nb::arg("stop"),
           nb::arg("ignore_eos"), nb::arg("sampling"), nb::keep_alive<0, 1>(),
           "Starts the reply to a rendered prompt; pin: (probe_a, probe_b), two renderings of the "
           "system prompt + a first user message differing only in the user's text, or None.")
      .def("finish_reply",
           [](PyChatFeed& f, Generation& g) {
             tova::py::Unlocked release;
             return f.feed.finish_reply(g);
           },
           nb::arg("generation"),
           "Ends the reply (cancelling it if still running) and records what the sequence holds.")
      .def("reset", [](PyChatFeed& f) {
        tova::py::Unlocked release;
        f.feed.reset();
      })
      .def_prop_ro("in_reply", [](const PyChatFeed& f) { return f.feed.in_reply(); })
      .def_prop_ro("pinned_tokens", [](const PyChatFeed& f) { return f.feed.pinned_tokens(); })
      .def_prop_ro("counters", [](const PyChatFeed& f) { return counters_dict(f.feed.counters()); });

  nb::class_<ChatSession>(m, "ChatSession")
      .def("__init__",
           [](ChatSession* self, Engine& e, const std::string& forced, bool keep_system) {
             new (self) ChatSession(e, choose_chat_format(e.model(), forced).format, keep_system);
           },
           nb::arg("engine"), nb::arg("chat_format") = "", nb::arg("keep_system") = false,
           nb::keep_alive<1, 2>())
      .def_prop_rw("system", &ChatSession::system, &ChatSession::set_system)
      .def("messages",
           [](const ChatSession& s) {
             Pairs out;
             for (const auto& msg : s.messages()) out.emplace_back(msg.role, msg.content);
             return out;
           })
      .def("reset", [](ChatSession& s) {
        tova::py::Unlocked release;  // it waits for the engine, whose steps may need the GIL
        s.reset();
      })
      .def("start_reply",
           [](ChatSession& s, const std::string& text, int max_tokens, const SamplingParams& sp) {
             GenerateParams gp;
             gp.max_tokens = max_tokens;
             gp.sampling = sp;
             tova::py::Unlocked release;
             return s.start_reply(text, gp);
           },
           nb::arg("text"), nb::arg("max_tokens"), nb::arg("sampling"), nb::keep_alive<0, 1>())
      .def("finish_reply", [](ChatSession& s, Generation& g, const std::string& text) {
        tova::py::Unlocked release;
        return s.finish_reply(g, text);
      }, nb::arg("generation"), nb::arg("text"),
      "Records the reply; False when it was cancelled before its first token (the user's message "
      "is dropped then).")
      .def_prop_ro("pinned_tokens", &ChatSession::pinned_tokens)
      .def_prop_ro("counters", [](const ChatSession& s) { return counters_dict(s.counters()); });
}
