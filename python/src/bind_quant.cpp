#include "bindings.h"

void bind_quant(nb::module_& m) {}
