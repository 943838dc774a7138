#include "line_editor.h"

#include <poll.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "cli_io.h"

namespace tova {

namespace {

constexpr int kCtrlA = 1, kCtrlB = 2, kCtrlC = 3, kCtrlD = 4, kCtrlE = 5, kCtrlF = 6, kCtrlH = 8,
              kTab = 9, kCtrlK = 11, kCtrlL = 12, kCtrlN = 14, kCtrlP = 16, kCtrlU = 21, kCtrlW = 23,
              kEsc = 27, kBackspace = 127;

bool is_continuation(char c) { return (static_cast<unsigned char>(c) & 0xc0) == 0x80; }

// Puts the terminal in raw mode for one read_line and restores it however that ends.
class RawMode {
 public:
  explicit RawMode(int fd) : fd_(fd) {
    if (::tcgetattr(fd_, &saved_) != 0) return;
    termios raw = saved_;
    // No echo, no line buffering, no signals from keys (Ctrl-C arrives as a byte), no flow
    // control, CR not turned into NL; output processing stays on so "\n" still starts a line.
    raw.c_iflag &= ~static_cast<tcflag_t>(BRKINT | ICRNL | INPCK | ISTRIP | IXON);
    raw.c_cflag |= CS8;
    raw.c_lflag &= ~static_cast<tcflag_t>(ECHO | ICANON | IEXTEN | ISIG);
    raw.c_cc[VMIN] = 1;
    raw.c_cc[VTIME] = 0;
    // TCSANOW, not TCSAFLUSH: keys typed while a reply was printing must not be lost.
    ok_ = ::tcsetattr(fd_, TCSANOW, &raw) == 0;
  }
  ~RawMode() {
    if (ok_) ::tcsetattr(fd_, TCSANOW, &saved_);
  }
  bool ok() const { return ok_; }
  RawMode(const RawMode&) = delete;
  RawMode& operator=(const RawMode&) = delete;

 private:
  int fd_;
  termios saved_{};
  bool ok_ = false;
};

// Terminal columns a code point takes: 2 for the common East Asian wide and emoji blocks.
int cp_width(uint32_t c) {
  const bool wide = (c >= 0x1100 && c <= 0x115f) || (c >= 0x2e80 && c <= 0xa4cf) ||
                    (c >= 0xac00 && c <= 0xd7a3) || (c >= 0xf900 && c <= 0xfaff) ||
                    (c >= 0xfe30 && c <= 0xfe4f) || (c >= 0xff00 && c <= 0xff60) ||
                    (c >= 0xffe0 && c <= 0xffe6) || (c >= 0x1f300 && c <= 0x1f64f) ||
                    (c >= 0x1f900 && c <= 0x1f9ff) || (c >= 0x20000 && c <= 0x3fffd);
  return wide ? 2 : 1;
}

uint32_t decode_at(const std::string& s, size_t i, size_t* len) {
  const auto b = static_cast<unsigned char>(s[i]);
  size_t n = b < 0x80 ? 1 : (b >> 5) == 0x6 ? 2 : (b >> 4) == 0xe ? 3 : (b >> 3) == 0x1e ? 4 : 1;
  if (i + n > s.size()) n = 1;
  uint32_t cp = n == 1 ? b : b & (0x7f >> n);
  for (size_t k = 1; k < n; ++k) cp = cp << 6 | (static_cast<unsigned char>(s[i + k]) & 0x3f);
  *len = n;
  return cp;
}

// One character of the line as drawn: its bytes in the line, what is shown, its width.
struct Cell {
  size_t begin;
  std::string shown;
  int width;
};

std::vector<Cell> layout(const std::string& s) {
  std::vector<Cell> cells;
  for (size_t i = 0; i < s.size();) {
    size_t n = 1;
    const uint32_t cp = decode_at(s, i, &n);
    if (cp == '\n') {
      cells.push_back({i, "\xe2\x86\xb5", 1});  // a pasted line break, shown as U+21B5
    } else if (cp < 0x20 || cp == 0x7f) {
      cells.push_back({i, cp == '\t' ? " " : "?", 1});
    } else {
      cells.push_back({i, s.substr(i, n), cp_width(cp)});
    }
    i += n;
  }
  return cells;
}

int text_width(const std::string& s) {
  int w = 0;
  for (const Cell& c : layout(s)) w += c.width;
  return w;
}

}  // namespace

struct LineEditor::State {
  std::string prompt;
  std::string buf;
  size_t pos = 0;  // byte offset of the cursor, always at a character boundary
  std::vector<std::string> hist;  // history plus the line being edited last
  size_t hist_index = 0;

  void left() {
    if (pos == 0) return;
    --pos;
    while (pos > 0 && is_continuation(buf[pos])) --pos;
  }
  void right() {
    if (pos >= buf.size()) return;
    ++pos;
    while (pos < buf.size() && is_continuation(buf[pos])) ++pos;
  }
  size_t word_left() const {
    size_t p = pos;
    while (p > 0 && buf[p - 1] == ' ') --p;
    while (p > 0 && buf[p - 1] != ' ') --p;
    return p;
  }
  size_t word_right() const {
    size_t p = pos;
    while (p < buf.size() && buf[p] == ' ') ++p;
    while (p < buf.size() && buf[p] != ' ') ++p;
    return p;
  }
  void erase_before() {
    const size_t end = pos;
    left();
    buf.erase(pos, end - pos);
  }
  void erase_at() {
    if (pos >= buf.size()) return;
    const size_t begin = pos;
    right();
    buf.erase(begin, pos - begin);
    pos = begin;
  }
  void history_step(int dir) {
    const size_t next = hist_index + static_cast<size_t>(dir);
    if ((dir < 0 && hist_index == 0) || next >= hist.size()) return;
    hist[hist_index] = buf;
    hist_index = next;
    buf = hist[hist_index];
    pos = buf.size();
  }
};

LineEditor::LineEditor(int in_fd, int out_fd)
    : in_fd_(in_fd), out_fd_(out_fd), interactive_(::isatty(in_fd) == 1) {}

void LineEditor::add_history(const std::string& line) {
  if (line.empty() || (!history_.empty() && history_.back() == line)) return;
  history_.push_back(line);
}

LineEditor::Result LineEditor::read_line(const std::string& prompt, std::string& line) {
  line.clear();
  if (!interactive_) return read_plain(line);
  return edit(prompt, line);
}

bool LineEditor::input_pending() {
  pollfd p{in_fd_, POLLIN, 0};
  int r;
  do r = ::poll(&p, 1, 0);
  while (r < 0 && errno == EINTR);
  return r > 0;
}

int LineEditor::read_byte(int timeout_ms) {
  if (timeout_ms >= 0) {
    pollfd p{in_fd_, POLLIN, 0};
    int r;
    do r = ::poll(&p, 1, timeout_ms);
    while (r < 0 && errno == EINTR);
    if (r <= 0) return -1;
  }
  unsigned char c;
  for (;;) {
    const ssize_t n = ::read(in_fd_, &c, 1);
    if (n == 1) return c;
    if (n < 0 && errno == EINTR) continue;
    return -1;
  }
}

LineEditor::Result LineEditor::read_plain(std::string& line) {
  for (;;) {
    const size_t nl = pending_.find('\n');
    if (nl != std::string::npos) {
      line = pending_.substr(0, nl);
      pending_.erase(0, nl + 1);
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (first_line_) drop_utf8_bom(line);  // (a file's marker, not text: "/stats" stays a command)
      first_line_ = false;
      return Result::Line;
    }
    char buf[4096];
    const ssize_t n = ::read(in_fd_, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      if (pending_.empty()) return Result::EndOfInput;
      line.swap(pending_);  // a last line without its newline
      pending_.clear();
      if (first_line_) drop_utf8_bom(line);
      first_line_ = false;
      return Result::Line;
    }
    pending_.append(buf, static_cast<size_t>(n));
  }
}

void LineEditor::write_out(const std::string& s) {
  size_t done = 0;
  while (done < s.size()) {
    const ssize_t n = ::write(out_fd_, s.data() + done, s.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    done += static_cast<size_t>(n);
  }
}

int LineEditor::columns() {
  winsize ws{};
  if (::ioctl(out_fd_, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0) return ws.ws_col;
  return 80;
}

// Redraws the line in place. A line wider than the terminal scrolls sideways so the cursor stays
// in view (one screen row always: nothing to clean up on the rows above).
void LineEditor::refresh(const State& s) {
  const std::vector<Cell> cells = layout(s.buf);
  const int prompt_w = text_width(s.prompt);
  const int avail = std::max(1, columns() - prompt_w - 1);
  std::vector<int> col(cells.size() + 1, 0);  // column where each cell starts
  size_t cursor_cell = cells.size();
  for (size_t i = 0; i < cells.size(); ++i) {
    col[i + 1] = col[i] + cells[i].width;
    if (cursor_cell == cells.size() && cells[i].begin >= s.pos) cursor_cell = i;
  }
  size_t first = 0;
  while (first < cursor_cell && col[cursor_cell] - col[first] >= avail) ++first;
  std::string out = "\r" + s.prompt;
  for (size_t i = first; i < cells.size() && col[i + 1] - col[first] <= avail; ++i) out += cells[i].shown;
  out += "\x1b[K\r";
  const int x = prompt_w + col[cursor_cell] - col[first];
  if (x > 0) out += "\x1b[" + std::to_string(x) + "C";
  write_out(out);
}

LineEditor::Result LineEditor::edit(const std::string& prompt, std::string& line) {
  RawMode raw(in_fd_);
  if (!raw.ok()) {  // a terminal we cannot configure: read it like a pipe
    write_out(prompt);
    return read_plain(line);
  }
  write_out("\x1b[?2004h");  // bracketed paste: a paste's newlines are text, not Enter
  struct PasteOff {
    LineEditor* ed;
    ~PasteOff() { ed->write_out("\x1b[?2004l"); }
  } paste_off{this};

  State s;
  s.prompt = prompt;
  s.hist = history_;
  s.hist.emplace_back();
  s.hist_index = s.hist.size() - 1;
  bool in_paste = false, last_cr = false;
  refresh(s);
  for (;;) {
    const int c = read_byte(-1);
    if (c < 0) {  // the terminal went away
      write_out("\n");
      if (s.buf.empty()) return Result::EndOfInput;
      line = s.buf;
      return Result::Line;
    }
    if (in_paste && (c == '\r' || c == '\n')) {
      if (!(c == '\n' && last_cr)) {
        s.buf.insert(s.pos, 1, '\n');
        ++s.pos;
      }
      last_cr = c == '\r';
      refresh(s);
      continue;
    }
    last_cr = false;
    switch (c) {
      case '\r':
      case '\n':
        s.pos = s.buf.size();
        refresh(s);
        write_out("\n");
        line = s.buf;
        return Result::Line;
      case kCtrlC:
        write_out("^C\n");
        return Result::Interrupted;
      case kCtrlD:
        if (s.buf.empty()) {
          write_out("\n");
          return Result::EndOfInput;
        }
        s.erase_at();
        break;
      case kBackspace:
      case kCtrlH: s.erase_before(); break;
      case kCtrlA: s.pos = 0; break;
      case kCtrlE: s.pos = s.buf.size(); break;
      case kCtrlB: s.left(); break;
      case kCtrlF: s.right(); break;
      case kCtrlK: s.buf.erase(s.pos); break;
      case kCtrlU:
        s.buf.erase(0, s.pos);
        s.pos = 0;
        break;
      case kCtrlW: {
        const size_t p = s.word_left();
        s.buf.erase(p, s.pos - p);
        s.pos = p;
        break;
      }
      case kCtrlL: write_out("\x1b[H\x1b[2J"); break;
      case kCtrlP: s.history_step(-1); break;
      case kCtrlN: s.history_step(+1); break;
      case kEsc: {
        const int c1 = read_byte(50);
        if (c1 == 'b') {
          s.pos = s.word_left();
        } else if (c1 == 'f') {
          s.pos = s.word_right();
        } else if (c1 == 'O') {
          const int c2 = read_byte(50);
          if (c2 == 'H') s.pos = 0;
          if (c2 == 'F') s.pos = s.buf.size();
          if (c2 == 'C') s.right();
          if (c2 == 'D') s.left();
        } else if (c1 == '[') {
          std::string params;
          int fin = read_byte(50);
          while (fin >= 0 && (fin < 0x40 || fin > 0x7e) && params.size() < 16) {
            params += static_cast<char>(fin);
            fin = read_byte(50);
          }
          const bool mod = params.find(';') != std::string::npos;  // Ctrl/Alt + arrow
          switch (fin) {
            case 'A': s.history_step(-1); break;
            case 'B': s.history_step(+1); break;
            case 'C':
              if (mod) s.pos = s.word_right(); else s.right();
              break;
            case 'D':
              if (mod) s.pos = s.word_left(); else s.left();
              break;
            case 'H': s.pos = 0; break;
            case 'F': s.pos = s.buf.size(); break;
            case '~':
              if (params == "1" || params == "7") s.pos = 0;
              if (params == "4" || params == "8") s.pos = s.buf.size();
              if (params == "3") s.erase_at();
              if (params == "200") in_paste = true;
              if (params == "201") in_paste = false;
              break;
            default: break;
          }
        }
        break;
      }
      default:
        if (c == kTab || c >= 0x20) {
          std::string ch(1, static_cast<char>(c));
          // The rest of a UTF-8 character arrives with its first byte.
          const int more = c >= 0xf0 ? 3 : c >= 0xe0 ? 2 : c >= 0xc0 ? 1 : 0;
          for (int k = 0; k < more; ++k) {
            const int b = read_byte(50);
            if (b < 0) break;
            ch += static_cast<char>(b);
          }
          s.buf.insert(s.pos, ch);
          s.pos += ch.size();
        }
        break;
    }
    // Redrawn when the input pauses: a paste the terminal does not mark as one arrives as
    // typed keys, and a redraw per byte would make it quadratic.
    if ((!in_paste || c == kEsc) && !input_pending()) refresh(s);
  }
}

}  // namespace tova
