#include "token_texts.h"

#include <algorithm>
#include <initializer_list>

#include "tokenizer.h"

namespace tova {

namespace {

// Texts that end generation (llama.cpp's list, with the families it names).
constexpr const char* kEndOfGeneration[] = {
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
    "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
    "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
    "<\xEF\xBD\x9C" "end\xE2\x96\x81" "of\xE2\x96\x81" "sentence\xEF\xBD\x9C>",  // <｜end▁of▁sentence｜>
    "[e~[",
};

// Fill-in-the-middle texts per FimKind.
const std::initializer_list<const char*> kFimTexts[] = {
    {"<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<\xEF\xBD\x9C" "fim\xE2\x96\x81" "begin\xEF\xBD\x9C>", "<PRE>",
     "\xE2\x96\x81<PRE>", "<|code_prefix|>", "<|prefix|>"},
    {"<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<\xEF\xBD\x9C" "fim\xE2\x96\x81" "hole\xEF\xBD\x9C>", "<SUF>",
     "\xE2\x96\x81<SUF>", "<|code_suffix|>", "<|suffix|>"},
    {"<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<\xEF\xBD\x9C" "fim\xE2\x96\x81" "end\xEF\xBD\x9C>", "<MID>",
     "\xE2\x96\x81<MID>", "<|code_middle|>", "<|middle|>"},
    {"<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"},
    {"<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"},
    {"<|file_sep|>"},
};

void make_control(std::vector<TokenType>& types, int32_t id) {
  TokenType& t = types[static_cast<size_t>(id)];
  if (t == TokenType::Normal || t == TokenType::UserDefined || t == TokenType::Unused || t == TokenType::Undefined)
    t = TokenType::Control;
}

}  // namespace

std::vector<int32_t> recognize_token_texts(const std::function<int32_t(std::string_view)>& lookup,
                                           std::vector<TokenType>& types, const std::vector<int32_t>& file_ids,
                                           const int32_t (&fim_ids)[static_cast<int>(FimKind::kCount)]) {
  std::vector<int32_t> eog;
  for (int k = 0; k < static_cast<int>(FimKind::kCount); ++k) {
    const bool ends = k >= static_cast<int>(FimKind::Pad);
    if (fim_ids[k] >= 0) {
      if (ends) eog.push_back(fim_ids[k]);
      continue;
    }
    for (const char* text : kFimTexts[k]) {
      const int32_t id = lookup(text);
      if (id < 0) continue;
      make_control(types, id);
      if (ends) eog.push_back(id);
    }
  }
  for (const char* text : kEndOfGeneration) {
    const int32_t id = lookup(text);
    if (id < 0) continue;
    make_control(types, id);
    eog.push_back(id);
  }
  for (const char* text : {"<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"}) {
    const int32_t id = lookup(text);
    if (id >= 0) types[static_cast<size_t>(id)] = TokenType::UserDefined;
  }
  for (int32_t id : file_ids)
    if (id >= 0) eog.push_back(id);
  std::sort(eog.begin(), eog.end());
  eog.erase(std::unique(eog.begin(), eog.end()), eog.end());

  const auto in_eog = [&](const char* text) {
    const int32_t id = lookup(text);
    return id >= 0 && std::binary_search(eog.begin(), eog.end(), id) ? id : -1;
  };
  const auto drop = [&](int32_t id, TokenType as) {
    eog.erase(std::remove(eog.begin(), eog.end(), id), eog.end());
    types[static_cast<size_t>(id)] = as;
  };
  const bool call = in_eog("<|call|>") >= 0 || in_eog("<|calls|>") >= 0;
  const int32_t end = in_eog("<|end|>");
  if (end >= 0 && call && (in_eog("<|return|>") >= 0 || in_eog("<|flush|>") >= 0)) drop(end, TokenType::UserDefined);
  const int32_t s = in_eog("</s>");
  if (s >= 0 && (in_eog("<|tool_response>") >= 0 || in_eog("<|plamo:eos|>") >= 0)) drop(s, TokenType::Normal);
  return eog;
}

}  // namespace tova
