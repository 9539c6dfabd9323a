#include "services/decoder/chat_prompt.h"

namespace ragserve::decoder {

Status CheckRagChatOptions(const RagChatOptions& opts) {
  RS_CHECK_ARG(opts.role == "system" || opts.role == "user",
               "--rag-chat-role must be system or user, got '", opts.role, "'");
  return OkStatus();
}

Status CheckChatMessages(const google::protobuf::RepeatedPtrField<v1::ChatMessage>& messages) {
  RS_CHECK_ARG(messages.size() <= kMaxChatMessages, "at most ", kMaxChatMessages,
               " chat messages, got ", messages.size());
  size_t bytes = 0;
  for (int i = 0; i < messages.size(); ++i) {
    RS_CHECK_ARG(!messages[i].role().empty(), "messages[", i, "].role must not be empty");
    bytes += messages[i].role().size() + messages[i].content().size();
  }
  RS_CHECK_ARG(bytes <= kMaxChatBytes, "the chat messages hold ", bytes, " bytes; the limit is ",
               kMaxChatBytes);
  return OkStatus();
}

StatusOr<std::string> LastUserContent(
    const google::protobuf::RepeatedPtrField<v1::ChatMessage>& messages) {
  for (int i = messages.size() - 1; i >= 0; --i) {
    if (messages[i].role() == "user") return messages[i].content();
  }
  return InvalidArgument("the conversation has no user message");
}

std::string RagChatBlock(const RagChatOptions& opts,
                         const std::vector<std::string_view>& passages) {
  std::string out = opts.instruction;
  for (std::string_view p : passages) out += RagPassageText(p);
  return out;
}

StatusOr<nlohmann::ordered_json> ChatConversation(
    const google::protobuf::RepeatedPtrField<v1::ChatMessage>& messages,
    const std::vector<std::string_view>& passages, const RagChatOptions& opts) {
  nlohmann::ordered_json conv = nlohmann::ordered_json::array();
  for (const auto& m : messages) {
    conv.push_back({{"role", m.role()}, {"content", m.content()}});
  }
  if (passages.empty()) return conv;
  const std::string block = RagChatBlock(opts, passages);
  if (opts.role == "system") {
    if (!conv.empty() && conv[0]["role"] == "system") {
      conv[0]["content"] = conv[0]["content"].get<std::string>() + "\n\n" + block;
    } else {
      conv.insert(conv.begin(), nlohmann::ordered_json{{"role", "system"}, {"content", block}});
    }
    return conv;
  }
  for (size_t i = conv.size(); i-- > 0;) {
    if (conv[i]["role"] == "user") {
      conv[i]["content"] = block + conv[i]["content"].get<std::string>();
      return conv;
    }
  }
  return InvalidArgument("--rag-chat-role user: the conversation has no user message");
}

}  // namespace ragserve::decoder
