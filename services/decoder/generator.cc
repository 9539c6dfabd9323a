#include "services/decoder/generator.h"

#include <algorithm>
#include <chrono>
#include <optional>
#include <set>
#include <utility>

#include "services/common/executor.h"
#include "services/common/logging.h"
#include "services/engine/device_kv_cache.h"

namespace ragserve::decoder {

namespace {
using Clock = std::chrono::steady_clock;
double MsSince(Clock::time_point t0, Clock::time_point t1) {
  return std::chrono::duration<double, std::milli>(t1 - t0).count();
}

// The passage blocks of an APE context, borrowed.
std::vector<const engine::KvBlock*> PassageBlocks(const ApeContext& ape) {
  std::vector<const engine::KvBlock*> blocks;
  for (const auto& b : ape.passages) blocks.push_back(b.get());
  return blocks;
}
}  // namespace

struct Generator::Seq {
  std::unique_ptr<GenerateJob> job;
  std::vector<int32_t> tokens;  // prompt + resume + generated
  int64_t to_prefill = 0;       // prompt + resume, or the prompt only (NewSeq: replayed resume)
  int64_t in_cache = 0;         // tokens already in the KV cache
  int32_t pos0 = 0;             // rotary position of tokens[0] (after APE context blocks)
  std::unique_ptr<engine::KvCache> kv;
  std::unique_ptr<engine::KvSource> ape;            // wraps kv when the job has an APE context
  std::unique_ptr<kvr::RetrievalSource> retrieval;  // replaces kv (KV retrieval)
  std::unique_ptr<engine::KvSource> device_kv;      // replaces kv on a device backend
  std::optional<engine::Sampler> sampler;
  std::unique_ptr<engine::StopChecker> stop;
  int64_t reserved_bytes = 0;
  Clock::time_point t_submit, t_admit, t_prefilled, t_first;
  bool got_first = false;
  bool done = false;

  // The KV source the forward pass appends to and attends through.
  engine::KvSource* attention() const {
    if (retrieval) return retrieval.get();
    if (ape) return ape.get();
    if (device_kv) return device_kv.get();
    return kv.get();
  }
};

struct Generator::Batch {
  std::vector<engine::SequenceStep> steps;
  std::vector<Seq*> members;    // steps[i] is members[i]'s
  std::vector<int64_t> counts;  // tokens of steps[i]
};

Generator::Generator(engine::Model* model, const engine::Tokenizer* tokenizer,
                     GeneratorOptions opts)
    : model_(model),
      tokenizer_(tokenizer),
      opts_(opts),
      kv_bytes_per_token_(
          int64_t{2} * model->geometry().num_layers * model->geometry().kv_row() *
          static_cast<int64_t>(model->ops().memory() == kernels::MemorySpace::kDevice
                                   ? kernels::DTypeSize(opts.device_kv_dtype)
                                   : sizeof(float))) {
  load_.max_active = opts_.max_active;
  load_.kv_bytes_free = opts_.kv_budget_bytes;
  if (opts_.kv_retrieval && model_->config().sliding_window > 0) {
    RS_LOG(warn, "decoder: KV retrieval is off for a sliding-window model (window {})",
           model_->config().sliding_window);
    opts_.kv_retrieval = nullptr;
  }
  loop_ = std::thread([this] { Loop(); });
}

Generator::~Generator() { Shutdown(); }

int64_t Generator::KvBytes(int64_t tokens) const { return tokens * kv_bytes_per_token_; }

Status Generator::Submit(std::unique_ptr<GenerateJob> job) {
  RS_CHECK_ARG(job != nullptr, "null job");
  RS_RETURN_IF_ERROR(CheckJob(*job));
  RS_ASSIGN_OR_RETURN(const int64_t kv_tokens, ReserveKvTokens(*job));
  RS_ASSIGN_OR_RETURN(std::unique_ptr<Seq> seq, NewSeq(std::move(job), kv_tokens));
  return Enqueue(std::move(seq));
}

Status Generator::CheckJob(const GenerateJob& job) const {
  RS_CHECK_ARG(!job.prompt.empty(), "empty prompt");
  RS_CHECK_ARG(job.stop.max_tokens >= 1, "max_tokens must be >= 1, got ", job.stop.max_tokens);
  const int vocab = model_->config().vocab_size;
  for (const auto* ids : {&job.prompt, &job.resume}) {
    for (int32_t t : *ids) {
      RS_CHECK_ARG(t >= 0 && t < vocab, "token id ", t, " outside the vocabulary [0, ", vocab, ")");
    }
  }
  const int64_t total =
      static_cast<int64_t>(job.prompt.size() + job.resume.size()) + job.stop.max_tokens;
  const int64_t ctx = model_->config().max_position_embeddings;
  const int64_t start = job.ape ? job.ape->start_pos : 0;
  if (ctx > 0 && start + total > ctx) {
    return InvalidArgument(StrCat("prompt (", start + job.prompt.size() + job.resume.size(),
                                  " tokens) + max_tokens (", job.stop.max_tokens,
                                  ") exceeds the model context of ", ctx, " tokens"));
  }
  if (job.ape && ctx > 0 && job.ape->context_tokens + total > ctx) {
    // Passages are encoded in parallel (positions overlap) but the prompt attends to all of them.
    return InvalidArgument(
        StrCat("passages (", job.ape->context_tokens, " tokens in all) + prompt (",
               job.prompt.size() + job.resume.size(), ") + max_tokens (", job.stop.max_tokens,
               ") exceed the model context of ", ctx, " tokens"));
  }
  if (job.ape) {
    for (const auto& b : job.ape->passages) {
      RS_CHECK_ARG(b && b->fingerprint == model_->fingerprint(),
                   "a context block was made by another model");
    }
  }
  return OkStatus();
}

StatusOr<int64_t> Generator::ReserveKvTokens(const GenerateJob& job) const {
  // An APE request holds its prefix and passage KV for its lifetime (on a GPU it is uploaded to
  // the pool of kv_budget_bytes): it counts against the budget like the sequence's own KV.
  int64_t kv_tokens = static_cast<int64_t>(job.prompt.size() + job.resume.size()) +
                      job.stop.max_tokens + (job.ape ? job.ape->context_tokens : 0);
  if (model_->ops().memory() == kernels::MemorySpace::kDevice) {
    // Each of a sequence's (up to three) paged caches may leave a page partly empty per layer.
    kv_tokens += 3 * kernels::cuda::KvPageGeometry{}.page_size;
  }
  if (KvBytes(kv_tokens) > opts_.kv_budget_bytes) {
    return ResourceExhausted(StrCat("request needs ", KvBytes(kv_tokens),
                                    " bytes of KV cache; the "
                                    "worker's budget is ",
                                    opts_.kv_budget_bytes));
  }
  return kv_tokens;
}

StatusOr<std::unique_ptr<Generator::Seq>> Generator::NewSeq(std::unique_ptr<GenerateJob> job,
                                                            int64_t kv_tokens) const {
  RS_ASSIGN_OR_RETURN(engine::Sampler sampler, engine::Sampler::Create(job->sampling));
  auto seq = std::make_unique<Seq>();
  seq->sampler.emplace(std::move(sampler));
  seq->stop = std::make_unique<engine::StopChecker>(job->stop, tokenizer_);
  // A resumed request continues where the failed worker was: its held-back text, stop-string
  // state and random draws replayed, not emitted.
  seq->stop->Replay(job->resume);
  seq->sampler->SkipDraws(static_cast<int64_t>(job->resume.size()));
  seq->tokens = job->prompt;
  seq->tokens.insert(seq->tokens.end(), job->resume.begin(), job->resume.end());
  // Under KV retrieval the failed worker computed the resumed tokens' K/V in decode steps, with
  // the approximate attention of the store; a prefill would compute them exactly and the answer
  // would go on differently. So they are replayed as decode steps that sample nothing (Advance)
  // after a prefill of the prompt alone, the same steps the failed worker ran.
  const bool replay = opts_.kv_retrieval != nullptr && !job->ape;
  seq->to_prefill = static_cast<int64_t>(replay ? job->prompt.size() : seq->tokens.size());
  seq->pos0 = static_cast<int32_t>(job->ape ? job->ape->start_pos : 0);
  seq->reserved_bytes = KvBytes(kv_tokens);
  seq->t_submit = Clock::now();
  seq->job = std::move(job);
  return seq;
}

namespace {
Status QueueOutlastsDeadline(size_t ahead, double wait_s, double left_s) {
  return ResourceExhausted(StrCat(
      "overloaded: ", ahead, " requests are queued ahead of this one, about ",
      static_cast<int64_t>(wait_s * 1000), " ms of waiting for a slot, and its deadline is in ",
      static_cast<int64_t>(left_s * 1000),
      " ms; retry later or with a longer deadline (--max-active sets the slots)"));
}
}  // namespace

double Generator::QueueWaitSecondsLocked(Clock::time_point now, size_t ahead) const {
  if (load_.active < opts_.max_active) return 0;  // a slot is free (as of the last step)
  return slot_time_.WaitSeconds(ahead, opts_.max_active,
                                std::chrono::duration<double>(now - last_admit_).count());
}

std::vector<std::pair<std::unique_ptr<Generator::Seq>, Status>> Generator::TakeLateLocked(
    Clock::time_point now) {
  std::vector<std::pair<std::unique_ptr<Seq>, Status>> late;
  std::deque<std::unique_ptr<Seq>> kept;
  for (auto& s : queue_) {
    if (s->job->deadline != Clock::time_point::max()) {
      const double left = std::chrono::duration<double>(s->job->deadline - now).count();
      const double wait = QueueWaitSecondsLocked(now, kept.size());
      if (left <= 0) {
        late.emplace_back(std::move(s),
                          DeadlineExceeded("its deadline passed while it was queued"));
        continue;
      }
      if (wait > left) {
        late.emplace_back(std::move(s), QueueOutlastsDeadline(kept.size(), wait, left));
        continue;
      }
    }
    kept.push_back(std::move(s));
  }
  queue_.swap(kept);
  return late;
}

Status Generator::Enqueue(std::unique_ptr<Seq> seq) {
  MutexLock lock(mu_);
  if (stopping_) return Unavailable("decoder is shutting down");
  if (!device_failure_.ok()) return device_failure_;
  if (static_cast<int>(queue_.size()) >= opts_.max_queue) {
    return ResourceExhausted(StrCat("admission queue full (", opts_.max_queue, " requests)"));
  }
  if (seq->job->deadline != Clock::time_point::max()) {
    const auto now = Clock::now();
    const double left = std::chrono::duration<double>(seq->job->deadline - now).count();
    const double wait = QueueWaitSecondsLocked(now, queue_.size());
    if (wait > left) return QueueOutlastsDeadline(queue_.size(), wait, left);
  }
  // An id must be unique among live requests, queued or generating: Cancel ends whichever
  // holds it.
  const std::string& id = seq->job->request_id;
  if (!id.empty() && live_ids_.count(id) > 0) {
    return AlreadyExists(StrCat("request id '", id, "' is already generating"));
  }
  for (const auto& q : queue_) {
    if (q->job->request_id == id && !id.empty()) {
      return AlreadyExists(StrCat("request id '", id, "' is already queued"));
    }
  }
  load_.queued = static_cast<int>(queue_.size()) + 1;
  load_.queued_tokens += seq->to_prefill;
  queue_.push_back(std::move(seq));
  cv_.notify_all();
  return OkStatus();
}

bool Generator::Cancel(const std::string& request_id) {
  MutexLock lock(mu_);
  bool known = live_ids_.count(request_id) > 0;
  for (const auto& q : queue_) known = known || q->job->request_id == request_id;
  if (!known) return false;
  cancel_requests_.insert(request_id);  // the loop thread finishes it before its next step
  cv_.notify_all();
  return true;
}

LoadSnapshot Generator::Load() const {
  MutexLock lock(mu_);
  return load_;
}

void Generator::Shutdown() {
  {
    MutexLock lock(mu_);
    if (stopping_ && !loop_.joinable()) return;
    stopping_ = true;
  }
  cv_.notify_all();
  if (loop_.joinable()) loop_.join();
  std::deque<std::unique_ptr<Seq>> queued;
  {
    MutexLock lock(mu_);
    queued.swap(queue_);
  }
  for (auto& s : active_) Finish(s.get(), Unavailable("decoder shut down"), "error");
  for (auto& s : queued) Finish(s.get(), Unavailable("decoder shut down"), "error");
  active_.clear();
}

void Generator::FailEverything(const Status& st) {
  std::deque<std::unique_ptr<Seq>> queued;
  {
    MutexLock lock(mu_);
    device_failure_ = st;
    queued.swap(queue_);
    load_.queued = 0;
    load_.queued_tokens = 0;
  }
  for (auto& s : active_) Finish(s.get(), st, "error");
  for (auto& s : queued) Finish(s.get(), st, "error");
}

void Generator::Finish(Seq* s, const Status& st, const std::string& reason) {
  if (s->done) return;
  s->done = true;
  const auto now = Clock::now();
  GenerateStats r;
  r.prompt_tokens = static_cast<int>(s->job->prompt.size() + s->job->resume.size());
  if (s->job->ape) {
    r.prompt_tokens += s->job->ape->context_tokens;
    r.cached_prompt_tokens = s->job->ape->cached_tokens;
  }
  r.generated_tokens = s->stop->generated();
  r.finish_reason = reason;
  if (s->retrieval) {
    // Free the store's sequence before the caller hears the request is over.
    if (Status rel = s->retrieval->Release(); !rel.ok()) {
      RS_LOG(warn, "decoder: request '{}': {}", s->job->request_id, rel.ToString());
    }
  }
  if (s->t_admit != Clock::time_point{}) r.queue_ms = MsSince(s->t_submit, s->t_admit);
  if (s->t_prefilled != Clock::time_point{}) r.prefill_ms = MsSince(s->t_admit, s->t_prefilled);
  if (s->got_first) {
    r.ttft_ms = MsSince(s->t_submit, s->t_first);
    r.decode_ms = MsSince(s->t_first, now);
  }
  r.total_ms = MsSince(s->t_submit, now);
  if (s->t_admit != Clock::time_point{}) {
    MutexLock lock(mu_);
    slot_time_.Record(std::chrono::duration<double>(now - s->t_admit).count());
  }
  if (st.ok() && reason != "stop") {
    // Text held back (an incomplete UTF-8 sequence or a possible stop-string prefix) is final now.
    std::string rest = s->stop->Flush();
    if (!rest.empty() && s->job->on_delta) s->job->on_delta({}, rest);
  }
  if (s->job->on_done) s->job->on_done(st, r);
}

void Generator::Loop() {
  while (true) {
    {
      MutexLock lock(mu_);
      lock.Wait(cv_, [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return stopping_ || !queue_.empty() || !active_.empty() || !cancel_requests_.empty();
      });
      if (stopping_) return;
    }
    // An exception from a step (bad_alloc in a forward pass, ...) fails the active requests with
    // RESOURCE_EXHAUSTED / INTERNAL (a router retries them elsewhere); the worker lives on.
    const Status st = CallCatchingExceptions("decode step", [this] {
      Step();
      return OkStatus();
    });
    if (!st.ok()) FailActive(st);
  }
}

void Generator::FailActive(const Status& st) {
  RS_LOG(error, "decoder: {}", st.ToString());
  for (auto& s : active_) Finish(s.get(), st, "error");
  RetireFinished();
  UpdateLoad();
}

bool Generator::Step() {
  const std::vector<Seq*> admitted = AdmitAndCancel();
  const DeviceKvTarget device = AttachDeviceKv(admitted);
  AttachRetrievalSources(admitted, device);
  const Batch batch = BuildBatch();
  const bool any_done =
      std::any_of(active_.begin(), active_.end(), [](const auto& s) { return s->done; });
  if (batch.members.empty() && !any_done) {
    UpdateLoad();
    return false;
  }
  std::vector<float> logits;
  const Status st = batch.members.empty() ? OkStatus() : RunForward(batch, &logits);
  for (size_t i = 0; i < batch.members.size(); ++i) {
    Seq* s = batch.members[i];
    if (!st.ok()) {
      Finish(s, Annotate(st, "forward step"), "error");
    } else if (s->retrieval && !s->retrieval->status().ok()) {
      // The store failed for this sequence only; the batch's other rows are unaffected.
      Finish(s, s->retrieval->status(), "error");
    } else {
      Advance(s, batch.counts[i], logits, i);
      if (s->retrieval && !s->done) TrimRetrievalReservation(s);
    }
  }
  RetireFinished();
  UpdateLoad();
  return true;
}

// ---- Step, in order --------------------------------------------------------------------------

std::vector<Generator::Seq*> Generator::AdmitAndCancel() {
  // Under the lock; the cancelled requests' callbacks run after it is released.
  std::vector<std::unique_ptr<Seq>> cancelled;
  std::vector<std::pair<std::unique_ptr<Seq>, Status>> late;
  std::vector<Seq*> admitted;
  {
    MutexLock lock(mu_);
    cancelled = TakeCancelledLocked();
    admitted = AdmitQueuedLocked();
    late = TakeLateLocked(Clock::now());
  }
  for (auto& s : cancelled) {
    if (s->kv) reserved_kv_bytes_ -= s->reserved_bytes;
    Finish(s.get(), Cancelled("request cancelled"), "cancelled");
    MutexLock lock(mu_);
    live_ids_.erase(s->job->request_id);
  }
  for (auto& [s, st] : late) Finish(s.get(), st, "error");  // never admitted: no KV, no id
  return admitted;
}

std::vector<std::unique_ptr<Generator::Seq>> Generator::TakeCancelledLocked() {
  std::vector<std::unique_ptr<Seq>> cancelled;
  for (auto it = queue_.begin(); it != queue_.end();) {
    if (cancel_requests_.count((*it)->job->request_id)) {
      cancel_requests_.erase((*it)->job->request_id);
      cancelled.push_back(std::move(*it));
      it = queue_.erase(it);
    } else {
      ++it;
    }
  }
  for (auto& s : active_) {
    if (cancel_requests_.count(s->job->request_id)) {
      cancel_requests_.erase(s->job->request_id);
      cancelled.push_back(std::move(s));
    }
  }
  active_.erase(std::remove(active_.begin(), active_.end(), nullptr), active_.end());
  cancel_requests_.clear();  // ids that matched nothing live are dropped
  return cancelled;
}

std::vector<Generator::Seq*> Generator::AdmitQueuedLocked() {
  std::vector<Seq*> admitted;
  while (!queue_.empty() && static_cast<int>(active_.size()) < opts_.max_active &&
         reserved_kv_bytes_ + queue_.front()->reserved_bytes <= opts_.kv_budget_bytes) {
    auto s = std::move(queue_.front());
    queue_.pop_front();
    s->t_admit = Clock::now();
    last_admit_ = s->t_admit;
    s->kv = model_->NewKvCache();
    if (s->job->ape) {
      s->ape = std::make_unique<engine::ApeKvSource>(
          s->job->ape->prefix.get(), PassageBlocks(*s->job->ape), s->kv.get(),
          s->job->ape->temperature, s->job->ape->scaling);
    }
    reserved_kv_bytes_ += s->reserved_bytes;
    live_ids_.insert(s->job->request_id);
    admitted.push_back(s.get());
    active_.push_back(std::move(s));
  }
  return admitted;
}

DeviceKvTarget Generator::AttachDeviceKv(const std::vector<Seq*>& admitted) {
  // Device-resident KV for the admitted sequences of a GPU model (pages from the model's pool).
  if (model_->ops().memory() != kernels::MemorySpace::kDevice || admitted.empty()) return {};
  auto pool = model_->DeviceKvPool(opts_.device_kv_dtype, opts_.kv_budget_bytes);
  for (Seq* s : admitted) {
    if (s->done) continue;
    if (!pool.ok()) {
      Finish(s, Annotate(pool.status(), s->job->ape ? "device APE context" : "device kv cache"),
             "error");
    } else if (s->job->ape) {
      // APE on the GPU: prefix and passage KV uploaded once, attended with the APE merge.
      auto ape = engine::DeviceApeKvSource::Create(
          *pool, model_->geometry(), model_->config().sliding_window, s->job->ape->prefix.get(),
          PassageBlocks(*s->job->ape), s->job->ape->temperature, s->job->ape->scaling,
          &model_->ops());
      if (!ape.ok()) {
        Finish(s, Annotate(ape.status(), "device APE context"), "error");
      } else {
        s->ape = std::move(ape).value();
      }
    } else {
      auto src = model_->NewKvSource(opts_.device_kv_dtype, opts_.kv_budget_bytes);
      if (!src.ok()) {
        Finish(s, Annotate(src.status(), "device kv cache"), "error");
      } else {
        s->device_kv = std::move(src).value();
      }
    }
  }
  if (!pool.ok()) return {};
  return DeviceKvTarget{&model_->ops(), *pool};
}

void Generator::AttachRetrievalSources(const std::vector<Seq*>& admitted,
                                       const DeviceKvTarget& device) {
  // Made here, outside the lock (a remote store is an RPC away).
  for (Seq* s : admitted) {
    if (!opts_.kv_retrieval || s->job->ape || s->done) continue;
    auto src = opts_.kv_retrieval(model_->geometry(), s->job->request_id, s->to_prefill,
                                  device.pool ? &device : nullptr);
    if (!src.ok()) {
      Finish(s, Annotate(src.status(), "kv retrieval"), "error");
    } else {
      s->retrieval = std::move(src).value();
    }
  }
}

Generator::Batch Generator::BuildBatch() {
  // A decode token for every generating sequence, prompt chunks for the prefilling ones within
  // the prefill budget.
  Batch batch;
  int budget = std::max(1, opts_.prefill_chunk);
  for (auto& s : active_) {
    if (s->done) continue;  // failed at admission; leaves in RetireFinished
    int64_t n = 0;
    if (s->in_cache < s->to_prefill) {
      if (budget <= 0) continue;
      n = std::min<int64_t>(budget, s->to_prefill - s->in_cache);
      budget -= static_cast<int>(n);
    } else {
      n = 1;  // the last sampled (or next replayed) token, not in the cache yet
    }
    engine::SequenceStep step;
    step.tokens = std::span<const int32_t>(s->tokens.data() + s->in_cache, n);
    step.start_pos = s->pos0 + static_cast<int32_t>(s->in_cache);
    step.kv = s->attention();
    batch.steps.push_back(step);
    batch.members.push_back(s.get());
    batch.counts.push_back(n);
  }
  return batch;
}

Status Generator::RunForward(const Batch& batch, std::vector<float>* logits) {
  const Status st = model_->Forward(batch.steps, engine::LogitsMode::kLast, logits);
  if (st.ok()) return st;
  if (Status health = model_->ops().Health(); !health.ok()) {
    const Status dead = Unavailable(StrCat("the decode worker's ", model_->ops().name(),
                                           " backend failed and takes no more work (",
                                           health.message(), "; step error: ", st.message(), ")"));
    RS_LOG(error, "decoder: {}", dead.message());
    // Reported before the requests fail, so whoever sees a failed request also sees the worker
    // stopping.
    if (opts_.on_device_failure) opts_.on_device_failure(dead);
    FailEverything(dead);  // the batch's members are done already; RetireFinished lets them go
  }
  return st;
}

void Generator::Advance(Seq* s, int64_t forwarded, const std::vector<float>& logits, size_t row) {
  s->in_cache += forwarded;
  if (s->in_cache < s->to_prefill) return;  // more prompt to prefill
  const auto now = Clock::now();
  if (s->t_prefilled == Clock::time_point{}) s->t_prefilled = now;
  if (s->in_cache < static_cast<int64_t>(s->tokens.size())) return;  // replaying the resume
  const int vocab = model_->config().vocab_size;
  const std::span<const float> row_logits(logits.data() + row * vocab, vocab);
  const int32_t token = s->sampler->Sample(row_logits, s->tokens);
  s->tokens.push_back(token);
  std::string text;
  engine::StopReason reason = s->stop->Push(token, &text);
  if (!s->got_first) {
    s->got_first = true;
    s->t_first = now;
  }
  if (s->job->on_delta) s->job->on_delta({token}, text);
  const int64_t ctx = model_->config().max_position_embeddings;
  if (reason == engine::StopReason::kNone && ctx > 0 &&
      s->pos0 + static_cast<int64_t>(s->tokens.size()) >= ctx) {
    reason = engine::StopReason::kMaxTokens;  // the context is full
  }
  switch (reason) {
    case engine::StopReason::kNone:
      break;
    case engine::StopReason::kEos:
      Finish(s, OkStatus(), "eos");
      break;
    case engine::StopReason::kStopString:
      Finish(s, OkStatus(), "stop");
      break;
    case engine::StopReason::kMaxTokens:
      Finish(s, OkStatus(), "length");
      break;
  }
}

void Generator::TrimRetrievalReservation(Seq* s) {
  // Once decoding through the store, the local cache is gone: the sequence keeps at most
  // `bound` tokens of the worker's KV memory.
  const int64_t bound = s->retrieval->local_kv_tokens_bound();
  if (bound < 0) return;
  int64_t tokens = bound;
  if (model_->ops().memory() == kernels::MemorySpace::kDevice) {
    tokens += 3 * kernels::cuda::KvPageGeometry{}.page_size;  // as ReserveKvTokens
  }
  const int64_t bytes = KvBytes(tokens);
  if (bytes >= s->reserved_bytes) return;
  reserved_kv_bytes_ -= s->reserved_bytes - bytes;
  s->reserved_bytes = bytes;
}

void Generator::RetireFinished() {
  MutexLock lock(mu_);
  for (auto& s : active_) {
    if (s->done) {
      reserved_kv_bytes_ -= s->reserved_bytes;
      live_ids_.erase(s->job->request_id);
      s.reset();
    }
  }
  active_.erase(std::remove(active_.begin(), active_.end(), nullptr), active_.end());
  ++steps_;
}

void Generator::UpdateLoad() {
  MutexLock lock(mu_);
  load_.active = static_cast<int>(active_.size());
  load_.queued = static_cast<int>(queue_.size());
  int64_t pending = 0;
  for (const auto& s : queue_) pending += s->to_prefill;
  for (const auto& s : active_) pending += s->to_prefill - std::min(s->in_cache, s->to_prefill);
  load_.queued_tokens = pending;
  int64_t used = 0;
  int retrieval = 0;
  for (const auto& s : active_) {
    used +=
        KvBytes(s->retrieval ? s->retrieval->local_kv_tokens() : static_cast<int64_t>(s->in_cache));
    retrieval += s->retrieval != nullptr;
  }
  load_.kv_bytes_used = used;
  load_.retrieval_active = retrieval;
  load_.kv_bytes_free = opts_.kv_budget_bytes - reserved_kv_bytes_;
  load_.steps = steps_;
}

}  // namespace ragserve::decoder
