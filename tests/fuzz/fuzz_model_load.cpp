// The GGUF reader and model loading (hyperparameters, tokenizer, tensor binding): the input is a
// whole file. It goes to an in-memory file (memfd) so that Model reads it through its own mmap
// path; then, when it loads, its tokenizer and the chat-format choice run on a short text.
#include <sys/mman.h>
#include <unistd.h>

#include <cstdio>
#include <exception>
#include <string>

#include "chat.h"
#include "model.h"
#include "tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const int fd = memfd_create("fuzz.gguf", 0);
  if (fd < 0) return 0;
  size_t done = 0;
  while (done < size) {
    const ssize_t w = write(fd, data + done, size - done);
    if (w <= 0) break;
    done += static_cast<size_t>(w);
  }
  const std::string path = "/proc/self/fd/" + std::to_string(fd);
  try {
    tova::Model model(path);
    const tova::Tokenizer& tok = model.tokenizer();
    const std::vector<int32_t> ids = tok.encode("Hello, world! <|im_start|> 123", true, true);
    for (int32_t id : ids)
      if (id < 0 || id >= tok.n_vocab()) __builtin_trap();  // ids must be in the vocabulary
    (void)tok.decode(ids, true);
    (void)tova::choose_chat_format(model, "");
  } catch (const std::exception&) {
  }
  close(fd);
  return 0;
}
