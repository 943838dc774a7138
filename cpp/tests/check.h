// The C++ unit tests' checks: CHECK(condition) counts a pass or prints the failed condition with
// its place; throws<E>(f, needle) says whether f throws an E whose message contains needle.
// test_main.cpp keeps the counts and prints them at the end.
#pragma once

#include <cstring>

namespace tova_test {

void check(bool ok, const char* what, const char* file, int line);

template <class E, class F>
bool throws(F&& f, const char* needle) {
  try {
    f();
  } catch (const E& e) {
    return std::strstr(e.what(), needle) != nullptr;
  } catch (...) {
    return false;
  }
  return false;
}

// The tests in files other than test_main.cpp.
void test_kernel_tiers();

}  // namespace tova_test

#define CHECK(c) ::tova_test::check((c), #c, __FILE__, __LINE__)
