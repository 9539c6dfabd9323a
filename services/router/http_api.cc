#include "services/router/http_api.h"

#include <grpcpp/client_context.h>

#include <chrono>
#include <cstring>
#include <ctime>
#include <random>
#include <utility>

#include "httplib.h"
#include "services/common/auth.h"
#include "services/common/grpc_status.h"
#include "services/common/logging.h"
#include "services/common/metrics.h"

namespace ragserve::router {
namespace {

using json = nlohmann::json;
using openai::ApiError;

std::string Dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

void SendError(httplib::Response& res, const ApiError& e) {
  res.status = e.http_status;
  res.set_content(openai::ErrorBody(e), "application/json");
}

void SendJson(httplib::Response& res, const json& j) {
  res.status = 200;
  res.set_content(Dump(j), "application/json");
}

std::string NewId(const char* prefix) {
  thread_local std::mt19937_64 rng(std::random_device{}());
  char hex[17];
  std::snprintf(hex, sizeof(hex), "%016llx", static_cast<unsigned long long>(rng()));
  return std::string(prefix) + hex;
}

// One RagService.Query call, read event by event. Destroying it before the end cancels the call
// (the router then cancels the worker's sequence).
class QueryCall {
 public:
  QueryCall(v1::RagService::Stub* stub, const v1::QueryRequest& q, const std::string& auth) {
    if (!auth.empty()) ctx_.AddMetadata("authorization", auth);
    reader_ = stub->Query(&ctx_, q);
  }
  ~QueryCall() {
    if (!finished_) Cancel();
  }
  // The next event; false at the end (status() then says how the call ended).
  bool Next(v1::QueryEvent* ev) {
    if (finished_) return false;
    if (reader_->Read(ev)) return true;
    status_ = FromGrpcStatus(reader_->Finish());
    finished_ = true;
    return false;
  }
  void Cancel() {
    ctx_.TryCancel();
    v1::QueryEvent ev;
    while (reader_->Read(&ev)) {
    }
    (void)reader_->Finish();
    finished_ = true;
    status_ = Cancelled("the HTTP client went away");
  }
  const Status& status() const { return status_; }

 private:
  grpc::ClientContext ctx_;
  std::unique_ptr<grpc::ClientReader<v1::QueryEvent>> reader_;
  bool finished_ = false;
  Status status_ = OkStatus();
};

// What a generation produced, gathered from its events.
struct Outcome {
  json rag;  // null without retrieval
  std::string text;
  v1::QueryStats stats;
};

// Folds one event into `out`; returns the text it added.
std::string Fold(const v1::QueryEvent& ev, Outcome* out) {
  if (ev.has_passages()) out->rag = openai::RagJson(ev.passages());
  if (ev.has_stats()) out->stats = ev.stats();
  if (!ev.has_delta()) return "";
  out->text += ev.delta().text();
  return ev.delta().text();
}

bool WriteEvent(httplib::DataSink& sink, const std::string& data) {
  const std::string frame = "data: " + data + "\n\n";
  return sink.write(frame.data(), frame.size());
}

// The server-sent events of one streamed generation, written from the first event on.
class SseStream {
 public:
  SseStream(std::shared_ptr<QueryCall> call, v1::QueryEvent first, openai::ResponseMeta meta,
            bool chat, bool include_usage)
      : call_(std::move(call)),
        first_(std::move(first)),
        meta_(std::move(meta)),
        chat_(chat),
        include_usage_(include_usage) {}

  // Writes the whole stream; false when the client went away (the query is then cancelled).
  bool Run(httplib::DataSink& sink) {
    Outcome out;
    v1::QueryEvent ev = first_;
    Fold(ev, &out);
    if (chat_) {
      json first = openai::ChatChunk(meta_, {{"role", "assistant"}, {"content", ""}}, "");
      if (!out.rag.is_null()) first["rag"] = out.rag;
      if (!Send(sink, first)) return false;
    }
    if (ev.has_delta() && !Delta(sink, ev.delta().text())) return false;
    while (call_->Next(&ev)) {
      const std::string text = Fold(ev, &out);
      if (!text.empty() && !Delta(sink, text)) return false;
    }
    if (!call_->status().ok()) {
      WriteEvent(sink, openai::ErrorBody(openai::ErrorFromStatus(call_->status())));
      sink.done();
      return true;
    }
    const std::string& reason = out.stats.finish_reason();
    if (!Send(sink, chat_ ? openai::ChatChunk(meta_, json::object(), reason)
                          : openai::TextChunk(meta_, "", reason))) {
      return false;
    }
    if (include_usage_ &&
        !Send(sink, openai::UsageChunk(meta_, chat_ ? "chat.completion.chunk" : "text_completion",
                                       out.stats))) {
      return false;
    }
    if (!WriteEvent(sink, "[DONE]")) return Gone();
    sink.done();
    return true;
  }

 private:
  bool Delta(httplib::DataSink& sink, const std::string& text) {
    return Send(sink, chat_ ? openai::ChatChunk(meta_, {{"content", text}}, "")
                            : openai::TextChunk(meta_, text, ""));
  }
  bool Send(httplib::DataSink& sink, const json& chunk) {
    return WriteEvent(sink, Dump(chunk)) || Gone();
  }
  bool Gone() {
    call_->Cancel();
    return false;
  }

  std::shared_ptr<QueryCall> call_;
  v1::QueryEvent first_;
  openai::ResponseMeta meta_;
  bool chat_;
  bool include_usage_;
};

Counter& HttpRequests(const std::string& path, int status) {
  return MetricsRegistry::Default().GetCounter(
      "ragserve_router_http_requests_total", "OpenAI-compatible HTTP requests, by path and status",
      {{"path", path}, {"status", std::to_string(status)}});
}

}  // namespace

HttpApi::HttpApi(HttpApiOptions opts, std::shared_ptr<grpc::Channel> rag)
    : opts_(std::move(opts)),
      channel_(std::move(rag)),
      rag_(v1::RagService::NewStub(channel_)),
      created_(static_cast<int64_t>(std::time(nullptr))) {}

HttpApi::~HttpApi() { Stop(); }

StatusOr<std::unique_ptr<HttpApi>> HttpApi::Start(HttpApiOptions opts,
                                                  std::shared_ptr<grpc::Channel> rag) {
  RS_CHECK_ARG(opts.port > 0 && opts.port < 65536, "--http-port must be in 1..65535, got ",
               opts.port);
  RS_CHECK_ARG(!opts.models.empty(), "--served-model-name must name at least one model");
  RS_CHECK_ARG(opts.threads >= 1, "--http-threads must be >= 1");
  std::unique_ptr<HttpApi> api(new HttpApi(std::move(opts), std::move(rag)));
  const HttpApiOptions& o = api->opts_;
  if (!o.tls_cert.empty()) {
    auto ssl = std::make_unique<httplib::SSLServer>(o.tls_cert.c_str(), o.tls_key.c_str());
    if (!ssl->is_valid()) {
      return InvalidArgument(
          StrCat("HTTP API: cannot use TLS certificate ", o.tls_cert, " and key ", o.tls_key));
    }
    api->server_ = std::move(ssl);
  } else {
    api->server_ = std::make_unique<httplib::Server>();
  }
  const int threads = o.threads;
  api->server_->new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  api->server_->set_payload_max_length(o.max_body_bytes);
  api->Routes();
  if (!api->server_->bind_to_port(o.host, o.port)) {
    return Unavailable(StrCat("HTTP API cannot listen on ", o.host, ":", o.port,
                              " (address in use or not available)"));
  }
  api->port_ = o.port;
  HttpApi* raw = api.get();
  api->thread_ = std::thread([raw] { raw->server_->listen_after_bind(); });
  for (int i = 0; i < 2000 && !api->server_->is_running(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  std::string models;
  for (const auto& m : o.models) models += (models.empty() ? "" : ",") + m;
  RS_LOG(info, "OpenAI-compatible HTTP API on {}:{} (tls {}, auth {}, models {})", o.host, o.port,
         o.tls_cert.empty() ? "off" : "on", o.auth_token.empty() ? "off" : "on", models);
  return api;
}

void HttpApi::Stop() {
  if (server_) server_->stop();
  if (thread_.joinable()) thread_.join();
}

void HttpApi::Routes() {
  httplib::Server& s = *server_;
  s.Post("/v1/chat/completions", [this](const httplib::Request& req, httplib::Response& res) {
    if (!Unauthorized(req, res)) Generate(req, res, /*chat=*/true);
  });
  s.Post("/v1/completions", [this](const httplib::Request& req, httplib::Response& res) {
    if (!Unauthorized(req, res)) Generate(req, res, /*chat=*/false);
  });
  s.Post("/v1/embeddings", [this](const httplib::Request& req, httplib::Response& res) {
    if (!Unauthorized(req, res)) Embeddings(req, res);
  });
  s.Get(R"(/v1/models(/.+)?)", [this](const httplib::Request& req, httplib::Response& res) {
    if (!Unauthorized(req, res)) Models(req, res);
  });
  s.Get("/health", [](const httplib::Request&, httplib::Response& res) {
    res.set_content("ok\n", "text/plain");
  });
  // httplib's own errors (413 body too large, 404 unknown path, 400 unparsable request) as
  // OpenAI error objects.
  s.set_error_handler([](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return;
    ApiError e;
    e.http_status = res.status;
    e.message = res.status == 413   ? "the request body is too large"
                : res.status == 404 ? "unknown path " + req.path
                                    : "bad request (" + std::to_string(res.status) + ")";
    if (res.status >= 500) e.type = "server_error";
    SendError(res, e);
  });
  s.set_exception_handler(
      [](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
        ApiError e;
        e.http_status = 500;
        e.type = "server_error";
        e.message = "internal error";
        try {
          if (ep) std::rethrow_exception(ep);
        } catch (const std::exception& ex) {
          e.message = std::string("internal error: ") + ex.what();
        } catch (...) {
        }
        SendError(res, e);
      });
  s.set_logger([](const httplib::Request& req, const httplib::Response& res) {
    std::string path = "other";  // bounded label values: the routes, not what clients send
    for (const char* route :
         {"/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models", "/health"}) {
      if (req.path.rfind(route, 0) == 0) path = route;
    }
    HttpRequests(path, res.status).Inc();
  });
}

bool HttpApi::Unauthorized(const httplib::Request& req, httplib::Response& res) const {
  if (opts_.auth_token.empty()) return false;
  const std::string value = req.get_header_value("Authorization");
  constexpr std::string_view kScheme = "Bearer ";
  if (value.rfind(kScheme, 0) == 0 &&
      ConstantTimeEquals(std::string_view(value).substr(kScheme.size()), opts_.auth_token)) {
    return false;
  }
  ApiError e;
  e.http_status = 401;
  e.type = "authentication_error";
  e.code = "invalid_api_key";
  e.message =
      value.empty() ? "missing 'Authorization: Bearer <token>' header" : "invalid bearer token";
  SendError(res, e);
  res.set_header("WWW-Authenticate", "Bearer");
  return true;
}

std::string HttpApi::Downstream() const {
  // Only after Unauthorized() passed: the client's header is not forwarded as such (gRPC
  // metadata takes printable ASCII only; a client's header may hold anything).
  return opts_.auth_token.empty() ? "" : "Bearer " + opts_.auth_token;
}

void HttpApi::Generate(const httplib::Request& req, httplib::Response& res, bool chat) {
  openai::GenerationCall call;
  ApiError err;
  const bool parsed = chat ? openai::ParseChatRequest(req.body, opts_.models, &call, &err)
                           : openai::ParseCompletionRequest(req.body, opts_.models, &call, &err);
  if (!parsed) return SendError(res, err);
  auto q = std::make_shared<QueryCall>(rag_.get(), call.query, Downstream());
  // The first event (passages, a delta, or the stats) or the error decides the HTTP status.
  v1::QueryEvent first;
  if (!q->Next(&first)) {
    if (!q->status().ok()) return SendError(res, openai::ErrorFromStatus(q->status()));
  }
  openai::ResponseMeta meta{NewId(chat ? "chatcmpl-" : "cmpl-"),
                            static_cast<int64_t>(std::time(nullptr)), call.model};
  if (call.stream) {
    res.set_header("Cache-Control", "no-cache");
    auto sse =
        std::make_shared<SseStream>(q, std::move(first), std::move(meta), chat, call.include_usage);
    res.set_chunked_content_provider(
        "text/event-stream", [sse](size_t, httplib::DataSink& sink) { return sse->Run(sink); });
    return;
  }
  Outcome out;
  Fold(first, &out);
  v1::QueryEvent ev;
  while (q->Next(&ev)) Fold(ev, &out);
  if (!q->status().ok()) return SendError(res, openai::ErrorFromStatus(q->status()));
  SendJson(res, chat ? openai::ChatCompletion(meta, out.text, out.stats, out.rag)
                     : openai::TextCompletion(meta, out.text, out.stats));
}

void HttpApi::Embeddings(const httplib::Request& req, httplib::Response& res) {
  openai::EmbeddingCall call;
  ApiError err;
  if (!openai::ParseEmbeddingRequest(req.body, &call, &err)) return SendError(res, err);
  v1::EmbedRequest ereq;
  ereq.set_collection(call.model);
  for (auto& text : call.inputs) ereq.add_texts(std::move(text));
  grpc::ClientContext ctx;
  if (const std::string auth = Downstream(); !auth.empty()) ctx.AddMetadata("authorization", auth);
  v1::EmbedResponse eresp;
  const grpc::Status st = rag_->Embed(&ctx, ereq, &eresp);
  if (!st.ok()) {
    ApiError e = openai::ErrorFromStatus(FromGrpcStatus(st));
    if (e.http_status == 404) {
      e.param = "model";
      e.code = "model_not_found";
    }
    return SendError(res, e);
  }
  SendJson(res, openai::EmbeddingList(call, eresp));
}

void HttpApi::Models(const httplib::Request& req, httplib::Response& res) {
  const json list = openai::ModelList(opts_.models, created_);
  if (req.matches.size() < 2 || req.matches[1].length() == 0) return SendJson(res, list);
  const std::string id = req.matches[1].str().substr(1);
  for (const json& m : list["data"]) {
    if (m["id"] == id) return SendJson(res, m);
  }
  ApiError e;
  e.http_status = 404;
  e.message = "The model '" + id + "' does not exist";
  e.param = "model";
  e.code = "model_not_found";
  SendError(res, e);
}

}  // namespace ragserve::router
