// The RAG prompt: how the decode worker lays out the question and the retrieved passages.
#pragma once

#include <string>
#include <vector>

namespace ragserve::decoder {

struct PromptPassage {
  std::string id;
  std::string text;
};

// "<ctxcache::DefaultApePrefix()>[1] passage\n\n[2] passage\n\nQuestion: <q>\nAnswer:".
std::string BuildRagPrompt(const std::string& question, const std::vector<PromptPassage>& passages);

// The part after the passages: "Question: <q>\nAnswer:" (with APE, passages are encoded apart).
std::string RagQuestion(const std::string& question);

}  // namespace ragserve::decoder
