#include "gguf.h"

#include <algorithm>
#include <cstring>
#include <limits>

#include "common.h"

namespace tova {

namespace {

constexpr uint32_t kMagic = 0x46554747;  // "GGUF" little-endian
constexpr int kMaxArrayDepth = 8;
constexpr uint32_t kMaxDims = 4;

size_t scalar_size(GgufType t) {
  switch (t) {
    case GgufType::UINT8: case GgufType::INT8: case GgufType::BOOL: return 1;
    case GgufType::UINT16: case GgufType::INT16: return 2;
    case GgufType::UINT32: case GgufType::INT32: case GgufType::FLOAT32: return 4;
    case GgufType::UINT64: case GgufType::INT64: case GgufType::FLOAT64: return 8;
    default: return 0;
  }
}

bool valid_type(uint32_t t) { return t <= static_cast<uint32_t>(GgufType::FLOAT64); }

template <class T>
T load(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// Sequential reader over the file: every read checks the remaining bytes and names the field.
class Cursor {
 public:
  Cursor(const uint8_t* data, size_t size, const std::string& name)
      : data_(data), size_(size), name_(name) {}

  size_t pos() const { return pos_; }
  size_t remaining() const { return size_ - pos_; }
  const uint8_t* here() const { return data_ + pos_; }

  [[noreturn]] void fail(const std::string& what) const {
    throw FormatError(cat(name_, ": ", what, " (at byte offset ", pos_, ")"));
  }
  void need(uint64_t n, const std::string& field) const {
    if (n > remaining())
      fail(cat("file truncated: ", field, " needs ", n, " bytes but only ", remaining(),
               " remain"));
  }
  template <class T>
  T read(const std::string& field) {
    need(sizeof(T), field);
    T v = load<T>(data_ + pos_);
    pos_ += sizeof(T);
    return v;
  }
  std::string_view read_string(const std::string& field) {
    uint64_t len = read<uint64_t>(field + " length");
    need(len, cat(field, " (string of ", len, " bytes)"));
    std::string_view s(reinterpret_cast<const char*>(data_ + pos_), static_cast<size_t>(len));
    pos_ += static_cast<size_t>(len);
    return s;
  }
  void skip(uint64_t n, const std::string& field) {
    need(n, field);
    pos_ += static_cast<size_t>(n);
  }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
  const std::string& name_;
};

GgufValue read_value(Cursor& c, GgufType type, const std::string& key, int depth) {
  GgufValue v;
  v.type = type;
  switch (type) {
    case GgufType::UINT8: v.u = c.read<uint8_t>(key); break;
    case GgufType::INT8: v.i = c.read<int8_t>(key); break;
    case GgufType::UINT16: v.u = c.read<uint16_t>(key); break;
    case GgufType::INT16: v.i = c.read<int16_t>(key); break;
    case GgufType::UINT32: v.u = c.read<uint32_t>(key); break;
    case GgufType::INT32: v.i = c.read<int32_t>(key); break;
    case GgufType::UINT64: v.u = c.read<uint64_t>(key); break;
    case GgufType::INT64: v.i = c.read<int64_t>(key); break;
    case GgufType::FLOAT32: v.f = c.read<float>(key); break;
    case GgufType::FLOAT64: v.f = c.read<double>(key); break;
    case GgufType::BOOL: {
      uint8_t b = c.read<uint8_t>(key);
      if (b > 1) c.fail(cat("metadata '", key, "': bool value ", int(b), " is not 0 or 1"));
      v.u = b;
      break;
    }
    case GgufType::STRING: v.str = c.read_string(cat("metadata '", key, "' value")); break;
    case GgufType::ARRAY: {
      if (depth >= kMaxArrayDepth)
        c.fail(cat("metadata '", key, "': arrays nested deeper than ", kMaxArrayDepth));
      uint32_t et = c.read<uint32_t>(cat("metadata '", key, "' array type"));
      if (!valid_type(et)) c.fail(cat("metadata '", key, "': unknown array element type ", et));
      v.elem_type = static_cast<GgufType>(et);
      v.count = c.read<uint64_t>(cat("metadata '", key, "' array length"));
      size_t es = scalar_size(v.elem_type);
      if (es > 0) {
        if (v.count > c.remaining() / es)
          c.fail(cat("metadata '", key, "': array of ", v.count, " ", gguf_type_name(v.elem_type),
                     " runs past the end of the file"));
        v.data = c.here();
        if (v.elem_type == GgufType::BOOL) {
          for (uint64_t k = 0; k < v.count; ++k)
            if (v.data[k] > 1) c.fail(cat("metadata '", key, "': bool element ", k, " is not 0 or 1"));
        }
        c.skip(v.count * es, key);
      } else if (v.elem_type == GgufType::STRING) {
        // Each string takes at least its 8-byte length: bound the count before reserving.
        if (v.count > c.remaining() / 8)
          c.fail(cat("metadata '", key, "': array of ", v.count,
                     " strings runs past the end of the file"));
        v.strings.reserve(static_cast<size_t>(v.count));
        for (uint64_t k = 0; k < v.count; ++k)
          v.strings.push_back(c.read_string(cat("metadata '", key, "' element ", k)));
      } else {  // nested arrays: each takes at least 12 bytes (type + length)
        if (v.count > c.remaining() / 12)
          c.fail(cat("metadata '", key, "': array of ", v.count,
                     " arrays runs past the end of the file"));
        v.items.reserve(static_cast<size_t>(v.count));
        for (uint64_t k = 0; k < v.count; ++k)
          v.items.push_back(read_value(c, GgufType::ARRAY, cat(key, "[", k, "]"), depth + 1));
      }
      break;
    }
  }
  return v;
}

}  // namespace

const char* gguf_type_name(GgufType t) {
  static const char* names[] = {"uint8", "int8",  "uint16", "int16",  "uint32", "int32", "float32",
                                "bool",  "string", "array", "uint64", "int64",  "float64"};
  auto i = static_cast<uint32_t>(t);
  return i < sizeof names / sizeof names[0] ? names[i] : "unknown";
}

bool GgufValue::is_int() const {
  switch (type) {
    case GgufType::UINT8: case GgufType::INT8: case GgufType::UINT16: case GgufType::INT16:
    case GgufType::UINT32: case GgufType::INT32: case GgufType::UINT64: case GgufType::INT64:
    case GgufType::BOOL:
      return true;
    default:
      return false;
  }
}

static bool is_unsigned(GgufType t) {
  return t == GgufType::UINT8 || t == GgufType::UINT16 || t == GgufType::UINT32 ||
         t == GgufType::UINT64 || t == GgufType::BOOL;
}

int64_t GgufValue::as_int() const {
  if (!is_int()) throw FormatError(cat("expected an integer value, found ", gguf_type_name(type)));
  return is_unsigned(type) ? static_cast<int64_t>(u) : i;
}

double GgufValue::as_float() const {
  if (is_float()) return f;
  if (is_int()) return static_cast<double>(as_int());
  throw FormatError(cat("expected a number, found ", gguf_type_name(type)));
}

int64_t GgufValue::array_int(uint64_t k) const {
  TOVA_ASSERT(type == GgufType::ARRAY && data != nullptr && k < count);
  const uint8_t* p = data + k * scalar_size(elem_type);
  switch (elem_type) {
    case GgufType::UINT8: case GgufType::BOOL: return load<uint8_t>(p);
    case GgufType::INT8: return load<int8_t>(p);
    case GgufType::UINT16: return load<uint16_t>(p);
    case GgufType::INT16: return load<int16_t>(p);
    case GgufType::UINT32: return load<uint32_t>(p);
    case GgufType::INT32: return load<int32_t>(p);
    case GgufType::UINT64: return static_cast<int64_t>(load<uint64_t>(p));
    case GgufType::INT64: return load<int64_t>(p);
    default: throw FormatError(cat("expected an integer array, found array of ",
                                   gguf_type_name(elem_type)));
  }
}

double GgufValue::array_float(uint64_t k) const {
  TOVA_ASSERT(type == GgufType::ARRAY && data != nullptr && k < count);
  const uint8_t* p = data + k * scalar_size(elem_type);
  if (elem_type == GgufType::FLOAT32) return load<float>(p);
  if (elem_type == GgufType::FLOAT64) return load<double>(p);
  return static_cast<double>(array_int(k));
}

std::string GgufTensor::shape_string() const {
  std::string s = "[";
  for (uint32_t d = 0; d < n_dims; ++d) s += cat(d ? ", " : "", ne[d]);
  return s + "]";
}

GgufFile::GgufFile(const std::string& path) : path_(path) {
  map_ = std::make_unique<MappedFile>(path);
  parse(map_->data(), map_->size());
}

GgufFile::GgufFile(const uint8_t* data, size_t size, const std::string& name) : path_(name) {
  parse(data, size);
}

void GgufFile::parse(const uint8_t* data, size_t size) {
  size_ = size;
  Cursor c(data, size, path_);
  if (size < 4) c.fail(cat("file truncated: ", size, " bytes is too short for a GGUF header"));
  uint32_t magic = c.read<uint32_t>("magic");
  if (magic != kMagic) {
    char m[5] = {char(magic & 0xff), char((magic >> 8) & 0xff), char((magic >> 16) & 0xff),
                 char((magic >> 24) & 0xff), 0};
    for (int k = 0; k < 4; ++k)
      if (m[k] < 32 || m[k] > 126) m[k] = '?';
    throw FormatError(cat(path_, ": bad magic '", m, "': not a GGUF file (expected 'GGUF')"));
  }
  version_ = c.read<uint32_t>("version");
  const uint32_t swapped = (version_ >> 24) | ((version_ >> 8) & 0xff00u) | ((version_ << 8) & 0xff0000u) | (version_ << 24);
  if ((version_ & 0xffffu) == 0 && swapped >= 1 && swapped <= 3)
    throw FormatError(cat(path_, ": a big-endian GGUF file (its version reads ", swapped,
                          " byte-swapped); tova reads little-endian GGUF files only (convert it "
                          "with gguf-convert-endian FILE little)"));
  if (version_ != 2 && version_ != 3)
    throw FormatError(cat(path_, ": unsupported GGUF version ", version_,
                          " (supported: 2 and 3)"));
  uint64_t n_tensors = c.read<uint64_t>("tensor count");
  uint64_t n_kv = c.read<uint64_t>("metadata count");
  // A key-value pair takes at least 8 (key length) + 4 (type) + 1 bytes; a tensor info at least
  // 8 + 4 + 8 + 4 + 8: reject impossible counts before allocating anything.
  if (n_kv > c.remaining() / 13)
    c.fail(cat("metadata count ", n_kv, " is impossible for a file of ", size, " bytes"));
  if (n_tensors > c.remaining() / 32)
    c.fail(cat("tensor count ", n_tensors, " is impossible for a file of ", size, " bytes"));

  kv_.reserve(static_cast<size_t>(n_kv));
  for (uint64_t k = 0; k < n_kv; ++k) {
    std::string key(c.read_string(cat("metadata key ", k)));
    uint32_t t = c.read<uint32_t>(cat("metadata '", key, "' type"));
    if (!valid_type(t)) c.fail(cat("metadata '", key, "': unknown value type ", t));
    GgufValue v = read_value(c, static_cast<GgufType>(t), key, 0);
    if (kv_index_.count(key)) c.fail(cat("duplicate metadata key '", key, "'"));
    kv_index_.emplace(key, kv_.size());
    kv_.emplace_back(std::move(key), std::move(v));
  }

  if (const GgufValue* a = find("general.alignment")) {
    if (!a->is_int() || a->as_int() <= 0 || (a->as_int() & (a->as_int() - 1)) != 0)
      throw FormatError(cat(path_, ": general.alignment must be a positive power of two, found ",
                            a->is_int() ? std::to_string(a->as_int()) : gguf_type_name(a->type)));
    alignment_ = static_cast<uint64_t>(a->as_int());
  }

  tensors_.reserve(static_cast<size_t>(n_tensors));
  for (uint64_t k = 0; k < n_tensors; ++k) {
    GgufTensor t;
    t.name = std::string(c.read_string(cat("tensor ", k, " name")));
    const std::string what = cat("tensor '", t.name, "'");
    t.n_dims = c.read<uint32_t>(what + " dimension count");
    if (t.n_dims == 0 || t.n_dims > kMaxDims)
      c.fail(cat(what, ": ", t.n_dims, " dimensions (expected 1 to ", kMaxDims, ")"));
    for (uint32_t d = 0; d < t.n_dims; ++d) {
      uint64_t ne = c.read<uint64_t>(cat(what, " dimension ", d));
      if (ne > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
        c.fail(cat(what, ": dimension ", d, " is negative or too large (", ne, ")"));
      t.ne[d] = static_cast<int64_t>(ne);
    }
    t.type_id = c.read<uint32_t>(what + " type");
    t.offset = c.read<uint64_t>(what + " offset");
    const TypeTraits& tr = type_traits(t.type_id);
    if (!tr.name) c.fail(cat(what, ": unknown tensor type id ", t.type_id));
    // Element count with overflow checks (products of up to four int64 dimensions).
    uint64_t n = 1;
    for (uint32_t d = 0; d < kMaxDims; ++d) {
      uint64_t ne = static_cast<uint64_t>(t.ne[d]);
      if (ne != 0 && n > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) / ne)
        c.fail(cat(what, ": shape ", t.shape_string(), " overflows the element count"));
      n *= ne;
    }
    if (t.ne[0] % tr.block_size != 0)
      c.fail(cat(what, ": row length ", t.ne[0], " is not a multiple of the ", tr.name,
                 " block size ", tr.block_size));
    uint64_t blocks = n / static_cast<uint64_t>(tr.block_size);
    if (blocks > std::numeric_limits<uint64_t>::max() / tr.type_size)
      c.fail(cat(what, ": byte size overflows"));
    t.nbytes = blocks * tr.type_size;
    if (t.offset % alignment_ != 0)
      c.fail(cat(what, ": data offset ", t.offset, " is not a multiple of the alignment ",
                 alignment_));
    if (tensor_index_.count(t.name)) c.fail(cat("duplicate tensor name '", t.name, "'"));
    tensor_index_.emplace(t.name, tensors_.size());
    tensors_.push_back(std::move(t));
  }

  // The data section starts at the next multiple of the alignment.
  uint64_t pos = c.pos();
  data_offset_ = (pos + alignment_ - 1) / alignment_ * alignment_;
  if (n_tensors > 0 && data_offset_ > size)
    throw FormatError(cat(path_, ": file truncated: data section would start at byte ",
                          data_offset_, " but the file has ", size, " bytes"));
  for (GgufTensor& t : tensors_) {
    // Kernels read blocks through structs: data must sit at the block's natural alignment (the
    // largest power of two dividing its size, at most 8), whatever general.alignment says.
    const uint64_t tsize = type_traits(t.type_id).type_size;
    const uint64_t need = std::min<uint64_t>(8, tsize & (~tsize + 1));
    if ((data_offset_ + t.offset) % need != 0)
      throw FormatError(cat(path_, ": tensor '", t.name, "' data at file offset ", data_offset_ + t.offset,
                            " is not aligned to the ", need, " bytes its type ", type_traits(t.type_id).name,
                            " needs (general.alignment = ", alignment_, ")"));
    uint64_t avail = size - data_offset_;
    if (t.offset > avail || t.nbytes > avail - t.offset)
      throw FormatError(cat(path_, ": tensor '", t.name, "' data (", t.nbytes, " bytes at offset ",
                            t.offset, ") runs past the end of the file (data section holds ",
                            avail, " bytes)"));
    t.data = data + data_offset_ + t.offset;
  }
}

const GgufValue* GgufFile::find(std::string_view key) const {
  auto it = kv_index_.find(key);
  return it == kv_index_.end() ? nullptr : &kv_[it->second].second;
}

int64_t GgufFile::get_int(std::string_view key, int64_t def) const {
  const GgufValue* v = find(key);
  if (!v) return def;
  if (!v->is_int())
    throw FormatError(cat(path_, ": metadata '", key, "' should be an integer, found ",
                          gguf_type_name(v->type)));
  return v->as_int();
}

int64_t GgufFile::require_int(std::string_view key) const {
  if (!find(key)) throw FormatError(cat(path_, ": required metadata '", key, "' is missing"));
  return get_int(key, 0);
}

double GgufFile::get_float(std::string_view key, double def) const {
  const GgufValue* v = find(key);
  if (!v) return def;
  if (!v->is_float() && !v->is_int())
    throw FormatError(cat(path_, ": metadata '", key, "' should be a number, found ",
                          gguf_type_name(v->type)));
  return v->as_float();
}

double GgufFile::require_float(std::string_view key) const {
  if (!find(key)) throw FormatError(cat(path_, ": required metadata '", key, "' is missing"));
  return get_float(key, 0);
}

bool GgufFile::get_bool(std::string_view key, bool def) const {
  const GgufValue* v = find(key);
  if (!v) return def;
  if (!v->is_int())
    throw FormatError(cat(path_, ": metadata '", key, "' should be a bool, found ",
                          gguf_type_name(v->type)));
  return v->as_int() != 0;
}

std::string GgufFile::get_string(std::string_view key, const std::string& def) const {
  const GgufValue* v = find(key);
  if (!v) return def;
  if (v->type != GgufType::STRING)
    throw FormatError(cat(path_, ": metadata '", key, "' should be a string, found ",
                          gguf_type_name(v->type)));
  return std::string(v->str);
}

std::string GgufFile::require_string(std::string_view key) const {
  if (!find(key)) throw FormatError(cat(path_, ": required metadata '", key, "' is missing"));
  return get_string(key, "");
}

const GgufValue* GgufFile::find_array(std::string_view key, GgufType elem) const {
  const GgufValue* v = find(key);
  if (!v) return nullptr;
  const auto is_float = [](GgufType t) { return t == GgufType::FLOAT32 || t == GgufType::FLOAT64; };
  bool ok = v->type == GgufType::ARRAY &&
            (v->elem_type == elem ||
             // integer arrays of any width are accepted where integers are wanted, and numbers of
             // any kind where floats are (llama.cpp reads int32 token scores)
             (scalar_size(elem) > 0 && scalar_size(v->elem_type) > 0 &&
              (is_float(elem) ? v->elem_type != GgufType::BOOL : !is_float(v->elem_type))));
  if (!ok)
    throw FormatError(cat(path_, ": metadata '", key, "' should be an array of ",
                          gguf_type_name(elem), ", found ",
                          v->type == GgufType::ARRAY
                              ? cat("array of ", gguf_type_name(v->elem_type))
                              : std::string(gguf_type_name(v->type))));
  return v;
}

const GgufTensor* GgufFile::find_tensor(std::string_view name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

const GgufTensor& GgufFile::require_tensor(std::string_view name) const {
  const GgufTensor* t = find_tensor(name);
  if (!t) throw FormatError(cat(path_, ": required tensor '", name, "' is missing"));
  return *t;
}

}  // namespace tova
