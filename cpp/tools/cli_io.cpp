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
  const bool from_stdin = path == "-";
  FILE* f = from_stdin ? stdin : std::fopen(path.c_str(), "rb");
  if (!f) throw FileNotFound(cat(path, ": cannot open: ", std::strerror(errno)));
  std::string s;
  char buf[65536];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) s.append(buf, n);
  const bool failed = std::ferror(f) != 0;  // a directory, say (EISDIR)
  const int err = errno;
  if (!from_stdin) std::fclose(f);
  if (failed) throw Error(cat(from_stdin ? "standard input" : path, ": cannot read: ", std::strerror(err)));
  return s;
}

bool drop_utf8_bom(std::string& text) {
  if (text.compare(0, 3, "\xEF\xBB\xBF") != 0) return false;
  text.erase(0, 3);
  return true;
}

bool drop_final_line_break(std::string& text) {
  if (text.empty() || text.back() != '\n') return false;
  text.pop_back();
  if (!text.empty() && text.back() == '\r') text.pop_back();
  return true;
}

namespace {

// What a failed write to stdout says: errno's text, or (a failure recorded by an earlier write
// whose errno is gone) a plain statement.
WriteError write_error() {
  return WriteError(errno ? std::strerror(errno) : "an earlier write to stdout failed");
}

}  // namespace

void write_stdout(const std::string& s) {
  errno = 0;
  const bool written = std::fwrite(s.data(), 1, s.size(), stdout) == s.size();
  // ferror too: a failure of an earlier, unchecked printf is not forgotten by a later write.
  if (!written || std::fflush(stdout) != 0 || std::ferror(stdout)) throw write_error();
}

void check_stdout() {
  errno = 0;
  if (std::fflush(stdout) != 0 || std::ferror(stdout)) throw write_error();
}

}  // namespace tova
