// Python eviction policies: a tova.Policy subclass is adapted onto the C ABI of
// <tova/policy_plugin.h>. Each callback takes the GIL, builds a PolicyView whose numpy arrays
// view the engine's own memory (no copies), and calls the Python method. A Python exception
// propagates out of the engine as that same exception (the engine resets its sequence).
#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>

#include <string>
#include <type_traits>
#include <vector>

#include "bindings.h"
#include "interrupts.h"
#include "common.h"
#include "policy_adapter.h"

using namespace tova;

namespace {

// What Python sees during one callback. The arrays are views into the engine's memory, kept
// alive by the engine object (`owner`), so a view kept after the call never dangles; the
// PolicyView itself refuses use after its call returned.
struct PolicyView {
  const tova_policy_view* v = nullptr;
  nb::handle owner;

  const tova_policy_view& get() const {
    if (!v) throw ArgumentError("a PolicyView is only valid during the policy call it was given to");
    return *v;
  }
};

template <class T>
nb::ndarray<nb::numpy, T> view_array(const PolicyView& pv, T* data, size_t n) {
  size_t shape[1] = {n};
  return nb::ndarray<nb::numpy, T>(data, 1, shape, pv.owner);
}

nb::ndarray<nb::numpy, const float> probs_array(const PolicyView& pv) {
  const tova_policy_view& v = pv.get();
  if (!v.probs) throw ArgumentError("probs are not available: the policy did not ask for them (needs_probs)");
  size_t shape[2] = {static_cast<size_t>(v.n_heads), static_cast<size_t>(v.n_slots)};
  return nb::ndarray<nb::numpy, const float>(v.probs, 2, shape, pv.owner);
}

struct PyAdapter {
  nb::object policy;      // the tova.Policy instance
  PyObject* engine = nullptr;  // the _core.Engine (borrowed: it owns us)
  std::string name;
  tova_policy c{};
};

// Calls f(view) with the GIL. A Ctrl-C that lands in the Python method is the waiting thread's
// (interrupts.h): kept aside for its next check, and the method runs again (a few times at most;
// then the interrupt goes out as the policy's error).
template <class F>
auto with_view(PyAdapter* a, const tova_policy_view* v, F&& f) {
  nb::gil_scoped_acquire gil;
  nb::object view_obj = nb::cast(PolicyView{v, nb::handle(a->engine)});
  struct Invalidate {
    nb::object& o;
    ~Invalidate() { nb::cast<PolicyView&>(o).v = nullptr; }
  } inv{view_obj};
  for (int attempt = 0;; ++attempt) {
    try {
      return f(view_obj);
    } catch (nb::python_error& e) {
      if (attempt == 3 || !tova::py::is_interrupt(e)) throw;
      tova::py::stash_interrupt(e);
    }
  }
}

int py_select(void* user, const tova_policy_view* v, int32_t* out) {
  auto* a = static_cast<PyAdapter*>(user);
  return with_view(a, v, [&](nb::object& view) {
    nb::object r = a->policy.attr("select")(v->layer, view);
    if (v->n_evict == 0) return 0;  // every-step policies may return anything when nothing goes
    std::vector<int64_t> slots;
    if (r.is_none() || !nb::hasattr(r, "__iter__"))
      throw Error(cat("Python policy '", a->name, "': select() must return a sequence of slot indices (ints), got ",
                      nb::cast<std::string>(nb::str(nb::handle(r.type())))));
    try {
      for (nb::handle h : r) {
        if (PyBool_Check(h.ptr())) throw nb::cast_error();  // True is not slot 1
        slots.push_back(nb::cast<int64_t>(h));
      }
    } catch (const nb::cast_error&) {
      throw Error(cat("Python policy '", a->name, "': select() must return slot indices (ints), got ",
                      nb::cast<std::string>(nb::str(nb::handle(r.type())))));
    }
    if (static_cast<int32_t>(slots.size()) != v->n_evict)
      throw Error(cat("Python policy '", a->name, "' at layer ", v->layer, ", position ", v->t,
                      ": select() returned ", slots.size(), " slots, expected ", v->n_evict));
    for (size_t k = 0; k < slots.size(); ++k) {
      if (slots[k] < INT32_MIN || slots[k] > INT32_MAX)
        throw Error(cat("Python policy '", a->name, "': slot ", slots[k], " is out of range"));
      out[k] = static_cast<int32_t>(slots[k]);
    }
    return 0;
  });
}

void py_on_insert(void* user, const tova_policy_view* v, int32_t slot) {
  auto* a = static_cast<PyAdapter*>(user);
  with_view(a, v, [&](nb::object& view) {
    a->policy.attr("on_insert")(v->layer, slot, view);
    return 0;
  });
}

void py_on_evict(void* user, const tova_policy_view* v, const int32_t* slots, int32_t n) {
  auto* a = static_cast<PyAdapter*>(user);
  with_view(a, v, [&](nb::object& view) {
    nb::list l;
    for (int32_t k = 0; k < n; ++k) l.append(slots[k]);
    a->policy.attr("on_evict")(v->layer, l, view);
    return 0;
  });
}

void py_reset(void* user) {
  auto* a = static_cast<PyAdapter*>(user);
  nb::gil_scoped_acquire gil;
  a->policy.attr("reset")();
}

void py_reset_seq(void* user, int32_t seq) {
  auto* a = static_cast<PyAdapter*>(user);
  nb::gil_scoped_acquire gil;
  a->policy.attr("reset_sequence")(seq);
}

void py_destroy(tova_policy* self) {
  auto* a = static_cast<PyAdapter*>(self->user);
  nb::gil_scoped_acquire gil;
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
  return nb::cast<T>(v);
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

void set_python_policy_engine(tova_policy* p, PyObject* engine) {
  if (p && p->select == py_select) static_cast<PyAdapter*>(p->user)->engine = engine;
}

void bind_policy(nb::module_& m) {
  nb::class_<PolicyView>(m, "PolicyView",
                         "One layer's slots as a policy sees them during a call (arrays are views "
                         "into the engine's memory, not copies).")
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
      .def_prop_ro("pos", [](const PolicyView& p) {
        const auto& v = p.get();
        return view_array<const int32_t>(p, v.pos, static_cast<size_t>(v.n_slots));
      }, nb::rv_policy::reference, "int32 [n_slots]: absolute position of each slot's token, -1 for an empty slot")
      .def_prop_ro("protect", [](const PolicyView& p) {
        const auto& v = p.get();
        return view_array<const uint8_t>(p, v.protect, static_cast<size_t>(v.n_slots));
      }, nb::rv_policy::reference, "uint8 [n_slots]: 1 where the slot must not be evicted")
      .def_prop_ro("probs", &probs_array, nb::rv_policy::reference,
                   "float32 [n_heads, n_slots]: the current query's attention per head")
      .def_prop_ro("probs_mean", [](const PolicyView& p) {
        const auto& v = p.get();
        if (!v.probs_mean) throw ArgumentError("probs_mean is not available: the policy did not ask for it (needs_probs)");
        return view_array<const float>(p, v.probs_mean, static_cast<size_t>(v.n_slots));
      }, nb::rv_policy::reference, "float32 [n_slots]: probs averaged over the query heads")
      .def_prop_ro("state", [](const PolicyView& p) {
        const auto& v = p.get();
        return view_array<float>(p, v.state, static_cast<size_t>(v.n_slots));
      }, nb::rv_policy::reference, "float32 [n_slots]: a per-slot value the policy owns (writable; 0 for a new token)");
}
