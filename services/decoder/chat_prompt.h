// Chat requests (GenerateRequest.messages) turned into the conversation a model's chat template
// renders, with the retrieved passages added as configured (--rag-chat-role), and the fallback for
// a model without a chat template (the trained demo reader): its question is the last user
// message, laid out with the RAG prompt it was trained on (services/common/rag_template.h).
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "ragserve/v1/common.pb.h"
#include "services/common/rag_template.h"
#include "services/common/status.h"

namespace ragserve::decoder {

// Request limits (INVALID_ARGUMENT beyond them): the conversation is rendered and tokenized on a
// worker thread before admission.
inline constexpr int kMaxChatMessages = 1024;
inline constexpr size_t kMaxChatBytes = size_t{1} << 20;  // all roles and contents together

// Where passages go in a conversation rendered with a chat template.
struct RagChatOptions {
  // "system": one system message holding instruction + passages, first in the conversation (a
  // conversation that starts with a system message gets the block appended to it, since many
  // templates accept only one system message, first). "user": the block is put before the
  // content of the last user message (for templates that refuse a system role).
  std::string role = "system";
  std::string instruction = kRagPrefix;  // text before the passages
};

// InvalidArgument unless role is "system" or "user".
Status CheckRagChatOptions(const RagChatOptions& opts);

// InvalidArgument for an empty role, too many messages or too many bytes.
Status CheckChatMessages(const google::protobuf::RepeatedPtrField<v1::ChatMessage>& messages);

// The content of the last message whose role is "user"; InvalidArgument when there is none.
StatusOr<std::string> LastUserContent(
    const google::protobuf::RepeatedPtrField<v1::ChatMessage>& messages);

// instruction + each passage followed by kRagPassageSuffix: the text that carries the passages.
std::string RagChatBlock(const RagChatOptions& opts, const std::vector<std::string_view>& passages);

// The messages as a JSON array of {"role", "content"} objects for ChatTemplate::Render, with the
// passages (if any) added as opts says. InvalidArgument for role "user" without a user message.
StatusOr<nlohmann::ordered_json> ChatConversation(
    const google::protobuf::RepeatedPtrField<v1::ChatMessage>& messages,
    const std::vector<std::string_view>& passages, const RagChatOptions& opts);

}  // namespace ragserve::decoder
