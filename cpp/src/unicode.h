// UTF-8 decoding/encoding and the code point classes the tokenizers' pre-tokenizer patterns use
// (\p{L}, \p{N}, \p{P}, \s). The class table is generated (unicode_data.cpp,
// tools/gen_unicode_data.py); no normalization is done anywhere.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace tova {
namespace unicode {

// General-category major class (the low bits of a code point's flags).
enum Category : uint8_t {
  kOther = 0,  // C*: controls, format, surrogates, private use, unassigned
  kLetter = 1, kNumber = 2, kPunctuation = 3, kSymbol = 4, kMark = 5, kSeparator = 6,
};
constexpr uint8_t kCategoryMask = 0x07;
constexpr uint8_t kWhitespaceBit = 0x80;  // Unicode White_Space property
constexpr uint32_t kReplacement = 0xFFFD;
constexpr uint32_t kMaxCodePoint = 0x10FFFF;

// Generated tables (unicode_data.cpp).
extern const uint32_t kFlagRuns[];
extern const size_t kFlagRunCount;
extern const uint8_t kAsciiFlags[128];
extern const char kUnicodeVersion[];

uint8_t flags(uint32_t cp);
inline Category category(uint32_t cp) { return static_cast<Category>(flags(cp) & kCategoryMask); }
inline bool is_letter(uint32_t cp) { return category(cp) == kLetter; }
inline bool is_number(uint32_t cp) { return category(cp) == kNumber; }
inline bool is_punctuation(uint32_t cp) { return category(cp) == kPunctuation; }
inline bool is_whitespace(uint32_t cp) { return (flags(cp) & kWhitespaceBit) != 0; }

// Length of the UTF-8 sequence a byte starts, judged from its high bits alone (1 for ASCII,
// continuation and invalid bytes). This is how SentencePiece-style tokenizers cut characters.
inline size_t sequence_length(uint8_t lead) {
  static constexpr uint8_t kLen[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
  return kLen[lead >> 4];
}

// Strict decoding of the sequence at s[pos] (no overlongs, surrogates or values past U+10FFFF).
enum class DecodeStatus { Ok, Invalid, Truncated };
struct Decoded {
  uint32_t cp;         // the code point (kReplacement unless Ok)
  size_t length;       // bytes consumed: the sequence, or the maximal invalid subpart (>= 1)
  DecodeStatus status; // Truncated: a valid prefix that the end of `s` cuts short
};
Decoded decode(std::string_view s, size_t pos);

// Code points of `s`; each invalid or truncated subpart becomes one U+FFFD.
std::vector<uint32_t> to_code_points(std::string_view s);

void append_utf8(std::string& out, uint32_t cp);  // cp above U+10FFFF or a surrogate -> U+FFFD
std::string to_utf8(uint32_t cp);

// `s` with every invalid subpart replaced by U+FFFD (valid input is returned unchanged).
std::string sanitize_utf8(std::string_view s);

}  // namespace unicode
}  // namespace tova
