#include "unicode.h"

#include <algorithm>

namespace tova {
namespace unicode {

uint8_t flags(uint32_t cp) {
  if (cp < 128) return kAsciiFlags[cp];
  if (cp > kMaxCodePoint) return kOther;
  // The last run whose first code point is <= cp.
  const uint32_t key = (cp << 8) | 0xFF;
  const uint32_t* end = kFlagRuns + kFlagRunCount;
  const uint32_t* it = std::upper_bound(kFlagRuns, end, key);
  return static_cast<uint8_t>(*(it - 1) & 0xFF);
}

Decoded decode(std::string_view s, size_t pos) {
  const auto byte = [&](size_t k) { return static_cast<uint8_t>(s[pos + k]); };
  const uint8_t b0 = byte(0);
  if (b0 < 0x80) return {b0, 1, DecodeStatus::Ok};
  size_t need;
  uint32_t cp;
  // Bounds of the second byte: they exclude overlongs (E0, F0), surrogates (ED) and values
  // past U+10FFFF (F4), so a sequence is valid exactly when every byte is within bounds.
  uint8_t lo = 0x80, hi = 0xBF;
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    need = 2; cp = b0 & 0x1F;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    need = 3; cp = b0 & 0x0F;
    if (b0 == 0xE0) lo = 0xA0;
    if (b0 == 0xED) hi = 0x9F;
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    need = 4; cp = b0 & 0x07;
    if (b0 == 0xF0) lo = 0x90;
    if (b0 == 0xF4) hi = 0x8F;
  } else {
    return {kReplacement, 1, DecodeStatus::Invalid};
  }
  for (size_t k = 1; k < need; ++k) {
    if (pos + k >= s.size()) return {kReplacement, k, DecodeStatus::Truncated};
    const uint8_t b = byte(k);
    const uint8_t l = k == 1 ? lo : 0x80, h = k == 1 ? hi : 0xBF;
    if (b < l || b > h) return {kReplacement, k, DecodeStatus::Invalid};
    cp = (cp << 6) | (b & 0x3F);
  }
  return {cp, need, DecodeStatus::Ok};
}

std::vector<uint32_t> to_code_points(std::string_view s) {
  std::vector<uint32_t> out;
  out.reserve(s.size());
  for (size_t pos = 0; pos < s.size();) {
    const Decoded d = decode(s, pos);
    out.push_back(d.cp);
    pos += d.length;
  }
  return out;
}

void append_utf8(std::string& out, uint32_t cp) {
  if (cp > kMaxCodePoint || (cp >= 0xD800 && cp <= 0xDFFF)) cp = kReplacement;
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

std::string to_utf8(uint32_t cp) {
  std::string out;
  append_utf8(out, cp);
  return out;
}

std::string sanitize_utf8(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t pos = 0; pos < s.size();) {
    const Decoded d = decode(s, pos);
    if (d.status == DecodeStatus::Ok) {
      out.append(s.data() + pos, d.length);
    } else {
      append_utf8(out, kReplacement);
    }
    pos += d.length;
  }
  return out;
}

}  // namespace unicode
}  // namespace tova
