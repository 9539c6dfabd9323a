// BPE trainer (services/engine/bpe_trainer.h): merge order on a hand-checked example, id layout,
// exact vocab size on the corpus, determinism and order independence, bad arguments.
#include "services/engine/bpe_trainer.h"

#include <algorithm>
#include <cstdlib>
#include <random>

#include <nlohmann/json.hpp>

#include "gtest/gtest.h"
#include "services/engine/tiny_model.h"
#include "services/engine/tokenizer.h"

namespace ragserve::engine {
namespace {

using json = nlohmann::json;

std::vector<std::string> Corpus() {
  const char* src = std::getenv("RAGSERVE_SOURCE_DIR");
  auto t = ReadCorpusTexts(std::string(src != nullptr ? src : ".") + "/data/corpus/passages.jsonl");
  EXPECT_TRUE(t.ok()) << t.status().ToString();
  return t.ok() ? *t : std::vector<std::string>();
}

TEST(BpeTrainerTest, MergesTheMostFrequentPairFirstAndBreaksTiesBySmallestIds) {
  // Pre-tokens: "ab", " ab", " ab", " cd". Counts: (a,b)=3, (' ',a)=2, (' ',c)=1, (c,d)=1.
  // 1: a+b. 2: ' '+ab (2). 3: tie between (' ',c) and (c,d): ' ' (32) < 'c' (99) wins. 4: Ġc+d.
  auto doc = TrainByteLevelBpe({"ab ab ab cd"}, 300, {});
  ASSERT_TRUE(doc.ok()) << doc.status().ToString();
  const json j = json::parse(*doc);
  EXPECT_EQ(j["model"]["merges"], json({"a b", "Ġ ab", "Ġ c", "Ġc d"}));
  // Every word is one token after four merges, so the vocab stops short of 300.
  EXPECT_EQ(j["model"]["vocab"].size(), 260u);
  EXPECT_EQ(j["model"]["vocab"]["Ġcd"], 259);
  auto tok = Tokenizer::FromJson(*doc);
  ASSERT_TRUE(tok.ok()) << tok.status().ToString();
  EXPECT_EQ((*tok)->Encode("ab ab ab cd"), (std::vector<int32_t>{256, 257, 257, 259}));
}

TEST(BpeTrainerTest, SpecialTokensTakeTheFirstIdsThenBytesThenMerges) {
  auto doc = TrainByteLevelBpe({"hello hello world"}, 270, {"<s>", "</s>"});
  ASSERT_TRUE(doc.ok()) << doc.status().ToString();
  const json j = json::parse(*doc);
  ASSERT_EQ(j["added_tokens"].size(), 2u);
  EXPECT_EQ(j["added_tokens"][0]["content"], "<s>");
  EXPECT_EQ(j["added_tokens"][0]["id"], 0);
  EXPECT_EQ(j["added_tokens"][1]["id"], 1);
  EXPECT_TRUE(j["added_tokens"][1]["special"].get<bool>());
  EXPECT_EQ(j["model"]["vocab"]["A"], 2 + 'A');  // byte b -> n_special + b
  EXPECT_EQ(j["model"]["vocab"]["Ġ"], 2 + ' ');
  EXPECT_EQ(j["model"]["vocab"]["Ā"], 2 + 0);  // byte 0's printable stand-in
  auto tok = Tokenizer::FromJson(*doc);
  ASSERT_TRUE(tok.ok()) << tok.status().ToString();
  EXPECT_EQ((*tok)->bos_id(), 0);
  EXPECT_EQ((*tok)->eos_id(), 1);
  EXPECT_EQ((*tok)->Encode("hello"), std::vector<int32_t>{*(*tok)->TokenToId("hello")});
}

TEST(BpeTrainerTest, CorpusVocabHasExactlyTheRequestedSizeAndIsDeterministic) {
  const std::vector<std::string> texts = Corpus();
  ASSERT_GE(texts.size(), 300u);
  auto a = TrainByteLevelBpe(texts, 2048, {"<|begin_of_text|>", "<|end_of_text|>"});
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  auto tok = Tokenizer::FromJson(*a);
  ASSERT_TRUE(tok.ok()) << tok.status().ToString();
  EXPECT_EQ((*tok)->vocab_size(), 2048);
  const json j = json::parse(*a);
  EXPECT_EQ(j["model"]["merges"].size(), 2048u - 256 - 2);
  // Every id 0..2047 is used exactly once.
  std::vector<int> seen(2048, 0);
  for (const auto& [k, v] : j["model"]["vocab"].items()) ++seen.at(v.get<int>());
  for (const auto& t : j["added_tokens"]) ++seen.at(t["id"].get<int>());
  EXPECT_EQ(std::count(seen.begin(), seen.end(), 1), 2048);

  // Same input -> the same bytes; the order of the texts does not matter either.
  auto b = TrainByteLevelBpe(texts, 2048, {"<|begin_of_text|>", "<|end_of_text|>"});
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(*a, *b);
  std::vector<std::string> shuffled = texts;
  std::shuffle(shuffled.begin(), shuffled.end(), std::mt19937(3));
  auto c = TrainByteLevelBpe(shuffled, 2048, {"<|begin_of_text|>", "<|end_of_text|>"});
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(*a, *c);
  // A smaller vocab is a prefix of the larger one's merge list (greedy training).
  auto small = TrainByteLevelBpe(texts, 600, {"<|begin_of_text|>", "<|end_of_text|>"});
  ASSERT_TRUE(small.ok());
  const json js = json::parse(*small);
  ASSERT_EQ(js["model"]["merges"].size(), 600u - 258);
  for (size_t i = 0; i < js["model"]["merges"].size(); ++i) {
    ASSERT_EQ(js["model"]["merges"][i], j["model"]["merges"][i]) << i;
  }
}

TEST(BpeTrainerTest, EmptyTextsGiveBytesAndSpecialsOnly) {
  auto doc = TrainByteLevelBpe({}, 1000, {"<|endoftext|>"});
  ASSERT_TRUE(doc.ok()) << doc.status().ToString();
  auto tok = Tokenizer::FromJson(*doc);
  ASSERT_TRUE(tok.ok()) << tok.status().ToString();
  EXPECT_EQ((*tok)->vocab_size(), 257);
  EXPECT_EQ((*tok)->eos_id(), 0);
  EXPECT_EQ((*tok)->Decode((*tok)->Encode("any text ✓")), "any text ✓");
}

TEST(BpeTrainerTest, RejectsBadArgumentsByValue) {
  auto small = TrainByteLevelBpe({"x"}, 257, {"<a>", "<b>"});
  EXPECT_EQ(small.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(small.status().message().find("vocab_size 257"), std::string::npos)
      << small.status().message();
  auto huge = TrainByteLevelBpe({"x"}, 2000000, {});
  EXPECT_EQ(huge.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(huge.status().message().find("2000000"), std::string::npos);
  auto empty = TrainByteLevelBpe({"x"}, 300, {"<a>", ""});
  EXPECT_EQ(empty.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(empty.status().message().find("empty"), std::string::npos);
  auto dup = TrainByteLevelBpe({"x"}, 300, {"<a>", "<a>"});
  EXPECT_EQ(dup.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(dup.status().message().find("'<a>' is listed twice"), std::string::npos);
}

}  // namespace
}  // namespace ragserve::engine
