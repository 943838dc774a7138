#include "cli_io.h"

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "common.h"
#include "unicode.h"

namespace tova {

std::string json_string(const std::string& raw) {
  const std::string s = unicode::sanitize_utf8(raw);
  std::string out = "\"";
  for (const char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          out += buf;
        } else {
          out += ch;
        }
    }
  }
  return out + "\"";
}

std::string read_text_file(const std::string& path) {
  FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) throw FileNotFound(cat(path, ": cannot open: ", std::strerror(errno)));
  std::string s;
  char buf[65536];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) s.append(buf, n);
  const bool failed = std::ferror(f) != 0;  // a directory, say (EISDIR)
  const int err = errno;
  std::fclose(f);
  if (failed) throw Error(cat(path, ": cannot read: ", std::strerror(err)));
  return s;
}

}  // namespace tova
