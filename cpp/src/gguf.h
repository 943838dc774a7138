// Read-only GGUF (versions 2 and 3) over a memory mapping. Every length, count, offset and
// size is checked against the file before use; failures throw FormatError naming the file and
// the field or tensor at fault. Tensor data is used in place (no copy).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "mmap_file.h"
#include "quant.h"

namespace tova {

enum class GgufType : uint32_t {
  UINT8 = 0, INT8 = 1, UINT16 = 2, INT16 = 3, UINT32 = 4, INT32 = 5, FLOAT32 = 6, BOOL = 7,
  STRING = 8, ARRAY = 9, UINT64 = 10, INT64 = 11, FLOAT64 = 12,
};
const char* gguf_type_name(GgufType t);

// One metadata value. Scalars are decoded; arrays of fixed-size scalars point into the mapping
// (little-endian, possibly unaligned: read with array_int / array_float); arrays of strings are
// views into the mapping; arrays of arrays hold their items.
struct GgufValue {
  GgufType type = GgufType::UINT8;
  // scalars
  uint64_t u = 0;      // unsigned ints, bool
  int64_t i = 0;       // signed ints
  double f = 0;        // floats
  std::string_view str;
  // arrays
  GgufType elem_type = GgufType::UINT8;
  uint64_t count = 0;
  const uint8_t* data = nullptr;          // fixed-size element arrays
  std::vector<std::string_view> strings;  // string arrays
  std::vector<GgufValue> items;           // arrays of arrays

  bool is_int() const;
  bool is_float() const { return type == GgufType::FLOAT32 || type == GgufType::FLOAT64; }
  int64_t as_int() const;     // any integer or bool type
  double as_float() const;    // any numeric type
  int64_t array_int(uint64_t k) const;    // element k of an integer / bool array
  double array_float(uint64_t k) const;   // element k of a numeric array
};

struct GgufTensor {
  std::string name;
  uint32_t n_dims = 0;
  int64_t ne[4] = {1, 1, 1, 1};  // ne[0] is the contiguous (row) dimension, as ggml orders it
  uint32_t type_id = 0;
  uint64_t offset = 0;           // relative to the data section
  uint64_t nbytes = 0;
  const uint8_t* data = nullptr;  // in the mapping

  GgmlType type() const { return static_cast<GgmlType>(type_id); }
  int64_t n_elements() const { return ne[0] * ne[1] * ne[2] * ne[3]; }
  int64_t n_rows() const { return ne[1] * ne[2] * ne[3]; }
  std::string shape_string() const;  // "[576, 49152]"
};

class GgufFile {
 public:
  explicit GgufFile(const std::string& path);
  // Parses a buffer the caller keeps alive (used by fuzzing and tests); `name` is for messages.
  GgufFile(const uint8_t* data, size_t size, const std::string& name);

  const std::string& path() const { return path_; }
  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }
  uint64_t data_offset() const { return data_offset_; }
  size_t file_size() const { return size_; }

  // Metadata in file order.
  const std::vector<std::pair<std::string, GgufValue>>& metadata() const { return kv_; }
  const GgufValue* find(std::string_view key) const;
  bool has(std::string_view key) const { return find(key) != nullptr; }
  // Typed getters: FormatError if present with the wrong type; the default if absent.
  int64_t get_int(std::string_view key, int64_t def) const;
  int64_t require_int(std::string_view key) const;
  double get_float(std::string_view key, double def) const;
  double require_float(std::string_view key) const;
  bool get_bool(std::string_view key, bool def) const;
  std::string get_string(std::string_view key, const std::string& def) const;
  std::string require_string(std::string_view key) const;
  // An array value with the given element type, or FormatError / nullptr when absent.
  const GgufValue* find_array(std::string_view key, GgufType elem) const;

  const std::vector<GgufTensor>& tensors() const { return tensors_; }
  const GgufTensor* find_tensor(std::string_view name) const;
  const GgufTensor& require_tensor(std::string_view name) const;

 private:
  void parse(const uint8_t* data, size_t size);

  std::string path_;
  std::unique_ptr<MappedFile> map_;
  size_t size_ = 0;
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  uint64_t data_offset_ = 0;
  std::vector<std::pair<std::string, GgufValue>> kv_;
  std::map<std::string, size_t, std::less<>> kv_index_;
  std::vector<GgufTensor> tensors_;
  std::map<std::string, size_t, std::less<>> tensor_index_;
};

}  // namespace tova
