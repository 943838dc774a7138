// tova._core: the compiled part of the tova package. Errors map to Python as:
//   tova::FormatError -> tova.GGUFError (ValueError), tova::ArgumentError -> ValueError,
//   tova::FileNotFound -> FileNotFoundError, tova::Error -> tova.TovaError (RuntimeError),
//   tova::Cancelled -> KeyboardInterrupt, and a call at the interpreter's exit -> SystemExit.
#include <Python.h>

#include <cstring>

#include "bindings.h"
#include "interrupts.h"
#include "unlocked.h"
#include "common.h"

namespace {

// The error with its message: a message quoting bytes of a file (a path, a name) that are not
// UTF-8 shows them as U+FFFD instead of failing to become a Python str.
void set_error(PyObject* type, const char* what) {
  PyObject* msg = PyUnicode_DecodeUTF8(what, static_cast<Py_ssize_t>(std::strlen(what)), "replace");
  if (!msg) return;  // (the decoding's own error, MemoryError, is set)
  PyErr_SetObject(type, msg);
  Py_DECREF(msg);
}

}  // namespace

NB_MODULE(_core, m) {
  m.doc() = "tova native core (private: use the tova package)";
  static nb::exception<tova::Error> tova_error(m, "TovaError", PyExc_RuntimeError);
  static nb::exception<tova::FormatError> gguf_error(m, "GGUFError", PyExc_ValueError);
  tova_error.attr("__doc__") =
      "The engine could not do what was asked: a generation's failure (a policy's wrong answer, "
      "a cancelled or closed engine, a full cache with policy 'full'), a model the engine cannot "
      "run, memory it may not take. A RuntimeError; the message names what is at fault.";
  gguf_error.attr("__doc__") =
      "A GGUF file is malformed or inconsistent (bad magic, sizes, offsets, types, metadata); "
      "the message names the file and the field or tensor. A ValueError.";
  nb::register_exception_translator([](const std::exception_ptr& p, void*) {
    try {
      std::rethrow_exception(p);
    } catch (const tova::py::InterpreterExiting& e) {
      // SystemExit itself: a thread's end passes over it (that type alone) in silence.
      set_error(PyExc_SystemExit, e.what());
    } catch (const tova::FileNotFound& e) {
      set_error(PyExc_FileNotFoundError, e.what());
    } catch (const tova::FormatError& e) {
      set_error(gguf_error.ptr(), e.what());
    } catch (const tova::Cancelled& e) {
      set_error(PyExc_KeyboardInterrupt, e.what());
    } catch (const tova::Error& e) {
      set_error(tova_error.ptr(), e.what());
    } catch (const tova::ArgumentError& e) {
      set_error(PyExc_ValueError, e.what());
    }
  });
  m.attr("__version__") = "0.1.0";
  // nanobind's report at exit of instances still alive is meant for binding authors: a daemon
  // thread's engine or a handle kept in a global is alive then by right. tova's reference
  // cycles are tested with the garbage collector instead (tests/test_kv_policies.py).
  nb::set_leak_warnings(false);
  // The interpreter's exit, in two steps (unlocked.h; called by tova/engine.py's exit hook).
  m.def("_exit_begin", &tova::py::begin_exit, "No new blocking call starts (the interpreter exits).");
  m.def("_exit_park", &tova::py::park_late_returns,
        "A blocking call still running never takes the GIL again: its thread parks.");
  m.def("_calls_inside", &tova::py::calls_inside, "Threads inside a blocking call (GIL released).");
  m.def("_taking_gil", &tova::py::taking_gil, "Threads about to take the GIL.");
  m.def("_after_fork_in_child", &tova::py::after_fork_in_child,
        "In a forked child: the calls that were inside tova in the parent; the counts reset.");
  m.def("_leak", [](nb::handle o) { o.inc_ref(); },
        "Keeps an object alive to the end of the process, its destructor never run.");
  tova::py::note_main_thread();  // (probe_signals: Ctrl-C is the main thread's)
  bind_gguf(m);
  bind_quant(m);
  bind_tokenizer(m);
  bind_sampler(m);
  bind_policy(m);
  bind_engine(m);
  bind_chat(m);
  bind_perplexity(m);
}
