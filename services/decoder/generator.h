// Continuous-batching generation on one model (the decode worker's engine loop).
//
// One loop thread owns the model. Each iteration builds ONE forward batch from every active
// sequence: a decode step (1 token) for each sequence that is generating, plus at most
// `prefill_chunk` prompt tokens of sequences still prefilling (chunked prefill interleaved with
// decode, so a long prompt never stalls the others). Requests join between iterations from a
// bounded admission queue and leave as soon as they finish or are cancelled.
//
// Thread safety: Submit/Cancel/Load/Shutdown may be called from any thread. Callbacks run on the
// loop thread and must not block (hand the data to another thread or a gRPC reactor).
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "kernels/cuda/paged_kv.h"
#include "services/common/executor.h"
#include "services/common/mutex.h"
#include "services/common/status.h"
#include "services/engine/model.h"
#include "services/engine/sampling.h"
#include "services/engine/tokenizer.h"
#include "services/kvr/retrieval_kv_source.h"

namespace ragserve::decoder {

// Makes the RetrievalAttention KV source of a sequence (kvr/retrieval_kv_source.h), or returns
// null to keep the worker's own KV cache (e.g. a prompt below the length threshold).
// `device` is set when the model runs on a GPU: the source then keeps sinks + window in GPU pages
// of that pool (kvr/device_retrieval_source.h); null for a CPU model.
struct DeviceKvTarget {
  const kernels::Ops* ops = nullptr;
  std::shared_ptr<kernels::cuda::KvPagePool> pool;
};
using RetrievalSourceFactory = std::function<StatusOr<std::unique_ptr<kvr::RetrievalSource>>(
    const engine::KvGeometry& geometry, const std::string& request_id, int64_t prefill_tokens,
    const DeviceKvTarget* device)>;

struct GeneratorOptions {
  int max_active = 8;       // sequences decoded together (batch size bound), >= 1
  int max_queue = 64;       // admitted requests waiting for a slot; beyond: ResourceExhausted
  int prefill_chunk = 256;  // prompt tokens prefilled per iteration across all sequences
  int64_t kv_budget_bytes = int64_t{4} << 30;  // KV memory for all active sequences
  // KV retrieval (optional): asked at admission for every job without an APE context (and not
  // for sliding-window models). The source is made on the loop thread outside every lock; its
  // error, or a later error of the source (status() after a step), fails only that request
  // with that status. The source's store sequence is released when the request finishes, is
  // cancelled or fails, before on_done (during a key index build on the source's build
  // executor: once the build returns, by the build task). The sequence reserves the worker's
  // KV budget like any other (prompt + max_tokens) while its local cache exists (prefill and
  // a background index build, during which it decodes exactly); once it decodes through the
  // store only what it keeps locally stays reserved (the step's token; on a GPU sinks + window).
  RetrievalSourceFactory kv_retrieval;
  // With a model on a device backend (decoder --device cuda) every sequence's KV is in GPU pages
  // from one pool of kv_budget_bytes (made on first use): plain sequences in pages of this
  // dtype, APE contexts uploaded per request (DeviceApeKvSource), retrieval sequences with sinks
  // + window on the GPU and the middle in the store (kvr/device_retrieval_source.h).
  kernels::DType device_kv_dtype = kernels::DType::kF16;
  // Called once (on the loop thread) when a forward step fails and the model's backend reports
  // itself unusable (Ops::Health: a GPU with a sticky error). From then on every active, queued
  // and new request fails with that Unavailable status (a router retries them elsewhere); the
  // decoder stops the process so an orchestrator restarts it with a fresh device context.
  std::function<void(const Status& status)> on_device_failure;
};

// Timings and counts of one finished request (milliseconds); the decoder sends them to the client
// as a v1::GenerateStats.
struct GenerateStats {
  int prompt_tokens = 0;
  int cached_prompt_tokens = 0;
  int generated_tokens = 0;
  std::string finish_reason;  // "eos", "stop", "length", "cancelled", "error"
  double queue_ms = 0, prefill_ms = 0, ttft_ms = 0, decode_ms = 0, total_ms = 0;
};

// Parallel-encoded context (APE): a prefix block and passage blocks made by the same model, all
// preceding the prompt; the prompt's first token sits at `start_pos`.
struct ApeContext {
  std::shared_ptr<const engine::KvBlock> prefix;
  std::vector<std::shared_ptr<const engine::KvBlock>> passages;
  float temperature = 1.0f;
  float scaling = 1.0f;
  int32_t start_pos = 0;
  int context_tokens = 0;  // prefix + passage tokens (counted as prompt tokens)
  int cached_tokens = 0;   // of those, tokens whose KV came from the cache
};

struct GenerateJob {
  std::string request_id;       // unique among live requests (Cancel uses it)
  std::vector<int32_t> prompt;  // prompt token ids (with BOS when the model wants it)
  std::vector<int32_t> resume;  // already-delivered tokens: prefilled, not emitted again
  engine::SamplingParams sampling;
  engine::StopCriteria stop;
  std::optional<ApeContext> ape;  // when set, `prompt` follows these blocks
  // The caller's deadline: a job whose wait in the admission queue is expected to pass it is
  // refused (or, once queued, finished) RESOURCE_EXHAUSTED; one still queued at it ends
  // DEADLINE_EXCEEDED. max(): none.
  std::chrono::steady_clock::time_point deadline = std::chrono::steady_clock::time_point::max();
  // New tokens and their final text (may be empty while a UTF-8 sequence or possible stop string
  // is held back).
  std::function<void(const std::vector<int32_t>& ids, const std::string& text)> on_delta;
  // Called exactly once, last.
  std::function<void(const Status& status, const GenerateStats& result)> on_done;
};

struct LoadSnapshot {
  int active = 0;
  int queued = 0;
  int64_t queued_tokens = 0;  // prompt tokens not yet prefilled (queued + active)
  int64_t kv_bytes_used = 0;
  int64_t kv_bytes_free = 0;
  int retrieval_active = 0;  // active sequences attending through KV retrieval
  int max_active = 0;
  int64_t steps = 0;  // forward iterations so far
};

class Generator {
 public:
  // model and tokenizer are not owned and must outlive the generator.
  Generator(engine::Model* model, const engine::Tokenizer* tokenizer, GeneratorOptions opts);
  ~Generator();  // Shutdown()

  // Validates and queues a job. InvalidArgument: empty prompt, a token outside the vocabulary,
  // prompt + resume + max_tokens over the model's context, bad sampling params;
  // ResourceExhausted: queue full, the job's KV can never fit the budget, or requests queued
  // ahead of it are expected to hold it past its deadline (QueueWaitSeconds); Unavailable after
  // Shutdown. On error no callback is called. A queued job whose expected wait comes to pass its
  // deadline (re-checked every step) ends ResourceExhausted through on_done.
  Status Submit(std::unique_ptr<GenerateJob> job);
  // Cancels a queued or active job (its on_done gets Cancelled). False if unknown.
  bool Cancel(const std::string& request_id);
  LoadSnapshot Load() const;
  // Stops the loop; unfinished jobs end with Unavailable.
  void Shutdown();

 private:
  using Clock = std::chrono::steady_clock;
  struct Seq;
  struct Batch;
  void Loop();
  // One forward iteration over the active set; returns false when there was nothing to do.
  bool Step();
  // The steps of Step(), in order (loop thread). Cancelled requests finish; queued ones join
  // while slots and KV budget allow; returns the joined ones.
  std::vector<Seq*> AdmitAndCancel();
  std::vector<std::unique_ptr<Seq>> TakeCancelledLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::vector<Seq*> AdmitQueuedLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The queued jobs that cannot start before their deadline (below), taken out of the queue with
  // the status to finish them with.
  std::vector<std::pair<std::unique_ptr<Seq>, Status>> TakeLateLocked(Clock::time_point now)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // How long a job with `ahead` jobs queued before it waits to start, estimated low: 0 while a
  // slot is free; else ServiceTimeEstimate's, the last admission being the youngest.
  double QueueWaitSecondsLocked(Clock::time_point now, size_t ahead) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // On a device backend: GPU pages (or the uploaded APE context) for the admitted sequences;
  // returns the pool they came from (empty on a CPU backend or when the pool failed).
  DeviceKvTarget AttachDeviceKv(const std::vector<Seq*>& admitted);
  // KV retrieval sources for the admitted sequences without an APE context.
  void AttachRetrievalSources(const std::vector<Seq*>& admitted, const DeviceKvTarget& device);
  // One decode token per generating sequence plus prompt chunks within prefill_chunk.
  Batch BuildBatch();
  // The forward pass; when it fails on a backend that reports itself unusable, every request
  // fails and on_device_failure is called. Returns the forward's status.
  Status RunForward(const Batch& batch, std::vector<float>* logits);
  // After a successful forward: `forwarded` more tokens of s are cached; once its prompt is in,
  // samples the next token from logits row `row`, emits it and finishes s on a stop condition.
  void Advance(Seq* s, int64_t forwarded, const std::vector<float>& logits, size_t row);
  // A retrieval sequence that decodes through the store gives back the KV reservation of the
  // local cache it no longer has.
  void TrimRetrievalReservation(Seq* s);
  // Finished sequences leave the active set and return their KV reservation.
  void RetireFinished();
  void Finish(Seq* s, const Status& st, const std::string& reason);
  void UpdateLoad();
  // A step threw: fail every active sequence with `st` (loop thread).
  void FailActive(const Status& st);
  // The backend died: fail every active and queued sequence with `st` (loop thread).
  void FailEverything(const Status& st);
  int64_t KvBytes(int64_t tokens) const;
  // The steps of Submit(), in order (caller's thread): arguments and context length, the KV the
  // request will hold (tokens, checked against the budget), the sequence with its stop checker
  // and sampler (a resumed request's ids replayed), then the admission queue.
  Status CheckJob(const GenerateJob& job) const;
  StatusOr<int64_t> ReserveKvTokens(const GenerateJob& job) const;
  StatusOr<std::unique_ptr<Seq>> NewSeq(std::unique_ptr<GenerateJob> job, int64_t kv_tokens) const;
  Status Enqueue(std::unique_ptr<Seq> seq) ABSL_LOCKS_EXCLUDED(mu_);

  engine::Model* model_;
  const engine::Tokenizer* tokenizer_;
  GeneratorOptions opts_;  // fixed after the constructor
  const int64_t kv_bytes_per_token_;

  mutable Mutex mu_;
  std::condition_variable cv_;
  std::deque<std::unique_ptr<Seq>> queue_ ABSL_GUARDED_BY(mu_);
  std::set<std::string> cancel_requests_ ABSL_GUARDED_BY(mu_);
  std::set<std::string> live_ids_ ABSL_GUARDED_BY(mu_);  // ids of active sequences
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  Status device_failure_ ABSL_GUARDED_BY(mu_);  // set once the backend died
  LoadSnapshot load_ ABSL_GUARDED_BY(mu_);      // refreshed per step
  std::vector<std::unique_ptr<Seq>> active_;    // loop thread only
  int64_t reserved_kv_bytes_ = 0;               // written by the loop thread only
  int64_t steps_ ABSL_GUARDED_BY(mu_) = 0;
  ServiceTimeEstimate slot_time_ ABSL_GUARDED_BY(mu_);  // admitted requests' time in a slot
  Clock::time_point last_admit_ ABSL_GUARDED_BY(mu_);
  std::thread loop_;
};

}  // namespace ragserve::decoder
