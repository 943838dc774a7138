// The C++ chat-template handling: recognising a family from (hostile) template text, the ChatML
// default system prompt, and rendering fuzzer-made conversations in each family.
#include <exception>
#include <string>
#include <vector>

#include "chat.h"
#include "fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  tova_fuzz::Bytes in(data, size);
  const std::string tmpl = in.str(4096);
  try {
    (void)tova::chat_family_from_template(tmpl);
    (void)tova::chatml_default_system(tmpl);
    std::vector<tova::ChatMessage> msgs;
    const char* roles[] = {"system", "user", "assistant", "tool", ""};
    while (!in.empty() && msgs.size() < 16) msgs.push_back({roles[in.u8() % 5], in.str()});
    for (tova::ChatFamily f : {tova::ChatFamily::ChatML, tova::ChatFamily::Gemma, tova::ChatFamily::Llama3}) {
      tova::ChatFormat format;
      format.family = f;
      format.default_system = tmpl.substr(0, 64);
      try {
        (void)tova::render_chat(format, msgs, true);
        (void)tova::render_chat(format, msgs, false);
      } catch (const std::exception&) {
      }
    }
  } catch (const std::exception&) {
  }
  return 0;
}
