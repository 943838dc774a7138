// Adapting Python tova.Policy objects onto the C policy ABI.
#pragma once

#include <nanobind/nanobind.h>

#include "kv_policy.h"

namespace nb = nanobind;

// A policy handle whose callbacks call the Python object's methods (select, on_insert, ...).
tova::PolicyHandle make_python_policy(nb::handle policy);
// The Python policy object behind an adapter (nullptr for other policies): for the GC.
PyObject* python_policy_object(tova_policy* p);
// Drops the adapter's reference to its Python policy (the GC breaking a cycle).
void clear_python_policy(tova_policy* p);
