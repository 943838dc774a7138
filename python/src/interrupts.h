// Ctrl-C (a signal handler's exception) in a thread that calls into the engine.
//
// The thread waiting for its own generation also runs scheduler steps for other sequences (see
// engine.h), and so Python policy callbacks for them. A KeyboardInterrupt that Python raises
// inside such a callback belongs to the waiting call, not to the sequence the policy was deciding
// for: the callback keeps it aside (stash_interrupt), runs the policy again, and the thread's next
// check (check_signals) raises it there, cancelling that thread's own request.
#pragma once

#include <nanobind/nanobind.h>

namespace tova::py {

// Whether the Python error `e` is one a signal handler raises to stop a call (KeyboardInterrupt,
// SystemExit: BaseExceptions that are not Exceptions), never a policy's own failure.
bool is_interrupt(nanobind::python_error& e);

// Keeps `e` for this thread's next check_signals (a second one while one is kept is dropped).
void stash_interrupt(nanobind::python_error& e);

// With the GIL held: -1 with the Python error set when an interrupt was kept aside for this thread
// or a signal handler raises now (PyErr_CheckSignals); else 0.
int check_signals();

// With the GIL held: when an interrupt is pending (check_signals), calls cancel() (the caller's
// request or generation) and raises it. The check after each wait of a blocking call.
template <class Cancel>
void raise_if_interrupted(Cancel&& cancel) {
  if (check_signals() == 0) return;
  cancel();
  throw nanobind::python_error();
}

// Engine::interrupt_probe: on the main thread (where Python runs signal handlers), takes the GIL
// and runs them; an interrupt they raise is kept for this thread's next check_signals (the
// waiting call raises it) and the answer is true. Elsewhere false at once, with no GIL taken.
bool probe_signals();

// Records which thread is the main one (module init, with the GIL).
void note_main_thread();

}  // namespace tova::py
