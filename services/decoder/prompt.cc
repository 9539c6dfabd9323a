#include "services/decoder/prompt.h"

#include "services/ctxcache/ape_encoder.h"

namespace ragserve::decoder {

std::string BuildRagPrompt(const std::string& question,
                           const std::vector<PromptPassage>& passages) {
  std::string out = ctxcache::DefaultApePrefix();
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
