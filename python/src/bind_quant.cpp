// tova._core quant functions: the type table and the CPU kernel table, for tests.
#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "bindings.h"
#include "unlocked.h"
#include "common.h"
#include "cpu/kernels_cpu.h"
#include "quant.h"

using namespace tova;

namespace {

using BytesIn = nb::ndarray<const uint8_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using FloatsIn = nb::ndarray<const float, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
template <class T>
using ArrayOut = nb::ndarray<nb::numpy, T, nb::ndim<1>>;

// A numpy array that owns `data` (allocated with new[]).
template <class T>
ArrayOut<T> to_numpy(T* data, size_t n) {
  nb::capsule owner(data, [](void* p) noexcept { delete[] static_cast<T*>(p); });
  return ArrayOut<T>(data, {n}, owner);
}

const TypeTraits& known_type(uint32_t type_id) {
  const TypeTraits& t = type_traits(type_id);
  if (t.name == nullptr) throw ArgumentError(cat("unknown ggml type id ", type_id));
  return t;
}

// The CPU kernels for the `isa` argument: "best" (the tier the engine uses) or a tier's name
// (tier_name: "scalar", "avx2", "avx512", "neon", "neon_dot"), which must be one this CPU runs.
const CpuKernels& kernels_for(uint32_t type_id, const std::string& isa) {
  known_type(type_id);
  if (isa == "best") return cpu_kernels(type_id);
  for (CpuTier t : kCpuTiers) {
    if (isa != tier_name(t)) continue;
    if (!tier_supported(t)) throw ArgumentError(cat("isa '", isa, "' is not supported by this CPU"));
    return tier_kernels(t, type_id);
  }
  throw ArgumentError(
      cat("isa must be 'best', 'scalar', 'avx2', 'avx512', 'neon' or 'neon_dot', got '", isa, "'"));
}

// Kernels read blocks through structs; a numpy view at an odd offset is copied to aligned memory.
class AlignedBytes {
 public:
  explicit AlignedBytes(const BytesIn& a) : ptr_(a.data()) {
    if (reinterpret_cast<uintptr_t>(ptr_) % alignof(uint64_t) != 0) {
      copy_.resize((a.size() + 7) / 8);
      if (a.size() != 0) std::memcpy(copy_.data(), a.data(), a.size());
      ptr_ = copy_.data();
    }
  }
  const void* data() const { return ptr_; }

 private:
  const void* ptr_;
  std::vector<uint64_t> copy_;
};

// Elements held by `bytes` bytes of the type; the byte count must be whole blocks.
int64_t elements_in(const TypeTraits& t, size_t bytes, const char* what) {
  if (bytes % t.type_size != 0) {
    throw ArgumentError(cat(what, ": ", bytes, " bytes is not a whole number of ", t.name, " blocks of ",
                            t.type_size, " bytes"));
  }
  return static_cast<int64_t>(bytes / t.type_size) * t.block_size;
}

ArrayOut<float> dequantize(uint32_t type_id, const BytesIn& data, int64_t n_elements, const std::string& isa) {
  const CpuKernels& k = kernels_for(type_id, isa);
  const TypeTraits& t = type_traits(type_id);
  if (k.dequantize == nullptr) throw ArgumentError(cat("dequantize: type ", t.name, " is not supported"));
  if (n_elements < 0 || n_elements % t.block_size != 0) {
    throw ArgumentError(cat("dequantize: n_elements ", n_elements, " is not a multiple of the ", t.name,
                            " block size ", t.block_size));
  }
  const size_t expected = row_bytes(static_cast<GgmlType>(type_id), n_elements);
  if (data.size() != expected) {
    throw ArgumentError(cat("dequantize: ", n_elements, " elements of ", t.name, " take ", expected,
                            " bytes, got ", data.size()));
  }
  AlignedBytes src(data);
  auto* out = new float[n_elements > 0 ? n_elements : 1];
  {
    tova::py::Unlocked unlocked;
    k.dequantize(src.data(), out, n_elements);
  }
  return to_numpy(out, static_cast<size_t>(n_elements));
}

ArrayOut<uint8_t> quantize(uint32_t type_id, const FloatsIn& values, const std::string& isa) {
  const CpuKernels& k = kernels_for(type_id, isa);
  const TypeTraits& t = type_traits(type_id);
  if (k.quantize == nullptr) throw ArgumentError(cat("quantize: tova cannot write type ", t.name));
  const auto n = static_cast<int64_t>(values.size());
  if (n % t.block_size != 0) {
    throw ArgumentError(cat("quantize: ", n, " values is not a multiple of the ", t.name, " block size ",
                            t.block_size));
  }
  const size_t bytes = row_bytes(static_cast<GgmlType>(type_id), n);
  // uint64_t storage keeps every block struct aligned while the kernel writes it.
  std::vector<uint64_t> buf((bytes + 7) / 8);
  {
    tova::py::Unlocked unlocked;
    k.quantize(values.data(), buf.data(), n);
  }
  auto* out = new uint8_t[bytes > 0 ? bytes : 1];
  if (bytes != 0) std::memcpy(out, buf.data(), bytes);
  return to_numpy(out, bytes);
}

float vec_dot(uint32_t type_id, const BytesIn& x, const FloatsIn& y, const std::string& mode,
              const std::string& isa) {
  const CpuKernels& k = kernels_for(type_id, isa);
  const TypeTraits& t = type_traits(type_id);
  if (k.vec_dot == nullptr || k.vec_dot_f32 == nullptr) {
    throw ArgumentError(cat("vec_dot: type ", t.name, " is not supported"));
  }
  const int64_t n = elements_in(t, x.size(), "vec_dot");
  if (static_cast<int64_t>(y.size()) != n) {
    throw ArgumentError(cat("vec_dot: x holds ", n, " ", t.name, " values but y has ", y.size()));
  }
  AlignedBytes xs(x);
  if (mode == "f32") {
    tova::py::Unlocked unlocked;
    return k.vec_dot_f32(n, xs.data(), y.data());
  }
  if (mode != "q8") throw ArgumentError(cat("vec_dot: mode must be 'q8' or 'f32', got '", mode, "'"));
  const auto act_id = static_cast<uint32_t>(t.vec_dot_type);
  if (t.vec_dot_type == GgmlType::F32) {
    tova::py::Unlocked unlocked;
    return k.vec_dot(n, xs.data(), y.data());
  }
  const CpuKernels& act = kernels_for(act_id, isa);
  std::vector<uint64_t> ybuf((row_bytes(t.vec_dot_type, n) + 7) / 8);
  tova::py::Unlocked unlocked;
  act.quantize(y.data(), ybuf.data(), n);
  return k.vec_dot(n, xs.data(), ybuf.data());
}

using FloatsIn2 = nb::ndarray<const float, nb::ndim<2>, nb::c_contig, nb::device::cpu>;

// gemm of m weight rows (x: m rows of raw bytes, concatenated) with every row of y (quantized to
// the activation type); also, for comparison, vec_dot pair by pair. Returns both as
// (rows of y, m, 2).
nb::ndarray<nb::numpy, float, nb::ndim<3>> gemm(uint32_t type_id, const BytesIn& x, int64_t m, const FloatsIn2& y,
                                                const std::string& isa) {
  const CpuKernels& kern = kernels_for(type_id, isa);
  const TypeTraits& t = type_traits(type_id);
  if (kern.gemm == nullptr) throw ArgumentError(cat("gemm: type ", t.name, " has no matrix product"));
  if (m < 1 || x.size() % static_cast<size_t>(m) != 0) throw ArgumentError(cat("gemm: m = ", m, " does not divide x"));
  const size_t xs = x.size() / static_cast<size_t>(m);
  const int64_t n = elements_in(t, xs, "gemm");
  const auto nr = static_cast<int64_t>(y.shape(0));
  if (nr < 1) throw ArgumentError("gemm: y has no rows");
  if (static_cast<int64_t>(y.shape(1)) != n) throw ArgumentError(cat("gemm: x rows hold ", n, " values, y rows ", y.shape(1)));
  AlignedBytes xa(x);
  const CpuKernels& act = kernels_for(static_cast<uint32_t>(t.vec_dot_type), isa);
  const size_t ys = row_bytes(t.vec_dot_type, n);
  // rows at an odd stride (Q8_0 rows are 34 bytes a block) exercise unaligned loads
  std::vector<uint64_t> ybuf((ys * static_cast<size_t>(nr) + 7) / 8 + 1);
  auto* yq = reinterpret_cast<uint8_t*>(ybuf.data());
  const size_t cells = static_cast<size_t>(nr * m);
  auto* out = new float[2 * cells];
  {
    tova::py::Unlocked unlocked;
    for (int64_t k = 0; k < nr; ++k) act.quantize(y.data() + k * n, yq + k * ys, n);
    std::vector<float> g(cells);
    kern.gemm(n, xa.data(), xs, m, yq, ys, nr, g.data(), static_cast<size_t>(m));
    const auto* xb = static_cast<const uint8_t*>(xa.data());
    for (int64_t k = 0; k < nr; ++k)
      for (int64_t r = 0; r < m; ++r) {
        out[2 * (k * m + r)] = g[static_cast<size_t>(k * m + r)];
        out[2 * (k * m + r) + 1] = kern.vec_dot(n, xb + r * xs, yq + k * ys);
      }
  }
  nb::capsule owner(out, [](void* p) noexcept { delete[] static_cast<float*>(p); });
  return nb::ndarray<nb::numpy, float, nb::ndim<3>>(out, {static_cast<size_t>(nr), static_cast<size_t>(m), 2}, owner);
}

nb::dict type_info(uint32_t type_id) {
  const TypeTraits& t = known_type(type_id);
  nb::dict d;
  d["name"] = t.name;
  d["block_size"] = t.block_size;
  d["type_size"] = t.type_size;
  d["is_quantized"] = t.is_quantized;
  d["supported"] = type_supported(type_id);
  d["vec_dot_type"] = static_cast<uint32_t>(t.vec_dot_type);
  const CpuKernels& k = cpu_kernels(type_id);  // what the CPU kernels of this machine can do
  d["can_quantize"] = k.quantize != nullptr;
  return d;
}

std::vector<uint32_t> type_ids() {
  std::vector<uint32_t> ids;
  for (uint32_t id = 0; id < kGgmlTypeLimit; ++id) {
    if (type_known(id)) ids.push_back(id);
  }
  return ids;
}

using HalvesIn = nb::ndarray<const uint16_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;

void check_same_size(size_t a, size_t b, const char* what) {
  if (a != b) throw ArgumentError(cat(what, ": arrays of different sizes (", a, " and ", b, ")"));
}

ArrayOut<float> axpy_copy(size_t n, const float* y, const std::function<void(float*)>& apply) {
  auto* out = new float[n > 0 ? n : 1];
  if (n != 0) std::memcpy(out, y, n * sizeof(float));
  apply(out);
  return to_numpy(out, n);
}

}  // namespace

void bind_quant(nb::module_& m) {
  m.def("type_info", &type_info, nb::arg("type_id"),
        "Layout of a ggml type id: name, block_size, type_size, is_quantized, supported, "
        "vec_dot_type, can_quantize. ValueError for unknown ids.");
  m.def("type_ids", &type_ids, "The ggml type ids tova knows the layout of.");
  m.def("dequantize", &dequantize, nb::arg("type_id"), nb::arg("data"), nb::arg("n_elements"), nb::kw_only(),
        nb::arg("isa") = "best", "Decode n_elements values of the type from raw bytes to float32.");
  m.def("quantize", &quantize, nb::arg("type_id"), nb::arg("values"), nb::kw_only(), nb::arg("isa") = "best",
        "Encode float32 values (a whole number of blocks) as raw bytes of the type.");
  m.def("vec_dot", &vec_dot, nb::arg("type_id"), nb::arg("x"), nb::arg("y"), nb::kw_only(),
        nb::arg("mode") = "q8", nb::arg("isa") = "best",
        "Dot product of a row x (raw bytes of the type) with float32 y. mode 'q8' quantizes y to "
        "the type's activation type first (as matmuls do), 'f32' uses y as is. isa 'scalar' "
        "forces the portable kernels.");
  m.def("_gemm", &gemm, nb::arg("type_id"), nb::arg("x"), nb::arg("m"), nb::arg("y"), nb::kw_only(),
        nb::arg("isa") = "best",
        "(rows of y, m, 2): the matrix product of m weight rows (x) with each row of y, and vec_dot's.");
  m.def("cpu_tiers", []() {
    std::vector<std::string> out;
    for (CpuTier t : kCpuTiers)
      if (tier_supported(t)) out.emplace_back(tier_name(t));
    return out;
  }, "The kernel tiers this CPU runs, lowest first (each a valid isa= argument).");
  // The attention helpers, exposed (privately) so tests reach their SIMD tails.
  m.def("_dot_f32", [](const FloatsIn& a, const FloatsIn& b) {
    check_same_size(a.size(), b.size(), "_dot_f32");
    return dot_f32(a.data(), b.data(), static_cast<int64_t>(a.size()));
  });
  m.def("_dot_f16_f32", [](const HalvesIn& a, const FloatsIn& b) {
    check_same_size(a.size(), b.size(), "_dot_f16_f32");
    return dot_f16_f32(a.data(), b.data(), static_cast<int64_t>(a.size()));
  });
  m.def("_axpy_f32", [](float a, const FloatsIn& x, const FloatsIn& y) {
    check_same_size(x.size(), y.size(), "_axpy_f32");
    return axpy_copy(y.size(), y.data(), [&](float* out) { axpy_f32(a, x.data(), out, static_cast<int64_t>(x.size())); });
  }, "y + a * x as a new array");
  m.def("_softmax", [](const FloatsIn& x) {
    return axpy_copy(x.size(), x.data(), [&](float* out) { softmax_f32(out, static_cast<int>(x.size())); });
  }, "softmax of x as a new array, with the active tier's kernel");
  m.def("_act_mul", [](const std::string& act, const FloatsIn& gate, const FloatsIn& up) {
    check_same_size(gate.size(), up.size(), "_act_mul");
    if (act != "silu" && act != "gelu_tanh") throw ArgumentError(cat("_act_mul: act must be 'silu' or 'gelu_tanh', got '", act, "'"));
    return axpy_copy(gate.size(), gate.data(), [&](float* out) {
      const auto n = static_cast<int64_t>(gate.size());
      if (act == "silu") silu_mul(out, up.data(), n);
      else gelu_tanh_mul(out, up.data(), n);
    });
  }, "act(gate) * up as a new array, with the active tier's kernel");
  m.def("_axpy_f16", [](float a, const HalvesIn& x, const FloatsIn& y) {
    check_same_size(x.size(), y.size(), "_axpy_f16");
    return axpy_copy(y.size(), y.data(), [&](float* out) { axpy_f16(a, x.data(), out, static_cast<int64_t>(x.size())); });
  }, "y + a * x (x fp16 bits) as a new array");
  // Gathered attention helpers: rows of a 2-D table (float32 or fp16 bits) picked by idx.
  using RowsF32 = nb::ndarray<const float, nb::ndim<2>, nb::c_contig, nb::device::cpu>;
  using RowsF16 = nb::ndarray<const uint16_t, nb::ndim<2>, nb::c_contig, nb::device::cpu>;
  using Idx = nb::ndarray<const int32_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
  auto check_gather = [](size_t rows, size_t cols, const Idx& idx, size_t vec, const char* what) {
    if (vec != cols) throw ArgumentError(cat(what, ": vector of ", vec, " for rows of ", cols));
    for (size_t j = 0; j < idx.size(); ++j)
      if (idx.data()[j] < 0 || static_cast<size_t>(idx.data()[j]) >= rows)
        throw ArgumentError(cat(what, ": index ", idx.data()[j], " out of range"));
  };
  m.def("_gather_dot", [check_gather](const RowsF32& rows32, const RowsF16& rows16, const Idx& idx,
                                      const FloatsIn& q, float scale, bool f16) {
    const size_t R = f16 ? rows16.shape(0) : rows32.shape(0), d = f16 ? rows16.shape(1) : rows32.shape(1);
    check_gather(R, d, idx, q.size(), "_gather_dot");
    auto* out = new float[idx.size() + 1];
    const auto n = static_cast<int>(idx.size());
    if (f16) gather_dot_f16(rows16.data(), d, idx.data(), n, q.data(), static_cast<int>(d), scale, out);
    else gather_dot_f32(rows32.data(), d, idx.data(), n, q.data(), static_cast<int>(d), scale, out);
    return to_numpy(out, idx.size());
  }, "scale * (rows[idx[j]] . q) for every j (rows16 when f16, else rows32)");
  m.def("_gather_axpy", [check_gather](const RowsF32& rows32, const RowsF16& rows16, const Idx& idx,
                                       const FloatsIn& p, const FloatsIn& y, bool f16) {
    const size_t R = f16 ? rows16.shape(0) : rows32.shape(0), d = f16 ? rows16.shape(1) : rows32.shape(1);
    check_gather(R, d, idx, y.size(), "_gather_axpy");
    check_same_size(idx.size(), p.size(), "_gather_axpy");
    const auto n = static_cast<int>(idx.size());
    return axpy_copy(y.size(), y.data(), [&](float* out) {
      if (f16) gather_axpy_f16(rows16.data(), d, idx.data(), n, p.data(), static_cast<int>(d), out);
      else gather_axpy_f32(rows32.data(), d, idx.data(), n, p.data(), static_cast<int>(d), out);
    });
  }, "y + sum_j p[j] * rows[idx[j]] as a new array");
  // The GQA versions: nh query heads (rows of q, p, y) against the same gathered rows.
  using Heads = nb::ndarray<const float, nb::ndim<2>, nb::c_contig, nb::device::cpu>;
  m.def("_gather_dot_heads", [check_gather](const RowsF32& rows32, const RowsF16& rows16, const Idx& idx,
                                            const Heads& q, float scale, bool f16) {
    const size_t R = f16 ? rows16.shape(0) : rows32.shape(0), d = f16 ? rows16.shape(1) : rows32.shape(1);
    check_gather(R, d, idx, q.shape(1), "_gather_dot_heads");
    const size_t nh = q.shape(0), n = idx.size();
    auto* out = new float[nh * n + 1];
    const int ni = static_cast<int>(n), di = static_cast<int>(d), hi = static_cast<int>(nh);
    if (f16) gather_dot_heads_f16(rows16.data(), d, idx.data(), ni, q.data(), d, hi, di, scale, out, n);
    else gather_dot_heads_f32(rows32.data(), d, idx.data(), ni, q.data(), d, hi, di, scale, out, n);
    return to_numpy(out, nh * n);
  }, "scale * (rows[idx[j]] . q[h]) at [h * len(idx) + j] (rows16 when f16, else rows32)");
  m.def("_gather_axpy_heads", [check_gather](const RowsF32& rows32, const RowsF16& rows16, const Idx& idx,
                                             const Heads& p, const Heads& y, bool f16) {
    const size_t R = f16 ? rows16.shape(0) : rows32.shape(0), d = f16 ? rows16.shape(1) : rows32.shape(1);
    check_gather(R, d, idx, y.shape(1), "_gather_axpy_heads");
    check_same_size(idx.size(), p.shape(1), "_gather_axpy_heads");
    check_same_size(p.shape(0), y.shape(0), "_gather_axpy_heads");
    const size_t nh = y.shape(0), n = idx.size();
    const int ni = static_cast<int>(n), di = static_cast<int>(d), hi = static_cast<int>(nh);
    return axpy_copy(y.size(), y.data(), [&](float* out) {
      if (f16) gather_axpy_heads_f16(rows16.data(), d, idx.data(), ni, p.data(), n, hi, di, out, d);
      else gather_axpy_heads_f32(rows32.data(), d, idx.data(), ni, p.data(), n, hi, di, out, d);
    });
  }, "y[h] + sum_j p[h][j] * rows[idx[j]] for every head h, flattened, as a new array");
  m.def("kernel_isa", []() { return std::string(kernel_isa()); }, "SIMD level of the kernels in use.");
}
