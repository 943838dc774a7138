// The type table: every ggml type id with its block layout and facts, built once. The sizes of
// the computable block formats are taken from their structs (quant_blocks.h); the kernels are
// the backends' business (cpu/kernels_cpu.cpp for the CPU).
#include "quant.h"

#include <array>
#include <cstdint>
#include <cstring>

#include "common.h"
#include "quant_blocks.h"

namespace tova {

// --- half precision -------------------------------------------------------------------------

float fp16_to_fp32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  const uint32_t exp = (h >> 10) & 0x1F;
  uint32_t mant = h & 0x3FF;
  uint32_t bits;
  if (exp == 0x1F) {
    bits = sign | 0x7F800000u | (mant << 13);  // inf, or NaN with its payload kept
  } else if (exp != 0) {
    bits = sign | ((exp + 112) << 23) | (mant << 13);  // rebias 15 -> 127
  } else if (mant == 0) {
    bits = sign;
  } else {
    // Subnormal half: normalize into a float32 normal.
    int e = 113;  // exponent of 2^-14 in float32 bias (127 - 14)
    while ((mant & 0x400) == 0) {
      mant <<= 1;
      --e;
    }
    bits = sign | (static_cast<uint32_t>(e) << 23) | ((mant & 0x3FF) << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

uint16_t fp32_to_fp16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const auto sign = static_cast<uint16_t>((x >> 16) & 0x8000);
  const uint32_t ax = x & 0x7FFFFFFFu;
  if (ax >= 0x7F800000u) {
    if (ax == 0x7F800000u) return sign | 0x7C00;
    return static_cast<uint16_t>(sign | 0x7E00 | ((ax >> 13) & 0x3FF));  // quiet NaN
  }
  if (ax >= 0x477FF000u) return sign | 0x7C00;  // >= 65520 rounds to inf
  if (ax < 0x38800000u) {
    // Result is a half subnormal (or zero, or the smallest normal after rounding):
    // q = value / 2^-24, rounded to nearest even.
    if (ax <= 0x33000000u) return sign;  // <= 2^-25 rounds to zero (2^-25 is a tie to even 0)
    const uint32_t m = (ax & 0x7FFFFF) | 0x800000;
    const int shift = 126 - static_cast<int>(ax >> 23);  // 14..24
    uint32_t q = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1);
    const uint32_t half = 1u << (shift - 1);
    if (rem > half || (rem == half && (q & 1))) ++q;
    return static_cast<uint16_t>(sign | q);
  }
  // Normal: rebias the exponent, round the 13 dropped mantissa bits to nearest even; a carry
  // out of the mantissa correctly bumps the exponent.
  uint32_t h = ((ax >> 13) - (112u << 10));
  const uint32_t rem = ax & 0x1FFF;
  if (rem > 0x1000 || (rem == 0x1000 && (h & 1))) ++h;
  return static_cast<uint16_t>(sign | h);
}

float bf16_to_fp32(uint16_t h) {
  const uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

uint16_t fp32_to_bf16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  if ((x & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<uint16_t>((x >> 16) | 0x40);  // quiet NaN
  return static_cast<uint16_t>((x + 0x7FFF + ((x >> 16) & 1)) >> 16);
}

// --- the table --------------------------------------------------------------------------------

namespace {

using Table = std::array<TypeTraits, kGgmlTypeLimit>;

// A type tova knows the layout of but cannot compute with.
void layout(Table& t, GgmlType id, const char* name, int64_t block_size, size_t type_size) {
  TypeTraits& e = t[static_cast<uint32_t>(id)];
  e.name = name;
  e.block_size = block_size;
  e.type_size = type_size;
  e.is_quantized = true;
}

// A plain number type (block size 1) whose activations are float32.
void number(Table& t, GgmlType id, const char* name, size_t size) {
  TypeTraits& e = t[static_cast<uint32_t>(id)];
  e.name = name;
  e.block_size = 1;
  e.type_size = size;
  e.is_quantized = false;
  e.vec_dot_type = GgmlType::F32;
  e.computable = true;
}

// A block format tova computes with: its layout is its struct.
template <class Block, int64_t B>
void quant(Table& t, GgmlType id, const char* name, GgmlType dot_type) {
  TypeTraits& e = t[static_cast<uint32_t>(id)];
  e.name = name;
  e.block_size = B;
  e.type_size = sizeof(Block);
  e.is_quantized = true;
  e.vec_dot_type = dot_type;
  e.computable = true;
}

Table build_table() {
  Table t{};
  // Layouts only: tova can validate and skip these, not compute with them.
  layout(t, GgmlType::IQ2_XXS, "IQ2_XXS", 256, 66);
  layout(t, GgmlType::IQ2_XS, "IQ2_XS", 256, 74);
  layout(t, GgmlType::IQ3_XXS, "IQ3_XXS", 256, 98);
  layout(t, GgmlType::IQ1_S, "IQ1_S", 256, 50);
  layout(t, GgmlType::IQ4_NL, "IQ4_NL", 32, 18);
  layout(t, GgmlType::IQ3_S, "IQ3_S", 256, 110);
  layout(t, GgmlType::IQ2_S, "IQ2_S", 256, 82);
  layout(t, GgmlType::IQ4_XS, "IQ4_XS", 256, 136);
  layout(t, GgmlType::IQ1_M, "IQ1_M", 256, 56);
  layout(t, GgmlType::TQ1_0, "TQ1_0", 256, 54);
  layout(t, GgmlType::TQ2_0, "TQ2_0", 256, 66);
  layout(t, GgmlType::MXFP4, "MXFP4", 32, 17);

  number(t, GgmlType::F32, "F32", 4);
  number(t, GgmlType::F16, "F16", 2);
  number(t, GgmlType::BF16, "BF16", 2);
  number(t, GgmlType::F64, "F64", 8);
  number(t, GgmlType::I8, "I8", 1);
  number(t, GgmlType::I16, "I16", 2);
  number(t, GgmlType::I32, "I32", 4);
  number(t, GgmlType::I64, "I64", 8);

  constexpr auto Q8_0 = GgmlType::Q8_0;
  constexpr auto Q8_1 = GgmlType::Q8_1;
  constexpr auto Q8_K = GgmlType::Q8_K;
  quant<BlockQ4_0, kQK>(t, GgmlType::Q4_0, "Q4_0", Q8_0);
  quant<BlockQ4_1, kQK>(t, GgmlType::Q4_1, "Q4_1", Q8_1);
  quant<BlockQ5_0, kQK>(t, GgmlType::Q5_0, "Q5_0", Q8_0);
  quant<BlockQ5_1, kQK>(t, GgmlType::Q5_1, "Q5_1", Q8_1);
  quant<BlockQ8_0, kQK>(t, GgmlType::Q8_0, "Q8_0", Q8_0);
  quant<BlockQ8_1, kQK>(t, GgmlType::Q8_1, "Q8_1", Q8_0);
  quant<BlockQ2_K, kQK_K>(t, GgmlType::Q2_K, "Q2_K", Q8_K);
  quant<BlockQ3_K, kQK_K>(t, GgmlType::Q3_K, "Q3_K", Q8_K);
  quant<BlockQ4_K, kQK_K>(t, GgmlType::Q4_K, "Q4_K", Q8_K);
  quant<BlockQ5_K, kQK_K>(t, GgmlType::Q5_K, "Q5_K", Q8_K);
  quant<BlockQ6_K, kQK_K>(t, GgmlType::Q6_K, "Q6_K", Q8_K);
  quant<BlockQ8_K, kQK_K>(t, GgmlType::Q8_K, "Q8_K", Q8_K);
  return t;
}

const TypeTraits kUnknown{};

const Table& table() {
  static const Table t = build_table();
  return t;
}

}  // namespace

const TypeTraits& type_traits(uint32_t type_id) {
  return type_id < kGgmlTypeLimit ? table()[type_id] : kUnknown;
}

bool type_known(uint32_t type_id) { return type_traits(type_id).name != nullptr; }

namespace {

bool computable(const TypeTraits& t) { return t.name != nullptr && t.computable; }

std::string computable_names() {
  std::string names;
  for (uint32_t id = 0; id < kGgmlTypeLimit; ++id) {
    const TypeTraits& t = type_traits(id);
    if (!computable(t)) continue;
    if (!names.empty()) names += ", ";
    names += t.name;
  }
  return names;
}

}  // namespace

bool type_supported(uint32_t type_id) { return computable(type_traits(type_id)); }

const TypeTraits& require_computable(uint32_t type_id, const std::string& what) {
  const TypeTraits& t = type_traits(type_id);
  if (t.name == nullptr) {
    throw FormatError(cat(what, ": unknown type id ", type_id, " (supported: ", computable_names(), ")"));
  }
  if (!computable(t)) {
    throw FormatError(cat(what, ": type ", t.name, " is not supported (supported: ", computable_names(), ")"));
  }
  return t;
}

size_t row_bytes(GgmlType type, int64_t n) {
  const TypeTraits& t = type_traits(type);
  if (t.name == nullptr) throw ArgumentError(cat("row_bytes: unknown type id ", static_cast<uint32_t>(type)));
  if (n < 0 || n % t.block_size != 0) {
    throw ArgumentError(cat("row_bytes: ", n, " elements of type ", t.name,
                            " is not a whole number of blocks of ", t.block_size));
  }
  const auto blocks = static_cast<uint64_t>(n / t.block_size);
  if (blocks > SIZE_MAX / t.type_size) {
    throw ArgumentError(cat("row_bytes: ", n, " elements of type ", t.name, " do not fit in memory"));
  }
  return static_cast<size_t>(blocks) * t.type_size;
}

}  // namespace tova
