// tova._core.Tokenizer (a GGUF file's tokenizer) and tova._core.Utf8Stream.
#include <nanobind/stl/string.h>
#include <nanobind/stl/string_view.h>
#include <nanobind/stl/vector.h>

#include <memory>
#include <string>
#include <vector>

#include "bindings.h"
#include "unlocked.h"
#include "common.h"
#include "gguf.h"
#include "tokenizer.h"
#include "tokenizer_bpe.h"
#include "unicode.h"

using namespace tova;

namespace {

// Python-side handle; shared so that other bindings (the engine) can hand out the tokenizer
// they hold.
struct PyTokenizer {
  std::shared_ptr<const Tokenizer> impl;
};

nb::bytes to_bytes(const std::string& s) { return nb::bytes(s.data(), s.size()); }

// str -> its UTF-8; bytes are taken as they are.
std::string text_arg(nb::handle text) {
  if (nb::isinstance<nb::bytes>(text)) {
    nb::bytes b = nb::borrow<nb::bytes>(text);
    return std::string(b.c_str(), b.size());
  }
  if (nb::isinstance<nb::str>(text)) {
    Py_ssize_t size = 0;
    const char* data = PyUnicode_AsUTF8AndSize(text.ptr(), &size);
    if (!data) throw nb::python_error();
    return std::string(data, static_cast<size_t>(size));
  }
  throw nb::type_error("text must be str or bytes");
}

}  // namespace

// A Python tova._core.Tokenizer for a tokenizer held elsewhere (the engine's). Declare it in
// bindings.h to use it from another binding.
nb::object make_py_tokenizer(std::shared_ptr<const Tokenizer> tok) {
  return nb::cast(PyTokenizer{std::move(tok)});
}

void bind_tokenizer(nb::module_& m) {
  nb::class_<PyTokenizer>(m, "Tokenizer",
                          "The tokenizer of a GGUF model (tokenizer.ggml.*): byte-level BPE "
                          "(model 'gpt2') or SentencePiece-style (model 'llama').")
      .def("__init__",
           [](PyTokenizer* self, nb::handle path) {
             const std::string p = fs_path(path);
             std::shared_ptr<const Tokenizer> tok;
             {
               tova::py::Unlocked release;
               GgufFile file(p);
               tok = Tokenizer::from_gguf(file);
             }
             new (self) PyTokenizer{std::move(tok)};
           },
           nb::arg("path"), "Reads the tokenizer of the GGUF file at `path`.")
      .def(
          "encode",
          [](const PyTokenizer& self, nb::handle text, bool add_bos, bool parse_special) {
            const std::string s = text_arg(text);
            tova::py::Unlocked release;
            return self.impl->encode(s, add_bos, parse_special);
          },
          nb::arg("text"), nb::arg("add_bos"), nb::arg("parse_special"),
          "Token ids of `text` (str or UTF-8 bytes). add_bos: prepend BOS. parse_special: text "
          "of control tokens such as '<|im_start|>' becomes those tokens (user-defined tokens "
          "always do, as in llama.cpp).")
      .def(
          "mark_literal",
          [](const PyTokenizer& self, nb::handle text) { return self.impl->mark_literal(text_arg(text)); },
          nb::arg("text"),
          "A chat message's text with each spelling of a control token between marks (U+FDD0 "
          "... U+FDD1), for encode_chat: such spellings are read as text.")
      .def(
          "encode_chat",
          [](const PyTokenizer& self, nb::handle text, bool add_bos) {
            const std::string s = text_arg(text);
            tova::py::Unlocked release;
            return self.impl->encode_chat(s, add_bos);
          },
          nb::arg("text"), nb::arg("add_bos") = false,
          "Token ids of a prompt rendered from marked messages: special tokens parsed except "
          "between marks, which are dropped.")
      .def(
          "decode",
          [](const PyTokenizer& self, const std::vector<int32_t>& ids, bool special) {
            std::string out;
            {
              tova::py::Unlocked release;
              out = self.impl->decode(ids, special);
            }
            return to_bytes(out);
          },
          nb::arg("ids"), nb::arg("special") = false,
          "The bytes the tokens stand for (control tokens only with special=True). Bytes, "
          "since a token sequence may end inside a UTF-8 character.")
      .def(
          "token_bytes",
          [](const PyTokenizer& self, int32_t id, bool special) {
            return to_bytes(self.impl->token_bytes(id, special));
          },
          nb::arg("id"), nb::arg("special") = false)
      .def(
          "token_text", [](const PyTokenizer& self, int32_t id) {
            if (id < 0 || id >= self.impl->n_vocab())
              throw ArgumentError(cat("token id ", id, " is outside the vocabulary [0, ",
                                      self.impl->n_vocab(), ")"));
            return to_bytes(self.impl->token_text(id));
          },
          nb::arg("id"), "The token's text as stored in the vocabulary (bytes).")
      .def(
          "token_type", [](const PyTokenizer& self, int32_t id) {
            if (id < 0 || id >= self.impl->n_vocab())
              throw ArgumentError(cat("token id ", id, " is outside the vocabulary [0, ",
                                      self.impl->n_vocab(), ")"));
            return static_cast<int>(self.impl->token_type(id));
          },
          nb::arg("id"),
          "tokenizer.ggml.token_type of the token: 1 normal, 2 unknown, 3 control, "
          "4 user-defined, 5 unused, 6 byte.")
      .def("is_eog", [](const PyTokenizer& self, int32_t id) {
             return self.impl->is_end_of_generation(id);
           }, nb::arg("id"), "Whether the token ends generation (EOS, <|im_end|>, ...).")
      .def("find_token", [](const PyTokenizer& self, nb::handle text) {
             return self.impl->find_token(text_arg(text));
           }, nb::arg("text"), "Id of the token with exactly this text, or -1.")
      .def_prop_ro("n_vocab", [](const PyTokenizer& self) { return self.impl->n_vocab(); })
      .def_prop_ro("bos_id", [](const PyTokenizer& self) { return self.impl->bos_id(); })
      .def_prop_ro("eos_id", [](const PyTokenizer& self) { return self.impl->eos_id(); })
      .def_prop_ro("unk_id", [](const PyTokenizer& self) { return self.impl->unk_id(); })
      .def_prop_ro("add_bos",
                   [](const PyTokenizer& self) { return self.impl->add_bos_default(); })
      .def_prop_ro("model",
                   [](const PyTokenizer& self) { return std::string(self.impl->model_name()); })
      .def_prop_ro("pre", [](const PyTokenizer& self) { return self.impl->pre_tokenizer(); })
      .def_prop_ro("eog_ids",
                   [](const PyTokenizer& self) { return self.impl->end_of_generation_ids(); })
      .def("__len__", [](const PyTokenizer& self) { return self.impl->n_vocab(); })
      .def("__repr__", [](const PyTokenizer& self) {
        return cat("<tova Tokenizer model=", self.impl->model_name(), " pre=",
                   self.impl->pre_tokenizer(), " n_vocab=", self.impl->n_vocab(), ">");
      });

  nb::class_<Utf8Stream>(m, "Utf8Stream",
                         "Turns a stream of token bytes into text without ever splitting a "
                         "UTF-8 character: push() returns the complete characters so far.")
      .def(nb::init<>())
      .def(
          "push",
          [](Utf8Stream& self, nb::bytes b) {
            return self.push(std::string(b.c_str(), b.size()));
          },
          nb::arg("data"))
      .def("flush", &Utf8Stream::flush,
           "Whatever is held back, with an incomplete character as U+FFFD.")
      .def("reset", &Utf8Stream::reset);

  // Test hooks: the pre-tokenizer split alone, and the Unicode tables' version.
  m.def(
      "_pre_tokenize",
      [](const std::string& name, const std::string& text) {
        PreTokenizer kind;
        if (!parse_pre_tokenizer(name, &kind))
          throw ArgumentError(cat("unknown pre-tokenizer '", name, "'"));
        const std::vector<uint32_t> cps = unicode::to_code_points(text);
        std::vector<std::string> words;
        for (const auto& [b, e] : pre_tokenize(kind, cps)) {
          std::string w;
          for (size_t k = b; k < e; ++k) unicode::append_utf8(w, cps[k]);
          words.push_back(std::move(w));
        }
        return words;
      },
      nb::arg("name"), nb::arg("text"));
  m.attr("_unicode_version") = nb::str(unicode::kUnicodeVersion);
  nb::list names;
  for (const std::string& n : Tokenizer::supported_pre_tokenizers())
    names.append(nb::str(n.c_str()));
  m.attr("PRE_TOKENIZERS") = nb::tuple(names);
}
