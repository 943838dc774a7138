#include "unlocked.h"

#include <unistd.h>

#include <atomic>

#include "common.h"

namespace tova::py {

namespace {

std::atomic<int> g_phase{0};   // 0 running, 1 exiting (no new calls), 2 late returns park
std::atomic<int> g_inside{0};  // threads inside an Unlocked call

[[noreturn]] void park() {
  for (;;) ::pause();
}

}  // namespace

Unlocked::Unlocked() {
  if (g_phase.load() != 0)
    throw Error("the Python interpreter is exiting: tova starts no new call");
  g_inside.fetch_add(1);
  state_ = PyEval_SaveThread();
}

Unlocked::~Unlocked() {
  if (g_phase.load() == 2) {
    g_inside.fetch_sub(1);
    park();
  }
  PyEval_RestoreThread(state_);
  g_inside.fetch_sub(1);
}

Locked::Locked() {
  if (g_phase.load() == 2) park();
  state_ = PyGILState_Ensure();
}

Locked::~Locked() { PyGILState_Release(state_); }

void begin_exit() { g_phase.store(1); }
void park_late_returns() { g_phase.store(2); }
int calls_inside() { return g_inside.load(); }

}  // namespace tova::py
