#include "unlocked.h"

#include <unistd.h>

#include <atomic>

#include "common.h"

namespace tova::py {

namespace {

std::atomic<int> g_phase{0};   // 0 running, 1 exiting (no new calls), 2 late returns park
std::atomic<int> g_inside{0};  // threads inside an Unlocked call
std::atomic<int> g_taking{0};  // threads past the phase check, taking the GIL

[[noreturn]] void park() {
  for (;;) ::pause();
}

}  // namespace

Unlocked::Unlocked() {
  if (g_phase.load() != 0) throw InterpreterExiting();
  g_inside.fetch_add(1);
  state_ = PyEval_SaveThread();
}

// Counted as taking before the phase is read: the exit hook, having set phase 2, waits until
// none is taking, so no thread waits for the GIL when the interpreter's teardown begins.
Unlocked::~Unlocked() {
  g_taking.fetch_add(1);
  if (g_phase.load() == 2) {
    g_taking.fetch_sub(1);
    g_inside.fetch_sub(1);
    park();
  }
  PyEval_RestoreThread(state_);
  g_taking.fetch_sub(1);
  g_inside.fetch_sub(1);
}

Locked::Locked() {
  // (Not the thread that holds the GIL already: the main thread tearing the interpreter down
  // frees engines, whose Python policy it must still be able to drop.)
  g_taking.fetch_add(1);
  if (g_phase.load() == 2 && !PyGILState_Check()) {
    g_taking.fetch_sub(1);
    park();
  }
  state_ = PyGILState_Ensure();
  g_taking.fetch_sub(1);
}

Locked::~Locked() { PyGILState_Release(state_); }

int after_fork_in_child() {
  // The calls that were inside tova went on in threads the child does not have.
  const int inside = g_inside.exchange(0);
  g_taking.store(0);
  return inside;
}

void begin_exit() { g_phase.store(1); }
void park_late_returns() { g_phase.store(2); }
int calls_inside() { return g_inside.load(); }
int taking_gil() { return g_taking.load(); }
bool exiting() { return g_phase.load() != 0; }

}  // namespace tova::py
