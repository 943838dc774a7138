// A driver that runs a fuzz target's LLVMFuzzerTestOneInput over saved inputs, without libFuzzer:
// the normal test build links each target with it (fuzz_replay_TARGET), and pytest replays the
// seed corpus and every input a fuzzing run ever failed on (tests/test_fuzz_regressions.py).
//
//   fuzz_replay_TARGET FILE_OR_DIR...      exit 0 when every input ran; a crash ends the process
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace {

int replay(const std::filesystem::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) {
    std::fprintf(stderr, "replay: cannot read %s\n", file.c_str());
    return 1;
  }
  const std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  LLVMFuzzerTestOneInput(bytes.data(), bytes.size());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  int failed = 0, ran = 0;
  for (int i = 1; i < argc; ++i) {
    const std::filesystem::path p(argv[i]);
    std::error_code ec;
    if (std::filesystem::is_directory(p, ec)) {
      for (const auto& e : std::filesystem::directory_iterator(p))
        if (e.is_regular_file()) failed += replay(e.path()), ++ran;
    } else {
      failed += replay(p), ++ran;
    }
  }
  std::printf("replayed %d inputs\n", ran);
  return failed == 0 ? 0 : 1;
}
