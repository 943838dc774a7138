// Input and output shared by the tova program's commands: whole text files (-f), JSON
// (chat --json, bench --json), and stdout written with its errors checked.
#pragma once

#include <stdexcept>
#include <string>

namespace tova {

// stdout could not take what was written (a full disk, a pipe whose reader is gone while SIGPIPE
// is ignored, a closed stdout). main() says `tova: write error: <what()>` and exits 1, as GNU
// programs do; what() is the strerror text.
class WriteError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Writes `s` to stdout and flushes it, so that a reader sees streamed text as it comes and a
// failure is seen at once (a generation loop stops at its first failed piece). WriteError when
// the write or the flush fails, or when an earlier unchecked write to stdout failed.
void write_stdout(const std::string& s);

// Flushes stdout and checks that nothing written to it (by write_stdout or plain printf) was
// lost; WriteError otherwise. main() calls it before a command's exit status is returned.
void check_stdout();

// `s` as a JSON string literal, quotes included: control characters escaped, bytes that are not
// UTF-8 replaced by U+FFFD (a file name or model metadata can hold any bytes).
std::string json_string(const std::string& s);

// The bytes of the file at `path` ("-": all of standard input, as other programs' -f -);
// FileNotFound when it cannot be opened, Error when it cannot be read (a directory, say).
std::string read_text_file(const std::string& path);

// Drops a UTF-8 byte order mark at the start of `text` (an editor's marker, not text); true if
// there was one.
bool drop_utf8_bom(std::string& text);

// Drops one final line break ("\n" or "\r\n") from `text`; true if there was one.
bool drop_final_line_break(std::string& text);

}  // namespace tova
