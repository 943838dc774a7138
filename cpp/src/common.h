// Errors and small utilities shared by every part of the core.
// Errors are typed exceptions; messages say what was expected and what was found, and name the
// file, tensor or argument at fault. Never exit() from library code.
#pragma once

#include <cstddef>
#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace tova {

// Any failure of the engine that is not the caller's fault (Python: tova.TovaError, a RuntimeError).
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A malformed or unsupported model file (Python: tova.GGUFError, a ValueError).
class FormatError : public Error {
 public:
  using Error::Error;
};

// A bad argument from the caller (Python: ValueError).
class ArgumentError : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

// A file that does not exist (Python: FileNotFoundError).
class FileNotFound : public Error {
 public:
  using Error::Error;
};

// Generation stopped by a cancel request (Python: KeyboardInterrupt when caused by Ctrl-C).
class Cancelled : public Error {
 public:
  using Error::Error;
};

// cat("a", 1, 'b') -> "a1b": builds error messages without format strings.
template <class... Args>
std::string cat(Args&&... args) {
  std::ostringstream os;
  (os << ... << std::forward<Args>(args));
  return os.str();
}

// Internal invariant; failing means a bug in tova, not bad input.
#define TOVA_ASSERT(cond)                                                                     \
  do {                                                                                        \
    if (!(cond)) throw ::tova::Error(::tova::cat(__FILE__, ":", __LINE__, ": internal error: ", \
                                                 #cond));                                     \
  } while (0)

// Human-readable byte count ("97.0 MiB").
std::string format_bytes(uint64_t bytes);

// Resident set size of this process in bytes (0 where unknown).
uint64_t resident_bytes();
// Memory this process can still take: the least of the machine's memory, what the kernel counts
// as available (MemAvailable), what the container's cgroup limit leaves and what the process's
// address space leaves (ulimit -v; a 32-bit process's 3 GiB); UINT64_MAX when none of them can
// be read.
uint64_t available_memory_bytes();

// Monotonic wall-clock seconds.
double now_seconds();

}  // namespace tova
