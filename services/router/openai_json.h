// The OpenAI-compatible HTTP API's JSON side: request bodies parsed into RagService requests and
// QueryEvents turned into OpenAI response objects, with no I/O (services/router/http_api.h serves
// them). Shapes follow the OpenAI API reference (chat.completion, chat.completion.chunk,
// text_completion, list of models, embeddings, error objects).
//
// Requests: unknown fields are ignored (SDKs send many); a known field of the wrong type, an
// out-of-range value, n != 1 or a feature this server does not have (tools, logprobs) is a 400
// naming the field in `param`. Beyond OpenAI's fields, a generation request may carry:
//   "rag": {"collection": str, "top_k": int, "filter": {field: scalar, ...},
//           "use_context_cache": bool}        retrieve passages first (chat completions only)
//   "top_k", "repetition_penalty", "ignore_eos"   sampling extras as in vLLM
// and the response (and a stream's first chunk) then carries "rag": {"passages": [...]}.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "ragserve/v1/index.pb.h"
#include "ragserve/v1/rag.pb.h"
#include "services/common/status.h"

namespace ragserve::router::openai {

// An OpenAI error object with its HTTP status.
struct ApiError {
  int http_status = 400;
  std::string type = "invalid_request_error";
  std::string message;
  std::string param;  // the offending field, "" when none
  std::string code;   // e.g. "model_not_found", "" when none
};

// {"error": {"message", "type", "param", "code"}} (param and code null when empty).
std::string ErrorBody(const ApiError& e);
// The API error for a ragserve Status: InvalidArgument/OutOfRange/FailedPrecondition 400,
// Unauthenticated 401, PermissionDenied 403, NotFound 404, ResourceExhausted 429, Cancelled 499,
// Unavailable 503, DeadlineExceeded 504, anything else 500.
ApiError ErrorFromStatus(const Status& s);

// A parsed /v1/chat/completions or /v1/completions request.
struct GenerationCall {
  v1::QueryRequest query;  // messages (chat) or prompt (completion), sampling, retrieval
  std::string model;       // as the client named it (echoed in responses)
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
  bool rag = false;            // a collection is named: passages are returned
};

// The served model names: a request's "model" must be one of them (404 model_not_found).
using ModelNames = std::vector<std::string>;

// Each returns true and fills `out`, or false and fills `err`.
bool ParseChatRequest(std::string_view body, const ModelNames& models, GenerationCall* out,
                      ApiError* err);
bool ParseCompletionRequest(std::string_view body, const ModelNames& models, GenerationCall* out,
                            ApiError* err);

// A parsed /v1/embeddings request: "model" names the collection whose embedder is used.
struct EmbeddingCall {
  std::string model;
  std::vector<std::string> inputs;
  bool base64 = false;  // encoding_format "base64" (little-endian float32), else "float"
};
bool ParseEmbeddingRequest(std::string_view body, EmbeddingCall* out, ApiError* err);

// The fixed part of every response object of one call.
struct ResponseMeta {
  std::string id;  // "chatcmpl-..." / "cmpl-..."
  int64_t created = 0;
  std::string model;
};

// OpenAI's finish_reason for a decoder's ("eos", "stop" -> "stop"; "length"; else as is).
std::string FinishReason(const std::string& decoder_reason);
// {"prompt_tokens", "completion_tokens", "total_tokens"} from the query's stats.
nlohmann::json Usage(const v1::QueryStats& stats);
// {"passages": [{"id", "score", "text", "metadata"}...]} (metadata parsed when it is JSON).
nlohmann::json RagJson(const v1::RetrievedPassages& passages);

// A whole chat.completion; `rag` is added when it is not null.
nlohmann::json ChatCompletion(const ResponseMeta& m, const std::string& text,
                              const v1::QueryStats& stats, const nlohmann::json& rag);
// One chat.completion.chunk with `delta` (an object) and finish_reason (null when empty).
nlohmann::json ChatChunk(const ResponseMeta& m, nlohmann::json delta,
                         const std::string& finish_reason);
// A whole text_completion and one of its stream chunks.
nlohmann::json TextCompletion(const ResponseMeta& m, const std::string& text,
                              const v1::QueryStats& stats);
nlohmann::json TextChunk(const ResponseMeta& m, const std::string& text,
                         const std::string& finish_reason);
// The final stream chunk of include_usage: no choices, the usage.
nlohmann::json UsageChunk(const ResponseMeta& m, const char* object, const v1::QueryStats& stats);
// {"object": "list", "data": [{"object": "embedding", "index", "embedding"}...], "model",
// "usage"}; an embedding is a float array, or base64 of little-endian float32 when asked.
// usage counts no tokens (the embedders work on words, not tokens): both are 0.
nlohmann::json EmbeddingList(const EmbeddingCall& call, const v1::EmbedResponse& resp);
// {"object": "list", "data": [{"id", "object": "model", "created", "owned_by"}...]}.
nlohmann::json ModelList(const ModelNames& models, int64_t created);

}  // namespace ragserve::router::openai
