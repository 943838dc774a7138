// Python eviction policies: a tova.Policy subclass is adapted onto the C ABI of
// <tova/policy_plugin.h>. Each callback takes the GIL, builds a PolicyView, and calls the Python
// method. A Python exception propagates out of the engine as that same exception (the engine
// resets its sequence).
#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "bindings.h"
#include "unlocked.h"
#include "interrupts.h"
#include "common.h"
#include "policy_adapter.h"

using namespace tova;

namespace {

// What Python sees during one callback. Its arrays are copies made when first read in the call
// (one per array and call): a policy may keep them (a log of attention) and they keep the values
// of that call, and they hold nothing of the engine (no reference cycle through it). `state`,
// the policy's own per-slot values, is copied back into the engine when the call returns. The
// PolicyView itself refuses use after its call returned.
struct PolicyView {
  const tova_policy_view* v = nullptr;
  const char* hook = "select";  // the Policy method called
  nb::object pos, protect, probs, probs_mean, state;  // each array once per call
  float* state_data = nullptr;                        // the state copy's buffer (kept by `state`)

  const tova_policy_view& get() const {
    if (!v) throw ArgumentError("a PolicyView is only valid during the policy call it was given to");
    return *v;
  }

  // Ends the call: the policy's writes to `state` go back to the engine; the arrays stay the
  // policy's, holding this call's values.
  void close() {
    if (v && state_data && v->state)
      std::memcpy(v->state, state_data, sizeof(float) * static_cast<size_t>(v->n_slots));
    v = nullptr;
    state_data = nullptr;
    pos = protect = probs = probs_mean = state = nb::object();
  }
};

// A numpy array holding a copy of n_rows x n_cols values at data (1-d when n_rows is 0).
template <class T>
nb::object copy_array(const T* data, size_t n_rows, size_t n_cols, bool writable, T** buffer = nullptr) {
  const size_t n = (n_rows ? n_rows : 1) * n_cols;
  auto* copy = new T[std::max<size_t>(n, 1)];
  if (n) std::memcpy(copy, data, sizeof(T) * n);
  nb::capsule owner(copy, [](void* p) noexcept { delete[] static_cast<T*>(p); });
  if (buffer) *buffer = copy;
  size_t shape[2] = {n_rows ? n_rows : n_cols, n_cols};
  const size_t ndim = n_rows ? 2 : 1;
  if (writable) return nb::cast(nb::ndarray<nb::numpy, T>(copy, ndim, shape, owner));
  return nb::cast(nb::ndarray<nb::numpy, const T>(copy, ndim, shape, owner));
}

[[noreturn]] void no_probs(const PolicyView& pv, const char* what) {
  if (std::strcmp(pv.hook, "select") != 0)
    throw ArgumentError(cat(what, " are given to select() only (of a policy with needs_probs = True), not to ",
                            pv.hook, "()"));
  throw ArgumentError(cat(what, " are not available: the policy did not ask for them (needs_probs = False)"));
}

nb::object probs_array(PolicyView& pv) {
  const tova_policy_view& v = pv.get();
  if (!v.probs) no_probs(pv, "probs");
  if (!pv.probs.is_valid())
    pv.probs = copy_array<float>(v.probs, static_cast<size_t>(v.n_heads), static_cast<size_t>(v.n_slots), false);
  return pv.probs;
}

struct PyAdapter {
  nb::object policy;      // the tova.Policy instance
  std::string name;
  tova_policy c{};
};

// A StopIteration leaving a policy would end the Python generator that waits for the
// generation (PEP 479 makes it "generator raised StopIteration", and asyncio refuses it in a
// future): it goes out as a RuntimeError naming the policy and the method, the original its cause.
[[noreturn]] void rethrow(nb::python_error& e, const PyAdapter* a, const char* hook) {
  if (e.matches(PyExc_StopIteration) || e.matches(PyExc_StopAsyncIteration))
    nb::raise_from(e, PyExc_RuntimeError, "Python policy '%s': %s() raised %s", a->name.c_str(), hook,
                   e.matches(PyExc_StopIteration) ? "StopIteration" : "StopAsyncIteration");
  throw;  // called only in a handler: the error as it is
}

// Calls f(view) with the GIL. A Ctrl-C that lands in the Python method is the waiting thread's
// (interrupts.h): kept aside for its next check, and the method runs again (a few times at most;
// then the interrupt goes out as the policy's error).
template <class F>
auto with_view(PyAdapter* a, const tova_policy_view* v, const char* hook, F&& f) {
  tova::py::Locked gil;
  PolicyView fresh;
  fresh.v = v;
  fresh.hook = hook;
  nb::object view_obj = nb::cast(std::move(fresh));
  struct Invalidate {
    nb::object& o;
    ~Invalidate() { nb::cast<PolicyView&>(o).close(); }
  } inv{view_obj};
  for (int attempt = 0;; ++attempt) {
    try {
      return f(view_obj);
    } catch (nb::python_error& e) {
      if (attempt == 3 || !tova::py::is_interrupt(e)) rethrow(e, a, hook);
      tova::py::stash_interrupt(e);
    }
  }
}

int py_select(void* user, const tova_policy_view* v, int32_t* out) {
  auto* a = static_cast<PyAdapter*>(user);
  return with_view(a, v, "select", [&](nb::object& view) {
    nb::object r = a->policy.attr("select")(v->layer, view);
    if (v->n_evict == 0) return 0;  // every-step policies may return anything when nothing goes
    auto where = [&] { return cat("Python policy '", a->name, "' at layer ", v->layer, ", position ", v->t, ": select() "); };
    auto type_name = [](nb::handle h) { return nb::cast<std::string>(nb::str(nb::handle(h.type()).attr("__name__"))); };
    std::vector<int64_t> slots;
    // A sequence of ints: a list, tuple, set, generator or 1-d integer array (not a str, bytes,
    // or a 0-d array, which iterate oddly or not at all).
    // (An array's ndim: 0 and 2 or more are refused by name, not by what iterating them does.)
    const int ndim = nb::hasattr(r, "ndim") && nb::isinstance<nb::int_>(r.attr("ndim")) ? nb::cast<int>(r.attr("ndim")) : 1;
    if (r.is_none() || ndim != 1 || nb::isinstance<nb::str>(r) || nb::isinstance<nb::bytes>(r) || !nb::hasattr(r, "__iter__"))
      throw Error(cat(where(), "must return a sequence of slot indices (", v->n_evict, " ints), got ",
                      ndim != 1 ? cat("a ", ndim, "-d array") : type_name(r)));
    if (nb::hasattr(r, "__len__")) {  // a sized answer: its length says it all
      const Py_ssize_t n = PyObject_Length(r.ptr());
      if (n < 0) throw nb::python_error();
      if (n != v->n_evict) throw Error(cat(where(), "returned ", n, " slots, expected ", v->n_evict));
    }
    for (nb::handle h : r) {
      // True is not slot 1, nor 3.0 slot 3: an int (or numpy integer) only.
      if (PyBool_Check(h.ptr()) || !PyIndex_Check(h.ptr()))
        throw Error(cat(where(), "must return slot indices (ints), got an element of type ", type_name(h)));
      nb::object index = nb::steal(PyNumber_Index(h.ptr()));
      if (!index.is_valid()) {  // an index-like object that refuses to be one (a 1-d array)
        PyErr_Clear();
        throw Error(cat(where(), "must return slot indices (ints), got an element of type ", type_name(h)));
      }
      int overflow = 0;
      const long long value = PyLong_AsLongLongAndOverflow(index.ptr(), &overflow);
      if (overflow != 0 || value < INT32_MIN || value > INT32_MAX)
        throw Error(cat(where(), "returned slot ", nb::cast<std::string>(nb::str(h)), ", out of range [0, ",
                        v->n_slots, ")"));
      slots.push_back(value);
      // An endless iterator (itertools.count()) must not grow this without bound.
      if (static_cast<int64_t>(slots.size()) > v->n_evict)
        throw Error(cat(where(), "returned more than ", v->n_evict, " slots, expected ", v->n_evict));
    }
    if (static_cast<int32_t>(slots.size()) != v->n_evict)
      throw Error(cat(where(), "returned ", slots.size(), " slots, expected ", v->n_evict));
    for (size_t k = 0; k < slots.size(); ++k) out[k] = static_cast<int32_t>(slots[k]);
    return 0;
  });
}

void py_on_insert(void* user, const tova_policy_view* v, int32_t slot) {
  auto* a = static_cast<PyAdapter*>(user);
  with_view(a, v, "on_insert", [&](nb::object& view) {
    a->policy.attr("on_insert")(v->layer, slot, view);
    return 0;
  });
}

void py_on_evict(void* user, const tova_policy_view* v, const int32_t* slots, int32_t n) {
  auto* a = static_cast<PyAdapter*>(user);
  with_view(a, v, "on_evict", [&](nb::object& view) {
    nb::list l;
    for (int32_t k = 0; k < n; ++k) l.append(slots[k]);
    a->policy.attr("on_evict")(v->layer, l, view);
    return 0;
  });
}

void py_reset(void* user) {
  auto* a = static_cast<PyAdapter*>(user);
  tova::py::Locked gil;
  try {
    a->policy.attr("reset")();
  } catch (nb::python_error& e) {
    rethrow(e, a, "reset");
  }
}

void py_reset_seq(void* user, int32_t seq) {
  auto* a = static_cast<PyAdapter*>(user);
  tova::py::Locked gil;
  try {
    a->policy.attr("reset_sequence")(seq);
  } catch (nb::python_error& e) {
    rethrow(e, a, "reset_sequence");
  }
}

void py_destroy(tova_policy* self) {
  auto* a = static_cast<PyAdapter*>(self->user);
  tova::py::Locked gil;
  delete a;
}

}  // namespace

// A policy attribute of the wrong type is a TypeError naming it (read before anything is made).
template <class T>
T policy_attr(nb::handle policy, const char* attr, const char* expected) {
  nb::object v = policy.attr(attr);
  const bool ok = std::is_same_v<T, bool> ? nb::isinstance<nb::bool_>(v) : nb::isinstance<nb::str>(v);
  if (!ok)
    throw nb::type_error(cat("tova.Policy attribute ", attr, " must be ", expected, ", got ",
                             nb::cast<std::string>(nb::str(nb::handle(v.type()).attr("__name__"))))
                             .c_str());
  if constexpr (std::is_same_v<T, std::string>) {
    Py_ssize_t n = 0;
    const char* utf8 = PyUnicode_AsUTF8AndSize(v.ptr(), &n);
    if (!utf8) {  // a lone surrogate: not text
      PyErr_Clear();
      throw nb::value_error(cat("tova.Policy attribute ", attr, " is not valid Unicode text").c_str());
    }
    return std::string(utf8, static_cast<size_t>(n));
  } else {
    return nb::cast<T>(v);
  }
}

PolicyHandle make_python_policy(nb::handle policy) {
  std::string name = policy_attr<std::string>(policy, "name", "a str");
  const bool needs_probs = policy_attr<bool>(policy, "needs_probs", "True or False");
  const bool every_step = policy_attr<bool>(policy, "every_step", "True or False");
  for (const char* m : {"select", "on_insert", "on_evict", "reset", "reset_sequence"})
    if (!PyCallable_Check(policy.attr(m).ptr()))
      throw nb::type_error(cat("tova.Policy method ", m, " must be callable").c_str());
  auto* a = new PyAdapter();
  a->policy = nb::borrow(policy);
  a->name = std::move(name);
  tova_policy& c = a->c;
  c.abi_version = TOVA_POLICY_ABI_VERSION;
  c.struct_size = sizeof(tova_policy);
  c.name = a->name.c_str();
  c.flags = (needs_probs ? TOVA_POLICY_NEEDS_PROBS : 0u) | (every_step ? TOVA_POLICY_EVERY_STEP : 0u);
  c.user = a;
  c.select = py_select;
  // Optional hooks only when the subclass overrides them: each costs a trip into Python.
  nb::handle base = nb::module_::import_("tova.policy").attr("Policy");
  auto overrides = [&](const char* m) { return !policy.type().attr(m).is(base.attr(m)); };
  c.on_insert = overrides("on_insert") ? py_on_insert : nullptr;
  c.on_evict = overrides("on_evict") ? py_on_evict : nullptr;
  c.reset = overrides("reset") ? py_reset : nullptr;
  c.reset_seq = overrides("reset_sequence") ? py_reset_seq : nullptr;
  c.destroy = py_destroy;
  return PolicyHandle(&c, nullptr, cat("Python policy '", a->name, "'"));
}

PyObject* python_policy_object(tova_policy* p) {
  if (p && p->select == py_select) return static_cast<PyAdapter*>(p->user)->policy.ptr();
  return nullptr;
}

void clear_python_policy(tova_policy* p) {
  if (p && p->select == py_select) static_cast<PyAdapter*>(p->user)->policy = nb::none();
}

void bind_policy(nb::module_& m) {
  nb::class_<PolicyView>(m, "PolicyView",
                         "One layer's slots as a policy sees them during a call (its arrays are "
                         "copies, made when first read in the call; the policy may keep them).")
      .def_prop_ro("layer", [](const PolicyView& p) { return p.get().layer; })
      .def_prop_ro("capacity", [](const PolicyView& p) { return p.get().capacity; })
      .def_prop_ro("n_slots", [](const PolicyView& p) { return p.get().n_slots; })
      .def_prop_ro("n_valid", [](const PolicyView& p) { return p.get().n_valid; })
      .def_prop_ro("n_evict", [](const PolicyView& p) { return p.get().n_evict; })
      .def_prop_ro("n_heads", [](const PolicyView& p) { return p.get().n_heads; })
      .def_prop_ro("t", [](const PolicyView& p) { return p.get().t; })
      .def_prop_ro("new_slot", [](const PolicyView& p) { return p.get().new_slot; })
      .def_prop_ro("seq", [](const PolicyView& p) { return p.get().seq; },
                   "the engine sequence this call is for (each has its own slots)")
      .def_prop_ro("pos", [](PolicyView& p) {
        const auto& v = p.get();
        if (!p.pos.is_valid()) p.pos = copy_array<int32_t>(v.pos, 0, static_cast<size_t>(v.n_slots), false);
        return p.pos;
      }, nb::sig("def pos(self, /) -> numpy.typing.NDArray[numpy.int32]"),
                   "int32 [n_slots]: absolute position of each slot's token, -1 for an empty slot (read-only)")
      .def_prop_ro("protect", [](PolicyView& p) {
        const auto& v = p.get();
        if (!p.protect.is_valid()) p.protect = copy_array<uint8_t>(v.protect, 0, static_cast<size_t>(v.n_slots), false);
        return p.protect;
      }, nb::sig("def protect(self, /) -> numpy.typing.NDArray[numpy.uint8]"),
                   "uint8 [n_slots]: 1 where the slot must not be evicted (read-only)")
      .def_prop_ro("probs", &probs_array,
                   nb::sig("def probs(self, /) -> numpy.typing.NDArray[numpy.float32]"),
                   "float32 [n_heads, n_slots]: the current query's attention per head (read-only)")
      .def_prop_ro("probs_mean", [](PolicyView& p) {
        const auto& v = p.get();
        if (!v.probs_mean) no_probs(p, "probs_mean");
        if (!p.probs_mean.is_valid())
          p.probs_mean = copy_array<float>(v.probs_mean, 0, static_cast<size_t>(v.n_slots), false);
        return p.probs_mean;
      }, nb::sig("def probs_mean(self, /) -> numpy.typing.NDArray[numpy.float32]"),
                   "float32 [n_slots]: probs averaged over the query heads (read-only)")
      .def_prop_ro("state", [](PolicyView& p) {
        const auto& v = p.get();
        if (!p.state.is_valid())
          p.state = copy_array<float>(v.state, 0, static_cast<size_t>(v.n_slots), true, &p.state_data);
        return p.state;
      }, nb::sig("def state(self, /) -> numpy.typing.NDArray[numpy.float32]"),
                   "float32 [n_slots]: a per-slot value the policy owns (writable: what it holds when the "
         "call returns is kept; 0 for a new token)");
}
