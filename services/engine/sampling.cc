#include "services/engine/sampling.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <unordered_set>

namespace ragserve::engine {

int32_t ArgMax(std::span<const float> logits) {
  if (logits.empty()) return -1;
  int32_t best = 0;
  for (size_t i = 1; i < logits.size(); ++i) {
    if (logits[i] > logits[best]) best = static_cast<int32_t>(i);
  }
  return best;
}

StatusOr<Sampler> Sampler::Create(const SamplingParams& p) {
  RS_CHECK_ARG(std::isfinite(p.temperature) && p.temperature >= 0.0f,
               "temperature must be a finite value >= 0, got ", p.temperature);
  RS_CHECK_ARG(p.top_k >= 0, "top_k must be >= 0, got ", p.top_k);
  RS_CHECK_ARG(p.top_p > 0.0f && p.top_p <= 1.0f, "top_p must be in (0, 1], got ", p.top_p);
  RS_CHECK_ARG(std::isfinite(p.repetition_penalty) && p.repetition_penalty > 0.0f,
               "repetition_penalty must be > 0, got ", p.repetition_penalty);
  return Sampler(p);
}

int32_t Sampler::Sample(std::span<const float> logits, std::span<const int32_t> history) {
  const int64_t n = static_cast<int64_t>(logits.size());
  if (n == 0) return -1;
  work_.assign(logits.begin(), logits.end());
  if (params_.repetition_penalty != 1.0f) {
    std::unordered_set<int32_t> seen;
    for (int32_t t : history) {
      if (t < 0 || t >= n || !seen.insert(t).second) continue;
      float& l = work_[t];
      l = l > 0.0f ? l / params_.repetition_penalty : l * params_.repetition_penalty;
    }
  }
  if (params_.temperature == 0.0f) return ArgMax(work_);

  // Candidates sorted by logit (descending; ties by id), cut to top-k.
  idx_.resize(static_cast<size_t>(n));
  std::iota(idx_.begin(), idx_.end(), 0);
  const auto better = [&](int32_t a, int32_t b) {
    return work_[a] > work_[b] || (work_[a] == work_[b] && a < b);
  };
  int64_t k = params_.top_k > 0 ? std::min<int64_t>(params_.top_k, n) : n;
  if (k < n) {
    std::partial_sort(idx_.begin(), idx_.begin() + k, idx_.end(), better);
    idx_.resize(static_cast<size_t>(k));
  } else {
    std::sort(idx_.begin(), idx_.end(), better);
  }
  // Softmax over the candidates at the temperature (double sums: stable and order-fixed).
  const double inv_t = 1.0 / params_.temperature;
  const double mx = work_[idx_[0]];
  std::vector<double> p(static_cast<size_t>(k));
  double sum = 0.0;
  for (int64_t i = 0; i < k; ++i) {
    p[i] = std::exp((work_[idx_[i]] - mx) * inv_t);
    sum += p[i];
  }
  // Nucleus: the shortest prefix whose probability reaches top_p (at least one token).
  int64_t keep = k;
  if (params_.top_p < 1.0f) {
    double cum = 0.0;
    for (int64_t i = 0; i < k; ++i) {
      cum += p[i] / sum;
      if (cum >= params_.top_p) {
        keep = i + 1;
        break;
      }
    }
  }
  double kept = 0.0;
  for (int64_t i = 0; i < keep; ++i) kept += p[i];
  // u in [0, 1) from 53 random bits (std::uniform_real_distribution is not portable).
  const double u = static_cast<double>(rng_() >> 11) * 0x1.0p-53 * kept;
  double cum = 0.0;
  for (int64_t i = 0; i < keep; ++i) {
    cum += p[i];
    if (u < cum) return idx_[i];
  }
  return idx_[keep - 1];
}

void Sampler::SkipDraws(int64_t tokens) {
  if (params_.temperature > 0.0f && tokens > 0) rng_.discard(static_cast<uint64_t>(tokens));
}

namespace {

// KMP failure function: f[i] = length of the longest proper prefix of s[0..i] that is also its
// suffix.
std::vector<size_t> FailureFunction(const std::string& s) {
  std::vector<size_t> f(s.size(), 0);
  for (size_t i = 1, k = 0; i < s.size(); ++i) {
    while (k > 0 && s[i] != s[k]) k = f[k - 1];
    if (s[i] == s[k]) ++k;
    f[i] = k;
  }
  return f;
}

}  // namespace

const char* StopReasonName(StopReason r) {
  switch (r) {
    case StopReason::kNone:
      return "none";
    case StopReason::kEos:
      return "eos";
    case StopReason::kStopString:
      return "stop_string";
    case StopReason::kMaxTokens:
      return "max_tokens";
  }
  return "none";
}

StopChecker::StopChecker(const StopCriteria& criteria, const Tokenizer* tokenizer)
    : c_(criteria), tok_(tokenizer) {
  if (tok_ != nullptr) dec_ = std::make_unique<Tokenizer::StreamDecoder>(*tok_);
  std::erase_if(c_.stop_strings, [](const std::string& s) { return s.empty(); });
  for (const std::string& s : c_.stop_strings) failure_.push_back(FailureFunction(s));
}

size_t StopChecker::ScanPending(size_t* hold) const {
  // pending_ is at most the longest stop string plus one token's text: one KMP pass per stop
  // string finds its first match, or else how much of its prefix the text ends with.
  size_t cut = std::string::npos;
  *hold = 0;
  for (size_t j = 0; j < c_.stop_strings.size(); ++j) {
    const std::string& s = c_.stop_strings[j];
    const std::vector<size_t>& f = failure_[j];
    size_t k = 0;
    for (size_t i = 0; i < pending_.size(); ++i) {
      while (k > 0 && pending_[i] != s[k]) k = f[k - 1];
      if (pending_[i] == s[k]) ++k;
      if (k == s.size()) {
        cut = std::min(cut, i + 1 - s.size());
        break;
      }
    }
    if (k < s.size()) *hold = std::max(*hold, k);
  }
  return cut;
}

StopReason StopChecker::Push(int32_t token, std::string* text) {
  if (stopped_) return StopReason::kMaxTokens;
  ++generated_;
  if (std::find(c_.eos_ids.begin(), c_.eos_ids.end(), token) != c_.eos_ids.end()) {
    stopped_ = true;
    return StopReason::kEos;
  }
  if (dec_) pending_ += dec_->Push(token);
  // A stop string anywhere in the pending text ends generation; text before it is released.
  size_t hold = 0;
  const size_t cut = ScanPending(&hold);
  if (cut != std::string::npos) {
    if (text != nullptr) text->append(pending_, 0, cut);
    pending_.clear();
    stopped_ = true;
    return StopReason::kStopString;
  }
  // Hold back the longest suffix that is a proper prefix of some stop string.
  if (text != nullptr) text->append(pending_, 0, pending_.size() - hold);
  pending_.erase(0, pending_.size() - hold);
  if (generated_ >= c_.max_tokens) {
    stopped_ = true;
    return StopReason::kMaxTokens;
  }
  return StopReason::kNone;
}

void StopChecker::Replay(std::span<const int32_t> tokens) {
  for (int32_t token : tokens) {
    if (!dec_) return;
    pending_ += dec_->Push(token);
    size_t hold = 0;
    // A stop string inside delivered text was not one the earlier worker stopped at (it had other
    // stop strings, or none): drop it like released text.
    if (ScanPending(&hold) != std::string::npos) hold = 0;
    pending_.erase(0, pending_.size() - hold);
  }
}

std::string StopChecker::Flush() {
  std::string out = std::move(pending_);
  pending_.clear();
  if (dec_) out += dec_->Flush();
  return out;
}

}  // namespace ragserve::engine
