// A small line editor for the chat prompt: raw terminal mode, cursor movement, editing keys,
// history, bracketed paste (a pasted newline stays in the line). When input is not a terminal it
// reads plain lines.
//
// Keys: Left/Right (Ctrl-B/F), Home/End (Ctrl-A/E), Alt-B/F or Ctrl-Left/Right (word),
// Backspace, Delete, Up/Down (Ctrl-P/N: history), Ctrl-U (kill to start), Ctrl-K (kill to end),
// Ctrl-W (kill word), Ctrl-L (clear screen), Ctrl-C (abandon the line), Ctrl-D (end of input on
// an empty line, else delete).
#pragma once

#include <string>
#include <vector>

namespace tova {

class LineEditor {
 public:
  enum class Result { Line, Interrupted, EndOfInput };

  // in_fd: where keys come from; out_fd: where the prompt and the line are drawn.
  explicit LineEditor(int in_fd = 0, int out_fd = 1);

  // True when input is a terminal (raw-mode editing); false: plain line reading.
  bool interactive() const { return interactive_; }

  // Reads one line (without its newline) into `line`. Interrupted: Ctrl-C was pressed (the line
  // is abandoned); EndOfInput: Ctrl-D on an empty line, or the input ended.
  Result read_line(const std::string& prompt, std::string& line);

  // Adds a line to the history (not empty ones, nor a repeat of the last).
  void add_history(const std::string& line);
  const std::vector<std::string>& history() const { return history_; }

 private:
  struct State;
  Result read_plain(std::string& line);
  Result edit(const std::string& prompt, std::string& line);
  int read_byte(int timeout_ms);  // -1: nothing (timeout) or end of input
  bool input_pending();           // a byte can be read at once
  void refresh(const State& s);
  void write_out(const std::string& s);
  int columns();

  int in_fd_, out_fd_;
  bool interactive_;
  std::vector<std::string> history_;
  std::string pending_;  // bytes read past the end of a plain line
  bool first_line_ = true;  // (plain input: a byte order mark before it is dropped)
};

}  // namespace tova
