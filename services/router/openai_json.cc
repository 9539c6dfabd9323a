#include "services/router/openai_json.h"

#include <algorithm>
#include <limits>
#include <utility>

namespace ragserve::router::openai {
namespace {

using json = nlohmann::json;

constexpr int kMaxStops = 16;          // the decoder's limit (decoder_service.h)
constexpr int kMaxEmbedInputs = 2048;  // OpenAI's limit per request

std::string TypeName(const json& v) {
  if (v.is_number_integer()) return "integer";
  if (v.is_number()) return "number";
  return v.type_name();
}

// Reads typed fields of one JSON object; the first problem is kept in *err and later reads do
// nothing. Absent and null fields leave the output untouched.
class Reader {
 public:
  Reader(const json& obj, ApiError* err, std::string prefix = "")
      : obj_(obj), err_(err), prefix_(std::move(prefix)) {}

  bool ok() const { return ok_; }
  // False (with no error) when absent or null.
  const json* Find(const char* key) const {
    if (!ok_) return nullptr;
    auto it = obj_.find(key);
    return it == obj_.end() || it->is_null() ? nullptr : &*it;
  }
  bool Fail(const char* key, const std::string& msg, int status = 400) {
    if (ok_) {
      ok_ = false;
      err_->http_status = status;
      err_->param = prefix_ + key;
      err_->message = msg;
    }
    return false;
  }
  bool WrongType(const char* key, const char* want, const json& v) {
    return Fail(key, "'" + prefix_ + key + "' must be " + want + ", got " + TypeName(v));
  }
  bool Str(const char* key, std::string* out) {
    const json* v = Find(key);
    if (v == nullptr) return false;
    if (!v->is_string()) return WrongType(key, "a string", *v);
    *out = v->get<std::string>();
    return true;
  }
  bool Bool(const char* key, bool* out) {
    const json* v = Find(key);
    if (v == nullptr) return false;
    if (!v->is_boolean()) return WrongType(key, "a boolean", *v);
    *out = v->get<bool>();
    return true;
  }
  bool Int(const char* key, int64_t lo, int64_t hi, int64_t* out) {
    const json* v = Find(key);
    if (v == nullptr) return false;
    if (!v->is_number_integer()) return WrongType(key, "an integer", *v);
    const int64_t x = v->is_number_unsigned() && v->get<uint64_t>() > uint64_t(INT64_MAX)
                          ? INT64_MAX
                          : v->get<int64_t>();
    if (x < lo || x > hi) {
      return Fail(key, "'" + prefix_ + key + "' must be in " + std::to_string(lo) + ".." +
                           std::to_string(hi) + ", got " + v->dump());
    }
    *out = x;
    return true;
  }
  bool Num(const char* key, double lo, double hi, double* out) {
    const json* v = Find(key);
    if (v == nullptr) return false;
    if (!v->is_number()) return WrongType(key, "a number", *v);
    const double x = v->get<double>();
    if (!(x >= lo && x <= hi)) {
      return Fail(key, "'" + prefix_ + key + "' must be in [" + json(lo).dump() + ", " +
                           json(hi).dump() + "], got " + v->dump());
    }
    *out = x;
    return true;
  }

 private:
  const json& obj_;
  ApiError* err_;
  std::string prefix_;
  bool ok_ = true;
};

bool ParseObject(std::string_view body, json* out, ApiError* err) {
  *out = json::parse(body.begin(), body.end(), nullptr, /*allow_exceptions=*/false);
  if (out->is_discarded()) {
    err->message = "the request body is not valid JSON";
    return false;
  }
  if (!out->is_object()) {
    err->message = "the request body must be a JSON object, got " + TypeName(*out);
    return false;
  }
  return true;
}

bool CheckModel(Reader& r, const ModelNames& models, std::string* model, ApiError* err) {
  if (!r.Str("model", model)) return r.ok() ? r.Fail("model", "'model' is required") : false;
  if (std::find(models.begin(), models.end(), *model) == models.end()) {
    r.Fail("model", "The model '" + *model + "' does not exist", 404);
    err->type = "invalid_request_error";
    err->code = "model_not_found";
    return false;
  }
  return true;
}

// Features this server does not have: a 400 rather than a silently different answer.
bool CheckUnsupported(Reader& r) {
  int64_t n = 1;
  if (r.Int("n", std::numeric_limits<int64_t>::min(), INT64_MAX, &n) && n != 1) {
    return r.Fail("n", "only n = 1 is supported");
  }
  bool logprobs = false;
  if (r.Bool("logprobs", &logprobs) && logprobs) {
    return r.Fail("logprobs", "logprobs are not supported");
  }
  for (const char* key : {"presence_penalty", "frequency_penalty"}) {
    double p = 0;
    if (r.Num(key, -2, 2, &p) && p != 0) return r.Fail(key, std::string(key) + " is not supported");
  }
  if (const json* tools = r.Find("tools"); tools != nullptr && !tools->empty()) {
    return r.Fail("tools", "tools are not supported");
  }
  return r.ok();
}

bool ParseStop(Reader& r, v1::SamplingParams* sp) {
  const json* stop = r.Find("stop");
  if (stop == nullptr) return r.ok();
  if (stop->is_string()) {
    if (!stop->get<std::string>().empty()) sp->add_stop(stop->get<std::string>());
    return true;
  }
  if (!stop->is_array()) return r.WrongType("stop", "a string or an array of strings", *stop);
  if (stop->size() > kMaxStops) {
    return r.Fail("stop", "at most " + std::to_string(kMaxStops) + " stop strings");
  }
  for (const json& s : *stop) {
    if (!s.is_string()) return r.WrongType("stop", "a string or an array of strings", s);
    if (!s.get<std::string>().empty()) sp->add_stop(s.get<std::string>());
  }
  return true;
}

bool ParseSampling(Reader& r, v1::SamplingParams* sp) {
  int64_t max_tokens = 0;
  r.Int("max_tokens", 1, 1 << 20, &max_tokens);
  r.Int("max_completion_tokens", 1, 1 << 20, &max_tokens);
  sp->set_max_tokens(static_cast<int32_t>(max_tokens));
  double x = 0;
  if (r.Num("temperature", 0, 2, &x)) sp->set_temperature(static_cast<float>(x));
  if (r.Num("top_p", 0, 1, &x)) sp->set_top_p(static_cast<float>(x));
  if (r.Num("repetition_penalty", 0, 10, &x)) sp->set_repetition_penalty(static_cast<float>(x));
  int64_t i = 0;
  if (r.Int("top_k", -1, 1 << 20, &i)) sp->set_top_k(i < 0 ? 0 : static_cast<int32_t>(i));
  if (r.Int("seed", std::numeric_limits<int64_t>::min(), INT64_MAX, &i)) {
    sp->set_seed(static_cast<uint64_t>(i));
  }
  bool ignore_eos = false;
  if (r.Bool("ignore_eos", &ignore_eos)) sp->set_ignore_eos(ignore_eos);
  return ParseStop(r, sp) && r.ok();
}

bool ParseStreamFlags(Reader& r, GenerationCall* out) {
  r.Bool("stream", &out->stream);
  const json* so = r.Find("stream_options");
  if (so == nullptr) return r.ok();
  if (!so->is_object()) return r.WrongType("stream_options", "an object", *so);
  auto it = so->find("include_usage");
  if (it != so->end() && !it->is_null()) {
    if (!it->is_boolean()) return r.WrongType("stream_options.include_usage", "a boolean", *it);
    out->include_usage = it->get<bool>();
  }
  return true;
}

// content: a string, null, or an array of {"type": "text", "text": ...} parts (joined by "\n").
bool ParseContent(Reader& m, const json& msg, std::string* out) {
  auto it = msg.find("content");
  if (it == msg.end() || it->is_null()) return true;
  if (it->is_string()) {
    *out = it->get<std::string>();
    return true;
  }
  if (!it->is_array()) return m.WrongType("content", "a string or an array of parts", *it);
  for (const json& part : *it) {
    if (!part.is_object() || part.value("type", json()) != "text" || !part.contains("text") ||
        !part["text"].is_string()) {
      return m.Fail("content",
                    "only text content parts {\"type\": \"text\", \"text\": ...} "
                    "are supported");
    }
    if (!out->empty()) *out += "\n";
    *out += part["text"].get<std::string>();
  }
  return true;
}

bool ParseMessages(Reader& r, v1::QueryRequest* q, ApiError* err) {
  const json* msgs = r.Find("messages");
  if (msgs == nullptr) return r.ok() ? r.Fail("messages", "'messages' is required") : false;
  if (!msgs->is_array()) return r.WrongType("messages", "an array", *msgs);
  if (msgs->empty()) return r.Fail("messages", "'messages' must not be empty");
  for (size_t i = 0; i < msgs->size(); ++i) {
    const json& msg = (*msgs)[i];
    const std::string prefix = "messages[" + std::to_string(i) + "].";
    if (!msg.is_object()) {
      return r.Fail("messages", prefix.substr(0, prefix.size() - 1) + " must be an object");
    }
    Reader m(msg, err, prefix);
    auto* cm = q->add_messages();
    if (!m.Str("role", cm->mutable_role()))
      return m.ok() ? m.Fail("role", "role is required") : false;
    if (cm->role() == "developer") cm->set_role("system");  // OpenAI's newer name for it
    if (!ParseContent(m, msg, cm->mutable_content())) return false;
  }
  return true;
}

bool ParseRag(Reader& r, GenerationCall* out, ApiError* err) {
  const json* rag = r.Find("rag");
  if (rag == nullptr) return r.ok();
  if (!rag->is_object()) return r.WrongType("rag", "an object", *rag);
  Reader g(*rag, err, "rag.");
  v1::QueryRequest* q = &out->query;
  if (!g.Str("collection", q->mutable_collection()) || q->collection().empty()) {
    return g.ok() ? g.Fail("collection", "rag.collection is required") : false;
  }
  int64_t top_k = 0;
  if (g.Int("top_k", 1, 64, &top_k)) q->set_top_k(static_cast<int32_t>(top_k));
  bool cache = false;
  if (g.Bool("use_context_cache", &cache)) q->set_use_context_cache(cache);
  if (const json* f = g.Find("filter"); f != nullptr) {
    if (!f->is_object()) return g.WrongType("filter", "an object", *f);
    for (const auto& [key, value] : f->items()) {
      if (!value.is_primitive()) {
        return g.Fail("filter", "rag.filter values must be JSON scalars (equality)");
      }
      (*q->mutable_filter()->mutable_equals())[key] = value.dump();
    }
  }
  out->rag = true;
  return g.ok();
}

}  // namespace

std::string ErrorBody(const ApiError& e) {
  json err = {{"message", e.message},
              {"type", e.type},
              {"param", e.param.empty() ? json() : json(e.param)},
              {"code", e.code.empty() ? json() : json(e.code)}};
  return json{{"error", err}}.dump(-1, ' ', false, json::error_handler_t::replace);
}

ApiError ErrorFromStatus(const Status& s) {
  ApiError e;
  e.message = std::string(s.message());
  switch (s.code()) {
    case StatusCode::kInvalidArgument:
    case StatusCode::kOutOfRange:
    case StatusCode::kFailedPrecondition:
      e.http_status = 400;
      break;
    case StatusCode::kUnauthenticated:
      e.http_status = 401;
      e.type = "authentication_error";
      e.code = "invalid_api_key";
      break;
    case StatusCode::kPermissionDenied:
      e.http_status = 403;
      e.type = "permission_error";
      break;
    case StatusCode::kNotFound:
      e.http_status = 404;
      e.code = "not_found";
      break;
    case StatusCode::kResourceExhausted:
      e.http_status = 429;
      e.type = "rate_limit_error";
      e.code = "overloaded";
      break;
    case StatusCode::kCancelled:
      e.http_status = 499;
      break;
    case StatusCode::kUnavailable:
      e.http_status = 503;
      e.type = "server_error";
      e.code = "unavailable";
      break;
    case StatusCode::kDeadlineExceeded:
      e.http_status = 504;
      e.type = "server_error";
      e.code = "timeout";
      break;
    default:
      e.http_status = 500;
      e.type = "server_error";
  }
  return e;
}

bool ParseChatRequest(std::string_view body, const ModelNames& models, GenerationCall* out,
                      ApiError* err) {
  json j;
  if (!ParseObject(body, &j, err)) return false;
  Reader r(j, err);
  return CheckModel(r, models, &out->model, err) && CheckUnsupported(r) &&
         ParseMessages(r, &out->query, err) && ParseSampling(r, out->query.mutable_sampling()) &&
         ParseStreamFlags(r, out) && ParseRag(r, out, err);
}

bool ParseCompletionRequest(std::string_view body, const ModelNames& models, GenerationCall* out,
                            ApiError* err) {
  json j;
  if (!ParseObject(body, &j, err)) return false;
  Reader r(j, err);
  if (!CheckModel(r, models, &out->model, err) || !CheckUnsupported(r)) return false;
  int64_t best_of = 1;
  r.Int("best_of", 1, 1, &best_of);  // only 1
  bool echo = false;
  if (r.Bool("echo", &echo) && echo) return r.Fail("echo", "echo is not supported");
  if (r.Find("rag") != nullptr) {
    return r.Fail("rag", "rag is supported on /v1/chat/completions (completions take raw text)");
  }
  const json* p = r.Find("prompt");
  if (p == nullptr) return r.ok() ? r.Fail("prompt", "'prompt' is required") : false;
  if (p->is_array() && p->size() == 1 && (*p)[0].is_string()) p = &(*p)[0];
  if (!p->is_string()) return r.WrongType("prompt", "a string (one prompt per request)", *p);
  if (p->get<std::string>().empty()) return r.Fail("prompt", "'prompt' must not be empty");
  out->query.set_prompt(p->get<std::string>());
  return r.ok() && ParseSampling(r, out->query.mutable_sampling()) && ParseStreamFlags(r, out);
}

bool ParseEmbeddingRequest(std::string_view body, EmbeddingCall* out, ApiError* err) {
  json j;
  if (!ParseObject(body, &j, err)) return false;
  Reader r(j, err);
  if (!r.Str("model", &out->model)) return r.ok() ? r.Fail("model", "'model' is required") : false;
  std::string format = "float";
  r.Str("encoding_format", &format);
  if (format != "float" && format != "base64") {
    return r.Fail("encoding_format", "encoding_format must be float or base64");
  }
  out->base64 = format == "base64";
  const json* in = r.Find("input");
  if (in == nullptr) return r.ok() ? r.Fail("input", "'input' is required") : false;
  if (in->is_string()) {
    out->inputs.push_back(in->get<std::string>());
  } else if (in->is_array() && !in->empty() && in->size() <= kMaxEmbedInputs) {
    for (const json& s : *in) {
      if (!s.is_string()) return r.WrongType("input", "a string or an array of strings", s);
      out->inputs.push_back(s.get<std::string>());
    }
  } else {
    return r.Fail("input", "'input' must be a string or an array of 1.." +
                               std::to_string(kMaxEmbedInputs) + " strings");
  }
  return r.ok();
}

std::string FinishReason(const std::string& decoder_reason) {
  if (decoder_reason == "eos" || decoder_reason == "stop") return "stop";
  return decoder_reason;
}

nlohmann::json Usage(const v1::QueryStats& stats) {
  return {{"prompt_tokens", stats.prompt_tokens()},
          {"completion_tokens", stats.generated_tokens()},
          {"total_tokens", stats.prompt_tokens() + stats.generated_tokens()}};
}

nlohmann::json RagJson(const v1::RetrievedPassages& passages) {
  json list = json::array();
  for (const auto& p : passages.passages()) {
    json meta = json::parse(p.metadata_json(), nullptr, /*allow_exceptions=*/false);
    if (meta.is_discarded()) meta = p.metadata_json().empty() ? json() : json(p.metadata_json());
    list.push_back({{"id", p.id()}, {"score", p.score()}, {"text", p.text()}, {"metadata", meta}});
  }
  return {{"passages", list}};
}

namespace {

json Envelope(const ResponseMeta& m, const char* object) {
  return {{"id", m.id}, {"object", object}, {"created", m.created}, {"model", m.model}};
}

json Reason(const std::string& r) { return r.empty() ? json() : json(FinishReason(r)); }

}  // namespace

nlohmann::json ChatCompletion(const ResponseMeta& m, const std::string& text,
                              const v1::QueryStats& stats, const nlohmann::json& rag) {
  json out = Envelope(m, "chat.completion");
  out["choices"] = json::array({{{"index", 0},
                                 {"message", {{"role", "assistant"}, {"content", text}}},
                                 {"logprobs", nullptr},
                                 {"finish_reason", Reason(stats.finish_reason())}}});
  out["usage"] = Usage(stats);
  if (!rag.is_null()) out["rag"] = rag;
  return out;
}

nlohmann::json ChatChunk(const ResponseMeta& m, nlohmann::json delta,
                         const std::string& finish_reason) {
  json out = Envelope(m, "chat.completion.chunk");
  out["choices"] = json::array({{{"index", 0},
                                 {"delta", std::move(delta)},
                                 {"logprobs", nullptr},
                                 {"finish_reason", Reason(finish_reason)}}});
  return out;
}

nlohmann::json TextCompletion(const ResponseMeta& m, const std::string& text,
                              const v1::QueryStats& stats) {
  json out = Envelope(m, "text_completion");
  out["choices"] = json::array({{{"index", 0},
                                 {"text", text},
                                 {"logprobs", nullptr},
                                 {"finish_reason", Reason(stats.finish_reason())}}});
  out["usage"] = Usage(stats);
  return out;
}

nlohmann::json TextChunk(const ResponseMeta& m, const std::string& text,
                         const std::string& finish_reason) {
  json out = Envelope(m, "text_completion");
  out["choices"] = json::array({{{"index", 0},
                                 {"text", text},
                                 {"logprobs", nullptr},
                                 {"finish_reason", Reason(finish_reason)}}});
  return out;
}

nlohmann::json UsageChunk(const ResponseMeta& m, const char* object, const v1::QueryStats& stats) {
  json out = Envelope(m, object);
  out["choices"] = json::array();
  out["usage"] = Usage(stats);
  return out;
}

namespace {

std::string Base64(const unsigned char* data, size_t n) {
  static constexpr char kAlphabet[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((n + 2) / 3 * 4);
  for (size_t i = 0; i < n; i += 3) {
    const uint32_t b = (uint32_t{data[i]} << 16) | (i + 1 < n ? uint32_t{data[i + 1]} << 8 : 0) |
                       (i + 2 < n ? uint32_t{data[i + 2]} : 0);
    out += kAlphabet[(b >> 18) & 63];
    out += kAlphabet[(b >> 12) & 63];
    out += i + 1 < n ? kAlphabet[(b >> 6) & 63] : '=';
    out += i + 2 < n ? kAlphabet[b & 63] : '=';
  }
  return out;
}

}  // namespace

nlohmann::json EmbeddingList(const EmbeddingCall& call, const v1::EmbedResponse& resp) {
  json data = json::array();
  for (int i = 0; i < resp.embeddings_size(); ++i) {
    const auto& v = resp.embeddings(i).vector();
    json e = {{"object", "embedding"}, {"index", i}};
    if (call.base64) {
      // Little-endian float32 (the platforms ragserve builds on are little-endian).
      e["embedding"] =
          Base64(reinterpret_cast<const unsigned char*>(v.data()), v.size() * sizeof(float));
    } else {
      e["embedding"] = json(std::vector<float>(v.begin(), v.end()));
    }
    data.push_back(std::move(e));
  }
  return {{"object", "list"},
          {"data", data},
          {"model", call.model},
          {"usage", {{"prompt_tokens", 0}, {"total_tokens", 0}}}};
}

nlohmann::json ModelList(const ModelNames& models, int64_t created) {
  json data = json::array();
  for (const auto& name : models) {
    data.push_back(
        {{"id", name}, {"object", "model"}, {"created", created}, {"owned_by", "ragserve"}});
  }
  return {{"object", "list"}, {"data", data}};
}

}  // namespace ragserve::router::openai
