// Tokens known by their text, whatever a file's token types say, as llama.cpp's vocabulary
// loader decides them (its "auto-detect special tokens by text" step): tova tokenizes and stops
// generating exactly where llama.cpp does on the same file.
//
// - End of generation: the file's EOS, EOT and EOM ids, the fill-in-the-middle pad / repo / file
//   separator tokens, and every token whose text is on the end-of-generation list (</s>,
//   <|im_end|>, <end_of_turn>, ...). A token so listed, or a fill-in-the-middle token the file
//   does not name by id, becomes a control token if it was not one (a normal or user-defined
//   "</s>" is then no longer read from plain text, and is read from special text).
// - Two families' exceptions, by the texts present: with <|return|> and <|call|> (or <|call(s)|>
//   and <|flush|>), <|end|> does not end generation and is user-defined; with <|tool_response>
//   or <|plamo:eos|>, </s> is a normal token. <|channel|>, <|message|>, <|start|> and
//   <|constrain|> are user-defined (always read and printed).
//
// Where several tokens of one fill-in-the-middle kind are present, all are taken (llama.cpp
// takes one, in the order of a hash map).
#pragma once

#include <cstdint>
#include <functional>
#include <string_view>
#include <vector>

namespace tova {

enum class TokenType : int32_t;

// The fill-in-the-middle kinds, in the order of TokenizerData::fim_ids.
enum class FimKind : int { Prefix, Suffix, Middle, Pad, Repo, Separator, kCount };

// Applies the rules above to `types` (indexed by token id); returns the end-of-generation ids,
// sorted and unique. `lookup(text)`: the id of the token with that text, or -1. `file_ids`:
// EOS, EOT, EOM (-1 where absent); `fim_ids`: the ids the file names per FimKind (-1: none).
std::vector<int32_t> recognize_token_texts(const std::function<int32_t(std::string_view)>& lookup,
                                           std::vector<TokenType>& types, const std::vector<int32_t>& file_ids,
                                           const int32_t (&fim_ids)[static_cast<int>(FimKind::kCount)]);

}  // namespace tova
