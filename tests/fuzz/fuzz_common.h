// Shared by the libFuzzer targets (tests/fuzz/fuzz_*.cpp, CMake option TOVA_FUZZ): reading
// fuzzer bytes as a sequence of small values. Only tova's own exceptions (std::exception) are
// expected from hostile input; anything else (a crash, a sanitizer report, an abort) is a
// finding.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace tova_fuzz {

class Bytes {
 public:
  Bytes(const uint8_t* d, size_t n) : d_(d), n_(n) {}
  bool empty() const { return i_ >= n_; }
  uint8_t u8() { return i_ < n_ ? d_[i_++] : 0; }
  uint32_t u32() {
    uint32_t v = 0;
    for (int k = 0; k < 4; ++k) v |= static_cast<uint32_t>(u8()) << (8 * k);
    return v;
  }
  // A string of up to max bytes, length-prefixed by one byte.
  std::string str(size_t max = 255) {
    size_t len = u8();
    if (len > max) len = max;
    if (len > n_ - i_) len = n_ - i_;
    std::string s(reinterpret_cast<const char*>(d_ + i_), len);
    i_ += len;
    return s;
  }
  std::string rest() {
    std::string s(reinterpret_cast<const char*>(d_ + i_), n_ - i_);
    i_ = n_;
    return s;
  }

 private:
  const uint8_t* d_;
  size_t n_, i_ = 0;
};

}  // namespace tova_fuzz
