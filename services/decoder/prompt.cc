#include "services/decoder/prompt.h"

namespace ragserve::decoder {

const std::string& RagInstruction() {
  static const std::string kInstruction =
      "Answer the question using only the numbered context passages.";
  return kInstruction;
}

std::string BuildRagPrompt(const std::string& question,
                           const std::vector<PromptPassage>& passages) {
  std::string out = RagInstruction();
  out += "\n\n";
  for (size_t i = 0; i < passages.size(); ++i) {
    out += "[" + std::to_string(i + 1) + "] " + passages[i].text + "\n\n";
  }
  out += RagQuestion(question);
  return out;
}

std::string RagQuestion(const std::string& question) {
  return "Question: " + question + "\nAnswer:";
}

}  // namespace ragserve::decoder
