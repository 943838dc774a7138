#include "interrupts.h"

#include <atomic>

#include "unlocked.h"

namespace tova::py {

namespace {

// This thread's kept interrupt: Python's own error indicator is per thread too.
struct Kept {
  PyObject* type = nullptr;
  PyObject* value = nullptr;
  PyObject* traceback = nullptr;
};
thread_local Kept t_kept;

}  // namespace

bool is_interrupt(nanobind::python_error& e) {
  return e.matches(PyExc_BaseException) && !e.matches(PyExc_Exception) && !e.matches(PyExc_GeneratorExit);
}

void stash_interrupt(nanobind::python_error& e) {
  e.restore();  // back into the error indicator, from where it is taken
  if (t_kept.type) {
    PyErr_Clear();
    return;
  }
  PyErr_Fetch(&t_kept.type, &t_kept.value, &t_kept.traceback);
}

namespace {
// The main thread's ident, set once at module init (process-wide, as the interpreter is).
std::atomic<unsigned long> g_main_ident{0};
}  // namespace

void note_main_thread() {
  nanobind::object main = nanobind::module_::import_("threading").attr("main_thread")();
  g_main_ident.store(nanobind::cast<unsigned long>(main.attr("ident")));
}

bool probe_signals() {
  if (PyThread_get_thread_ident() != g_main_ident.load()) return false;
  if (exiting()) return true;  // (the exit hook cancels every request anyway)
  Locked gil;
  if (check_signals() == 0) return false;
  nanobind::python_error e;  // (takes the error indicator)
  stash_interrupt(e);
  return true;
}

int check_signals() {
  if (t_kept.type) {
    PyErr_Restore(t_kept.type, t_kept.value, t_kept.traceback);  // (steals the references)
    t_kept = Kept{};
    return -1;
  }
  return PyErr_CheckSignals();
}

}  // namespace tova::py
