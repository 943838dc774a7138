// Pieces of the tova._core module, one per concern; module.cpp calls each.
#pragma once

#include <nanobind/nanobind.h>

#include <string>
#include <string_view>

namespace nb = nanobind;

// A file path from Python (str, bytes or os.PathLike) as the bytes the OS takes: a str is
// encoded as os.fsencode does, so a name that is not UTF-8 (os.fsdecode'd) opens too.
inline std::string fs_path(nb::handle path) {
  nb::object p = nb::borrow(path);
  if (!nb::isinstance<nb::str>(p) && !nb::isinstance<nb::bytes>(p)) {
    PyObject* f = PyOS_FSPath(p.ptr());
    if (!f) throw nb::python_error();
    p = nb::steal(f);
  }
  if (nb::isinstance<nb::str>(p)) {
    PyObject* b = PyUnicode_EncodeFSDefault(p.ptr());
    if (!b) throw nb::python_error();
    p = nb::steal(b);
  }
  nb::bytes b = nb::borrow<nb::bytes>(p);
  return std::string(b.c_str(), b.size());
}

// A file path back to Python, as os.fsdecode gives it.
inline nb::object fs_str(const std::string& path) {
  return nb::steal(PyUnicode_DecodeFSDefaultAndSize(path.data(), static_cast<Py_ssize_t>(path.size())));
}

// Text from a model file (GGUF strings are UTF-8): a bad byte becomes U+FFFD, so that one field
// cannot make the whole file unreadable.
inline nb::object lenient_str(std::string_view s) {
  return nb::steal(PyUnicode_DecodeUTF8(s.data(), static_cast<Py_ssize_t>(s.size()), "replace"));
}

namespace tova {
struct Stats;
}

// A generation's statistics as the dict Python sees (Handle.stats, Engine.last_stats).
nb::dict stats_dict(const tova::Stats& s);

void bind_gguf(nb::module_& m);
void bind_quant(nb::module_& m);
void bind_tokenizer(nb::module_& m);
void bind_sampler(nb::module_& m);
void bind_policy(nb::module_& m);
void bind_engine(nb::module_& m);
void bind_chat(nb::module_& m);
void bind_perplexity(nb::module_& m);
