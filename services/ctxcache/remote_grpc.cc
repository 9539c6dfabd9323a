#include "services/ctxcache/remote_grpc.h"

#include <grpcpp/grpcpp.h>

#include <cstring>
#include <utility>

#include "services/common/auth.h"
#include "services/common/grpc_status.h"

namespace ragserve::ctxcache {

namespace {

int64_t NowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

StatusOr<DType> FromProto(v1::DType t) {
  switch (t) {
    case v1::DTYPE_F32:
      return DType::kF32;
    case v1::DTYPE_F16:
      return DType::kF16;
    case v1::DTYPE_BF16:
      return DType::kBF16;
    default:
      return DataLoss(
          StrCat("ctxcache Get: chunk dtype ", static_cast<int>(t), " is not f32, f16 or bf16"));
  }
}

// Errors that say nothing about the service as a whole (the entry is absent or bad).
bool EntryError(const Status& s) {
  return s.code() == StatusCode::kNotFound || s.code() == StatusCode::kDataLoss ||
         s.code() == StatusCode::kFailedPrecondition || s.code() == StatusCode::kInvalidArgument;
}

}  // namespace

RemoteBlockCache::RemoteBlockCache(RemoteBlockCacheOptions opts) : opts_(std::move(opts)) {
  MetricsRegistry* reg = opts_.metrics != nullptr ? opts_.metrics : &MetricsRegistry::Default();
  const char* kName = "ragserve_ctxcache_remote_fetches_total";
  const char* kHelp = "Passage KV fetches from the remote context cache by result";
  hits_ = &reg->GetCounter(kName, kHelp, {{"result", "hit"}});
  misses_ = &reg->GetCounter(kName, kHelp, {{"result", "miss"}});
  errors_ = &reg->GetCounter(kName, kHelp, {{"result", "error"}});
  skipped_ = &reg->GetCounter(kName, kHelp, {{"result", "skipped"}});
  latency_ =
      &reg->GetHistogram("ragserve_ctxcache_remote_fetch_seconds",
                         "Remote context cache fetches that reached the service", LatencyBuckets());
}

StatusOr<std::unique_ptr<RemoteBlockCache>> RemoteBlockCache::Create(RemoteBlockCacheOptions opts) {
  RS_CHECK_ARG(!opts.address.empty(), "remote context cache: empty address");
  RS_CHECK_ARG(opts.timeout_ms >= 1, "remote context cache: timeout must be >= 1 ms, got ",
               opts.timeout_ms);
  RS_CHECK_ARG(opts.retry_after_ms >= 0, "remote context cache: retry-after must be >= 0 ms");
  std::unique_ptr<RemoteBlockCache> r(new RemoteBlockCache(std::move(opts)));
  RS_ASSIGN_OR_RETURN(auto channel, MakeChannel(r->opts_.address, r->opts_.channel));
  r->stub_ = v1::ContextCacheService::NewStub(channel);
  return r;
}

StatusOr<StoredBlock> RemoteBlockCache::Fetch(const KeyId& key, const RemoteExpect& expect) {
  if (NowNs() < skip_until_ns_.load(std::memory_order_relaxed)) {
    skipped_->Inc();
    return Unavailable(StrCat("context cache ", opts_.address, " skipped after a recent failure"));
  }
  const auto t0 = std::chrono::steady_clock::now();
  StatusOr<StoredBlock> r = Read(key, expect);
  if (r.ok() || EntryError(r.status())) {
    latency_->Observe(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  if (r.ok()) {
    hits_->Inc();
  } else if (r.status().code() == StatusCode::kNotFound) {
    misses_->Inc();
  } else {
    errors_->Inc();
    if (!EntryError(r.status())) {
      skip_until_ns_.store(NowNs() + int64_t{opts_.retry_after_ms} * 1000000,
                           std::memory_order_relaxed);
    }
  }
  return r;
}

StatusOr<StoredBlock> RemoteBlockCache::Read(const KeyId& key, const RemoteExpect& expect) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(opts_.timeout_ms));
  AttachToken(&ctx, opts_.token);
  v1::GetRequest req;
  req.mutable_model()->set_hex(expect.fingerprint);
  req.mutable_key()->set_hex(key.Hex());
  auto reader = stub_->Get(&ctx, req);

  StoredBlock b;
  b.fingerprint = expect.fingerprint;
  b.layers = expect.layers;
  b.kv_heads = expect.kv_heads;
  b.head_dim = expect.head_dim;
  std::vector<int64_t> got_k, got_v;  // bytes received per layer
  int64_t layer_bytes = 0;
  bool have_header = false, have_dtype = false;
  Status bad;  // the first malformation; the stream is cancelled on it
  v1::GetResponse m;
  while (reader->Read(&m)) {
    auto check = [&]() -> Status {
      if (!have_header) {
        have_header = true;
        if (m.num_layers() != expect.layers) {
          return FailedPrecondition(StrCat("ctxcache entry ", key.Hex(), " has ", m.num_layers(),
                                           " layers; the model has ", expect.layers));
        }
        if (m.tokens() < 1 || m.tokens() > expect.max_tokens) {
          return DataLoss(StrCat("ctxcache entry ", key.Hex(), " has ", m.tokens(),
                                 " tokens; expected 1..", expect.max_tokens));
        }
        if (m.token_ids_size() != 0 && m.token_ids_size() != m.tokens()) {
          return DataLoss(StrCat("ctxcache entry ", key.Hex(), ": ", m.token_ids_size(),
                                 " token ids for ", m.tokens(), " tokens"));
        }
        b.tokens = m.tokens();
        b.positions.resize(static_cast<size_t>(b.tokens));
        for (int64_t i = 0; i < b.tokens; ++i) {
          b.positions[i] = m.position_start() + static_cast<int32_t>(i);
        }
        b.token_ids.assign(m.token_ids().begin(), m.token_ids().end());
        b.k.resize(static_cast<size_t>(b.layers));
        b.v.resize(static_cast<size_t>(b.layers));
        got_k.assign(static_cast<size_t>(b.layers), 0);
        got_v.assign(static_cast<size_t>(b.layers), 0);
      }
      const auto& c = m.chunk();
      RS_ASSIGN_OR_RETURN(const DType dt, FromProto(c.dtype()));
      if (!have_dtype) {
        have_dtype = true;
        b.dtype = dt;
        layer_bytes = b.LayerElements() * static_cast<int64_t>(kernels::DTypeSize(dt));
      } else if (dt != b.dtype) {
        return DataLoss(StrCat("ctxcache entry ", key.Hex(), ": chunks of mixed dtypes"));
      }
      if (c.shape_size() != 3 || c.shape(0) != b.tokens || c.shape(1) != expect.kv_heads ||
          c.shape(2) != expect.head_dim) {
        return FailedPrecondition(StrCat("ctxcache entry ", key.Hex(),
                                         ": chunk shape is not [tokens, ", expect.kv_heads, ", ",
                                         expect.head_dim, "]"));
      }
      if (m.layer() < 0 || m.layer() >= b.layers) {
        return DataLoss(StrCat("ctxcache entry ", key.Hex(), ": chunk of layer ", m.layer()));
      }
      int64_t& got = m.is_value() ? got_v[m.layer()] : got_k[m.layer()];
      auto& bytes = m.is_value() ? b.v[m.layer()] : b.k[m.layer()];
      const int64_t n = static_cast<int64_t>(c.data().size());
      if (static_cast<int64_t>(c.offset()) != got || got + n > layer_bytes) {
        return DataLoss(StrCat("ctxcache entry ", key.Hex(), ": chunk at offset ", c.offset(),
                               " (+", n, ") after ", got, " of ", layer_bytes, " bytes"));
      }
      if (bytes.empty()) bytes.resize(static_cast<size_t>(layer_bytes));
      std::memcpy(bytes.data() + got, c.data().data(), static_cast<size_t>(n));
      got += n;
      return OkStatus();
    };
    bad = check();
    if (!bad.ok()) {
      ctx.TryCancel();
      break;
    }
  }
  const grpc::Status st = reader->Finish();
  if (!bad.ok()) return bad;
  if (!st.ok()) return FromGrpcStatus(st);
  if (!have_header || !have_dtype) {
    return DataLoss(StrCat("ctxcache entry ", key.Hex(), ": empty stream"));
  }
  for (int l = 0; l < b.layers; ++l) {
    if (got_k[l] != layer_bytes || got_v[l] != layer_bytes) {
      return DataLoss(StrCat("ctxcache entry ", key.Hex(), ": layer ", l, " incomplete (K ",
                             got_k[l], ", V ", got_v[l], " of ", layer_bytes, " bytes)"));
    }
  }
  RS_RETURN_IF_ERROR(b.Validate());
  return b;
}

}  // namespace ragserve::ctxcache
