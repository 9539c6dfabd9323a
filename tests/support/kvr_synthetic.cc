#include "tests/support/kvr_synthetic.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <random>

namespace ragserve::kvr {
namespace {

// A random d x d orthogonal matrix (Gram-Schmidt on Gaussian rows), row-major.
std::vector<float> RandomRotation(int d, std::mt19937_64& rng) {
  std::normal_distribution<double> n01;
  std::vector<double> m(static_cast<size_t>(d) * d);
  for (auto& x : m) x = n01(rng);
  for (int i = 0; i < d; ++i) {
    double* ri = &m[static_cast<size_t>(i) * d];
    for (int j = 0; j < i; ++j) {
      const double* rj = &m[static_cast<size_t>(j) * d];
      double dot = 0;
      for (int t = 0; t < d; ++t) dot += ri[t] * rj[t];
      for (int t = 0; t < d; ++t) ri[t] -= dot * rj[t];
    }
    double norm = 0;
    for (int t = 0; t < d; ++t) norm += ri[t] * ri[t];
    norm = std::sqrt(norm);
    for (int t = 0; t < d; ++t) ri[t] /= norm;
  }
  return std::vector<float>(m.begin(), m.end());
}

std::vector<float> RandomDirection(int d, float norm, std::mt19937_64& rng) {
  std::normal_distribution<float> n01;
  std::vector<float> v(d);
  double s = 0;
  for (auto& x : v) {
    x = n01(rng);
    s += x * x;
  }
  const float f = norm / static_cast<float>(std::sqrt(s));
  for (auto& x : v) x *= f;
  return v;
}

// A Gaussian with the given mean and covariance A A^T, A = R diag(sigma), sigma_i^2 decaying
// exponentially with rate `decay` and normalized to mean 1.
struct Gaussian {
  std::vector<float> mean;
  std::vector<float> a;  // [d, d] row-major
};

Gaussian MakeGaussian(int d, float mean_norm, double decay, std::mt19937_64& rng) {
  Gaussian g;
  g.mean = RandomDirection(d, mean_norm, rng);
  std::vector<double> var(d);
  double tot = 0;
  for (int i = 0; i < d; ++i) tot += var[i] = std::exp(-decay * i / d);
  const std::vector<float> r = RandomRotation(d, rng);
  g.a.resize(static_cast<size_t>(d) * d);
  for (int i = 0; i < d; ++i) {
    for (int j = 0; j < d; ++j) {
      g.a[static_cast<size_t>(i) * d + j] =
          r[static_cast<size_t>(i) * d + j] * static_cast<float>(std::sqrt(var[j] * d / tot));
    }
  }
  return g;
}

// out[n, d] = mean + z A^T for n fresh standard normal rows z.
void Sample(const Gaussian& g, int64_t n, int d, std::mt19937_64& rng, float* out) {
  std::normal_distribution<float> n01;
  std::vector<float> z(static_cast<size_t>(n) * d);
  for (auto& x : z) x = n01(rng);
  for (int64_t i = 0; i < n; ++i) std::copy(g.mean.begin(), g.mean.end(), out + i * d);
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(n), d, d, 1.0f, z.data(), d,
              g.a.data(), d, 1.0f, out, d);
}

}  // namespace

std::vector<float> RandomNormal(size_t n, uint64_t seed, float scale) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> n01;
  std::vector<float> v(n);
  for (auto& x : v) x = scale * n01(rng);
  return v;
}

void ApplyRope(float* x, int d, int64_t pos, float theta) {
  const int half = d / 2;
  for (int i = 0; i < half; ++i) {
    const double freq = std::pow(static_cast<double>(theta), -2.0 * i / d);
    const double ang = static_cast<double>(pos) * freq;
    const float c = static_cast<float>(std::cos(ang));
    const float s = static_cast<float>(std::sin(ang));
    const float a = x[i], b = x[i + half];
    x[i] = a * c - b * s;
    x[i + half] = a * s + b * c;
  }
}

StatusOr<SyntheticWorkload> GenerateWorkload(const SyntheticParams& p) {
  RS_CHECK_ARG(p.n_keys >= 1, "n_keys must be >= 1, got ", p.n_keys);
  RS_CHECK_ARG(p.head_dim >= 2 && p.head_dim % 2 == 0, "head_dim must be even and >= 2, got ",
               p.head_dim);
  RS_CHECK_ARG(p.group_size >= 1, "group_size must be >= 1, got ", p.group_size);
  RS_CHECK_ARG(p.n_decode >= 0, "n_decode must be >= 0, got ", p.n_decode);
  RS_CHECK_ARG(p.salient_fraction >= 0 && p.salient_fraction <= 1,
               "salient_fraction must be in [0, 1], got ", p.salient_fraction);
  const int d = p.head_dim, h = p.group_size;
  const int topics =
      p.n_topics > 0 ? p.n_topics : static_cast<int>(std::max<int64_t>(8, p.n_keys / 2048));
  std::mt19937_64 rng(p.seed);

  // Topic directions: unit vectors on the lowest-frequency RoPE pairs (last d/8 of each half).
  const int f = std::max(1, d / 16);
  std::vector<std::vector<float>> topic(topics, std::vector<float>(d, 0.0f));
  for (auto& u : topic) {
    const auto r = RandomDirection(2 * f, 1.0f, rng);
    for (int i = 0; i < f; ++i) {
      u[d / 2 - f + i] = r[i];
      u[d - f + i] = r[f + i];
    }
  }
  const Gaussian kdist = MakeGaussian(d, p.key_mean_norm, 4.0, rng);
  std::vector<Gaussian> qdist;
  for (int j = 0; j < h; ++j) qdist.push_back(MakeGaussian(d, p.query_mean_norm, 2.0, rng));

  SyntheticWorkload w;
  w.n_keys = p.n_keys;
  w.head_dim = d;
  w.group_size = h;
  w.n_decode = p.n_decode;
  w.keys.resize(static_cast<size_t>(p.n_keys) * d);
  w.values.resize(static_cast<size_t>(p.n_keys) * d);
  w.prefill_queries.resize(static_cast<size_t>(p.n_keys) * h * d);
  w.decode_queries.resize(static_cast<size_t>(p.n_decode) * h * d);

  auto in_topic_subspace = [&](int i) { return (i >= d / 2 - f && i < d / 2) || i >= d - f; };
  Sample(kdist, p.n_keys, d, rng, w.keys.data());
  std::uniform_int_distribution<int> pick_topic(0, topics - 1);
  std::uniform_real_distribution<double> u01(0.0, 1.0);
  std::normal_distribution<float> n01;
  for (int64_t t = 0; t < p.n_keys; ++t) {
    float* k = w.keys.data() + t * d;
    for (int i = 0; i < d; ++i) {
      if (in_topic_subspace(i)) k[i] *= p.topic_subspace_noise;
    }
    if (u01(rng) < p.salient_fraction) {
      const auto& u = topic[pick_topic(rng)];
      const float a = p.key_topic_strength * (0.75f + 0.25f * std::fabs(n01(rng)));
      for (int i = 0; i < d; ++i) k[i] += a * u[i];
    }
    ApplyRope(k, d, t, p.rope_theta);
  }
  for (auto& v : w.values) v = n01(rng);

  // Queries: per head its own distribution; sampled in one batch per head, then interleaved.
  auto make_queries = [&](int64_t n, int64_t pos0, float* out) {
    std::vector<float> tmp(static_cast<size_t>(n) * d);
    for (int j = 0; j < h; ++j) {
      if (n > 0) Sample(qdist[j], n, d, rng, tmp.data());
      for (int64_t t = 0; t < n; ++t) {
        float* q = out + (t * h + j) * d;
        std::copy(tmp.begin() + t * d, tmp.begin() + (t + 1) * d, q);
        for (int i = 0; i < d; ++i) {
          q[i] *= in_topic_subspace(i) ? p.topic_subspace_noise : p.query_noise_scale;
        }
        const auto& u = topic[pick_topic(rng)];
        for (int i = 0; i < d; ++i) q[i] += p.query_topic_strength * u[i];
        ApplyRope(q, d, pos0 + t, p.rope_theta);
      }
    }
  };
  make_queries(p.n_keys, 0, w.prefill_queries.data());
  make_queries(p.n_decode, p.n_keys, w.decode_queries.data());
  return w;
}

}  // namespace ragserve::kvr
