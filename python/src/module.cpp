// tova._core: the compiled part of the tova package. Errors map to Python as:
//   tova::FormatError -> tova.GGUFError (ValueError), tova::ArgumentError -> ValueError,
//   tova::FileNotFound -> FileNotFoundError, tova::Error -> tova.TovaError (RuntimeError).
#include <Python.h>

#include "bindings.h"
#include "common.h"

NB_MODULE(_core, m) {
  m.doc() = "tova native core (private: use the tova package)";
  static nb::exception<tova::Error> tova_error(m, "TovaError", PyExc_RuntimeError);
  static nb::exception<tova::FormatError> gguf_error(m, "GGUFError", PyExc_ValueError);
  nb::register_exception_translator([](const std::exception_ptr& p, void*) {
    try {
      std::rethrow_exception(p);
    } catch (const tova::FileNotFound& e) {
      PyErr_SetString(PyExc_FileNotFoundError, e.what());
    } catch (const tova::FormatError& e) {
      PyErr_SetString(gguf_error.ptr(), e.what());
    } catch (const tova::Cancelled& e) {
      PyErr_SetString(PyExc_KeyboardInterrupt, e.what());
    } catch (const tova::Error& e) {
      PyErr_SetString(tova_error.ptr(), e.what());
    }
  });
  m.attr("__version__") = "0.1.0";
  bind_gguf(m);
  bind_quant(m);
  bind_tokenizer(m);
  bind_sampler(m);
  bind_policy(m);
  bind_engine(m);
  bind_chat(m);
  bind_perplexity(m);
}
