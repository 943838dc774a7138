#include "common.h"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <sys/resource.h>
#include <unistd.h>

namespace tova {

std::string format_bytes(uint64_t bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(bytes);
  int u = 0;
  while (v >= 1024.0 && u < 4) {
    v /= 1024.0;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.1f %s", v, units[u]);
  return buf;
}

uint64_t resident_bytes() {
  FILE* f = std::fopen("/proc/self/statm", "r");
  if (!f) return 0;
  unsigned long size = 0, resident = 0;
  int n = std::fscanf(f, "%lu %lu", &size, &resident);
  std::fclose(f);
  if (n != 2) return 0;
  return static_cast<uint64_t>(resident) * static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
}

namespace {

// The first unsigned number in the file at `path` after `key` (the file's start when key is
// empty); false when there is none ("max", a missing file).
bool read_number(const char* path, const char* key, uint64_t* out) {
  FILE* f = std::fopen(path, "r");
  if (!f) return false;
  char line[256];
  bool found = false;
  while (!found && std::fgets(line, sizeof line, f)) {
    const size_t k = std::strlen(key);
    if (std::strncmp(line, key, k) != 0) continue;
    unsigned long long v = 0;
    found = std::sscanf(line + k, " %llu", &v) == 1;
    *out = v;
  }
  std::fclose(f);
  return found;
}

// The bytes of this process's address space in use: the sum of its mappings (what RLIMIT_AS
// counts); false where /proc/self/maps cannot be read.
bool mapped_bytes(uint64_t* out) {
  FILE* f = std::fopen("/proc/self/maps", "r");
  if (!f) return false;
  char line[4352];  // (PATH_MAX and the fields before the path)
  uint64_t total = 0;
  while (std::fgets(line, sizeof line, f)) {
    unsigned long long lo = 0, hi = 0;
    if (std::sscanf(line, "%llx-%llx", &lo, &hi) == 2 && hi > lo) total += hi - lo;
    // (a line longer than the buffer: its rest is read as lines that do not parse)
  }
  std::fclose(f);
  *out = total;
  return true;
}

}  // namespace

uint64_t available_memory_bytes() {
  uint64_t have = UINT64_MAX;  // unknown
  auto lower = [&have](uint64_t v) { have = std::min(have, v); };
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
  if (pages > 0 && page > 0) lower(static_cast<uint64_t>(pages) * static_cast<uint64_t>(page));
  uint64_t kib = 0, limit = 0, used = 0;
  if (read_number("/proc/meminfo", "MemAvailable:", &kib)) lower(kib * 1024);
  // A container's own limit (cgroup v2, then v1), less what the container already uses.
  if (read_number("/sys/fs/cgroup/memory.max", "", &limit) && read_number("/sys/fs/cgroup/memory.current", "", &used))
    lower(limit > used ? limit - used : 0);
  else if (read_number("/sys/fs/cgroup/memory/memory.limit_in_bytes", "", &limit) &&
           read_number("/sys/fs/cgroup/memory/memory.usage_in_bytes", "", &used) && limit < (uint64_t{1} << 60))
    lower(limit > used ? limit - used : 0);
  // Address space: the process's limit (ulimit -v, RLIMIT_AS) and, in a 32-bit process, the 3 GiB
  // a 32-bit Linux gives user space, less what the process maps already (the model's mapping
  // included; summed from /proc/self/maps, which qemu-user also answers for its guest).
  uint64_t mapped = 0;
  if (mapped_bytes(&mapped)) {
    auto lower_space = [&](uint64_t space) { lower(space > mapped ? space - mapped : 0); };
    struct rlimit rl {};
    if (getrlimit(RLIMIT_AS, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY) lower_space(static_cast<uint64_t>(rl.rlim_cur));
    if (sizeof(void*) == 4) lower_space(uint64_t{3} << 30);
  }
  return have;
}

double now_seconds() {
  using clock = std::chrono::steady_clock;
  return std::chrono::duration<double>(clock::now().time_since_epoch()).count();
}

}  // namespace tova
