// Dispatch on a weight type to its per-element dequantizer (cuda/dequant.cuh), for the kernels
// templated on one: with_type(t, f) calls f(Dq{}) with the dequantizer of t.
#pragma once

#include "dequant.cuh"

namespace tova {
namespace cuda {

// Calls f.template operator()<Dq>() with the dequantizer of t; false when t has none.
template <class F>
bool with_type(GgmlType t, F&& f) {
  switch (t) {
    case GgmlType::F32: f(DqF32{}); return true;
    case GgmlType::F16: f(DqF16{}); return true;
    case GgmlType::BF16: f(DqBF16{}); return true;
    case GgmlType::Q4_0: f(DqQ4_0{}); return true;
    case GgmlType::Q4_1: f(DqQ4_1{}); return true;
    case GgmlType::Q5_0: f(DqQ5_0{}); return true;
    case GgmlType::Q5_1: f(DqQ5_1{}); return true;
    case GgmlType::Q8_0: f(DqQ8_0{}); return true;
    case GgmlType::Q2_K: f(DqQ2_K{}); return true;
    case GgmlType::Q3_K: f(DqQ3_K{}); return true;
    case GgmlType::Q4_K: f(DqQ4_K{}); return true;
    case GgmlType::Q5_K: f(DqQ5_K{}); return true;
    case GgmlType::Q6_K: f(DqQ6_K{}); return true;
    default: return false;
  }
}

}  // namespace cuda
}  // namespace tova
