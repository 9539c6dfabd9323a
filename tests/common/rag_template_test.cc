#include "services/common/rag_template.h"

#include <gtest/gtest.h>

#include <string>
#include <string_view>
#include <vector>

namespace ragserve {
namespace {

// The pieces compose as the header's layout says (whatever their wording): the sequential prompt
// is the prefix, each passage followed by the suffix, then the question part; a passage's text is
// the same in sequence as encoded apart (APE), so only its positions differ.
TEST(RagTemplateTest, SequentialPromptIsPrefixPassagesThenQuestion) {
  const std::vector<std::string_view> passages = {"alpha text", "beta text"};
  const std::string prompt = RagPrompt("who?", passages);
  EXPECT_EQ(prompt, std::string(kRagPrefix) + RagPassageText("alpha text") +
                        RagPassageText("beta text") + RagQuestionText("who?"));
  EXPECT_LT(prompt.find("alpha text"), prompt.find("beta text"));
  EXPECT_EQ(RagPrompt("who?", {}), std::string(kRagPrefix) + RagQuestionText("who?"));
}

TEST(RagTemplateTest, PiecesWrapTheirTextVerbatim) {
  EXPECT_EQ(RagPassageText("some passage"), std::string("some passage") + kRagPassageSuffix);
  EXPECT_EQ(RagQuestionText("what is x?"),
            std::string(kRagQuestionHead) + "what is x?" + kRagQuestionTail);
  EXPECT_NE(std::string_view(kRagPrefix), "");
}

}  // namespace
}  // namespace ragserve
