// The GIL released around the core's blocking calls, and the interpreter's exit.
//
// CPython ends a thread that tries to take the GIL while the interpreter is being torn down
// (pthread_exit from inside the take). From a destructor, which may not be unwound, that aborts
// the process: a daemon thread generating when the program ends, or a worker stopped by Ctrl-C
// at exit, would kill it with "terminate called without an active exception". So every blocking
// call releases the GIL through Unlocked, and the package's exit hook (tova/engine.py) does:
//   1. begin_exit(): no new blocking call starts (Unlocked throws InterpreterExiting);
//      the hook cancels every running request and waits a few seconds for calls_inside() to
//      reach 0, the threads coming back to Python while it still stands;
//   2. park_late_returns(): a call that is still running then never takes the GIL again: its
//      thread parks (sleeps) until the process ends, as do core threads about to call a Python
//      policy (Locked); the hook then waits until no thread is still taking the GIL.
// Direct calls (eval, a prompt's chunks) stop at their next chunk once the exit has begun.
// The state is process-wide, as the interpreter and its exit are.
#pragma once

#include <Python.h>

#include "common.h"

namespace tova::py {

// A call refused or stopped because the interpreter is exiting (Python: SystemExit, which a
// thread's end passes over in silence: a daemon thread inside tova when the program ends stops
// without a traceback).
class InterpreterExiting : public Cancelled {
 public:
  InterpreterExiting() : Cancelled("the Python interpreter is exiting: tova starts no new call") {}
};

class Unlocked {
 public:
  Unlocked();  // throws InterpreterExiting once the exit has begun
  ~Unlocked();
  Unlocked(const Unlocked&) = delete;
  Unlocked& operator=(const Unlocked&) = delete;

 private:
  PyThreadState* state_;
};

// The GIL taken by a core thread calling into Python (a policy, a progress callback): parks
// instead once late returns park (unless the thread holds the GIL already).
class Locked {
 public:
  Locked();
  ~Locked();
  Locked(const Locked&) = delete;
  Locked& operator=(const Locked&) = delete;

 private:
  PyGILState_STATE state_;
};

// In a child made by fork(): the number of calls that were inside tova in the parent (threads
// the child does not have), the counts reset.
int after_fork_in_child();

void begin_exit();
void park_late_returns();
int calls_inside();
int taking_gil();  // threads about to take the GIL (the hook waits for none after park_late_returns)
bool exiting();    // begin_exit() was called

}  // namespace tova::py
