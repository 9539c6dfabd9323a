// The RAG prompt: how the decode worker lays out the question and the retrieved passages.
#pragma once

#include <string>
#include <vector>

namespace ragserve::decoder {

struct PromptPassage {
  std::string id;
  std::string text;
};

// kRagPrefix + each passage + "\n\n" + "Question: <q>\nAnswer:" (services/common/rag_template.h).
std::string BuildRagPrompt(const std::string& question, const std::vector<PromptPassage>& passages);

// The part after the passages, "Question: <q>\nAnswer:" (with APE, passages are encoded apart).
std::string RagQuestion(const std::string& question);

}  // namespace ragserve::decoder
