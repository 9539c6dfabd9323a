// Tokenizer (services/engine/tokenizer.h): byte-level BPE trained on the corpus,
// SentencePiece-style BPE from hand-written tokenizer.json documents, special tokens, streaming
// decode, bad documents. The ids of the byte-level path are checked against an independent
// python3-regex implementation in tests/reference/tokenizer_ref.py; these tests check the
// properties that need no oracle.
#include "services/engine/tokenizer.h"

#include <cstdlib>
#include <fstream>
#include <random>
#include <thread>

#include <nlohmann/json.hpp>

#include "gtest/gtest.h"
#include "services/engine/bpe_trainer.h"
#include "services/engine/tiny_model.h"
#include "tests/support/process.h"

namespace ragserve::engine {
namespace {

using json = nlohmann::json;

using ragserve::testing::SourceDir;

const std::vector<std::string>& CorpusTexts() {
  static const std::vector<std::string> texts = [] {
    auto t = ReadCorpusTexts(SourceDir() + "/data/corpus/passages.jsonl");
    return t.ok() ? *t : std::vector<std::string>();
  }();
  return texts;
}

// One tokenizer trained on the corpus (vocab 2048, three special tokens), shared by the tests.
const Tokenizer& Trained() {
  static const std::unique_ptr<Tokenizer> tok = [] {
    auto doc = TrainByteLevelBpe(CorpusTexts(), 2048,
                                 {"<|begin_of_text|>", "<|end_of_text|>", "<|im_start|>"});
    EXPECT_TRUE(doc.ok()) << doc.status().ToString();
    auto t = Tokenizer::FromJson(doc.ok() ? *doc : "");
    EXPECT_TRUE(t.ok()) << t.status().ToString();
    return t.ok() ? std::move(t).value() : nullptr;
  }();
  return *tok;
}

const std::vector<std::string>& HardStrings() {
  static const std::vector<std::string> s = {
      "",
      " ",
      "Hello world",
      "  leading and trailing  ",
      "don't can't it's I'm you're we've they'll she'd DON'T IT'S O'Neil's",
      "1 12 123 1234 12345 1234567890 3.14159 1,000,000 -42",
      "a  b   c    d\t\te\n\nf\n\n\ng \n \n h\r\ni\r\n\r\nj",
      "         ",
      "\n\n\n\n",
      "你好，世界！这是中文。日本語のテキスト 한국어 문장입니다",
      "😀🎉 party 👍🏽 👨‍👩‍👧 🇳🇴 ❤️",
      "e\xCC\x81 a\xCC\x88 Zalgo: Z\xCD\x91\xCD\x97\xCD\x85"
      "a\xCD\x92l\xCD\x90g\xCD\x93o",
      "café naïve résumé Ångström straße",
      "العربية עברית हिन्दी ไทย",
      "nbsp\xC2\xA0here zero\xE2\x80\x8Bwidth em\xE2\x80\x83space",
      "ctrl \x01\x02\x7F bell\x07",
      "𝐀𝐁 𐍈 \xF4\x8F\xBF\xBD",
      std::string("nul\0inside", 10),
  };
  return s;
}

// ---- Byte-level BPE
// ------------------------------------------------------------------------------

TEST(ByteLevelTokenizerTest, RoundTripsEveryCorpusPassageExactly) {
  ASSERT_GE(CorpusTexts().size(), 300u);
  size_t bytes = 0, tokens = 0;
  for (const std::string& t : CorpusTexts()) {
    const std::vector<int32_t> ids = Trained().Encode(t);
    ASSERT_EQ(Trained().Decode(ids), t);
    bytes += t.size();
    tokens += ids.size();
  }
  // A 2048 vocab trained on this corpus compresses it well; a broken merge loop would not.
  EXPECT_GT(static_cast<double>(bytes) / tokens, 3.5) << bytes << " bytes, " << tokens << " tokens";
}

TEST(ByteLevelTokenizerTest, RoundTripsHardStringsAndArbitraryBytes) {
  for (const std::string& s : HardStrings()) {
    EXPECT_EQ(Trained().Decode(Trained().Encode(s)), s) << s;
  }
  // Invalid UTF-8 (lone continuation bytes, truncated sequences, 0xFF) is kept byte for byte.
  std::mt19937 rng(11);
  for (int i = 0; i < 200; ++i) {
    std::string s(rng() % 64, '\0');
    for (char& c : s) c = static_cast<char>(rng() & 0xFF);
    ASSERT_EQ(Trained().Decode(Trained().Encode(s)), s) << i;
  }
}

TEST(ByteLevelTokenizerTest, SplitsOnTheLlama3PatternAndMergesFrequentWords) {
  // " lighthouse" is common in the corpus: one token, with its leading space.
  const std::optional<int32_t> id = Trained().TokenToId("Ġlighthouse");
  ASSERT_TRUE(id.has_value());
  EXPECT_EQ(Trained().Encode(" lighthouse"), std::vector<int32_t>{*id});
  EXPECT_EQ(Trained().IdToToken(*id), "Ġlighthouse");
  // Digits split in groups of at most three, so "1234567" is >= 3 tokens and no token spans a
  // group boundary.
  const std::vector<int32_t> digits = Trained().Encode("1234567");
  EXPECT_GE(digits.size(), 3u);
  std::string joined;
  for (int32_t d : digits) {
    const std::string piece = Trained().Decode({d});
    EXPECT_LE(piece.size(), 3u) << piece;
    joined += piece;
  }
  EXPECT_EQ(joined, "1234567");
  EXPECT_TRUE(Trained().Encode("").empty());
}

TEST(ByteLevelTokenizerTest, SpecialTokensComeOnlyFromAllowSpecialOrAddBos) {
  const Tokenizer& t = Trained();
  EXPECT_EQ(t.vocab_size(), 2048);
  EXPECT_EQ(t.bos_id(), 0);
  EXPECT_EQ(t.eos_id(), 1);
  EXPECT_TRUE(t.IsSpecial(2));
  EXPECT_FALSE(t.IsSpecial(3));
  const std::string text = "Q<|begin_of_text|>a <|end_of_text|><|im_start|>";
  const std::vector<int32_t> plain = t.Encode(text);
  for (int32_t id : plain) EXPECT_GE(id, 3) << "special id " << id << " from plain text";
  EXPECT_EQ(t.Decode(plain), text);  // the marker text is ordinary text
  for (const std::string& s : CorpusTexts()) {
    for (int32_t id : t.Encode(s)) ASSERT_FALSE(t.IsSpecial(id));
  }

  const std::vector<int32_t> allowed = t.Encode(text, /*add_bos=*/true, /*allow_special=*/true);
  ASSERT_GE(allowed.size(), 6u);
  EXPECT_EQ(allowed.front(), 0);  // add_bos
  EXPECT_EQ(std::count(allowed.begin(), allowed.end(), 0), 2);
  EXPECT_EQ(std::count(allowed.begin(), allowed.end(), 1), 1);
  EXPECT_EQ(allowed.back(), 2);
  EXPECT_EQ(t.Decode(allowed), "Qa ");  // skip_special
  EXPECT_EQ(t.Decode(allowed, /*skip_special=*/false), "<|begin_of_text|>" + text);
  EXPECT_EQ(t.TokenToId("<|im_start|>"), 2);
  EXPECT_FALSE(t.TokenToId("<|nope|>").has_value());
}

TEST(ByteLevelTokenizerTest, DecodeIgnoresIdsOutOfRange) {
  const Tokenizer& t = Trained();
  std::vector<int32_t> ids = t.Encode("abc");
  std::vector<int32_t> noisy = {-5, t.vocab_size(), 1 << 30};
  noisy.insert(noisy.end(), ids.begin(), ids.end());
  EXPECT_EQ(t.Decode(noisy), "abc");
  EXPECT_EQ(t.IdToToken(-1), "");
  EXPECT_EQ(t.IdToToken(t.vocab_size()), "");
}

TEST(ByteLevelTokenizerTest, ConcurrentEncodesEqualSerialOnes) {
  const Tokenizer& t = Trained();
  const auto& texts = CorpusTexts();
  std::vector<std::vector<int32_t>> serial;
  for (const std::string& s : texts) serial.push_back(t.Encode(s));
  std::vector<std::vector<std::vector<int32_t>>> got(4);
  std::vector<std::thread> threads;
  for (int k = 0; k < 4; ++k) {
    threads.emplace_back([&, k] {
      for (size_t i = k; i < texts.size() + k; ++i) {
        got[k].push_back(t.Encode(texts[i % texts.size()]));
      }
    });
  }
  for (auto& th : threads) th.join();
  for (int k = 0; k < 4; ++k) {
    for (size_t i = 0; i < texts.size(); ++i) {
      ASSERT_EQ(got[k][i], serial[(i + k) % texts.size()]) << k << " " << i;
    }
  }
}

// ---- Streaming decode
// ----------------------------------------------------------------------------

bool IsValidUtf8(const std::string& s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (n == 0 || i + n > s.size()) return false;
    for (size_t k = 1; k < n; ++k) {
      if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) return false;
    }
    i += n;
  }
  return true;
}

TEST(StreamDecoderTest, PiecesAreWholeCharactersAndConcatenateToDecode) {
  const Tokenizer& t = Trained();
  int held_back = 0;
  std::vector<std::string> texts = HardStrings();
  texts.push_back(CorpusTexts().at(3) + " 🎉 " + CorpusTexts().at(4));
  for (const std::string& s : texts) {
    const std::vector<int32_t> ids = t.Encode(s);
    Tokenizer::StreamDecoder dec(t);
    std::string streamed;
    for (int32_t id : ids) {
      const std::string piece = dec.Push(id);
      if (IsValidUtf8(s)) {
        EXPECT_TRUE(IsValidUtf8(piece)) << s;
      }
      // A token that ends inside a multi-byte character yields nothing until the rest arrives.
      if (piece.empty() && !t.Decode({id}).empty()) ++held_back;
      streamed += piece;
    }
    streamed += dec.Flush();
    EXPECT_EQ(streamed, t.Decode(ids)) << s;
    EXPECT_EQ(streamed, s);
  }
  // Emoji and CJK are rare in the corpus, so their bytes are split across tokens.
  EXPECT_GT(held_back, 5);
}

TEST(StreamDecoderTest, FlushReturnsAnIncompleteTailAndSkipsSpecialTokens) {
  const Tokenizer& t = Trained();
  // "é" is C3 A9: the byte token of C3 alone is held back, then released with A9.
  const int32_t c3 = *t.TokenToId("Ã"), a9 = *t.TokenToId("©");
  Tokenizer::StreamDecoder dec(t);
  EXPECT_EQ(dec.Push(c3), "");
  EXPECT_EQ(dec.Push(*t.eos_id()), "");
  EXPECT_EQ(dec.Push(a9), "é");
  EXPECT_EQ(dec.Push(c3), "");
  EXPECT_EQ(dec.Flush(), "\xC3");
  EXPECT_EQ(dec.Flush(), "");
  // An invalid lead byte is not held back.
  Tokenizer::StreamDecoder dec2(t);
  EXPECT_EQ(dec2.Push(*t.TokenToId("ÿ")), "\xFF");
}

// ---- SentencePiece-style BPE
// ---------------------------------------------------------------------

// A Llama-2 style document: ▁ for spaces, <0xHH> byte fallback, <unk>/<s>/</s> special tokens.
json SentencePieceDoc(bool metaspace, bool byte_fallback) {
  json vocab = json::object();
  vocab["<unk>"] = 0;
  vocab["<s>"] = 1;
  vocab["</s>"] = 2;
  static const char* kHex = "0123456789ABCDEF";
  for (int b = 0; b < 256; ++b) {
    vocab[std::string("<0x") + kHex[b >> 4] + kHex[b & 15] + ">"] = 3 + b;
  }
  int id = 259;
  for (const char* p : {"▁", "h", "e", "l", "o", "w", "r", "d", "▁h", "ll", "▁he", "▁hell",
                        "▁hello", "▁w", "or", "▁wor"}) {
    vocab[p] = id++;
  }
  json merges = {"▁ h", "l l", "▁h e", "▁he ll", "▁hell o", "▁ w", "o r", "▁w or"};
  json added = json::array();
  for (int i = 0; i < 3; ++i) {
    added.push_back({{"id", i},
                     {"content", i == 0   ? "<unk>"
                                 : i == 1 ? "<s>"
                                          : "</s>"},
                     {"special", true},
                     {"lstrip", false},
                     {"rstrip", false}});
  }
  json doc = {{"version", "1.0"},
              {"added_tokens", added},
              {"model",
               {{"type", "BPE"},
                {"unk_token", "<unk>"},
                {"fuse_unk", true},
                {"byte_fallback", byte_fallback},
                {"vocab", vocab},
                {"merges", merges}}}};
  if (metaspace) {
    json ms = {
        {"type", "Metaspace"}, {"replacement", "▁"}, {"prepend_scheme", "first"}, {"split", false}};
    doc["normalizer"] = nullptr;
    doc["pre_tokenizer"] = ms;
    doc["decoder"] = {{"type", "Sequence"},
                      {"decoders", {{{"type", "ByteFallback"}}, {{"type", "Fuse"}}, ms}}};
  } else {
    doc["normalizer"] = {
        {"type", "Sequence"},
        {"normalizers",
         {{{"type", "Prepend"}, {"prepend", "▁"}},
          {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", "▁"}}}}};
    doc["pre_tokenizer"] = nullptr;
    doc["decoder"] = {{"type", "Sequence"},
                      {"decoders",
                       {{{"type", "Replace"}, {"pattern", {{"String", "▁"}}}, {"content", " "}},
                        {{"type", "ByteFallback"}},
                        {{"type", "Fuse"}},
                        {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}}}};
  }
  doc["post_processor"] = {{"type", "TemplateProcessing"},
                           {"single",
                            {{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}},
                             {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}}};
  return doc;
}

std::unique_ptr<Tokenizer> Load(const json& doc) {
  auto t = Tokenizer::FromJson(doc.dump());
  EXPECT_TRUE(t.ok()) << t.status().ToString();
  return t.ok() ? std::move(t).value() : nullptr;
}

TEST(SentencePieceTokenizerTest, MergesByRankWithSpaceMarks) {
  for (bool metaspace : {false, true}) {
    auto t = Load(SentencePieceDoc(metaspace, true));
    ASSERT_NE(t, nullptr);
    // ▁hello ▁wor l d
    EXPECT_EQ(t->Encode("hello world"), (std::vector<int32_t>{271, 274, 262, 266})) << metaspace;
    EXPECT_EQ(t->Decode(t->Encode("hello world")), "hello world");
    EXPECT_EQ(t->bos_id(), 1);
    EXPECT_EQ(t->eos_id(), 2);
    EXPECT_EQ(t->Encode("hello", /*add_bos=*/true), (std::vector<int32_t>{1, 271}));
  }
}

TEST(SentencePieceTokenizerTest, UnknownCharactersFallBackToBytesAndDecodeExactly) {
  for (bool metaspace : {false, true}) {
    auto t = Load(SentencePieceDoc(metaspace, true));
    ASSERT_NE(t, nullptr);
    // "€" = E2 82 AC is not in the vocab: three <0xHH> tokens.
    const std::vector<int32_t> ids = t->Encode("hello €");
    EXPECT_EQ(ids, (std::vector<int32_t>{271, 259, 3 + 0xE2, 3 + 0x82, 3 + 0xAC}));
    for (const std::string& s : HardStrings()) {
      if (s.empty() || s[0] == ' ') continue;  // a leading space is the prepended ▁'s twin
      EXPECT_EQ(t->Decode(t->Encode(s)), s) << metaspace << " " << s;
    }
    Tokenizer::StreamDecoder dec(*t);
    std::string streamed;
    for (int32_t id : ids) streamed += dec.Push(id);
    EXPECT_EQ(streamed + dec.Flush(), "hello €");
  }
}

TEST(SentencePieceTokenizerTest, WithoutByteFallbackUnknownsFuseIntoOneUnk) {
  auto t = Load(SentencePieceDoc(false, false));
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->Encode("h€€"), (std::vector<int32_t>{267, 0}));
  EXPECT_EQ(t->Decode({267, 0}), "h");
  EXPECT_EQ(t->Decode({267, 0}, /*skip_special=*/false), "h<unk>");
}

TEST(SentencePieceTokenizerTest, PrependFirstOnlyBeforeTheFirstSegment) {
  auto t = Load(SentencePieceDoc(true, true));
  ASSERT_NE(t, nullptr);
  // After <s> the text is not the first segment: no ▁ is prepended (h e ll o).
  EXPECT_EQ(t->Encode("<s>hello", false, true), (std::vector<int32_t>{1, 260, 261, 268, 263}));
  // Without allow_special, "<s>" is text: ▁ < s > hello, with bytes for the unknown '<', 's', '>'.
  const std::vector<int32_t> plain = t->Encode("<s>hello");
  EXPECT_EQ(std::count(plain.begin(), plain.end(), 1), 0);
  EXPECT_EQ(t->Decode(plain), "<s>hello");
}

// ---- Bad documents
// -------------------------------------------------------------------------------

TEST(TokenizerLoadTest, MalformedDocumentsAreClearErrors) {
  const json good = SentencePieceDoc(false, true);
  ASSERT_TRUE(Tokenizer::FromJson(good.dump()).ok());
  struct Case {
    std::string doc;
    std::string expect;  // substring of the message
  };
  auto with = [&](const std::function<void(json&)>& f) {
    json d = good;
    f(d);
    return d.dump();
  };
  const std::vector<Case> cases = {
      {"", "not valid JSON"},
      {"{\"model\": ", "not valid JSON"},
      {"[1, 2]", "must be a JSON object"},
      {"{}", "missing \"model\""},
      {with([](json& d) { d["model"]["type"] = "WordPiece"; }), "WordPiece"},
      {with([](json& d) { d["model"]["vocab"] = json::array(); }), "model.vocab must be an object"},
      {with([](json& d) { d["model"]["vocab"]["x"] = "7"; }), "model.vocab['x']"},
      {with([](json& d) { d["model"]["vocab"]["x"] = -3; }), "-3"},
      {with([](json& d) { d["model"]["vocab"]["x"] = 1LL << 40; }), "1099511627776"},
      {with([](json& d) { d["model"]["vocab"]["x"] = 260; }), "id 260 is used by two tokens"},
      {with([](json& d) { d["model"]["merges"].push_back("h q"); }), "'h' or 'q'"},
      {with([](json& d) { d["model"]["merges"].push_back("hq"); }), "'hq' is not 'left right'"},
      {with([](json& d) { d["model"]["merges"].push_back("h e"); }), "merged token 'he'"},
      {with([](json& d) { d["model"]["merges"].push_back(7); }), "model.merges[8]"},
      {with([](json& d) { d["model"]["unk_token"] = "<nope>"; }), "<nope>"},
      {with([](json& d) { d["model"]["byte_fallback"] = "yes"; }), "byte_fallback"},
      {with([](json& d) { d["added_tokens"][1]["id"] = 5; }), "added_tokens[1]"},
      {with([](json& d) { d["added_tokens"][1]["content"] = ""; }), "added_tokens[1].content"},
      {with([](json& d) { d["added_tokens"] = json::object(); }), "added_tokens must be an array"},
      {with([](json& d) {
         d["normalizer"] = {{"type", "Lowercase"}};
       }),
       "Lowercase"},
      {with([](json& d) {
         d["pre_tokenizer"] = {{"type", "Whitespace"}};
       }),
       "Whitespace"},
      {with([](json& d) {
         d["pre_tokenizer"] = {{"type", "Split"}, {"pattern", {{"Regex", "(unclosed"}}}};
       }),
       "(unclosed"},
      {with([](json& d) {
         d["pre_tokenizer"] = {
             {"type", "Split"}, {"pattern", {{"Regex", "a"}}}, {"behavior", "Sideways"}};
       }),
       "Sideways"},
      {with([](json& d) {
         d["decoder"] = {{"type", "WordPiece"}};
       }),
       "WordPiece"},
      {with([](json& d) { d["model"]["continuing_subword_prefix"] = "##"; }), "##"},
  };
  for (const Case& c : cases) {
    auto t = Tokenizer::FromJson(c.doc);
    ASSERT_FALSE(t.ok()) << c.doc.substr(0, 200);
    EXPECT_EQ(t.status().code(), StatusCode::kInvalidArgument) << t.status().ToString();
    EXPECT_NE(t.status().message().find(c.expect), std::string::npos)
        << "want '" << c.expect << "' in: " << t.status().message();
  }
}

TEST(TokenizerLoadTest, FromFileReportsMissingFilesAndNamesThePath) {
  auto missing = Tokenizer::FromFile("/nonexistent/tokenizer.json");
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find("/nonexistent/tokenizer.json"), std::string::npos);
  const std::string path = ::testing::TempDir() + "/tokenizer_test_bad.json";
  std::ofstream(path) << "{\"model\": {\"type\": \"Unigram\"}}";
  auto bad = Tokenizer::FromFile(path);
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find(path), std::string::npos) << bad.status().message();
  EXPECT_NE(bad.status().message().find("Unigram"), std::string::npos);
  std::remove(path.c_str());
}

}  // namespace
}  // namespace ragserve::engine
