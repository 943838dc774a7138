// Input and output shared by the tova program's commands: whole text files (-f), JSON
// (chat --json, bench --json).
#pragma once

#include <string>

namespace tova {

// `s` as a JSON string literal, quotes included: control characters escaped, bytes that are not
// UTF-8 replaced by U+FFFD (a file name or model metadata can hold any bytes).
std::string json_string(const std::string& s);

// The bytes of the file at `path`; FileNotFound when it cannot be opened, Error when it cannot
// be read (a directory, say).
std::string read_text_file(const std::string& path);

}  // namespace tova
