#include "interrupts.h"

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

int check_signals() {
  if (t_kept.type) {
    PyErr_Restore(t_kept.type, t_kept.value, t_kept.traceback);  // (steals the references)
    t_kept = Kept{};
    return -1;
  }
  return PyErr_CheckSignals();
}

}  // namespace tova::py
