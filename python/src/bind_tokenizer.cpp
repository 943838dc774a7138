#include "bindings.h"

void bind_tokenizer(nb::module_& m) {}
