// Lexer and parser of the chat template subset (see chat_template_parser.h). Both follow jinja2
// 3.1 closely because the rendered bytes must match it: the lexer implements whitespace control,
// trim_blocks, lstrip_blocks and Python string escapes; the parser jinja2's precedence (filters
// and tests bind tighter than any operator, `not` looser than comparisons).
#include "services/engine/chat_template_parser.h"

#include <algorithm>
#include <charconv>
#include <cstdlib>

#include "services/engine/unicode.h"

namespace ragserve::engine::chat_template_internal {

[[noreturn]] void Fail(int line, int col, const std::string& msg) {
  throw TemplateError{
      InvalidArgument(StrCat("chat template line ", line, ", column ", col, ": ", msg))};
}

[[noreturn]] void FailLimit(const std::string& msg) {
  throw TemplateError{InvalidArgument(StrCat("chat template: ", msg))};
}

// ---- Unicode helpers (Python str semantics over UTF-8) ------------------------------------------

// Python's str.isspace().
bool PyIsSpace(int32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x20) || cp == 0x85 || cp == 0xA0 ||
         cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 ||
         cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

// Byte offsets of the code points of `s` (an invalid byte counts as one), plus s.size() at the end.
std::vector<size_t> CodepointOffsets(std::string_view s) {
  std::vector<size_t> off;
  off.reserve(s.size() + 1);
  size_t pos = 0;
  while (pos < s.size()) {
    off.push_back(pos);
    unicode::DecodeUtf8(s, &pos);
  }
  off.push_back(s.size());
  return off;
}

int64_t CodepointCount(std::string_view s) {
  int64_t n = 0;
  size_t pos = 0;
  while (pos < s.size()) {
    unicode::DecodeUtf8(s, &pos);
    ++n;
  }
  return n;
}

// Strips code points in `chars` (or Python whitespace when chars is null) from the ends.
std::string PyStrip(std::string_view s, const std::string* chars, bool left, bool right) {
  std::vector<int32_t> set;
  if (chars != nullptr) {
    size_t p = 0;
    while (p < chars->size()) set.push_back(unicode::DecodeUtf8(*chars, &p));
  }
  auto strip_cp = [&](int32_t cp) {
    return chars == nullptr ? PyIsSpace(cp) : std::find(set.begin(), set.end(), cp) != set.end();
  };
  std::vector<size_t> off = CodepointOffsets(s);
  size_t b = 0, e = off.size() - 1;  // code point indices [b, e)
  if (left) {
    while (b < e) {
      size_t p = off[b];
      if (!strip_cp(unicode::DecodeUtf8(s, &p))) break;
      ++b;
    }
  }
  if (right) {
    while (e > b) {
      size_t p = off[e - 1];
      if (!strip_cp(unicode::DecodeUtf8(s, &p))) break;
      --e;
    }
  }
  return std::string(s.substr(off[b], off[e] - off[b]));
}

bool AllPySpace(std::string_view s) {
  size_t p = 0;
  while (p < s.size()) {
    if (!PyIsSpace(unicode::DecodeUtf8(s, &p))) return false;
  }
  return true;
}

namespace {

// ---- Lexer --------------------------------------------------------------------------------------

enum class Tok {
  kData,
  kVarBegin,
  kVarEnd,
  kBlockBegin,
  kBlockEnd,
  kName,
  kString,
  kInt,
  kFloat,
  kOp,
  kEof
};

struct Token {
  Tok type = Tok::kEof;
  std::string text;  // data text, name, operator spelling or decoded string literal
  int64_t ival = 0;
  double fval = 0;
  int line = 1;
  int col = 1;
};

class Lexer {
 public:
  explicit Lexer(std::string src) : src_(std::move(src)) {
    line_starts_.push_back(0);
    for (size_t i = 0; i < src_.size(); ++i) {
      if (src_[i] == '\n') line_starts_.push_back(i + 1);
    }
  }

  std::vector<Token> Run() {
    bool line_starting = true;
    size_t pos = 0;
    const size_t n = src_.size();
    while (true) {
      size_t i = pos;
      while (i + 1 < n && !(src_[i] == '{' &&
                            (src_[i + 1] == '{' || src_[i + 1] == '%' || src_[i + 1] == '#'))) {
        ++i;
      }
      if (i + 1 >= n) {
        if (pos < n) Emit(Tok::kData, src_.substr(pos), pos);
        break;
      }
      const char kind = src_[i + 1];
      const char sign = (i + 2 < n && (src_[i + 2] == '-' || src_[i + 2] == '+')) ? src_[i + 2] : 0;
      std::string text = src_.substr(pos, i - pos);
      if (sign == '-') {
        text = PyStrip(text, nullptr, false, true);
      } else if (sign != '+' && kind != '{') {  // lstrip_blocks
        const size_t nl = text.rfind('\n');
        const size_t l = nl == std::string::npos ? 0 : nl + 1;
        if ((l > 0 || line_starting) && l < text.size() && AllPySpace(text.substr(l))) {
          text.resize(l);
        }
      }
      if (!text.empty()) Emit(Tok::kData, text, pos);
      pos = i + 2 + (sign ? 1 : 0);
      if (kind == '#') {
        const size_t e = src_.find("#}", pos);
        if (e == std::string::npos) FailAt(i, "unclosed comment");
        const bool minus = e > pos && src_[e - 1] == '-';
        pos = e + 2;
        if (minus) {
          pos = SkipSpace(pos);
        } else if (pos < n && src_[pos] == '\n') {
          ++pos;  // trim_blocks
        }
        line_starting = src_[pos - 1] == '\n';
        continue;
      }
      const bool block = kind == '%';
      Emit(block ? Tok::kBlockBegin : Tok::kVarBegin, "", i);
      pos = LexTag(pos, block, i);
      line_starting = src_[pos - 1] == '\n';
    }
    Emit(Tok::kEof, "", n);
    return std::move(tokens_);
  }

 private:
  void LineCol(size_t pos, int* line, int* col) const {
    const auto it = std::upper_bound(line_starts_.begin(), line_starts_.end(), pos);
    const size_t li = static_cast<size_t>(it - line_starts_.begin()) - 1;
    *line = static_cast<int>(li) + 1;
    // Columns count characters (UTF-8 continuation bytes are skipped). Tokens come in source
    // order, so the count continues from the previous call on the same line.
    if (col_line_ != li || col_pos_ > pos) {
      col_line_ = li;
      col_pos_ = line_starts_[li];
      col_ = 1;
    }
    for (; col_pos_ < pos; ++col_pos_) {
      col_ += (static_cast<unsigned char>(src_[col_pos_]) & 0xC0) != 0x80;
    }
    *col = col_;
  }
  [[noreturn]] void FailAt(size_t pos, const std::string& msg) const {
    int line, col;
    LineCol(pos, &line, &col);
    Fail(line, col, msg);
  }
  Token& Emit(Tok type, std::string text, size_t pos) {
    Token t;
    t.type = type;
    t.text = std::move(text);
    LineCol(pos, &t.line, &t.col);
    tokens_.push_back(std::move(t));
    return tokens_.back();
  }
  size_t SkipSpace(size_t pos) const {
    while (pos < src_.size()) {
      size_t p = pos;
      if (!PyIsSpace(unicode::DecodeUtf8(src_, &p))) break;
      pos = p;
    }
    return pos;
  }
  bool At(size_t pos, std::string_view s) const { return src_.compare(pos, s.size(), s) == 0; }

  // Lexes the inside of a {% %} or {{ }} tag from `pos`; returns the position after its end.
  size_t LexTag(size_t pos, bool block, size_t tag_start) {
    int depth = 0;
    const std::string_view end = block ? "%}" : "}}";
    while (true) {
      pos = SkipSpace(pos);
      if (pos >= src_.size()) {
        FailAt(tag_start, StrCat("unexpected end of template, expected '", end, "'"));
      }
      if (depth == 0) {
        if (src_[pos] == '-' && At(pos + 1, end)) {
          Emit(block ? Tok::kBlockEnd : Tok::kVarEnd, "", pos);
          return SkipSpace(pos + 3);
        }
        if (block && src_[pos] == '+' && At(pos + 1, end)) {
          Emit(Tok::kBlockEnd, "", pos);
          return pos + 3;
        }
        if (At(pos, end)) {
          Emit(block ? Tok::kBlockEnd : Tok::kVarEnd, "", pos);
          pos += 2;
          if (block && pos < src_.size() && src_[pos] == '\n') ++pos;  // trim_blocks
          return pos;
        }
      }
      pos = LexToken(pos, &depth);
    }
  }

  size_t LexToken(size_t pos, int* depth) {
    const char c = src_[pos];
    if (AsciiAlpha(c) || c == '_') {
      size_t e = pos;
      while (e < src_.size() &&
             (AsciiAlpha(src_[e]) || src_[e] == '_' || (src_[e] >= '0' && src_[e] <= '9'))) {
        ++e;
      }
      Emit(Tok::kName, src_.substr(pos, e - pos), pos);
      return e;
    }
    if (c >= '0' && c <= '9') return LexNumber(pos);
    if (c == '\'' || c == '"') return LexString(pos);
    static const char* kOps[] = {"//", "**", "==", "!=", ">=", "<=", "+", "-", "/",
                                 "*",  "%",  "~",  "[",  "]",  "(",  ")", "{", "}",
                                 ">",  "<",  "=",  ".",  ":",  "|",  ",", ";"};
    for (const char* op : kOps) {
      if (At(pos, op)) {
        const std::string s(op);
        if (s == "(" || s == "[" || s == "{") ++*depth;
        if (s == ")" || s == "]" || s == "}") {
          if (*depth == 0) FailAt(pos, StrCat("unexpected '", s, "'"));
          --*depth;
        }
        Emit(Tok::kOp, s, pos);
        return pos + s.size();
      }
    }
    FailAt(pos, StrCat("unexpected character '", std::string(1, c), "'"));
  }

  size_t LexNumber(size_t pos) {
    auto digits = [&](size_t p) {
      while (p < src_.size() &&
             ((src_[p] >= '0' && src_[p] <= '9') || (src_[p] == '_' && p + 1 < src_.size() &&
                                                     src_[p + 1] >= '0' && src_[p + 1] <= '9'))) {
        ++p;
      }
      return p;
    };
    size_t e = digits(pos);
    bool is_float = false;
    if (e + 1 < src_.size() && src_[e] == '.' && src_[e + 1] >= '0' && src_[e + 1] <= '9') {
      is_float = true;
      e = digits(e + 1);
    }
    if (e < src_.size() && (src_[e] == 'e' || src_[e] == 'E')) {
      size_t p = e + 1;
      if (p < src_.size() && (src_[p] == '+' || src_[p] == '-')) ++p;
      if (p < src_.size() && src_[p] >= '0' && src_[p] <= '9') {
        is_float = true;
        e = digits(p);
      }
    }
    std::string text;
    for (size_t k = pos; k < e; ++k) {
      if (src_[k] != '_') text += src_[k];
    }
    Token& t = Emit(is_float ? Tok::kFloat : Tok::kInt, text, pos);
    if (is_float) {
      t.fval = std::strtod(text.c_str(), nullptr);
    } else {
      auto r = std::from_chars(text.data(), text.data() + text.size(), t.ival);
      if (r.ec != std::errc()) FailAt(pos, StrCat("integer literal out of range: ", text));
    }
    return e;
  }

  // A quoted literal with Python's unicode-escape decoding (what jinja2 applies).
  size_t LexString(size_t pos) {
    const char q = src_[pos];
    std::string out;
    size_t p = pos + 1;
    auto hex = [&](size_t at, int n) -> int32_t {
      int32_t v = 0;
      for (int k = 0; k < n; ++k) {
        const char h = at + k < src_.size() ? src_[at + k] : '\0';
        int d;
        if (h >= '0' && h <= '9') {
          d = h - '0';
        } else if (h >= 'a' && h <= 'f') {
          d = h - 'a' + 10;
        } else if (h >= 'A' && h <= 'F') {
          d = h - 'A' + 10;
        } else {
          FailAt(at, "invalid escape sequence in string literal");
        }
        v = v * 16 + d;
      }
      return v;
    };
    while (true) {
      if (p >= src_.size()) FailAt(pos, "unterminated string literal");
      const char c = src_[p];
      if (c == q) break;
      if (c != '\\') {
        out += c;
        ++p;
        continue;
      }
      if (p + 1 >= src_.size()) FailAt(pos, "unterminated string literal");
      const char e = src_[p + 1];
      p += 2;
      switch (e) {
        case '\n':
          break;
        case '\\':
          out += '\\';
          break;
        case '\'':
          out += '\'';
          break;
        case '"':
          out += '"';
          break;
        case 'a':
          out += '\a';
          break;
        case 'b':
          out += '\b';
          break;
        case 'f':
          out += '\f';
          break;
        case 'n':
          out += '\n';
          break;
        case 'r':
          out += '\r';
          break;
        case 't':
          out += '\t';
          break;
        case 'v':
          out += '\v';
          break;
        case 'x':
          unicode::AppendUtf8(static_cast<uint32_t>(hex(p, 2)), &out);
          p += 2;
          break;
        case 'u':
          unicode::AppendUtf8(static_cast<uint32_t>(hex(p, 4)), &out);
          p += 4;
          break;
        case 'U': {
          const int32_t cp = hex(p, 8);
          if (cp > 0x10FFFF) FailAt(p, "invalid \\U escape in string literal");
          unicode::AppendUtf8(static_cast<uint32_t>(cp), &out);
          p += 8;
          break;
        }
        case 'N':
          FailAt(p - 2, "unsupported \\N{...} escape in string literal");
        default:
          if (e >= '0' && e <= '7') {
            int32_t v = e - '0';
            for (int k = 0; k < 2 && p < src_.size() && src_[p] >= '0' && src_[p] <= '7'; ++k) {
              v = v * 8 + (src_[p++] - '0');
            }
            unicode::AppendUtf8(static_cast<uint32_t>(v), &out);
          } else {
            out += '\\';
            out += e;
          }
      }
    }
    Emit(Tok::kString, out, pos);
    return p + 1;
  }

  std::string src_;
  std::vector<size_t> line_starts_;
  std::vector<Token> tokens_;
  mutable size_t col_line_ = 0, col_pos_ = 0;  // LineCol's cursor: line, byte position, column
  mutable int col_ = 1;
};

}  // namespace

// ---- Parser -------------------------------------------------------------------------------------

const std::vector<std::string>& KnownFilters() {
  static const std::vector<std::string> k = {
      "abs",    "capitalize", "count",      "d",       "default", "first",  "float",
      "int",    "items",      "join",       "last",    "length",  "list",   "lower",
      "map",    "reject",     "rejectattr", "replace", "safe",    "select", "selectattr",
      "string", "title",      "tojson",     "trim",    "upper"};
  return k;
}

const std::vector<std::string>& KnownTests() {
  static const std::vector<std::string> k = {
      "boolean",     "callable", "defined", "divisibleby", "eq",       "equalto", "==",
      "even",        "false",    "float",   "ge",          ">=",       "gt",      ">",
      "greaterthan", "in",       "integer", "iterable",    "le",       "<=",      "lt",
      "<",           "lessthan", "mapping", "ne",          "!=",       "none",    "number",
      "odd",         "sequence", "string",  "true",        "undefined"};
  return k;
}

bool Contains(const std::vector<std::string>& v, const std::string& s) {
  return std::find(v.begin(), v.end(), s) != v.end();
}

namespace {

class Parser {
 public:
  Parser(std::vector<Token> toks, int max_nesting)
      : toks_(std::move(toks)), max_nesting_(max_nesting) {}

  Body ParseTemplate() {
    std::string which;
    return ParseBody({}, &which);
  }

 private:
  struct DepthGuard {
    DepthGuard(Parser* p, const Token& t) : p_(p) {
      if (++p_->depth_ > p_->max_nesting_) {
        Fail(t.line, t.col, StrCat("nesting deeper than the limit of ", p_->max_nesting_));
      }
    }
    ~DepthGuard() { --p_->depth_; }
    Parser* p_;
  };
  // Each link of a left-deep chain (a.b.c, a + b + c, x|f|g) is one more level of the tree the
  // evaluator recurses through: counted like nesting, released when the chain's parse returns.
  struct ChainGuard {
    explicit ChainGuard(Parser* p) : p_(p) {}
    void Step(const Token& t) {
      ++n_;
      if (++p_->depth_ > p_->max_nesting_) {
        Fail(t.line, t.col,
             StrCat("expression nested deeper than the limit of ", p_->max_nesting_));
      }
    }
    ~ChainGuard() { p_->depth_ -= n_; }
    Parser* p_;
    int n_ = 0;
  };

  const Token& Cur() const { return toks_[pos_]; }
  const Token& Peek(size_t k = 1) const { return toks_[std::min(pos_ + k, toks_.size() - 1)]; }
  void Advance() {
    if (pos_ + 1 < toks_.size()) ++pos_;
  }
  bool IsOp(std::string_view op) const { return Cur().type == Tok::kOp && Cur().text == op; }
  bool IsName(std::string_view n) const { return Cur().type == Tok::kName && Cur().text == n; }
  [[noreturn]] void FailHere(const std::string& msg) const { Fail(Cur().line, Cur().col, msg); }
  static std::string Describe(const Token& t) {
    switch (t.type) {
      case Tok::kData:
        return "template data";
      case Tok::kVarBegin:
        return "'{{'";
      case Tok::kVarEnd:
        return "end of print statement";
      case Tok::kBlockBegin:
        return "'{%'";
      case Tok::kBlockEnd:
        return "end of statement block";
      case Tok::kName:
      case Tok::kOp:
        return StrCat("'", t.text, "'");
      case Tok::kString:
        return "string literal";
      case Tok::kInt:
      case Tok::kFloat:
        return "number";
      case Tok::kEof:
        return "end of template";
    }
    return "token";
  }
  void ExpectOp(std::string_view op) {
    if (!IsOp(op)) FailHere(StrCat("expected '", op, "', got ", Describe(Cur())));
    Advance();
  }
  std::string ExpectName() {
    if (Cur().type != Tok::kName) FailHere(StrCat("expected a name, got ", Describe(Cur())));
    std::string n = Cur().text;
    Advance();
    return n;
  }
  void ExpectBlockEnd() {
    if (Cur().type != Tok::kBlockEnd) {
      FailHere(StrCat("expected end of statement block, got ", Describe(Cur())));
    }
    Advance();
  }
  ExprPtr Node(Expr::Kind kind, const Token& at) {
    auto e = std::make_unique<Expr>();
    e->kind = kind;
    e->line = at.line;
    e->col = at.col;
    return e;
  }

  // Statements until one of `end_tags` ({% endfor %} ...): returns with the cursor after the tag
  // name and the name in *which. With no end tags, parses to the end of the template.
  Body ParseBody(const std::vector<std::string>& end_tags, std::string* which) {
    Body body;
    while (true) {
      const Token& t = Cur();
      if (t.type == Tok::kEof) {
        if (!end_tags.empty()) {
          FailHere(StrCat("unexpected end of template, expected '", end_tags.back(), "'"));
        }
        return body;
      }
      if (t.type == Tok::kData) {
        auto s = std::make_unique<Stmt>();
        s->kind = Stmt::Kind::kText;
        s->text = t.text;
        body.push_back(std::move(s));
        Advance();
        continue;
      }
      if (t.type == Tok::kVarBegin) {
        Advance();
        auto s = std::make_unique<Stmt>();
        s->kind = Stmt::Kind::kOutput;
        s->line = t.line;
        s->col = t.col;
        s->expr = ParseTuple(true, false);
        if (Cur().type != Tok::kVarEnd) {
          FailHere(StrCat("expected end of print statement, got ", Describe(Cur())));
        }
        Advance();
        body.push_back(std::move(s));
        continue;
      }
      if (t.type != Tok::kBlockBegin) FailHere(StrCat("unexpected ", Describe(t)));
      Advance();
      if (Cur().type != Tok::kName) FailHere(StrCat("expected a tag name, got ", Describe(Cur())));
      const std::string name = Cur().text;
      if (Contains(end_tags, name)) {
        Advance();
        *which = name;
        return body;
      }
      body.push_back(ParseStatement());
    }
  }

  StmtPtr ParseStatement() {
    const Token start = Cur();
    const std::string& name = start.text;
    DepthGuard guard(this, start);
    auto s = std::make_unique<Stmt>();
    s->line = start.line;
    s->col = start.col;
    if (name == "for") return ParseFor(std::move(s));
    if (name == "if") return ParseIf(std::move(s));
    if (name == "set") return ParseSet(std::move(s));
    if (name == "break" || name == "continue") {
      if (loop_depth_ == 0) FailHere(StrCat("'", name, "' outside of a loop"));
      Advance();
      ExpectBlockEnd();
      s->kind = name == "break" ? Stmt::Kind::kBreak : Stmt::Kind::kContinue;
      return s;
    }
    static const std::vector<std::string> kUnsupported = {
        "macro",  "call", "filter", "with",       "block", "extends", "include",
        "import", "from", "raw",    "autoescape", "do",    "trans",   "pluralize"};
    if (Contains(kUnsupported, name)) {
      FailHere(
          StrCat("unsupported tag '", name, "' ({% ", name, " %} is not in the supported subset)"));
    }
    if (name.rfind("end", 0) == 0 || name == "elif" || name == "else") {
      FailHere(StrCat("unexpected '", name, "'"));
    }
    FailHere(StrCat("unknown tag '", name, "'"));
  }

  // `a` | `a, b` | `(a, b)`; with_namespace allows `ns.attr` (returned in *attr).
  std::vector<std::string> ParseTargets(bool with_namespace, std::string* attr) {
    std::vector<std::string> names;
    const bool paren = IsOp("(");
    if (paren) Advance();
    names.push_back(ExpectName());
    if (with_namespace && !paren && IsOp(".")) {
      Advance();
      *attr = ExpectName();
      return names;
    }
    while (IsOp(",")) {
      Advance();
      if (Cur().type != Tok::kName) break;
      names.push_back(ExpectName());
    }
    if (paren) ExpectOp(")");
    return names;
  }

  StmtPtr ParseFor(StmtPtr s) {
    s->kind = Stmt::Kind::kFor;
    Advance();
    std::string attr;
    s->targets = ParseTargets(false, &attr);
    if (!IsName("in")) FailHere(StrCat("expected 'in', got ", Describe(Cur())));
    Advance();
    s->expr = ParseTuple(false, false);
    if (IsName("if")) {
      Advance();
      s->filter = ParseExpression(true);
    }
    if (IsName("recursive")) FailHere("unsupported: recursive for loops");
    ExpectBlockEnd();
    ++loop_depth_;
    std::string which;
    s->body = ParseBody({"else", "endfor"}, &which);
    --loop_depth_;
    if (which == "else") {
      ExpectBlockEnd();
      s->else_body = ParseBody({"endfor"}, &which);
    }
    ExpectBlockEnd();
    return s;
  }

  StmtPtr ParseIf(StmtPtr s) {
    s->kind = Stmt::Kind::kIf;
    Advance();
    while (true) {
      ExprPtr cond = ParseTuple(false, false);
      ExpectBlockEnd();
      std::string which;
      Body body = ParseBody({"elif", "else", "endif"}, &which);
      s->branches.emplace_back(std::move(cond), std::move(body));
      if (which == "elif") continue;
      if (which == "else") {
        ExpectBlockEnd();
        s->else_body = ParseBody({"endif"}, &which);
      }
      ExpectBlockEnd();
      return s;
    }
  }

  StmtPtr ParseSet(StmtPtr s) {
    Advance();
    s->targets = ParseTargets(true, &s->attr);
    if (IsOp("=")) {
      Advance();
      s->kind = Stmt::Kind::kSet;
      s->expr = ParseTuple(true, false);
      ExpectBlockEnd();
      return s;
    }
    if (IsOp("|")) FailHere("unsupported: filters on a block {% set %}");
    if (s->targets.size() != 1) FailHere("a block {% set %} takes one name");
    ExpectBlockEnd();
    s->kind = Stmt::Kind::kSetBlock;
    std::string which;
    s->body = ParseBody({"endset"}, &which);
    ExpectBlockEnd();
    return s;
  }

  bool IsTupleEnd() const {
    const Tok t = Cur().type;
    return t == Tok::kVarEnd || t == Tok::kBlockEnd || IsOp(")") || IsName("recursive");
  }

  ExprPtr ParseTuple(bool with_condexpr, bool explicit_parens) {
    const Token start = Cur();
    std::vector<ExprPtr> items;
    bool is_tuple = false;
    while (true) {
      if (!items.empty()) ExpectOp(",");
      if (IsTupleEnd()) break;
      items.push_back(ParseExpression(with_condexpr));
      if (IsOp(",")) {
        is_tuple = true;
      } else {
        break;
      }
    }
    if (!is_tuple) {
      if (!items.empty()) return std::move(items[0]);
      if (!explicit_parens) FailHere(StrCat("expected an expression, got ", Describe(Cur())));
    }
    ExprPtr e = Node(Expr::Kind::kTuple, start);
    e->args = std::move(items);
    return e;
  }

  ExprPtr ParseExpression(bool with_condexpr) {
    DepthGuard guard(this, Cur());
    return with_condexpr ? ParseCondExpr() : ParseOr();
  }

  ExprPtr ParseCondExpr() {
    ExprPtr expr = ParseOr();
    ChainGuard chain(this);
    while (IsName("if")) {
      chain.Step(Cur());
      const Token t = Cur();
      Advance();
      ExprPtr cond = ParseOr();
      ExprPtr other;
      if (IsName("else")) {
        Advance();
        other = ParseCondExpr();
      }
      ExprPtr e = Node(Expr::Kind::kCond, t);
      e->args.push_back(std::move(cond));
      e->args.push_back(std::move(expr));
      e->args.push_back(std::move(other));  // may be null: undefined
      expr = std::move(e);
    }
    return expr;
  }

  ExprPtr ParseOr() {
    ExprPtr left = ParseAnd();
    ChainGuard chain(this);
    while (IsName("or")) {
      chain.Step(Cur());
      const Token t = Cur();
      Advance();
      ExprPtr e = Node(Expr::Kind::kOr, t);
      e->args.push_back(std::move(left));
      e->args.push_back(ParseAnd());
      left = std::move(e);
    }
    return left;
  }

  ExprPtr ParseAnd() {
    ExprPtr left = ParseNot();
    ChainGuard chain(this);
    while (IsName("and")) {
      chain.Step(Cur());
      const Token t = Cur();
      Advance();
      ExprPtr e = Node(Expr::Kind::kAnd, t);
      e->args.push_back(std::move(left));
      e->args.push_back(ParseNot());
      left = std::move(e);
    }
    return left;
  }

  ExprPtr ParseNot() {
    if (IsName("not")) {
      const Token t = Cur();
      DepthGuard guard(this, t);
      Advance();
      ExprPtr e = Node(Expr::Kind::kNot, t);
      e->args.push_back(ParseNot());
      return e;
    }
    return ParseCompare();
  }

  ExprPtr ParseCompare() {
    const Token start = Cur();
    ExprPtr first = ParseMath1();
    ExprPtr cmp;
    while (true) {
      std::string op;
      if (Cur().type == Tok::kOp &&
          (Cur().text == "==" || Cur().text == "!=" || Cur().text == "<" || Cur().text == "<=" ||
           Cur().text == ">" || Cur().text == ">=")) {
        op = Cur().text;
        Advance();
      } else if (IsName("in")) {
        op = "in";
        Advance();
      } else if (IsName("not") && Peek().type == Tok::kName && Peek().text == "in") {
        op = "notin";
        Advance();
        Advance();
      } else {
        break;
      }
      if (!cmp) {
        cmp = Node(Expr::Kind::kCompare, start);
        cmp->args.push_back(std::move(first));
      }
      cmp->ops.push_back(op);
      cmp->args.push_back(ParseMath1());
    }
    return cmp ? std::move(cmp) : std::move(first);
  }

  ExprPtr Binary(const std::string& op, const Token& at, ExprPtr l, ExprPtr r) {
    ExprPtr e = Node(Expr::Kind::kBinary, at);
    e->name = op;
    e->args.push_back(std::move(l));
    e->args.push_back(std::move(r));
    return e;
  }

  ExprPtr ParseMath1() {
    ExprPtr left = ParseConcat();
    ChainGuard chain(this);
    while (IsOp("+") || IsOp("-")) {
      chain.Step(Cur());
      const Token t = Cur();
      Advance();
      left = Binary(t.text, t, std::move(left), ParseConcat());
    }
    return left;
  }

  ExprPtr ParseConcat() {
    const Token start = Cur();
    ExprPtr first = ParseMath2();
    if (!IsOp("~")) return first;
    ExprPtr e = Node(Expr::Kind::kConcat, start);
    e->args.push_back(std::move(first));
    while (IsOp("~")) {
      Advance();
      e->args.push_back(ParseMath2());
    }
    return e;
  }

  ExprPtr ParseMath2() {
    ExprPtr left = ParsePow();
    ChainGuard chain(this);
    while (IsOp("*") || IsOp("/") || IsOp("//") || IsOp("%")) {
      chain.Step(Cur());
      const Token t = Cur();
      Advance();
      left = Binary(t.text, t, std::move(left), ParsePow());
    }
    return left;
  }

  ExprPtr ParsePow() {
    ExprPtr left = ParseUnary(true);
    ChainGuard chain(this);
    while (IsOp("**")) {
      chain.Step(Cur());
      const Token t = Cur();
      Advance();
      left = Binary("**", t, std::move(left), ParseUnary(true));
    }
    return left;
  }

  ExprPtr ParseUnary(bool with_filter) {
    const Token t = Cur();
    DepthGuard guard(this, t);
    ExprPtr node;
    if (IsOp("-") || IsOp("+")) {
      Advance();
      node = Node(t.text == "-" ? Expr::Kind::kNeg : Expr::Kind::kPos, t);
      node->args.push_back(ParseUnary(false));
    } else {
      node = ParsePrimary();
    }
    node = ParsePostfix(std::move(node));
    if (with_filter) node = ParseFilterExpr(std::move(node));
    return node;
  }

  ExprPtr ParsePrimary() {
    const Token t = Cur();
    if (t.type == Tok::kName) {
      Advance();
      ExprPtr e = Node(Expr::Kind::kConst, t);
      if (t.text == "true" || t.text == "True") {
        e->constant = true;
      } else if (t.text == "false" || t.text == "False") {
        e->constant = false;
      } else if (t.text == "none" || t.text == "None") {
        e->constant = nullptr;
      } else {
        e->kind = Expr::Kind::kName;
        e->name = t.text;
      }
      return e;
    }
    if (t.type == Tok::kString) {
      std::string s;
      while (Cur().type == Tok::kString) {
        s += Cur().text;
        Advance();
      }
      ExprPtr e = Node(Expr::Kind::kConst, t);
      e->constant = s;
      return e;
    }
    if (t.type == Tok::kInt || t.type == Tok::kFloat) {
      Advance();
      ExprPtr e = Node(Expr::Kind::kConst, t);
      if (t.type == Tok::kInt) {
        e->constant = t.ival;
      } else {
        e->constant = t.fval;
      }
      return e;
    }
    if (IsOp("(")) {
      Advance();
      ExprPtr e = ParseTuple(true, true);
      ExpectOp(")");
      return e;
    }
    if (IsOp("[")) {
      Advance();
      ExprPtr e = Node(Expr::Kind::kList, t);
      while (!IsOp("]")) {
        if (!e->args.empty()) ExpectOp(",");
        if (IsOp("]")) break;
        e->args.push_back(ParseExpression(true));
      }
      ExpectOp("]");
      return e;
    }
    if (IsOp("{")) {
      Advance();
      ExprPtr e = Node(Expr::Kind::kDict, t);
      while (!IsOp("}")) {
        if (!e->args.empty()) ExpectOp(",");
        if (IsOp("}")) break;
        e->args.push_back(ParseExpression(true));
        ExpectOp(":");
        e->args.push_back(ParseExpression(true));
      }
      ExpectOp("}");
      return e;
    }
    FailHere(StrCat("unexpected ", Describe(t)));
  }

  ExprPtr ParsePostfix(ExprPtr node) {
    ChainGuard chain(this);
    while (true) {
      if (IsOp(".") || IsOp("[")) {
        chain.Step(Cur());
        node = ParseSubscript(std::move(node));
      } else if (IsOp("(")) {
        chain.Step(Cur());
        node = ParseCall(std::move(node));
      } else {
        return node;
      }
    }
  }

  ExprPtr ParseFilterExpr(ExprPtr node) {
    ChainGuard chain(this);
    while (true) {
      if (IsOp("|") || IsName("is") || IsOp("(")) chain.Step(Cur());
      if (IsOp("|")) {
        node = ParseFilter(std::move(node));
      } else if (IsName("is")) {
        node = ParseTest(std::move(node));
      } else if (IsOp("(")) {
        node = ParseCall(std::move(node));
      } else {
        return node;
      }
    }
  }

  ExprPtr ParseSubscript(ExprPtr node) {
    const Token t = Cur();
    Advance();
    if (t.text == ".") {
      if (Cur().type == Tok::kName) {
        ExprPtr e = Node(Expr::Kind::kAttr, Cur());
        e->name = Cur().text;
        Advance();
        e->args.push_back(std::move(node));
        return e;
      }
      if (Cur().type == Tok::kInt) {
        ExprPtr idx = Node(Expr::Kind::kConst, Cur());
        idx->constant = Cur().ival;
        Advance();
        ExprPtr e = Node(Expr::Kind::kItem, t);
        e->args.push_back(std::move(node));
        e->args.push_back(std::move(idx));
        return e;
      }
      FailHere(StrCat("expected an attribute name, got ", Describe(Cur())));
    }
    std::vector<ExprPtr> subs;
    while (!IsOp("]")) {
      if (!subs.empty()) ExpectOp(",");
      subs.push_back(ParseSubscribed());
    }
    ExpectOp("]");
    ExprPtr e = Node(Expr::Kind::kItem, t);
    e->args.push_back(std::move(node));
    if (subs.size() == 1) {
      e->args.push_back(std::move(subs[0]));
    } else {
      ExprPtr tup = Node(Expr::Kind::kTuple, t);
      tup->args = std::move(subs);
      e->args.push_back(std::move(tup));
    }
    return e;
  }

  ExprPtr ParseSubscribed() {
    const Token t = Cur();
    std::vector<ExprPtr> parts;
    if (IsOp(":")) {
      Advance();
      parts.push_back(nullptr);
    } else {
      ExprPtr e = ParseExpression(true);
      if (!IsOp(":")) return e;
      Advance();
      parts.push_back(std::move(e));
    }
    if (IsOp(":")) {
      parts.push_back(nullptr);
    } else if (!IsOp("]") && !IsOp(",")) {
      parts.push_back(ParseExpression(true));
    } else {
      parts.push_back(nullptr);
    }
    if (IsOp(":")) {
      Advance();
      if (!IsOp("]") && !IsOp(",")) {
        parts.push_back(ParseExpression(true));
      } else {
        parts.push_back(nullptr);
      }
    } else {
      parts.push_back(nullptr);
    }
    ExprPtr s = Node(Expr::Kind::kSlice, t);
    s->args = std::move(parts);
    return s;
  }

  void ParseCallArgs(Expr* e) {
    ExpectOp("(");
    bool first = true;
    while (!IsOp(")")) {
      if (!first) {
        ExpectOp(",");
        if (IsOp(")")) break;
      }
      first = false;
      if (IsOp("*") || IsOp("**")) FailHere("unsupported: *args / **kwargs in a call");
      if (Cur().type == Tok::kName && Peek().type == Tok::kOp && Peek().text == "=") {
        std::string key = Cur().text;
        Advance();
        Advance();
        e->kwargs.emplace_back(std::move(key), ParseExpression(true));
      } else {
        if (!e->kwargs.empty()) FailHere("positional argument after a keyword argument");
        e->args.push_back(ParseExpression(true));
      }
    }
    ExpectOp(")");
  }

  ExprPtr ParseCall(ExprPtr node) {
    ExprPtr e = Node(Expr::Kind::kCall, Cur());
    e->args.push_back(std::move(node));
    ParseCallArgs(e.get());
    return e;
  }

  ExprPtr ParseFilter(ExprPtr node) {
    Advance();  // '|'
    const Token t = Cur();
    std::string name = ExpectName();
    if (!Contains(KnownFilters(), name)) {
      Fail(t.line, t.col, StrCat("unknown filter '", name, "' (not in the supported subset)"));
    }
    ExprPtr e = Node(Expr::Kind::kFilter, t);
    e->name = name;
    e->args.push_back(std::move(node));
    if (IsOp("(")) ParseCallArgs(e.get());
    return e;
  }

  ExprPtr ParseTest(ExprPtr node) {
    const Token is_tok = Cur();
    Advance();  // 'is'
    bool negated = false;
    if (IsName("not")) {
      negated = true;
      Advance();
    }
    const Token t = Cur();
    std::string name = ExpectName();
    if (!Contains(KnownTests(), name)) {
      Fail(t.line, t.col, StrCat("unknown test '", name, "' (not in the supported subset)"));
    }
    ExprPtr e = Node(Expr::Kind::kTest, t);
    e->name = name;
    e->args.push_back(std::move(node));
    if (IsOp("(")) {
      ParseCallArgs(e.get());
    } else if ((Cur().type == Tok::kName || Cur().type == Tok::kString || Cur().type == Tok::kInt ||
                Cur().type == Tok::kFloat || IsOp("[") || IsOp("{")) &&
               !IsName("else") && !IsName("or") && !IsName("and")) {
      if (IsName("is")) FailHere("cannot chain multiple tests with 'is'");
      e->args.push_back(ParsePostfix(ParsePrimary()));
    }
    if (!negated) return e;
    ExprPtr n = Node(Expr::Kind::kNot, is_tok);
    n->args.push_back(std::move(e));
    return n;
  }

  std::vector<Token> toks_;
  size_t pos_ = 0;
  int depth_ = 0;
  int loop_depth_ = 0;
  int max_nesting_;
};

// jinja2 lexes a source whose newlines are normalized to "\n", without one trailing newline
// (keep_trailing_newline=False).
std::string NormalizeSource(std::string_view src) {
  std::string out;
  out.reserve(src.size());
  for (size_t i = 0; i < src.size(); ++i) {
    if (src[i] == '\r') {
      out += '\n';
      if (i + 1 < src.size() && src[i + 1] == '\n') ++i;
    } else {
      out += src[i];
    }
  }
  if (!out.empty() && out.back() == '\n') out.pop_back();
  return out;
}

}  // namespace

Body ParseTemplate(std::string_view source, int max_nesting) {
  Lexer lexer(NormalizeSource(source));
  Parser parser(lexer.Run(), max_nesting);
  return parser.ParseTemplate();
}

}  // namespace ragserve::engine::chat_template_internal
