// The RAG prompt template: the one definition of how an instruction, retrieved passages and a
// question are laid out for the model. The decode worker (sequential prompts), the APE encoder
// (passages encoded apart after the prefix) and tools/train-model (which reads these constants
// from this file, so the trained reader sees exactly this layout) all use it:
//
//   BOS + kRagPrefix + passage_1 + kRagPassageSuffix + ... + kRagQuestionHead + q +
//   kRagQuestionTail
//
// Each passage is followed by the same suffix and nothing numbers it, so a passage's tokens are the
// same whether it is encoded in sequence or on its own (APE): only its positions differ.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace ragserve {

inline constexpr char kRagPrefix[] = "Answer the question using only the context passages.\n\n";
inline constexpr char kRagPassageSuffix[] = "\n\n";
inline constexpr char kRagQuestionHead[] = "Question: ";
inline constexpr char kRagQuestionTail[] = "\nAnswer:";

// passage + kRagPassageSuffix.
inline std::string RagPassageText(std::string_view passage) {
  std::string out(passage);
  out += kRagPassageSuffix;
  return out;
}

// kRagQuestionHead + question + kRagQuestionTail.
inline std::string RagQuestionText(std::string_view question) {
  std::string out = kRagQuestionHead;
  out += question;
  out += kRagQuestionTail;
  return out;
}

// The whole prompt after BOS with the passages in sequence (the decoder's sequential mode):
// kRagPrefix + RagPassageText(p) for each passage + RagQuestionText(question).
inline std::string RagPrompt(std::string_view question,
                             const std::vector<std::string_view>& passages) {
  std::string out = kRagPrefix;
  for (std::string_view p : passages) out += RagPassageText(p);
  out += RagQuestionText(question);
  return out;
}

}  // namespace ragserve
