// Internal to the chat template renderer (chat_template.cc, chat_template_parser.cc): the
// syntax tree of a parsed template, the parser's entry point and the Python string helpers both
// halves share. Not a public interface; see chat_template.h.
//
// Errors inside the renderer are thrown as TemplateError (never past chat_template.cc's public
// functions, which turn them into a Status).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "services/common/status.h"

namespace ragserve::engine::chat_template_internal {

using Json = nlohmann::ordered_json;

struct TemplateError {
  Status status;
};

// Throws InvalidArgument "chat template line L, column C: msg".
[[noreturn]] void Fail(int line, int col, const std::string& msg);
// Throws InvalidArgument "chat template: msg" (limits, which have no single position).
[[noreturn]] void FailLimit(const std::string& msg);

// ---- Python str semantics over UTF-8 (an invalid byte counts as one character) ----------------

// Python's str.isspace() of one code point.
bool PyIsSpace(int32_t cp);
// Byte offsets of the code points of `s`, plus s.size() at the end.
std::vector<size_t> CodepointOffsets(std::string_view s);
int64_t CodepointCount(std::string_view s);
// str.strip / lstrip / rstrip: removes code points in *chars (Python whitespace when null).
std::string PyStrip(std::string_view s, const std::string* chars, bool left, bool right);
bool AllPySpace(std::string_view s);
inline bool AsciiAlpha(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }

// ---- Syntax tree --------------------------------------------------------------------------------

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

struct Expr {
  // clang-format off
  enum class Kind { kConst, kName, kAttr, kItem, kSlice, kCall, kFilter, kTest, kNot, kNeg, kPos,
                    kBinary, kConcat, kAnd, kOr, kCompare, kCond, kList, kTuple, kDict };
  // clang-format on
  Kind kind;
  int line = 0, col = 0;
  Json constant;              // kConst
  std::string name;           // kName, kAttr, kFilter, kTest, kBinary operator
  std::vector<ExprPtr> args;  // operands / positional arguments (kSlice: 3, null = omitted)
  std::vector<std::pair<std::string, ExprPtr>> kwargs;  // keyword arguments
  std::vector<std::string> ops;                         // kCompare operators, one per args[1..]
};

struct Stmt;
using StmtPtr = std::unique_ptr<Stmt>;
using Body = std::vector<StmtPtr>;

struct Stmt {
  enum class Kind { kText, kOutput, kIf, kFor, kSet, kSetBlock, kBreak, kContinue };
  Kind kind;
  int line = 0, col = 0;
  std::string text;                                // kText
  ExprPtr expr;                                    // kOutput, kSet value, kFor iterable
  std::vector<std::string> targets;                // kFor / kSet names; kSet with attr: {namespace}
  std::string attr;                                // kSet/kSetBlock on a namespace attribute
  ExprPtr filter;                                  // kFor inline `if`
  std::vector<std::pair<ExprPtr, Body>> branches;  // kIf: (condition, body)...
  Body body;                                       // kFor, kSetBlock
  Body else_body;                                  // kIf, kFor
};

// The filters and tests the renderer implements (the parser refuses any other name).
const std::vector<std::string>& KnownFilters();
const std::vector<std::string>& KnownTests();
bool Contains(const std::vector<std::string>& v, const std::string& s);

// Lexes and parses a template source as jinja2 does with trim_blocks and lstrip_blocks (newlines
// normalized, one trailing newline dropped). Throws TemplateError for a syntax error, an
// unsupported construct, or nesting deeper than max_nesting.
Body ParseTemplate(std::string_view source, int max_nesting);

}  // namespace ragserve::engine::chat_template_internal
