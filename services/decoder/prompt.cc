#include "services/decoder/prompt.h"

#include "services/common/rag_template.h"

namespace ragserve::decoder {

std::string BuildRagPrompt(const std::string& question,
                           const std::vector<PromptPassage>& passages) {
  std::string out = kRagPrefix;
  for (const PromptPassage& p : passages) out += RagPassageText(p.text);
  out += RagQuestion(question);
  return out;
}

std::string RagQuestion(const std::string& question) { return RagQuestionText(question); }

}  // namespace ragserve::decoder
