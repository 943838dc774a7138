// tova._core.GGUFFile: metadata, tensor infos, dequantized tensors and zero-copy raw bytes.
#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <memory>

#include "bindings.h"
#include "unlocked.h"
#include "common.h"
#include "cpu/kernels_cpu.h"
#include "gguf.h"

using namespace tova;

namespace {

nb::object scalar_to_py(const GgufValue& v);

nb::object array_element(const GgufValue& v, uint64_t k) {
  switch (v.elem_type) {
    case GgufType::BOOL: return nb::bool_(v.array_int(k) != 0);
    case GgufType::FLOAT32: case GgufType::FLOAT64: return nb::float_(v.array_float(k));
    case GgufType::UINT64: return nb::steal(PyLong_FromUnsignedLongLong(
        static_cast<unsigned long long>(v.array_int(k))));
    default: return nb::int_(v.array_int(k));
  }
}

nb::object value_to_py(const GgufValue& v) {
  if (v.type != GgufType::ARRAY) return scalar_to_py(v);
  nb::list out;
  if (v.elem_type == GgufType::STRING) {
    for (auto s : v.strings) out.append(lenient_str(s));
  } else if (v.elem_type == GgufType::ARRAY) {
    for (const auto& item : v.items) out.append(value_to_py(item));
  } else {
    for (uint64_t k = 0; k < v.count; ++k) out.append(array_element(v, k));
  }
  return out;
}

nb::object scalar_to_py(const GgufValue& v) {
  switch (v.type) {
    case GgufType::BOOL: return nb::bool_(v.u != 0);
    case GgufType::UINT8: case GgufType::UINT16: case GgufType::UINT32:
      return nb::int_(static_cast<int64_t>(v.u));
    case GgufType::UINT64:
      return nb::steal(PyLong_FromUnsignedLongLong(static_cast<unsigned long long>(v.u)));
    case GgufType::INT8: case GgufType::INT16: case GgufType::INT32: case GgufType::INT64:
      return nb::int_(v.i);
    case GgufType::FLOAT32: case GgufType::FLOAT64: return nb::float_(v.f);
    case GgufType::STRING: return lenient_str(v.str);
    default: return nb::none();
  }
}

const GgufTensor& tensor_or_key_error(const GgufFile& f, const std::string& name) {
  const GgufTensor* t = f.find_tensor(name);
  if (!t) throw nb::key_error(cat(f.path(), ": no tensor named '", name, "'").c_str());
  return *t;
}

nb::tuple numpy_shape(const GgufTensor& t) {
  nb::list dims;
  for (int d = static_cast<int>(t.n_dims) - 1; d >= 0; --d) dims.append(t.ne[d]);
  return nb::tuple(dims);
}

}  // namespace

void bind_gguf(nb::module_& m) {
  nb::class_<GgufFile>(m, "GGUFFile")
      .def("__init__",
           [](GgufFile* self, nb::handle path) {
             const std::string p = fs_path(path);
             tova::py::Unlocked release;
             new (self) GgufFile(p);
           },
           nb::arg("path"))
      .def_prop_ro("path", [](const GgufFile& f) { return fs_str(f.path()); }, nb::sig("def path(self, /) -> str"),
                   "the file's path, as given")
      .def_prop_ro("version", &GgufFile::version)
      .def_prop_ro("alignment", &GgufFile::alignment)
      .def_prop_ro("data_offset", &GgufFile::data_offset)
      .def_prop_ro("file_size", &GgufFile::file_size)
      .def("metadata", [](const GgufFile& f) {
        nb::dict d;
        for (const auto& [k, v] : f.metadata()) d[lenient_str(k)] = value_to_py(v);
        return d;
      }, "All metadata as a dict of Python values, in file order.")
      .def("metadata_types", [](const GgufFile& f) {
        nb::dict d;
        for (const auto& [k, v] : f.metadata()) {
          std::string t = gguf_type_name(v.type);
          if (v.type == GgufType::ARRAY) t += cat("[", gguf_type_name(v.elem_type), "]");
          d[lenient_str(k)] = t;
        }
        return d;
      }, "The GGUF value type of each metadata key ('uint32', 'array[string]', ...).")
      .def("tensor_infos", [](const GgufFile& f) {
        nb::dict d;
        for (const GgufTensor& t : f.tensors()) {
          nb::dict info;
          nb::list ne;
          for (uint32_t k = 0; k < t.n_dims; ++k) ne.append(t.ne[k]);
          info["ne"] = nb::tuple(ne);
          info["shape"] = numpy_shape(t);
          info["type_id"] = t.type_id;
          info["type"] = type_traits(t.type_id).name;
          info["offset"] = t.offset;
          info["nbytes"] = t.nbytes;
          info["n_elements"] = t.n_elements();
          d[lenient_str(t.name)] = info;
        }
        return d;
      }, "name -> dict(ne, shape, type_id, type, offset, nbytes, n_elements).")
      .def("raw", [](nb::handle self, const std::string& name) {
        const GgufFile& f = nb::cast<const GgufFile&>(self);
        const GgufTensor& t = tensor_or_key_error(f, name);
        size_t shape[1] = {static_cast<size_t>(t.nbytes)};
        // Zero copy: the array keeps the GGUFFile (and so the mapping) alive.
        return nb::ndarray<nb::numpy, const uint8_t, nb::ndim<1>>(t.data, 1, shape, self);
      }, nb::arg("name"), "The tensor's bytes in the file, as a read-only uint8 array (no copy).")
      .def("tensor", [](const GgufFile& f, const std::string& name) {
        const GgufTensor& t = tensor_or_key_error(f, name);
        require_computable(t.type_id, cat("tensor '", t.name, "'"));
        size_t n = static_cast<size_t>(t.n_elements());
        std::unique_ptr<float[]> buf(new float[n > 0 ? n : 1]);
        {
          tova::py::Unlocked release;
          dequantize_row(t.type(), t.data, buf.get(), t.n_elements());
        }
        size_t shape[4];
        for (uint32_t d = 0; d < t.n_dims; ++d) shape[d] = static_cast<size_t>(t.ne[t.n_dims - 1 - d]);
        float* raw = buf.release();
        nb::capsule owner(raw, [](void* p) noexcept { delete[] static_cast<float*>(p); });
        return nb::ndarray<nb::numpy, float>(raw, t.n_dims, shape, owner);
      }, nb::arg("name"), "The tensor dequantized to float32, numpy shape (ne[n-1], ..., ne[0]).");
}
