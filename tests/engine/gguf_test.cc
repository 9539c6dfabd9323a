// GGUF parsing, metadata -> config, block decoding and the embedded tokenizer on hand-built files
// (the numpy-written whole models are in gguf_ref_test.py).
#include <cstring>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "gtest/gtest.h"
#include "kernels/cpu/ops.h"
#include "services/engine/gguf.h"
#include "services/engine/gguf_model.h"
#include "services/engine/gguf_quants.h"
#include "services/engine/tokenizer_config.h"

namespace ragserve::engine {
namespace {

using Bytes = std::vector<uint8_t>;

template <typename T>
void Put(Bytes* b, T v) {
  const auto* p = reinterpret_cast<const uint8_t*>(&v);
  b->insert(b->end(), p, p + sizeof(T));
}
void PutStr(Bytes* b, std::string_view s) {
  Put<uint64_t>(b, s.size());
  b->insert(b->end(), s.begin(), s.end());
}

// A GGUF v3 file built field by field.
struct Builder {
  uint32_t version = 3;
  std::vector<Bytes> kvs, infos;
  Bytes data;
  uint64_t alignment = 32;

  Builder& Kv(std::string_view key, GgufValueType t, const Bytes& payload) {
    Bytes b;
    PutStr(&b, key);
    Put<uint32_t>(&b, static_cast<uint32_t>(t));
    b.insert(b.end(), payload.begin(), payload.end());
    kvs.push_back(b);
    return *this;
  }
  Builder& U32(std::string_view key, uint32_t v) {
    Bytes p;
    Put(&p, v);
    return Kv(key, GgufValueType::kU32, p);
  }
  Builder& F32(std::string_view key, float v) {
    Bytes p;
    Put(&p, v);
    return Kv(key, GgufValueType::kF32, p);
  }
  Builder& Str(std::string_view key, std::string_view v) {
    Bytes p;
    PutStr(&p, v);
    return Kv(key, GgufValueType::kString, p);
  }
  Builder& StrArray(std::string_view key, const std::vector<std::string>& v) {
    Bytes p;
    Put<uint32_t>(&p, static_cast<uint32_t>(GgufValueType::kString));
    Put<uint64_t>(&p, v.size());
    for (const auto& s : v) PutStr(&p, s);
    return Kv(key, GgufValueType::kArray, p);
  }
  template <typename T>
  Builder& NumArray(std::string_view key, GgufValueType elem, const std::vector<T>& v) {
    Bytes p;
    Put<uint32_t>(&p, static_cast<uint32_t>(elem));
    Put<uint64_t>(&p, v.size());
    for (T x : v) Put(&p, x);
    return Kv(key, GgufValueType::kArray, p);
  }
  // A tensor whose bytes are appended to the data section (aligned).
  Builder& Tensor(std::string_view name, std::vector<uint64_t> ne, GgmlType type,
                  const Bytes& bytes) {
    while (data.size() % alignment != 0) data.push_back(0);
    Bytes b;
    PutStr(&b, name);
    Put<uint32_t>(&b, static_cast<uint32_t>(ne.size()));
    for (uint64_t d : ne) Put(&b, d);
    Put<uint32_t>(&b, static_cast<uint32_t>(type));
    Put<uint64_t>(&b, data.size());
    infos.push_back(b);
    data.insert(data.end(), bytes.begin(), bytes.end());
    return *this;
  }
  Bytes Build() const {
    Bytes b = {'G', 'G', 'U', 'F'};
    Put(&b, version);
    Put<uint64_t>(&b, infos.size());
    Put<uint64_t>(&b, kvs.size());
    for (const auto& kv : kvs) b.insert(b.end(), kv.begin(), kv.end());
    for (const auto& t : infos) b.insert(b.end(), t.begin(), t.end());
    while (b.size() % alignment != 0) b.push_back(0);
    b.insert(b.end(), data.begin(), data.end());
    return b;
  }
};

Bytes F32Bytes(const std::vector<float>& v) {
  Bytes b(v.size() * 4);
  std::memcpy(b.data(), v.data(), b.size());
  return b;
}

StatusOr<GgufHeader> Parse(const Bytes& b) { return ParseGgufHeader(b.data(), b.size()); }

Builder Sample() {
  Builder b;
  b.Str("general.architecture", "llama").U32("llama.block_count", 2).F32("x.eps", 1e-5f);
  b.StrArray("tokenizer.ggml.tokens", {"a", "b", "ab"});
  b.NumArray<float>("tokenizer.ggml.scores", GgufValueType::kF32, {0.f, -1.f, -2.f});
  b.NumArray<int64_t>("big", GgufValueType::kI64, {-5, int64_t{1} << 40});
  b.Tensor("w", {4, 2}, GgmlType::kF32, F32Bytes({1, 2, 3, 4, 5, 6, 7, 8}));
  b.Tensor("v", {32}, GgmlType::kQ8_0, Bytes(34, 0));
  return b;
}

TEST(GgufParse, ReadsEveryValueKindAndTensor) {
  auto h = Parse(Sample().Build());
  ASSERT_TRUE(h.ok()) << h.status().ToString();
  EXPECT_EQ(h->version, 3u);
  EXPECT_EQ(*h->GetString("general.architecture"), "llama");
  EXPECT_EQ(*h->GetInt("llama.block_count"), 2);
  EXPECT_FLOAT_EQ(static_cast<float>(*h->GetFloat("x.eps")), 1e-5f);
  const GgufValue* toks = *h->GetArray("tokenizer.ggml.tokens", GgufValueType::kString);
  ASSERT_NE(toks, nullptr);
  EXPECT_EQ(toks->strings, (std::vector<std::string_view>{"a", "b", "ab"}));
  const GgufValue* big = *h->GetArray("big", GgufValueType::kF32);
  EXPECT_EQ(big->NumberAt(0), -5.0);
  EXPECT_EQ(big->NumberAt(1), static_cast<double>(int64_t{1} << 40));
  ASSERT_EQ(h->tensors.size(), 2u);
  EXPECT_EQ(h->data_offset % 32, 0u);
  const GgufTensorInfo* w = h->FindTensor("w");
  EXPECT_EQ(w->ne, (std::vector<int64_t>{4, 2}));
  EXPECT_EQ(w->bytes, 32u);
  EXPECT_EQ(h->FindTensor("v")->bytes, 34u);
  EXPECT_EQ(h->FindTensor("v")->offset, 32u);
  // Typed lookups name the key on a mismatch or a missing key.
  EXPECT_NE(h->GetInt("general.architecture").status().message().find("general.architecture"),
            std::string::npos);
  EXPECT_NE(h->GetInt("nope").status().message().find("nope"), std::string::npos);
  EXPECT_EQ(*h->GetInt("nope", 7), 7);
}

TEST(GgufParse, AlignmentFromMetadataPlacesTheDataSection) {
  Builder b;
  b.alignment = 128;
  b.U32("general.alignment", 128);
  b.Tensor("a", {3}, GgmlType::kF32, F32Bytes({1, 2, 3}));
  b.Tensor("b", {2}, GgmlType::kF32, F32Bytes({4, 5}));
  auto h = Parse(b.Build());
  ASSERT_TRUE(h.ok()) << h.status().ToString();
  EXPECT_EQ(h->alignment, 128u);
  EXPECT_EQ(h->data_offset % 128, 0u);
  EXPECT_EQ(h->FindTensor("b")->offset, 128u);
}

// Every error: not OK, and the message contains `needle`.
void ExpectError(const Bytes& b, std::string_view needle) {
  auto h = Parse(b);
  ASSERT_FALSE(h.ok()) << "parsed, expected an error about " << needle;
  EXPECT_NE(h.status().message().find(needle), std::string::npos) << h.status().ToString();
}

TEST(GgufParse, RejectsBadPreamble) {
  Bytes b = Sample().Build();
  Bytes bad = b;
  bad[0] = 'X';
  ExpectError(bad, "magic");
  for (uint32_t v : {1u, 4u}) {
    Builder s = Sample();
    s.version = v;
    ExpectError(s.Build(), StrCat("version ", v));
  }
  Builder be = Sample();
  be.version = 0x03000000;
  ExpectError(be.Build(), "big-endian");
}

TEST(GgufParse, EveryTruncationIsAnErrorNotACrash) {
  const Bytes b = Sample().Build();
  for (size_t n = 0; n < b.size(); ++n) {
    Bytes prefix(b.begin(), b.begin() + static_cast<std::ptrdiff_t>(n));
    auto h = Parse(prefix);
    EXPECT_FALSE(h.ok()) << "prefix of " << n << " bytes parsed";
    if (!h.ok()) {
      EXPECT_EQ(h.status().code(), StatusCode::kDataLoss) << h.status().ToString();
    }
  }
}

TEST(GgufParse, HugeCountsAreBoundedByTheFileSize) {
  Bytes b = {'G', 'G', 'U', 'F'};
  Put<uint32_t>(&b, 3);
  Put<uint64_t>(&b, 0);
  Put<uint64_t>(&b, uint64_t{1} << 40);  // kv count
  ExpectError(b, "metadata count");
  Builder arr;
  Bytes p;
  Put<uint32_t>(&p, static_cast<uint32_t>(GgufValueType::kString));
  Put<uint64_t>(&p, uint64_t{1} << 60);
  arr.Kv("tokens", GgufValueType::kArray, p);
  ExpectError(arr.Build(), "string array \"tokens\"");
  Builder t;
  t.Tensor("huge", {uint64_t{1} << 40, uint64_t{1} << 20}, GgmlType::kF32, {});
  ExpectError(t.Build(), "too large");
}

TEST(GgufParse, RejectsMalformedMetadata) {
  ExpectError(Builder().U32("k", 1).U32("k", 2).Build(), "appears twice");
  Bytes nested;
  Put<uint32_t>(&nested, static_cast<uint32_t>(GgufValueType::kArray));
  Put<uint64_t>(&nested, 0);
  ExpectError(Builder().Kv("n", GgufValueType::kArray, nested).Build(), "array of arrays");
  ExpectError(Builder().Kv("b", GgufValueType::kBool, {2}).Build(), "bool");
  ExpectError(Builder().Kv("t", static_cast<GgufValueType>(13), {0}).Build(), "value type 13");
  ExpectError(Builder().U32("general.alignment", 48).Build(), "power of two");
  ExpectError(Builder().Str("general.alignment", "32").Build(), "general.alignment must be a u32");
}

TEST(GgufParse, RejectsMalformedTensors) {
  ExpectError(Builder().Tensor("q", {31}, GgmlType::kQ4_0, Bytes(18)).Build(),
              "not a multiple of its block size 32");
  ExpectError(Builder().Tensor("iq", {256}, static_cast<GgmlType>(23), {}).Build(), "type id 23");
  ExpectError(Builder().Tensor("d", {1, 1, 1, 1, 1}, GgmlType::kF32, F32Bytes({1})).Build(),
              "5 dims");
  ExpectError(Builder()
                  .Tensor("x", {2}, GgmlType::kF32, F32Bytes({1, 2}))
                  .Tensor("x", {2}, GgmlType::kF32, F32Bytes({1, 2}))
                  .Build(),
              "appears twice");
  // Offsets: past the end (truncated data), misaligned, overlapping.
  Builder past;
  past.Tensor("p", {8}, GgmlType::kF32, F32Bytes({1, 2}));
  auto h = Parse(past.Build());
  ASSERT_FALSE(h.ok());
  EXPECT_EQ(h.status().code(), StatusCode::kDataLoss);
  Bytes mis = Builder().Tensor("m", {2}, GgmlType::kF32, F32Bytes({1, 2})).Build();
  Builder over;
  over.Tensor("a", {8}, GgmlType::kF32, F32Bytes(std::vector<float>(8)));
  over.Tensor("b", {8}, GgmlType::kF32, F32Bytes(std::vector<float>(8)));
  Bytes ob = over.Build();
  // Patch the offsets in the tensor infos: "m" -> 4 (misaligned), "b" -> 0 (overlaps "a").
  auto patch_offset = [](Bytes* file, std::string_view name, uint64_t off) {
    const std::string key = std::string(name);
    for (size_t i = 0; i + 8 + key.size() <= file->size(); ++i) {
      uint64_t len;
      std::memcpy(&len, file->data() + i, 8);
      if (len != key.size() || std::memcmp(file->data() + i + 8, key.data(), key.size()) != 0) {
        continue;
      }
      size_t at = i + 8 + key.size();
      uint32_t nd;
      std::memcpy(&nd, file->data() + at, 4);
      at += 4 + 8 * nd + 4;
      std::memcpy(file->data() + at, &off, 8);
      return;
    }
  };
  patch_offset(&mis, "m", 4);
  ExpectError(mis, "not a multiple of the alignment");
  patch_offset(&ob, "b", 0);
  ExpectError(ob, "overlap");
}

uint16_t Half(float f) { return kernels::F32ToF16(f); }

TEST(GgufQuants, Q8_0AndQ4_0DecodeAsTheFormatDefines) {
  Bytes q8;
  Put(&q8, Half(0.5f));
  for (int j = 0; j < 32; ++j) Put<int8_t>(&q8, static_cast<int8_t>(j - 16));
  std::vector<float> y(32);
  ASSERT_TRUE(DequantizeGgml(static_cast<uint32_t>(GgmlType::kQ8_0), q8.data(), 32, y.data()).ok());
  for (int j = 0; j < 32; ++j) EXPECT_EQ(y[j], 0.5f * static_cast<float>(j - 16)) << j;
  Bytes q4;
  Put(&q4, Half(-0.25f));
  for (int j = 0; j < 16; ++j) q4.push_back(static_cast<uint8_t>(j | ((15 - j) << 4)));
  ASSERT_TRUE(DequantizeGgml(static_cast<uint32_t>(GgmlType::kQ4_0), q4.data(), 32, y.data()).ok());
  for (int j = 0; j < 16; ++j) {
    EXPECT_EQ(y[j], -0.25f * static_cast<float>(j - 8)) << j;            // low nibbles first
    EXPECT_EQ(y[j + 16], -0.25f * static_cast<float>(7 - j)) << j + 16;  // then high nibbles
  }
}

TEST(GgufQuants, Q5_0DecodesAsTheFormatDefinesAndRepacksExactlyIntoQ8_0) {
  // qh sets the fifth bit of values 3, 16 and 31; qs[j] = j | (15 - j) << 4.
  Bytes q5;
  Put(&q5, Half(0.75f));
  Put<uint32_t>(&q5, (1u << 3) | (1u << 16) | (1u << 31));
  for (int j = 0; j < 16; ++j) q5.push_back(static_cast<uint8_t>(j | ((15 - j) << 4)));
  std::vector<float> y(32);
  ASSERT_TRUE(DequantizeGgml(static_cast<uint32_t>(GgmlType::kQ5_0), q5.data(), 32, y.data()).ok());
  for (int j = 0; j < 16; ++j) {
    const int lo = j | (j == 3 ? 16 : 0), hi = (15 - j) | (j == 0 || j == 15 ? 16 : 0);
    EXPECT_EQ(y[j], 0.75f * static_cast<float>(lo - 16)) << j;
    EXPECT_EQ(y[j + 16], 0.75f * static_cast<float>(hi - 16)) << j + 16;
  }
  Bytes q8(34);
  RepackQ5_0ToQ8_0(q5.data(), 1, q8.data());
  std::vector<float> z(32);
  ASSERT_TRUE(DequantizeGgml(static_cast<uint32_t>(GgmlType::kQ8_0), q8.data(), 32, z.data()).ok());
  EXPECT_EQ(z, y);
  EXPECT_EQ(static_cast<int8_t>(q8[2 + 3]), 3);    // 3 | 16 - 16
  EXPECT_EQ(static_cast<int8_t>(q8[2 + 1]), -15);  // 1 - 16
}

TEST(GgufQuants, Q4_KUsesSixBitScalesAndMins) {
  // Sub-block s has scale s + 1 and min 2 * s (s >= 4 exercise the split high bits); q = l % 16.
  uint8_t sc[8], mn[8];
  for (int s = 0; s < 8; ++s) sc[s] = static_cast<uint8_t>(s + 1 + (s >= 4 ? 40 : 0));
  for (int s = 0; s < 8; ++s) mn[s] = static_cast<uint8_t>(2 * s + (s >= 4 ? 20 : 0));
  Bytes b;
  Put(&b, Half(0.125f));
  Put(&b, Half(0.0625f));
  for (int j = 0; j < 4; ++j) b.push_back(static_cast<uint8_t>(sc[j] | ((sc[j + 4] >> 4) << 6)));
  for (int j = 0; j < 4; ++j) b.push_back(static_cast<uint8_t>(mn[j] | ((mn[j + 4] >> 4) << 6)));
  for (int j = 0; j < 4; ++j) {
    b.push_back(static_cast<uint8_t>((sc[j + 4] & 15) | ((mn[j + 4] & 15) << 4)));
  }
  for (int c = 0; c < 4; ++c) {
    for (int l = 0; l < 32; ++l) b.push_back(static_cast<uint8_t>((l % 16) | ((15 - l % 16) << 4)));
  }
  std::vector<float> y(256);
  ASSERT_TRUE(DequantizeGgml(static_cast<uint32_t>(GgmlType::kQ4_K), b.data(), 256, y.data()).ok());
  for (int s = 0; s < 8; ++s) {
    for (int l = 0; l < 32; ++l) {
      const int q = s % 2 == 0 ? l % 16 : 15 - l % 16;
      // The format rounds the product before the subtraction (volatile: no fused multiply-add).
      volatile float prod = (0.125f * static_cast<float>(sc[s])) * static_cast<float>(q);
      const float want = prod - 0.0625f * static_cast<float>(mn[s]);
      EXPECT_EQ(y[s * 32 + l], want) << "sub-block " << s << " value " << l;
    }
  }
}

TEST(GgufQuants, Q6_KAndUnsupportedTypes) {
  Bytes b(210, 0);
  for (int l = 0; l < 128; ++l) b[l] = 0x21;       // low nibbles 1, high nibbles 2
  for (int l = 0; l < 64; ++l) b[128 + l] = 0xE4;  // 2-bit fields 0, 1, 2, 3
  for (int s = 0; s < 16; ++s) b[192 + s] = static_cast<uint8_t>(static_cast<int8_t>(s - 8));
  const uint16_t d = Half(0.5f);
  std::memcpy(b.data() + 208, &d, 2);
  std::vector<float> y(256);
  ASSERT_TRUE(DequantizeGgml(static_cast<uint32_t>(GgmlType::kQ6_K), b.data(), 256, y.data()).ok());
  // Value v = half*128 + k*32 + l: its low 4 bits are ql's low nibble for k < 2 (1), the high
  // nibble for k >= 2 (2); its high 2 bits are qh's field k (= k); scale index half*8 + v%128/16.
  for (int v = 0; v < 256; ++v) {
    const int half = v / 128, k = (v % 128) / 32;
    const int lo = k < 2 ? 1 : 2;
    const int q = (lo | (k << 4)) - 32;
    const float want = 0.5f * static_cast<float>(half * 8 + (v % 128) / 16 - 8) * q;
    EXPECT_EQ(y[v], want) << v;
  }
  auto s = DequantizeGgml(static_cast<uint32_t>(GgmlType::kQ5_K), b.data(), 256, y.data());
  EXPECT_NE(s.message().find("Q5_K"), std::string::npos) << s.ToString();
}

Builder LlamaMeta(std::string_view arch) {
  Builder b;
  const std::string a(arch);
  b.Str("general.architecture", arch).U32(a + ".block_count", 1);
  b.U32(a + ".embedding_length", 64).U32(a + ".feed_forward_length", 128);
  b.U32(a + ".attention.head_count", 4).U32(a + ".attention.head_count_kv", 2);
  b.F32(a + ".attention.layer_norm_rms_epsilon", 1e-5f).F32(a + ".rope.freq_base", 5e5f);
  b.U32(a + ".context_length", 2048).U32(a + ".vocab_size", 100);
  return b;
}

TEST(GgufModel, HyperParametersFromMetadata) {
  auto h = Parse(LlamaMeta("mistral").Build());
  ASSERT_TRUE(h.ok());
  auto c = GgufModelConfig(*h);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->model_type, "mistral");
  EXPECT_EQ(c->num_layers, 1);
  EXPECT_EQ(c->hidden_size, 64);
  EXPECT_EQ(c->intermediate_size, 128);
  EXPECT_EQ(c->num_heads, 4);
  EXPECT_EQ(c->num_kv_heads, 2);
  EXPECT_EQ(c->head_dim, 16);
  EXPECT_EQ(c->vocab_size, 100);
  EXPECT_EQ(c->max_position_embeddings, 2048);
  EXPECT_DOUBLE_EQ(c->rope_theta, 5e5);
  EXPECT_FLOAT_EQ(c->rms_norm_eps, 1e-5f);
  EXPECT_TRUE(c->tie_word_embeddings);  // no output.weight
}

TEST(GgufModel, ErrorsNameTheArchitectureAndTheKey) {
  auto h = Parse(LlamaMeta("gemma").Build());
  ASSERT_TRUE(h.ok());
  auto c = GgufModelConfig(*h);
  EXPECT_NE(c.status().message().find("\"gemma\""), std::string::npos) << c.status().ToString();
  Builder b;
  b.Str("general.architecture", "llama").U32("llama.block_count", 1);
  auto h2 = Parse(b.Build());
  auto c2 = GgufModelConfig(*h2);
  EXPECT_NE(c2.status().message().find("llama.embedding_length"), std::string::npos)
      << c2.status().ToString();
}

TEST(GgufTokenizer, SentencePieceMergesFollowTheScores) {
  const std::string sp = "\xE2\x96\x81";  // "▁"
  Builder b;
  b.Str("tokenizer.ggml.model", "llama");
  b.StrArray("tokenizer.ggml.tokens",
             {"<unk>", "<s>", "</s>", sp, "a", "b", "c", "ab", "bc", sp + "a", sp + "ab", "abc"});
  // Merge order by score: b+c (-2), ▁+a (-3), ▁a+b or ▁+ab -> ▁ab (-4), a+b (-5), abc (-6).
  b.NumArray<float>("tokenizer.ggml.scores", GgufValueType::kF32,
                    {0, 0, 0, -1, -1, -1, -1, -5, -2, -3, -4, -6});
  b.NumArray<int32_t>("tokenizer.ggml.token_type", GgufValueType::kI32,
                      {2, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1});
  b.U32("tokenizer.ggml.bos_token_id", 1);
  auto h = Parse(b.Build());
  ASSERT_TRUE(h.ok());
  auto doc = GgufTokenizerJson(*h);
  ASSERT_TRUE(doc.ok()) << doc.status().ToString();
  auto tok = Tokenizer::FromJson(*doc);
  ASSERT_TRUE(tok.ok()) << tok.status().ToString();
  // "abc" -> "▁abc": b+c first, then ▁+a; "▁abc" is no token, so ▁a | bc.
  EXPECT_EQ((*tok)->Encode("abc"), (std::vector<int32_t>{9, 8}));
  // "ab" -> "▁ab": ▁+a, then ▁a+b -> ▁ab (a+b scores lower and never gets its turn).
  EXPECT_EQ((*tok)->Encode("ab", /*add_bos=*/true), (std::vector<int32_t>{1, 10}));
  EXPECT_EQ((*tok)->Decode({1, 10}), "ab");
  EXPECT_EQ((*tok)->bos_id(), 1);
}

TEST(GgufTokenizer, ChatTemplateSeesTheFilesBosAndEos) {
  Builder b;
  b.StrArray("tokenizer.ggml.tokens", {"<unk>", "<s>", "</s>"});
  b.U32("tokenizer.ggml.bos_token_id", 1).U32("tokenizer.ggml.eos_token_id", 2);
  b.Str("tokenizer.chat_template",
        "{{ bos_token }}{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}{{ eos_token }}"
        "{% endfor %}");
  auto t = GgufChatTemplate(*Parse(b.Build()));
  ASSERT_TRUE(t.ok()) << t.status().ToString();
  ASSERT_NE(*t, nullptr);
  auto out =
      (*t)->Render(nlohmann::ordered_json::parse(R"([{"role": "user", "content": "hi"}])"), false);
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  EXPECT_EQ(*out, "<s>[user] hi</s>");
  auto none = GgufChatTemplate(*Parse(Builder().StrArray("tokenizer.ggml.tokens", {"a"}).Build()));
  ASSERT_TRUE(none.ok());
  EXPECT_EQ(*none, nullptr);
}

TEST(GgufTokenizer, UnsupportedModelAndPreAreNamed) {
  Builder b;
  b.Str("tokenizer.ggml.model", "bert").StrArray("tokenizer.ggml.tokens", {"a"});
  auto d = GgufTokenizerJson(*Parse(b.Build()));
  EXPECT_NE(d.status().message().find("\"bert\""), std::string::npos) << d.status().ToString();
  Builder p;
  p.Str("tokenizer.ggml.model", "gpt2").Str("tokenizer.ggml.pre", "deepseek-coder");
  p.StrArray("tokenizer.ggml.tokens", {"a"}).StrArray("tokenizer.ggml.merges", {});
  auto d2 = GgufTokenizerJson(*Parse(p.Build()));
  EXPECT_NE(d2.status().message().find("deepseek-coder"), std::string::npos)
      << d2.status().ToString();
}

}  // namespace
}  // namespace ragserve::engine
