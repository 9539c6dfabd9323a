// Evaluator of the chat template subset (contract in chat_template.h): a tree walk over the
// syntax tree of chat_template_parser.h with Python-like values, formatted exactly as Python
// prints them (str(), repr(), json.dumps) because the output must match jinja2 byte for byte.
// Errors are thrown as TemplateError inside and turned into a Status at the public functions; no
// exception leaves this file.
#include "services/engine/chat_template.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <map>
#include <optional>
#include <unordered_map>
#include <utility>
#include <vector>

#include "services/engine/chat_template_parser.h"
#include "services/engine/unicode.h"

namespace ragserve::engine {

struct ChatTemplateProgram {
  chat_template_internal::Body body;
};

namespace chat_template_internal {
namespace {

bool HasNonAscii(std::string_view s) {
  for (unsigned char c : s) {
    if (c >= 0x80) return true;
  }
  return false;
}

char AsciiUpper(char c) { return (c >= 'a' && c <= 'z') ? static_cast<char>(c - 32) : c; }
char AsciiLower(char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c + 32) : c; }

// Python's str.isprintable() for the code points repr() escapes (Cc, Cf, Z* but space, private
// use); unassigned code points are treated as printable.
bool PyPrintable(int32_t cp) {
  if (cp < 0x20 || cp == 0x7F) return false;
  if (cp < 0x80) return true;
  if (cp <= 0xA0 || cp == 0xAD) return false;
  if ((cp >= 0x600 && cp <= 0x605) || cp == 0x61C || cp == 0x6DD || cp == 0x70F) return false;
  if (cp == 0x1680 || cp == 0x180E) return false;
  if ((cp >= 0x2000 && cp <= 0x200F) || (cp >= 0x2028 && cp <= 0x202F)) return false;
  if ((cp >= 0x205F && cp <= 0x2064) || (cp >= 0x2066 && cp <= 0x206F)) return false;
  if (cp == 0x3000 || (cp >= 0xD800 && cp <= 0xF8FF) || cp == 0xFEFF) return false;
  if (cp >= 0xFFF9 && cp <= 0xFFFB) return false;
  if (cp == 0xE0001 || (cp >= 0xE0020 && cp <= 0xE007F) || cp >= 0xF0000) return false;
  return true;
}

// ---- Python formatting of JSON values ----------------------------------------------------------

constexpr int kMaxValueDepth = 256;  // nesting of JSON values walked by repr/tojson/equality

// Whether a JSON value nests deeper than `limit` (walked without recursion, so that a hostile
// input cannot overflow the stack before the renderer's own bounded recursion starts).
bool NestedDeeperThan(const Json& root, int limit) {
  std::vector<std::pair<const Json*, int>> stack = {{&root, 0}};
  while (!stack.empty()) {
    auto [j, depth] = stack.back();
    stack.pop_back();
    if (depth > limit) return true;
    if (j->is_array() || j->is_object()) {
      for (const Json& child : *j) stack.emplace_back(&child, depth + 1);
    }
  }
  return false;
}

// Python's repr(float).
std::string PyFloatRepr(double d) {
  if (std::isnan(d)) return "nan";
  if (std::isinf(d)) return d < 0 ? "-inf" : "inf";
  char buf[64];
  auto r = std::to_chars(buf, buf + sizeof(buf), d, std::chars_format::scientific);
  std::string sci(buf, r.ptr);
  std::string sign;
  size_t i = 0;
  if (sci[0] == '-') {
    sign = "-";
    i = 1;
  }
  size_t epos = sci.find('e');
  std::string digits;
  for (size_t k = i; k < epos; ++k) {
    if (sci[k] != '.') digits += sci[k];
  }
  int e = std::stoi(sci.substr(epos + 1));
  int decpt = e + 1;
  if (decpt <= -4 || decpt > 16) {
    std::string out = sign + digits.substr(0, 1);
    if (digits.size() > 1) out += "." + digits.substr(1);
    char ebuf[16];
    std::snprintf(ebuf, sizeof(ebuf), "e%c%02d", e < 0 ? '-' : '+', std::abs(e));
    return out + ebuf;
  }
  const int nd = static_cast<int>(digits.size());
  if (decpt <= 0) return sign + "0." + std::string(-decpt, '0') + digits;
  if (decpt >= nd) return sign + digits + std::string(decpt - nd, '0') + ".0";
  return sign + digits.substr(0, decpt) + "." + digits.substr(decpt);
}

std::string PyReprString(std::string_view s) {
  const bool sq = s.find('\'') != std::string_view::npos;
  const bool dq = s.find('"') != std::string_view::npos;
  const char q = (sq && !dq) ? '"' : '\'';
  std::string out(1, q);
  size_t p = 0;
  while (p < s.size()) {
    const size_t start = p;
    const int32_t cp = unicode::DecodeUtf8(s, &p);
    char buf[16];
    if (cp == q || cp == '\\') {
      out += '\\';
      out += static_cast<char>(cp);
    } else if (cp == '\t') {
      out += "\\t";
    } else if (cp == '\n') {
      out += "\\n";
    } else if (cp == '\r') {
      out += "\\r";
    } else if (cp < 0) {
      std::snprintf(buf, sizeof(buf), "\\x%02x", static_cast<unsigned char>(s[start]));
      out += buf;
    } else if (!PyPrintable(cp)) {
      if (cp < 0x100) {
        std::snprintf(buf, sizeof(buf), "\\x%02x", cp);
      } else if (cp < 0x10000) {
        std::snprintf(buf, sizeof(buf), "\\u%04x", cp);
      } else {
        std::snprintf(buf, sizeof(buf), "\\U%08x", cp);
      }
      out += buf;
    } else {
      out.append(s.substr(start, p - start));
    }
  }
  out += q;
  return out;
}

std::string PyIntString(const Json& j) { return j.dump(); }

void PyReprJson(const Json& j, int depth, std::string* out) {
  if (depth > kMaxValueDepth) FailLimit("value nested too deeply");
  switch (j.type()) {
    case Json::value_t::null:
      *out += "None";
      return;
    case Json::value_t::boolean:
      *out += j.get<bool>() ? "True" : "False";
      return;
    case Json::value_t::number_integer:
    case Json::value_t::number_unsigned:
      *out += PyIntString(j);
      return;
    case Json::value_t::number_float:
      *out += PyFloatRepr(j.get<double>());
      return;
    case Json::value_t::string:
      *out += PyReprString(j.get_ref<const std::string&>());
      return;
    case Json::value_t::array: {
      *out += '[';
      bool first = true;
      for (const Json& e : j) {
        if (!first) *out += ", ";
        first = false;
        PyReprJson(e, depth + 1, out);
      }
      *out += ']';
      return;
    }
    case Json::value_t::object: {
      *out += '{';
      bool first = true;
      for (auto it = j.begin(); it != j.end(); ++it) {
        if (!first) *out += ", ";
        first = false;
        *out += PyReprString(it.key());
        *out += ": ";
        PyReprJson(it.value(), depth + 1, out);
      }
      *out += '}';
      return;
    }
    default:
      *out += "None";
      return;
  }
}

// Python's str() of a JSON value.
std::string PyStrJson(const Json& j) {
  if (j.is_string()) return j.get<std::string>();
  std::string out;
  PyReprJson(j, 0, &out);
  return out;
}

// json.dumps options (transformers' tojson filter).
struct DumpOptions {
  std::optional<std::string> indent;  // nullopt: single line
  std::string item_sep = ", ";
  std::string key_sep = ": ";
  bool sort_keys = false;
  bool ensure_ascii = false;
};

void JsonDumpString(std::string_view s, bool ensure_ascii, std::string* out) {
  *out += '"';
  size_t p = 0;
  char buf[16];
  while (p < s.size()) {
    const size_t start = p;
    const unsigned char c = static_cast<unsigned char>(s[p]);
    if (c < 0x80) {
      ++p;
      switch (c) {
        case '"':
          *out += "\\\"";
          break;
        case '\\':
          *out += "\\\\";
          break;
        case '\n':
          *out += "\\n";
          break;
        case '\r':
          *out += "\\r";
          break;
        case '\t':
          *out += "\\t";
          break;
        case '\b':
          *out += "\\b";
          break;
        case '\f':
          *out += "\\f";
          break;
        default:
          if (c < 0x20) {
            std::snprintf(buf, sizeof(buf), "\\u%04x", c);
            *out += buf;
          } else {
            *out += static_cast<char>(c);
          }
      }
      continue;
    }
    const int32_t cp = unicode::DecodeUtf8(s, &p);
    if (!ensure_ascii) {
      out->append(s.substr(start, p - start));
    } else if (cp < 0) {
      std::snprintf(buf, sizeof(buf), "\\u%04x", static_cast<unsigned>(0xDC00 + c));
      *out += buf;
    } else if (cp < 0x10000) {
      std::snprintf(buf, sizeof(buf), "\\u%04x", cp);
      *out += buf;
    } else {
      const int32_t v = cp - 0x10000;
      std::snprintf(buf, sizeof(buf), "\\u%04x\\u%04x", 0xD800 + (v >> 10), 0xDC00 + (v & 0x3FF));
      *out += buf;
    }
  }
  *out += '"';
}

void JsonDump(const Json& j, const DumpOptions& o, int level, std::string* out) {
  if (level > kMaxValueDepth) FailLimit("value nested too deeply for tojson");
  auto newline = [&](int lvl) {
    *out += '\n';
    for (int i = 0; i < lvl; ++i) *out += *o.indent;
  };
  switch (j.type()) {
    case Json::value_t::null:
      *out += "null";
      return;
    case Json::value_t::boolean:
      *out += j.get<bool>() ? "true" : "false";
      return;
    case Json::value_t::number_integer:
    case Json::value_t::number_unsigned:
      *out += PyIntString(j);
      return;
    case Json::value_t::number_float: {
      const double d = j.get<double>();
      if (std::isnan(d)) {
        *out += "NaN";
      } else if (std::isinf(d)) {
        *out += d < 0 ? "-Infinity" : "Infinity";
      } else {
        *out += PyFloatRepr(d);
      }
      return;
    }
    case Json::value_t::string:
      JsonDumpString(j.get_ref<const std::string&>(), o.ensure_ascii, out);
      return;
    case Json::value_t::array: {
      if (j.empty()) {
        *out += "[]";
        return;
      }
      *out += '[';
      if (o.indent) newline(level + 1);
      bool first = true;
      for (const Json& e : j) {
        if (!first) {
          *out += o.item_sep;
          if (o.indent) newline(level + 1);
        }
        first = false;
        JsonDump(e, o, level + 1, out);
      }
      if (o.indent) newline(level);
      *out += ']';
      return;
    }
    case Json::value_t::object: {
      if (j.empty()) {
        *out += "{}";
        return;
      }
      std::vector<std::pair<const std::string*, const Json*>> items;
      for (auto it = j.begin(); it != j.end(); ++it) items.emplace_back(&it.key(), &it.value());
      if (o.sort_keys) {
        std::stable_sort(items.begin(), items.end(),
                         [](const auto& a, const auto& b) { return *a.first < *b.first; });
      }
      *out += '{';
      if (o.indent) newline(level + 1);
      bool first = true;
      for (const auto& [k, v] : items) {
        if (!first) {
          *out += o.item_sep;
          if (o.indent) newline(level + 1);
        }
        first = false;
        JsonDumpString(*k, o.ensure_ascii, out);
        *out += o.key_sep;
        JsonDump(*v, o, level + 1, out);
      }
      if (o.indent) newline(level);
      *out += '}';
      return;
    }
    default:
      *out += "null";
      return;
  }
}

// ---- Values ------------------------------------------------------------------------------------

struct Namespace;
struct LoopState;

// A template value: Python's Undefined, a JSON value (shared, never copied on access), a
// namespace() object, a loop object or a builtin function.
struct Value {
  enum class Kind : uint8_t { kUndefined, kJson, kNamespace, kLoop, kFunction };
  Kind kind = Kind::kUndefined;
  std::shared_ptr<const Json> root;
  const Json* j = nullptr;
  std::shared_ptr<Namespace> ns;
  std::shared_ptr<const LoopState> loop;
  std::string name;  // kUndefined: what was undefined (for errors); kFunction: the builtin
  bool tuple = false;

  static Value Undefined(std::string why) {
    Value v;
    v.name = std::move(why);
    return v;
  }
  static Value Make(Json value, bool tuple = false) {
    Value v;
    v.kind = Kind::kJson;
    v.root = std::make_shared<const Json>(std::move(value));
    v.j = v.root.get();
    v.tuple = tuple;
    return v;
  }
  static Value Ref(const std::shared_ptr<const Json>& root, const Json* j) {
    Value v;
    v.kind = Kind::kJson;
    v.root = root;
    v.j = j;
    return v;
  }
  static Value Function(std::string name) {
    Value v;
    v.kind = Kind::kFunction;
    v.name = std::move(name);
    return v;
  }
  bool undefined() const { return kind == Kind::kUndefined; }
  bool is_json() const { return kind == Kind::kJson; }
  bool is_string() const { return is_json() && j->is_string(); }
  bool is_list() const { return is_json() && j->is_array(); }
  bool is_dict() const { return is_json() && j->is_object(); }
  bool is_none() const { return is_json() && j->is_null(); }
  bool is_bool() const { return is_json() && j->is_boolean(); }
  bool is_int() const { return is_json() && j->is_number_integer(); }
  bool is_float() const { return is_json() && j->is_number_float(); }
  // Python numbers (bool is an int in Python).
  bool is_number() const { return is_json() && (j->is_number() || j->is_boolean()); }
  const std::string& str() const { return j->get_ref<const std::string&>(); }
};

struct Namespace {
  std::map<std::string, Value> attrs;
};

struct LoopState {
  int64_t index0 = 0;
  std::shared_ptr<const std::vector<Value>> items;
};

// Python type names for error messages.
std::string TypeName(const Value& v) {
  switch (v.kind) {
    case Value::Kind::kUndefined:
      return "Undefined";
    case Value::Kind::kNamespace:
      return "Namespace";
    case Value::Kind::kLoop:
      return "LoopContext";
    case Value::Kind::kFunction:
      return "function";
    case Value::Kind::kJson:
      break;
  }
  switch (v.j->type()) {
    case Json::value_t::null:
      return "NoneType";
    case Json::value_t::boolean:
      return "bool";
    case Json::value_t::number_integer:
    case Json::value_t::number_unsigned:
      return "int";
    case Json::value_t::number_float:
      return "float";
    case Json::value_t::string:
      return "str";
    case Json::value_t::array:
      return v.tuple ? "tuple" : "list";
    case Json::value_t::object:
      return "dict";
    default:
      return "object";
  }
}

double AsDouble(const Json& j) {
  if (j.is_boolean()) return j.get<bool>() ? 1.0 : 0.0;
  return j.get<double>();
}
int64_t AsInt(const Json& j) {
  if (j.is_boolean()) return j.get<bool>() ? 1 : 0;
  if (j.is_number_unsigned()) return static_cast<int64_t>(j.get<uint64_t>());
  return j.get<int64_t>();
}
bool IsIntLike(const Json& j) { return j.is_boolean() || j.is_number_integer(); }

bool Truthy(const Value& v) {
  switch (v.kind) {
    case Value::Kind::kUndefined:
      return false;
    case Value::Kind::kJson:
      break;
    default:
      return true;
  }
  const Json& j = *v.j;
  switch (j.type()) {
    case Json::value_t::null:
      return false;
    case Json::value_t::boolean:
      return j.get<bool>();
    case Json::value_t::number_integer:
    case Json::value_t::number_unsigned:
      return AsInt(j) != 0;
    case Json::value_t::number_float:
      return j.get<double>() != 0.0;
    case Json::value_t::string:
      return !j.get_ref<const std::string&>().empty();
    case Json::value_t::array:
    case Json::value_t::object:
      return !j.empty();
    default:
      return false;
  }
}

bool JsonEquals(const Json& a, const Json& b, int depth) {
  if (depth > kMaxValueDepth) FailLimit("value nested too deeply to compare");
  const bool an = a.is_number() || a.is_boolean();
  const bool bn = b.is_number() || b.is_boolean();
  if (an || bn) {
    if (!(an && bn)) return false;
    if (IsIntLike(a) && IsIntLike(b)) return AsInt(a) == AsInt(b);
    return AsDouble(a) == AsDouble(b);
  }
  if (a.type() != b.type()) return false;
  if (a.is_array()) {
    if (a.size() != b.size()) return false;
    for (size_t i = 0; i < a.size(); ++i) {
      if (!JsonEquals(a[i], b[i], depth + 1)) return false;
    }
    return true;
  }
  if (a.is_object()) {
    if (a.size() != b.size()) return false;
    for (auto it = a.begin(); it != a.end(); ++it) {
      auto f = b.find(it.key());
      if (f == b.end() || !JsonEquals(it.value(), *f, depth + 1)) return false;
    }
    return true;
  }
  return a == b;
}

bool ValueEquals(const Value& a, const Value& b) {
  if (a.undefined() || b.undefined()) return a.undefined() && b.undefined();
  if (a.is_json() && b.is_json()) return JsonEquals(*a.j, *b.j, 0);
  if (a.kind == Value::Kind::kNamespace && b.kind == Value::Kind::kNamespace) return a.ns == b.ns;
  if (a.kind == Value::Kind::kFunction && b.kind == Value::Kind::kFunction) {
    return a.name == b.name;
  }
  return false;
}

// Python's str() of a value (what {{ }} prints).
std::string PyStr(const Value& v) {
  switch (v.kind) {
    case Value::Kind::kUndefined:
      return "";
    case Value::Kind::kNamespace:
      return "<Namespace>";
    case Value::Kind::kLoop:
      return "<LoopContext>";
    case Value::Kind::kFunction:
      return StrCat("<function ", v.name, ">");
    case Value::Kind::kJson:
      break;
  }
  if (v.tuple && v.j->is_array()) {
    std::string out = "(";
    for (size_t i = 0; i < v.j->size(); ++i) {
      if (i) out += ", ";
      PyReprJson((*v.j)[i], 1, &out);
    }
    if (v.j->size() == 1) out += ",";
    return out + ")";
  }
  return PyStrJson(*v.j);
}

// ---- Evaluator ---------------------------------------------------------------------------------

enum class Flow { kNormal, kBreak, kContinue };

class Renderer {
 public:
  Renderer(const ChatTemplateLimits& limits) : limits_(limits) {}

  void SetGlobal(const std::string& name, Value v) { scopes_[0][name] = std::move(v); }

  std::string Run(const Body& body) {
    std::string out;
    Flow flow = Flow::kNormal;
    Exec(body, &out, &flow);
    return out;
  }

 private:
  using Scope = std::unordered_map<std::string, Value>;

  [[noreturn]] static void FailAt(const Expr& e, const std::string& msg) {
    Fail(e.line, e.col, msg);
  }

  void CheckSize(size_t n) const {
    if (static_cast<int64_t>(n) > limits_.max_output_bytes) {
      FailLimit(
          StrCat("output or a string exceeds the limit of ", limits_.max_output_bytes, " bytes"));
    }
  }
  void Append(std::string* out, std::string_view s) const {
    CheckSize(out->size() + s.size());
    out->append(s);
  }
  void CountIteration() {
    if (++iterations_ > limits_.max_loop_iterations) {
      FailLimit(StrCat("more than ", limits_.max_loop_iterations, " loop iterations"));
    }
  }
  Value MakeString(std::string s) const {
    CheckSize(s.size());
    return Value::Make(Json(std::move(s)));
  }

  // -- statements --

  void Exec(const Body& body, std::string* out, Flow* flow) {
    for (const StmtPtr& sp : body) {
      const Stmt& s = *sp;
      switch (s.kind) {
        case Stmt::Kind::kText:
          Append(out, s.text);
          break;
        case Stmt::Kind::kOutput:
          Append(out, PyStr(Eval(*s.expr)));
          break;
        case Stmt::Kind::kIf: {
          bool taken = false;
          for (const auto& [cond, branch] : s.branches) {
            if (Truthy(Eval(*cond))) {
              Exec(branch, out, flow);
              taken = true;
              break;
            }
          }
          if (!taken) Exec(s.else_body, out, flow);
          break;
        }
        case Stmt::Kind::kFor:
          ExecFor(s, out);
          break;
        case Stmt::Kind::kSet:
          Assign(s, Eval(*s.expr));
          break;
        case Stmt::Kind::kSetBlock: {
          std::string inner;
          Flow f = Flow::kNormal;
          Exec(s.body, &inner, &f);
          Assign(s, MakeString(std::move(inner)));
          break;
        }
        case Stmt::Kind::kBreak:
          *flow = Flow::kBreak;
          break;
        case Stmt::Kind::kContinue:
          *flow = Flow::kContinue;
          break;
      }
      if (*flow != Flow::kNormal) return;
    }
  }

  void Unpack(const std::vector<std::string>& names, const Value& v, Scope* scope, int line,
              int col) {
    if (names.size() == 1) {
      (*scope)[names[0]] = v;
      return;
    }
    std::vector<Value> parts = Iterate(v, line, col);
    if (parts.size() != names.size()) {
      Fail(line, col,
           StrCat("cannot unpack ", parts.size(), " values into ", names.size(), " names"));
    }
    for (size_t i = 0; i < names.size(); ++i) (*scope)[names[i]] = parts[i];
  }

  void Assign(const Stmt& s, Value v) {
    if (!s.attr.empty()) {
      Value target = Lookup(s.targets[0]);
      if (target.kind != Value::Kind::kNamespace) {
        Fail(s.line, s.col,
             StrCat("cannot assign attribute '", s.attr, "' on '", s.targets[0],
                    "', which is not a namespace"));
      }
      target.ns->attrs[s.attr] = std::move(v);
      return;
    }
    Unpack(s.targets, v, &scopes_.back(), s.line, s.col);
  }

  void ExecFor(const Stmt& s, std::string* out) {
    std::vector<Value> all = Iterate(Eval(*s.expr), s.expr->line, s.expr->col);
    auto items = std::make_shared<std::vector<Value>>();
    if (s.filter) {
      for (Value& v : all) {
        CountIteration();
        scopes_.emplace_back();
        Unpack(s.targets, v, &scopes_.back(), s.line, s.col);
        const bool keep = Truthy(Eval(*s.filter));
        scopes_.pop_back();
        if (keep) items->push_back(std::move(v));
      }
    } else {
      *items = std::move(all);
    }
    if (items->empty()) {
      Flow f = Flow::kNormal;
      Exec(s.else_body, out, &f);
      return;
    }
    std::shared_ptr<const std::vector<Value>> shared = items;
    for (size_t i = 0; i < shared->size(); ++i) {
      CountIteration();
      scopes_.emplace_back();
      Unpack(s.targets, (*shared)[i], &scopes_.back(), s.line, s.col);
      auto state = std::make_shared<LoopState>();
      state->index0 = static_cast<int64_t>(i);
      state->items = shared;
      Value loop;
      loop.kind = Value::Kind::kLoop;
      loop.loop = std::move(state);
      scopes_.back()["loop"] = std::move(loop);
      Flow flow = Flow::kNormal;
      Exec(s.body, out, &flow);
      scopes_.pop_back();
      if (flow == Flow::kBreak) break;
    }
  }

  // The items a for loop (or unpacking) walks over.
  std::vector<Value> Iterate(const Value& v, int line, int col) {
    std::vector<Value> out;
    if (v.undefined()) return out;
    if (!v.is_json()) Fail(line, col, StrCat("'", TypeName(v), "' object is not iterable"));
    const Json& j = *v.j;
    if (j.is_array()) {
      out.reserve(j.size());
      for (const Json& e : j) out.push_back(Value::Ref(v.root, &e));
    } else if (j.is_object()) {
      for (auto it = j.begin(); it != j.end(); ++it) out.push_back(Value::Make(Json(it.key())));
    } else if (j.is_string()) {
      const std::string& s = j.get_ref<const std::string&>();
      std::vector<size_t> off = CodepointOffsets(s);
      for (size_t i = 0; i + 1 < off.size(); ++i) {
        out.push_back(Value::Make(Json(s.substr(off[i], off[i + 1] - off[i]))));
      }
    } else {
      Fail(line, col, StrCat("'", TypeName(v), "' object is not iterable"));
    }
    return out;
  }

  Value Lookup(const std::string& name) const {
    for (auto it = scopes_.rbegin(); it != scopes_.rend(); ++it) {
      auto f = it->find(name);
      if (f != it->end()) return f->second;
    }
    static const std::vector<std::string> kFunctions = {"raise_exception", "namespace", "range",
                                                        "dict", "strftime_now"};
    if (Contains(kFunctions, name)) return Value::Function(name);
    return Value::Undefined(StrCat("'", name, "' is undefined"));
  }

  // -- expressions --

  // A copy of a JSON value to put into a new list or dict (one level deeper than the value).
  static Json ToJson(const Value& v, const Expr& at) {
    if (v.is_json()) {
      if (NestedDeeperThan(*v.j, kMaxValueDepth - 1)) {
        FailAt(at, StrCat("a value would nest deeper than ", kMaxValueDepth, " levels"));
      }
      return *v.j;
    }
    FailAt(at, StrCat("a ", TypeName(v), " value cannot be stored in a list or dict"));
  }

  Value Eval(const Expr& e) {
    switch (e.kind) {
      case Expr::Kind::kConst:
        return Value::Make(e.constant);
      case Expr::Kind::kName:
        return Lookup(e.name);
      case Expr::Kind::kAttr:
        return GetAttr(Eval(*e.args[0]), e.name, e);
      case Expr::Kind::kItem: {
        Value obj = Eval(*e.args[0]);
        if (e.args[1]->kind == Expr::Kind::kSlice) return SliceOf(obj, *e.args[1]);
        return GetItem(obj, Eval(*e.args[1]), e);
      }
      case Expr::Kind::kSlice:
        FailAt(e, "a slice outside of a subscript");
      case Expr::Kind::kCall:
        return Call(e);
      case Expr::Kind::kFilter:
        return ApplyFilter(e);
      case Expr::Kind::kTest: {
        std::vector<Value> args;
        for (size_t i = 1; i < e.args.size(); ++i) args.push_back(Eval(*e.args[i]));
        return Value::Make(Json(ApplyTest(e.name, Eval(*e.args[0]), args, e)));
      }
      case Expr::Kind::kNot:
        return Value::Make(Json(!Truthy(Eval(*e.args[0]))));
      case Expr::Kind::kNeg:
      case Expr::Kind::kPos: {
        Value v = Eval(*e.args[0]);
        if (v.undefined()) FailAt(e, v.name);
        if (!v.is_number()) FailAt(e, StrCat("bad operand type for unary -: '", TypeName(v), "'"));
        if (e.kind == Expr::Kind::kPos) {
          return v.is_bool() ? Value::Make(Json(AsInt(*v.j))) : v;
        }
        if (IsIntLike(*v.j)) {
          const int64_t x = AsInt(*v.j);
          if (x == INT64_MIN) FailAt(e, "integer overflow");
          return Value::Make(Json(-x));
        }
        return Value::Make(Json(-v.j->get<double>()));
      }
      case Expr::Kind::kBinary:
        return Binary(e.name, Eval(*e.args[0]), Eval(*e.args[1]), e);
      case Expr::Kind::kConcat: {
        std::string s;
        for (const ExprPtr& a : e.args) {
          s += PyStr(Eval(*a));
          CheckSize(s.size());
        }
        return MakeString(std::move(s));
      }
      case Expr::Kind::kAnd: {
        Value l = Eval(*e.args[0]);
        return Truthy(l) ? Eval(*e.args[1]) : l;
      }
      case Expr::Kind::kOr: {
        Value l = Eval(*e.args[0]);
        return Truthy(l) ? l : Eval(*e.args[1]);
      }
      case Expr::Kind::kCompare: {
        Value left = Eval(*e.args[0]);
        for (size_t i = 0; i < e.ops.size(); ++i) {
          Value right = Eval(*e.args[i + 1]);
          if (!Compare(e.ops[i], left, right, e)) return Value::Make(Json(false));
          left = std::move(right);
        }
        return Value::Make(Json(true));
      }
      case Expr::Kind::kCond:
        if (Truthy(Eval(*e.args[0]))) return Eval(*e.args[1]);
        if (e.args[2]) return Eval(*e.args[2]);
        return Value::Undefined(
            "the inline if expression evaluated to false and no else section "
            "was defined");
      case Expr::Kind::kList:
      case Expr::Kind::kTuple: {
        Json arr = Json::array();
        for (const ExprPtr& a : e.args) arr.push_back(ToJson(Eval(*a), *a));
        return Value::Make(std::move(arr), e.kind == Expr::Kind::kTuple);
      }
      case Expr::Kind::kDict: {
        Json obj = Json::object();
        for (size_t i = 0; i + 1 < e.args.size(); i += 2) {
          Value k = Eval(*e.args[i]);
          if (!k.is_string()) FailAt(*e.args[i], "dict keys must be strings");
          obj[k.str()] = ToJson(Eval(*e.args[i + 1]), *e.args[i + 1]);
        }
        return Value::Make(std::move(obj));
      }
    }
    FailAt(e, "unknown expression");
  }

  Value GetAttr(const Value& obj, const std::string& name, const Expr& at) {
    if (obj.undefined()) FailAt(at, obj.name);
    if (obj.kind == Value::Kind::kNamespace) {
      auto f = obj.ns->attrs.find(name);
      if (f != obj.ns->attrs.end()) return f->second;
      return Value::Undefined(StrCat("'Namespace' has no attribute '", name, "'"));
    }
    if (obj.kind == Value::Kind::kLoop) return LoopAttr(*obj.loop, name, at);
    if (obj.is_dict()) {
      auto f = obj.j->find(name);
      if (f != obj.j->end()) return Value::Ref(obj.root, &*f);
      return Value::Undefined(StrCat("'dict object' has no attribute '", name, "'"));
    }
    return Value::Undefined(StrCat("'", TypeName(obj), " object' has no attribute '", name, "'"));
  }

  Value LoopAttr(const LoopState& l, const std::string& name, const Expr& at) {
    const int64_t n = static_cast<int64_t>(l.items->size());
    if (name == "index") return Value::Make(Json(l.index0 + 1));
    if (name == "index0") return Value::Make(Json(l.index0));
    if (name == "revindex") return Value::Make(Json(n - l.index0));
    if (name == "revindex0") return Value::Make(Json(n - l.index0 - 1));
    if (name == "first") return Value::Make(Json(l.index0 == 0));
    if (name == "last") return Value::Make(Json(l.index0 == n - 1));
    if (name == "length") return Value::Make(Json(n));
    if (name == "depth") return Value::Make(Json(1));
    if (name == "depth0") return Value::Make(Json(0));
    if (name == "previtem") {
      if (l.index0 == 0) return Value::Undefined("there is no previous item");
      return (*l.items)[static_cast<size_t>(l.index0 - 1)];
    }
    if (name == "nextitem") {
      if (l.index0 + 1 >= n) return Value::Undefined("there is no next item");
      return (*l.items)[static_cast<size_t>(l.index0 + 1)];
    }
    if (name == "cycle") FailAt(at, "loop.cycle must be called");
    return Value::Undefined(StrCat("'LoopContext' has no attribute '", name, "'"));
  }

  Value GetItem(const Value& obj, const Value& key, const Expr& at) {
    if (obj.undefined()) FailAt(at, obj.name);
    if (obj.kind == Value::Kind::kNamespace || obj.kind == Value::Kind::kLoop) {
      if (!key.is_string()) return Value::Undefined("no such item");
      return GetAttr(obj, key.str(), at);
    }
    if (!obj.is_json()) return Value::Undefined("no such item");
    const Json& j = *obj.j;
    if (j.is_object()) {
      if (key.is_string()) {
        auto f = j.find(key.str());
        if (f != j.end()) return Value::Ref(obj.root, &*f);
      }
      return Value::Undefined(
          StrCat("'dict object' has no attribute ", key.is_json() ? PyStrJson(*key.j) : "?"));
    }
    if ((j.is_array() || j.is_string()) && key.is_json() && IsIntLike(*key.j)) {
      int64_t i = AsInt(*key.j);
      if (j.is_array()) {
        const int64_t n = static_cast<int64_t>(j.size());
        if (i < 0) i += n;
        if (i < 0 || i >= n) return Value::Undefined(StrCat("list object has no element ", i));
        return Value::Ref(obj.root, &j[static_cast<size_t>(i)]);
      }
      const std::string& s = j.get_ref<const std::string&>();
      std::vector<size_t> off = CodepointOffsets(s);
      const int64_t n = static_cast<int64_t>(off.size()) - 1;
      if (i < 0) i += n;
      if (i < 0 || i >= n) return Value::Undefined(StrCat("str object has no element ", i));
      return Value::Make(Json(s.substr(off[i], off[i + 1] - off[i])));
    }
    return Value::Undefined(StrCat("'", TypeName(obj), " object' has no attribute ",
                                   key.is_json() ? PyStrJson(*key.j) : "?"));
  }

  // Python slice indices over a sequence of n elements.
  std::vector<int64_t> SliceIndices(int64_t n, const Expr& s) {
    std::optional<int64_t> b, e, st;
    auto get = [&](int k, std::optional<int64_t>* out) {
      if (!s.args[k]) return;
      Value v = Eval(*s.args[k]);
      if (v.is_none()) return;
      if (!v.is_json() || !IsIntLike(*v.j)) FailAt(s, "slice indices must be integers or none");
      *out = AsInt(*v.j);
    };
    get(0, &b);
    get(1, &e);
    get(2, &st);
    const int64_t step = st.value_or(1);
    if (step == 0) FailAt(s, "slice step cannot be zero");
    auto clamp = [&](std::optional<int64_t> x, int64_t dflt) {
      if (!x) return dflt;
      int64_t v = *x;
      if (v < 0) v += n;
      if (step > 0) return std::clamp<int64_t>(v, 0, n);
      return std::clamp<int64_t>(v, -1, n - 1);
    };
    std::vector<int64_t> idx;
    if (step > 0) {
      const int64_t lo = clamp(b, 0), hi = clamp(e, n);
      for (int64_t i = lo; i < hi; i += step) idx.push_back(i);
    } else {
      const int64_t hi = clamp(b, n - 1), lo = clamp(e, -1);
      for (int64_t i = hi; i > lo; i += step) idx.push_back(i);
    }
    return idx;
  }

  Value SliceOf(const Value& obj, const Expr& s) {
    if (obj.undefined()) FailAt(s, obj.name);
    if (obj.is_list()) {
      Json out = Json::array();
      for (int64_t i : SliceIndices(static_cast<int64_t>(obj.j->size()), s)) {
        out.push_back((*obj.j)[static_cast<size_t>(i)]);
      }
      return Value::Make(std::move(out), obj.tuple);
    }
    if (obj.is_string()) {
      const std::string& str = obj.str();
      std::vector<size_t> off = CodepointOffsets(str);
      std::string out;
      for (int64_t i : SliceIndices(static_cast<int64_t>(off.size()) - 1, s)) {
        out.append(str, off[i], off[i + 1] - off[i]);
      }
      return MakeString(std::move(out));
    }
    FailAt(s, StrCat("'", TypeName(obj), "' object is not subscriptable"));
  }

  Value Binary(const std::string& op, const Value& a, const Value& b, const Expr& at) {
    if (a.undefined()) FailAt(at, a.name);
    if (b.undefined()) FailAt(at, b.name);
    auto type_error = [&]() {
      FailAt(at, StrCat("unsupported operand types for ", op, ": '", TypeName(a), "' and '",
                        TypeName(b), "'"));
    };
    if (op == "+") {
      if (a.is_string() && b.is_string()) return MakeString(a.str() + b.str());
      if (a.is_list() && b.is_list()) {
        Json out = *a.j;
        for (const Json& x : *b.j) out.push_back(x);
        return Value::Make(std::move(out));
      }
    }
    if (op == "*") {
      const Value* seq =
          a.is_string() || a.is_list() ? &a : (b.is_string() || b.is_list() ? &b : nullptr);
      const Value* cnt = seq == &a ? &b : &a;
      if (seq != nullptr && cnt->is_json() && IsIntLike(*cnt->j)) {
        const int64_t k = std::max<int64_t>(0, AsInt(*cnt->j));
        if (seq->is_string()) {
          CheckSize(static_cast<size_t>(std::min<int64_t>(
              k * static_cast<int64_t>(seq->str().size()), limits_.max_output_bytes + 1)));
          std::string out;
          for (int64_t i = 0; i < k; ++i) out += seq->str();
          return MakeString(std::move(out));
        }
        if (k * static_cast<int64_t>(seq->j->size()) > limits_.max_loop_iterations) {
          FailLimit("list repetition too large");
        }
        Json out = Json::array();
        for (int64_t i = 0; i < k; ++i) {
          for (const Json& x : *seq->j) out.push_back(x);
        }
        return Value::Make(std::move(out));
      }
    }
    if (op == "%" && a.is_string()) FailAt(at, "unsupported: string formatting with %");
    if (!a.is_number() || !b.is_number()) type_error();
    const Json& x = *a.j;
    const Json& y = *b.j;
    const bool ints = IsIntLike(x) && IsIntLike(y);
    if (op == "/") {
      if (AsDouble(y) == 0) FailAt(at, "division by zero");
      return Value::Make(Json(AsDouble(x) / AsDouble(y)));
    }
    if (ints) {
      const int64_t p = AsInt(x), q = AsInt(y);
      int64_t r = 0;
      bool overflow = false;
      if (op == "+") {
        overflow = __builtin_add_overflow(p, q, &r);
      } else if (op == "-") {
        overflow = __builtin_sub_overflow(p, q, &r);
      } else if (op == "*") {
        overflow = __builtin_mul_overflow(p, q, &r);
      } else if (op == "//" || op == "%") {
        if (q == 0) FailAt(at, "integer division or modulo by zero");
        if (p == INT64_MIN && q == -1) FailAt(at, "integer overflow");
        int64_t d = p / q, m = p % q;
        if (m != 0 && ((m < 0) != (q < 0))) {
          d -= 1;
          m += q;
        }
        r = op == "//" ? d : m;
      } else if (op == "**") {
        if (q < 0)
          return Value::Make(Json(std::pow(static_cast<double>(p), static_cast<double>(q))));
        r = 1;
        for (int64_t i = 0; i < q && !overflow; ++i) overflow = __builtin_mul_overflow(r, p, &r);
      }
      if (overflow) FailAt(at, "integer overflow");
      return Value::Make(Json(r));
    }
    const double p = AsDouble(x), q = AsDouble(y);
    double r = 0;
    if (op == "+") {
      r = p + q;
    } else if (op == "-") {
      r = p - q;
    } else if (op == "*") {
      r = p * q;
    } else if (op == "//" || op == "%") {
      // CPython's float divmod.
      if (q == 0) FailAt(at, "float division or modulo by zero");
      double mod = std::fmod(p, q);
      double div = (p - mod) / q;
      if (mod != 0) {
        if ((q < 0) != (mod < 0)) {
          mod += q;
          div -= 1.0;
        }
      } else {
        mod = std::copysign(0.0, q);
      }
      double floordiv;
      if (div != 0) {
        floordiv = std::floor(div);
        if (div - floordiv > 0.5) floordiv += 1.0;
      } else {
        floordiv = std::copysign(0.0, p / q);
      }
      r = op == "%" ? mod : floordiv;
    } else if (op == "**") {
      r = std::pow(p, q);
    }
    return Value::Make(Json(r));
  }

  bool Less(const Value& a, const Value& b, const Expr& at) {
    if (a.is_number() && b.is_number()) {
      if (IsIntLike(*a.j) && IsIntLike(*b.j)) return AsInt(*a.j) < AsInt(*b.j);
      return AsDouble(*a.j) < AsDouble(*b.j);
    }
    if (a.is_string() && b.is_string()) return a.str() < b.str();
    if (a.is_list() && b.is_list()) {
      const Json& x = *a.j;
      const Json& y = *b.j;
      for (size_t i = 0; i < x.size() && i < y.size(); ++i) {
        Value xi = Value::Ref(a.root, &x[i]), yi = Value::Ref(b.root, &y[i]);
        if (!ValueEquals(xi, yi)) return Less(xi, yi, at);
      }
      return x.size() < y.size();
    }
    if (a.undefined()) FailAt(at, a.name);
    if (b.undefined()) FailAt(at, b.name);
    FailAt(at, StrCat("'<' not supported between instances of '", TypeName(a), "' and '",
                      TypeName(b), "'"));
  }

  bool In(const Value& needle, const Value& hay, const Expr& at) {
    if (hay.undefined()) return false;
    if (hay.is_string()) {
      if (!needle.is_string()) {
        FailAt(at, StrCat("'in <string>' requires string as left operand, not ", TypeName(needle)));
      }
      return hay.str().find(needle.str()) != std::string::npos;
    }
    if (hay.is_list()) {
      for (const Json& e : *hay.j) {
        if (ValueEquals(needle, Value::Ref(hay.root, &e))) return true;
      }
      return false;
    }
    if (hay.is_dict()) return needle.is_string() && hay.j->contains(needle.str());
    if (hay.kind == Value::Kind::kNamespace) {
      FailAt(at, "argument of type 'Namespace' is not iterable");
    }
    FailAt(at, StrCat("argument of type '", TypeName(hay), "' is not iterable"));
  }

  bool Compare(const std::string& op, const Value& a, const Value& b, const Expr& at) {
    if (op == "==") return ValueEquals(a, b);
    if (op == "!=") return !ValueEquals(a, b);
    if (op == "<") return Less(a, b, at);
    if (op == ">") return Less(b, a, at);
    if (op == "<=") return Less(a, b, at) || ValueEquals(a, b);
    if (op == ">=") return Less(b, a, at) || ValueEquals(a, b);
    if (op == "in") return In(a, b, at);
    if (op == "notin") return !In(a, b, at);
    FailAt(at, StrCat("unknown comparison ", op));
  }

  // -- calls, filters, tests --

  struct Args {
    std::vector<Value> pos;
    std::vector<std::pair<std::string, Value>> kw;
    // Positional argument i or keyword `name`; nullptr when neither was passed.
    const Value* Get(size_t i, const std::string& name) const {
      if (i < pos.size()) return &pos[i];
      for (const auto& [k, v] : kw) {
        if (k == name) return &v;
      }
      return nullptr;
    }
  };

  Args EvalArgs(const Expr& e, size_t first) {
    Args a;
    for (size_t i = first; i < e.args.size(); ++i) a.pos.push_back(Eval(*e.args[i]));
    for (const auto& [k, v] : e.kwargs) a.kw.emplace_back(k, Eval(*v));
    return a;
  }

  std::string StrArg(const Value* v, const Expr& at, const std::string& what) {
    if (v == nullptr || !v->is_string()) FailAt(at, StrCat(what, " must be a string"));
    return v->str();
  }

  Value Call(const Expr& e) {
    const Expr& callee = *e.args[0];
    if (callee.kind == Expr::Kind::kAttr) {
      Value obj = Eval(*callee.args[0]);
      if (obj.undefined()) FailAt(callee, obj.name);
      if (obj.kind == Value::Kind::kNamespace) {
        auto f = obj.ns->attrs.find(callee.name);
        if (f != obj.ns->attrs.end()) return CallValue(f->second, EvalArgs(e, 1), e);
      }
      return CallMethod(obj, callee.name, EvalArgs(e, 1), callee);
    }
    return CallValue(Eval(callee), EvalArgs(e, 1), e);
  }

  Value CallValue(const Value& f, const Args& a, const Expr& e) {
    if (f.undefined()) FailAt(e, f.name);
    if (f.kind != Value::Kind::kFunction) {
      FailAt(e, StrCat("'", TypeName(f), "' object is not callable"));
    }
    if (f.name == "raise_exception") {
      const Value* m = a.Get(0, "message");
      throw TemplateError{
          InvalidArgument(StrCat(kChatTemplateRaisedPrefix, m != nullptr ? PyStr(*m) : ""))};
    }
    if (f.name == "namespace" || f.name == "dict") {
      auto ns = std::make_shared<Namespace>();
      if (!a.pos.empty()) {
        if (a.pos.size() > 1 || !a.pos[0].is_dict()) {
          FailAt(e, StrCat(f.name, "() takes keyword arguments or one dict"));
        }
        for (auto it = a.pos[0].j->begin(); it != a.pos[0].j->end(); ++it) {
          ns->attrs[it.key()] = Value::Ref(a.pos[0].root, &it.value());
        }
      }
      for (const auto& [k, v] : a.kw) ns->attrs[k] = v;
      if (f.name == "namespace") {
        Value v;
        v.kind = Value::Kind::kNamespace;
        v.ns = std::move(ns);
        return v;
      }
      Json obj = Json::object();
      for (const auto& [k, v] : ns->attrs) obj[k] = ToJson(v, e);
      return Value::Make(std::move(obj));
    }
    if (f.name == "range") {
      std::vector<int64_t> n;
      for (const Value& v : a.pos) {
        if (!v.is_json() || !IsIntLike(*v.j)) FailAt(e, "range() arguments must be integers");
        n.push_back(AsInt(*v.j));
      }
      if (n.empty() || n.size() > 3) FailAt(e, "range() takes 1 to 3 arguments");
      const int64_t start = n.size() == 1 ? 0 : n[0];
      const int64_t stop = n.size() == 1 ? n[0] : n[1];
      const int64_t step = n.size() == 3 ? n[2] : 1;
      if (step == 0) FailAt(e, "range() step must not be zero");
      Json out = Json::array();
      for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) {
        // jinja2's sandbox refuses ranges longer than 100000.
        if (out.size() >= 100000) FailAt(e, "range too big (the sandbox limit is 100000)");
        out.push_back(i);
      }
      return Value::Make(std::move(out));
    }
    if (f.name == "strftime_now") {
      const std::string fmt = StrArg(a.Get(0, "format"), e, "strftime_now's format");
      std::time_t now = std::time(nullptr);
      std::tm tm{};
      localtime_r(&now, &tm);
      char buf[512];
      const size_t n = std::strftime(buf, sizeof(buf), fmt.c_str(), &tm);
      return MakeString(std::string(buf, n));
    }
    FailAt(e, StrCat("unsupported function '", f.name, "'"));
  }

  Value CallMethod(const Value& obj, const std::string& name, const Args& a, const Expr& e) {
    if (obj.kind == Value::Kind::kLoop && name == "cycle") {
      if (a.pos.empty()) FailAt(e, "loop.cycle() needs at least one argument");
      return a.pos[static_cast<size_t>(obj.loop->index0) % a.pos.size()];
    }
    if (obj.is_string()) return StringMethod(obj.str(), name, a, e);
    if (obj.is_dict()) {
      if (name == "items" || name == "keys" || name == "values") {
        Json out = Json::array();
        for (auto it = obj.j->begin(); it != obj.j->end(); ++it) {
          if (name == "items") {
            out.push_back(Json::array({it.key(), it.value()}));
          } else if (name == "keys") {
            out.push_back(it.key());
          } else {
            out.push_back(it.value());
          }
        }
        return Value::Make(std::move(out));
      }
      if (name == "get") {
        const Value* k = a.Get(0, "key");
        if (k != nullptr && k->is_string()) {
          auto f = obj.j->find(k->str());
          if (f != obj.j->end()) return Value::Ref(obj.root, &*f);
        }
        const Value* d = a.Get(1, "default");
        return d != nullptr ? *d : Value::Make(Json(nullptr));
      }
    }
    FailAt(e, StrCat("unsupported method '", TypeName(obj), ".", name, "'"));
  }

  static std::string CaseMap(const std::string& s, const std::string& what, const Expr& e,
                             char mode) {
    if (HasNonAscii(s)) FailAt(e, StrCat("unsupported: ", what, " of non-ASCII text"));
    std::string out = s;
    switch (mode) {
      case 'u':
        for (char& c : out) c = AsciiUpper(c);
        break;
      case 'l':
        for (char& c : out) c = AsciiLower(c);
        break;
      case 'c':  // str.capitalize
        for (size_t i = 0; i < out.size(); ++i)
          out[i] = i == 0 ? AsciiUpper(out[i]) : AsciiLower(out[i]);
        break;
      case 't': {  // str.title: a cased letter after a cased letter is lower, else upper
        bool prev_cased = false;
        for (char& c : out) {
          const bool cased = AsciiAlpha(c);
          c = cased ? (prev_cased ? AsciiLower(c) : AsciiUpper(c)) : c;
          prev_cased = cased;
        }
        break;
      }
      case 'T': {  // jinja2's title filter: words split at runs of [-\s({\[<]
        bool at_start = true;
        for (char& c : out) {
          const bool sep = c == '-' || c == '(' || c == '{' || c == '[' || c == '<' ||
                           PyIsSpace(static_cast<unsigned char>(c));
          if (sep) {
            at_start = true;
          } else {
            c = at_start ? AsciiUpper(c) : AsciiLower(c);
            at_start = false;
          }
        }
        break;
      }
    }
    return out;
  }

  // Python str.split / str.rsplit.
  Json Split(const std::string& s, const Value* sep_v, int64_t maxsplit, bool from_right,
             const Expr& e) {
    Json out = Json::array();
    if (sep_v == nullptr || sep_v->is_none()) {
      // Whitespace split: runs of whitespace separate, ends ignored.
      std::vector<std::pair<size_t, size_t>> words;
      size_t p = 0, start = std::string::npos;
      while (p < s.size()) {
        size_t q = p;
        const bool space = PyIsSpace(unicode::DecodeUtf8(s, &q));
        if (space && start != std::string::npos) {
          words.emplace_back(start, p);
          start = std::string::npos;
        } else if (!space && start == std::string::npos) {
          start = p;
        }
        p = q;
      }
      if (start != std::string::npos) words.emplace_back(start, s.size());
      if (maxsplit < 0 || static_cast<size_t>(maxsplit) + 1 >= words.size()) {
        for (const auto& [b, en] : words) out.push_back(s.substr(b, en - b));
        return out;
      }
      const size_t k = static_cast<size_t>(maxsplit);
      if (!from_right) {
        for (size_t i = 0; i < k; ++i)
          out.push_back(s.substr(words[i].first, words[i].second - words[i].first));
        out.push_back(PyStrip(s.substr(words[k].first), nullptr, false, true));
      } else {
        const size_t first = words.size() - k;
        out.push_back(PyStrip(s.substr(0, words[first - 1].second), nullptr, true, false));
        for (size_t i = first; i < words.size(); ++i) {
          out.push_back(s.substr(words[i].first, words[i].second - words[i].first));
        }
      }
      return out;
    }
    const std::string sep = StrArg(sep_v, e, "the separator");
    if (sep.empty()) FailAt(e, "empty separator");
    std::vector<std::string> parts;
    if (!from_right) {
      size_t p = 0;
      int64_t n = 0;
      while (maxsplit < 0 || n < maxsplit) {
        const size_t f = s.find(sep, p);
        if (f == std::string::npos) break;
        parts.push_back(s.substr(p, f - p));
        p = f + sep.size();
        ++n;
      }
      parts.push_back(s.substr(p));
    } else {
      size_t end = s.size();
      int64_t n = 0;
      std::vector<std::string> rev;
      while (maxsplit < 0 || n < maxsplit) {
        if (end < sep.size()) break;
        const size_t f = s.rfind(sep, end - sep.size());
        if (f == std::string::npos) break;
        rev.push_back(s.substr(f + sep.size(), end - f - sep.size()));
        end = f;
        ++n;
      }
      rev.push_back(s.substr(0, end));
      parts.assign(rev.rbegin(), rev.rend());
    }
    for (std::string& part : parts) out.push_back(std::move(part));
    return out;
  }

  static std::string Replace(const std::string& s, const std::string& from, const std::string& to,
                             int64_t count) {
    std::string out;
    if (from.empty()) {
      // Python inserts `to` between every code point (and at both ends).
      std::vector<size_t> off = CodepointOffsets(s);
      int64_t n = 0;
      for (size_t i = 0; i + 1 < off.size(); ++i) {
        if (count < 0 || n < count) {
          out += to;
          ++n;
        }
        out.append(s, off[i], off[i + 1] - off[i]);
      }
      if (count < 0 || n < count) out += to;
      return out;
    }
    size_t p = 0;
    int64_t n = 0;
    while (count < 0 || n < count) {
      const size_t f = s.find(from, p);
      if (f == std::string::npos) break;
      out.append(s, p, f - p);
      out += to;
      p = f + from.size();
      ++n;
    }
    out.append(s, p, std::string::npos);
    return out;
  }

  Value StringMethod(const std::string& s, const std::string& name, const Args& a, const Expr& e) {
    if (name == "strip" || name == "lstrip" || name == "rstrip") {
      const Value* c = a.Get(0, "chars");
      std::string chars;
      const bool have = c != nullptr && !c->is_none();
      if (have) chars = StrArg(c, e, "strip's chars");
      return MakeString(PyStrip(s, have ? &chars : nullptr, name != "rstrip", name != "lstrip"));
    }
    if (name == "upper") return MakeString(CaseMap(s, "upper()", e, 'u'));
    if (name == "lower") return MakeString(CaseMap(s, "lower()", e, 'l'));
    if (name == "capitalize") return MakeString(CaseMap(s, "capitalize()", e, 'c'));
    if (name == "title") return MakeString(CaseMap(s, "title()", e, 't'));
    if (name == "startswith" || name == "endswith") {
      const Value* p = a.Get(0, "prefix");
      if (p == nullptr) FailAt(e, StrCat(name, "() takes a prefix"));
      if (a.pos.size() > 1) FailAt(e, StrCat("unsupported: ", name, "() with start/end"));
      std::vector<std::string> cands;
      if (p->is_list()) {
        for (const Json& x : *p->j) {
          if (!x.is_string()) FailAt(e, StrCat(name, "() takes strings"));
          cands.push_back(x.get<std::string>());
        }
      } else {
        cands.push_back(StrArg(p, e, StrCat(name, "()'s argument")));
      }
      for (const std::string& c : cands) {
        const bool hit = name == "startswith" ? s.compare(0, c.size(), c) == 0
                                              : (s.size() >= c.size() &&
                                                 s.compare(s.size() - c.size(), c.size(), c) == 0);
        if (hit) return Value::Make(Json(true));
      }
      return Value::Make(Json(false));
    }
    if (name == "split" || name == "rsplit") {
      int64_t maxsplit = -1;
      if (const Value* m = a.Get(1, "maxsplit"); m != nullptr) {
        if (!m->is_json() || !IsIntLike(*m->j)) FailAt(e, "maxsplit must be an integer");
        maxsplit = AsInt(*m->j);
      }
      return Value::Make(Split(s, a.Get(0, "sep"), maxsplit, name == "rsplit", e));
    }
    if (name == "replace") {
      const std::string from = StrArg(a.Get(0, "old"), e, "replace()'s old");
      const std::string to = StrArg(a.Get(1, "new"), e, "replace()'s new");
      int64_t count = -1;
      if (const Value* c = a.Get(2, "count"); c != nullptr) {
        if (!c->is_json() || !IsIntLike(*c->j)) FailAt(e, "replace()'s count must be an integer");
        count = AsInt(*c->j);
      }
      return MakeString(Replace(s, from, to, count));
    }
    if (name == "find" || name == "count") {
      const std::string sub = StrArg(a.Get(0, "sub"), e, StrCat(name, "()'s argument"));
      if (a.pos.size() > 1) FailAt(e, StrCat("unsupported: ", name, "() with start/end"));
      if (name == "find") {
        const size_t f = s.find(sub);
        return Value::Make(
            Json(f == std::string::npos ? int64_t{-1} : CodepointCount(s.substr(0, f))));
      }
      if (sub.empty()) return Value::Make(Json(CodepointCount(s) + 1));
      int64_t n = 0;
      for (size_t p = s.find(sub); p != std::string::npos; p = s.find(sub, p + sub.size())) ++n;
      return Value::Make(Json(n));
    }
    if (name == "join") {
      const Value* it = a.Get(0, "iterable");
      if (it == nullptr) FailAt(e, "join() takes an iterable");
      std::string out;
      bool first = true;
      for (const Value& v : Iterate(*it, e.line, e.col)) {
        if (!v.is_string()) FailAt(e, StrCat("join() expects strings, got ", TypeName(v)));
        if (!first) out += s;
        first = false;
        out += v.str();
        CheckSize(out.size());
      }
      return MakeString(std::move(out));
    }
    FailAt(e, StrCat("unsupported method 'str.", name, "'"));
  }

  bool ApplyTest(const std::string& name, const Value& v, const std::vector<Value>& args,
                 const Expr& e) {
    auto arg = [&](size_t i) -> const Value& {
      if (i >= args.size()) FailAt(e, StrCat("test '", name, "' needs an argument"));
      return args[i];
    };
    if (name == "defined") return !v.undefined();
    if (name == "undefined") return v.undefined();
    if (name == "none") return v.is_none();
    if (name == "boolean") return v.is_bool();
    if (name == "true") return v.is_bool() && v.j->get<bool>();
    if (name == "false") return v.is_bool() && !v.j->get<bool>();
    if (name == "integer") return v.is_int();
    if (name == "float") return v.is_float();
    if (name == "number") return v.is_number();
    if (name == "string") return v.is_string();
    if (name == "mapping") return v.is_dict();
    if (name == "iterable") return v.undefined() || v.is_list() || v.is_dict() || v.is_string();
    if (name == "sequence") return v.is_list() || v.is_dict() || v.is_string();
    if (name == "callable") return v.kind == Value::Kind::kFunction;
    if (name == "odd" || name == "even" || name == "divisibleby") {
      if (!v.is_json() || !IsIntLike(*v.j)) FailAt(e, StrCat("test '", name, "' needs an integer"));
      const int64_t x = AsInt(*v.j);
      if (name == "odd") return x % 2 != 0;
      if (name == "even") return x % 2 == 0;
      const Value& d = arg(0);
      if (!d.is_json() || !IsIntLike(*d.j) || AsInt(*d.j) == 0) {
        FailAt(e, "divisibleby needs a non-zero integer");
      }
      return x % AsInt(*d.j) == 0;
    }
    if (name == "eq" || name == "equalto" || name == "==") return Compare("==", v, arg(0), e);
    if (name == "ne" || name == "!=") return Compare("!=", v, arg(0), e);
    if (name == "lt" || name == "lessthan" || name == "<") return Compare("<", v, arg(0), e);
    if (name == "le" || name == "<=") return Compare("<=", v, arg(0), e);
    if (name == "gt" || name == "greaterthan" || name == ">") return Compare(">", v, arg(0), e);
    if (name == "ge" || name == ">=") return Compare(">=", v, arg(0), e);
    if (name == "in") return In(v, arg(0), e);
    FailAt(e, StrCat("unknown test '", name, "'"));
  }

  Value ApplyFilter(const Expr& e) {
    Value v = Eval(*e.args[0]);
    Args a = EvalArgs(e, 1);
    return Filter(e.name, v, a, e);
  }

  Value Filter(const std::string& name, const Value& v, const Args& a, const Expr& e) {
    if (name == "default" || name == "d") {
      const Value* dflt = a.Get(0, "default_value");
      const Value* boolean = a.Get(1, "boolean");
      const bool use = v.undefined() || (boolean != nullptr && Truthy(*boolean) && !Truthy(v));
      if (!use) return v;
      return dflt != nullptr ? *dflt : Value::Make(Json(""));
    }
    if (name == "safe") return v;
    if (name == "string") return MakeString(PyStr(v));
    if (name == "trim") {
      const Value* c = a.Get(0, "chars");
      std::string chars;
      const bool have = c != nullptr && !c->is_none();
      if (have) chars = StrArg(c, e, "trim's chars");
      return MakeString(PyStrip(PyStr(v), have ? &chars : nullptr, true, true));
    }
    if (name == "upper") return MakeString(CaseMap(PyStr(v), "upper", e, 'u'));
    if (name == "lower") return MakeString(CaseMap(PyStr(v), "lower", e, 'l'));
    if (name == "capitalize") return MakeString(CaseMap(PyStr(v), "capitalize", e, 'c'));
    if (name == "title") return MakeString(CaseMap(PyStr(v), "title", e, 'T'));
    if (name == "replace") {
      const std::string s = PyStr(v);
      const Value* from = a.Get(0, "old");
      const Value* to = a.Get(1, "new");
      if (from == nullptr || to == nullptr) FailAt(e, "replace needs old and new");
      int64_t count = -1;
      if (const Value* c = a.Get(2, "count"); c != nullptr && !c->is_none()) {
        if (!c->is_json() || !IsIntLike(*c->j)) FailAt(e, "replace's count must be an integer");
        count = AsInt(*c->j);
      }
      return MakeString(Replace(s, PyStr(*from), PyStr(*to), count));
    }
    if (name == "length" || name == "count") {
      if (v.undefined()) return Value::Make(Json(0));
      if (v.is_string()) return Value::Make(Json(CodepointCount(v.str())));
      if (v.is_list() || v.is_dict()) return Value::Make(Json(static_cast<int64_t>(v.j->size())));
      FailAt(e, StrCat("object of type '", TypeName(v), "' has no len()"));
    }
    if (name == "tojson") return ToJsonFilter(v, a, e);
    if (name == "first" || name == "last") {
      std::vector<Value> items = Iterate(v, e.line, e.col);
      if (items.empty()) return Value::Undefined(StrCat("No ", name, " item, sequence was empty."));
      return name == "first" ? items.front() : items.back();
    }
    if (name == "list") {
      Json out = Json::array();
      for (const Value& x : Iterate(v, e.line, e.col)) out.push_back(ToJson(x, e));
      return Value::Make(std::move(out));
    }
    if (name == "items") {
      if (v.undefined()) return Value::Make(Json::array());
      if (!v.is_dict()) FailAt(e, "can only get item pairs from a mapping");
      Json out = Json::array();
      for (auto it = v.j->begin(); it != v.j->end(); ++it) {
        out.push_back(Json::array({it.key(), it.value()}));
      }
      return Value::Make(std::move(out));
    }
    if (name == "join") {
      const Value* sep = a.Get(0, "d");
      const Value* attr = a.Get(1, "attribute");
      const std::string d = sep != nullptr ? PyStr(*sep) : "";
      std::string out;
      bool first = true;
      for (const Value& x : Iterate(v, e.line, e.col)) {
        if (!first) out += d;
        first = false;
        out += PyStr(attr != nullptr ? AttrPath(x, *attr, e) : x);
        CheckSize(out.size());
      }
      return MakeString(std::move(out));
    }
    if (name == "abs") {
      if (!v.is_number()) FailAt(e, StrCat("bad operand type for abs(): '", TypeName(v), "'"));
      if (IsIntLike(*v.j)) {
        const int64_t x = AsInt(*v.j);
        if (x == INT64_MIN) FailAt(e, "integer overflow");
        return Value::Make(Json(x < 0 ? -x : x));
      }
      return Value::Make(Json(std::fabs(v.j->get<double>())));
    }
    if (name == "int" || name == "float") return NumberFilter(name, v, a);
    if (name == "map") {
      Json out = Json::array();
      const Value* attr = nullptr;
      for (const auto& [k, x] : a.kw) {
        if (k == "attribute") attr = &x;
      }
      const Value* dflt = nullptr;
      for (const auto& [k, x] : a.kw) {
        if (k == "default") dflt = &x;
      }
      for (const Value& x : Iterate(v, e.line, e.col)) {
        if (attr != nullptr) {
          Value r = AttrPath(x, *attr, e);
          if (r.undefined() && dflt != nullptr) r = *dflt;
          out.push_back(ToJson(r, e));
        } else {
          if (a.pos.empty() || !a.pos[0].is_string())
            FailAt(e, "map needs a filter name or attribute=");
          const std::string f = a.pos[0].str();
          if (!Contains(KnownFilters(), f) || f == "map")
            FailAt(e, StrCat("unknown filter '", f, "'"));
          Args rest;
          rest.pos.assign(a.pos.begin() + 1, a.pos.end());
          out.push_back(ToJson(Filter(f, x, rest, e), e));
        }
      }
      return Value::Make(std::move(out));
    }
    if (name == "select" || name == "reject" || name == "selectattr" || name == "rejectattr") {
      const bool by_attr = name == "selectattr" || name == "rejectattr";
      const bool keep_if = name == "select" || name == "selectattr";
      size_t next = 0;
      const Value* attr = nullptr;
      if (by_attr) {
        if (a.pos.empty()) FailAt(e, StrCat(name, " needs an attribute"));
        attr = &a.pos[0];
        next = 1;
      }
      std::string test;
      std::vector<Value> targs;
      if (next < a.pos.size()) {
        if (!a.pos[next].is_string()) FailAt(e, StrCat(name, "'s test must be a name"));
        test = a.pos[next].str();
        if (!Contains(KnownTests(), test)) FailAt(e, StrCat("unknown test '", test, "'"));
        targs.assign(a.pos.begin() + static_cast<long>(next) + 1, a.pos.end());
      }
      Json out = Json::array();
      for (const Value& x : Iterate(v, e.line, e.col)) {
        const Value subject = by_attr ? AttrPath(x, *attr, e) : x;
        const bool pass = test.empty() ? Truthy(subject) : ApplyTest(test, subject, targs, e);
        if (pass == keep_if) out.push_back(ToJson(x, e));
      }
      return Value::Make(std::move(out));
    }
    FailAt(e, StrCat("unknown filter '", name, "'"));
  }

  // jinja2's attribute lookup for filters: "a.b.0" walks dict keys and list indices.
  Value AttrPath(const Value& x, const Value& path, const Expr& e) {
    if (path.is_json() && IsIntLike(*path.j)) return GetItem(x, path, e);
    const std::string p = PyStr(path);
    Value cur = x;
    size_t start = 0;
    while (true) {
      const size_t dot = p.find('.', start);
      const std::string part =
          p.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
      int64_t idx = 0;
      auto r = std::from_chars(part.data(), part.data() + part.size(), idx);
      if (!part.empty() && r.ec == std::errc() && r.ptr == part.data() + part.size()) {
        cur = GetItem(cur, Value::Make(Json(idx)), e);
      } else {
        cur = GetItem(cur, Value::Make(Json(part)), e);
      }
      if (dot == std::string::npos) return cur;
      start = dot + 1;
    }
  }

  Value NumberFilter(const std::string& name, const Value& v, const Args& a) {
    const bool to_int = name == "int";
    const Value* d = a.Get(0, "default");
    Value dflt = d != nullptr ? *d : (to_int ? Value::Make(Json(0)) : Value::Make(Json(0.0)));
    if (v.is_number()) {
      if (to_int) {
        if (IsIntLike(*v.j)) return Value::Make(Json(AsInt(*v.j)));
        const double x = v.j->get<double>();
        if (!std::isfinite(x) || std::fabs(x) >= 9.2e18) return dflt;
        return Value::Make(Json(static_cast<int64_t>(x)));
      }
      return Value::Make(Json(AsDouble(*v.j)));
    }
    if (v.is_string()) {
      const std::string s = PyStrip(v.str(), nullptr, true, true);
      if (to_int) {
        int64_t x = 0;
        std::string digits;
        for (char c : s) {
          if (c != '_') digits += c;
        }
        const char* b = digits.data();
        if (!digits.empty() && digits[0] == '+') ++b;
        auto r = std::from_chars(b, digits.data() + digits.size(), x);
        if (!digits.empty() && r.ec == std::errc() && r.ptr == digits.data() + digits.size()) {
          return Value::Make(Json(x));
        }
        // jinja2's int filter falls back to int(float(value)).
      }
      char* end = nullptr;
      const double x = std::strtod(s.c_str(), &end);
      if (!s.empty() && end == s.c_str() + s.size()) {
        if (!to_int) return Value::Make(Json(x));
        if (std::isfinite(x) && std::fabs(x) < 9.2e18) {
          return Value::Make(Json(static_cast<int64_t>(x)));
        }
      }
    }
    return dflt;
  }

  Value ToJsonFilter(const Value& v, const Args& a, const Expr& e) {
    if (!v.is_json()) {
      FailAt(e, StrCat("Object of type ", TypeName(v), " is not JSON serializable"));
    }
    // transformers: tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)
    DumpOptions o;
    if (const Value* x = a.Get(0, "ensure_ascii"); x != nullptr) o.ensure_ascii = Truthy(*x);
    if (const Value* ind = a.Get(1, "indent"); ind != nullptr && !ind->is_none()) {
      if (ind->is_string()) {
        o.indent = ind->str();
      } else if (ind->is_json() && IsIntLike(*ind->j)) {
        o.indent =
            std::string(static_cast<size_t>(std::clamp<int64_t>(AsInt(*ind->j), 0, 64)), ' ');
      } else {
        FailAt(e, "tojson's indent must be an integer or a string");
      }
      o.item_sep = ",";
    }
    if (const Value* x = a.Get(2, "separators"); x != nullptr && !x->is_none()) {
      if (!x->is_list() || x->j->size() != 2 || !(*x->j)[0].is_string() ||
          !(*x->j)[1].is_string()) {
        FailAt(e, "tojson's separators must be two strings");
      }
      o.item_sep = (*x->j)[0].get<std::string>();
      o.key_sep = (*x->j)[1].get<std::string>();
    }
    if (const Value* x = a.Get(3, "sort_keys"); x != nullptr) o.sort_keys = Truthy(*x);
    if (a.pos.size() > 4) FailAt(e, "tojson takes at most 4 arguments");
    for (const auto& [k, x] : a.kw) {
      if (k != "ensure_ascii" && k != "indent" && k != "separators" && k != "sort_keys") {
        FailAt(e, StrCat("unsupported tojson argument '", k, "'"));
      }
    }
    std::string out;
    JsonDump(*v.j, o, 0, &out);
    return MakeString(std::move(out));
  }

  const ChatTemplateLimits& limits_;
  std::vector<Scope> scopes_ = std::vector<Scope>(1);
  int64_t iterations_ = 0;
};

}  // namespace
}  // namespace chat_template_internal

namespace ci = chat_template_internal;

ChatTemplate::~ChatTemplate() = default;

StatusOr<std::unique_ptr<ChatTemplate>> ChatTemplate::Create(std::string_view source,
                                                             std::string bos_token,
                                                             std::string eos_token,
                                                             ChatTemplateLimits limits) {
  if (static_cast<int64_t>(source.size()) > limits.max_template_bytes) {
    return InvalidArgument(StrCat("chat template of ", source.size(),
                                  " bytes exceeds the limit of ", limits.max_template_bytes));
  }
  std::unique_ptr<ChatTemplate> t(new ChatTemplate());
  t->source_ = std::string(source);
  t->bos_token_ = std::move(bos_token);
  t->eos_token_ = std::move(eos_token);
  t->limits_ = limits;
  try {
    auto program = std::make_unique<ChatTemplateProgram>();
    program->body = ci::ParseTemplate(source, limits.max_nesting);
    t->program_ = std::move(program);
  } catch (const ci::TemplateError& e) {
    return e.status;
  }
  return t;
}

StatusOr<std::string> ChatTemplate::Render(const nlohmann::ordered_json& messages,
                                           bool add_generation_prompt,
                                           const nlohmann::ordered_json& extra) const {
  if (!messages.is_array()) return InvalidArgument("chat template: messages must be a JSON array");
  if (!extra.is_object()) return InvalidArgument("chat template: extra must be a JSON object");
  if (extra.contains("messages") || extra.contains("add_generation_prompt")) {
    return InvalidArgument(
        "chat template: extra must not set messages or add_generation_prompt (pass them as "
        "arguments)");
  }
  if (ci::NestedDeeperThan(messages, ci::kMaxValueDepth) ||
      ci::NestedDeeperThan(extra, ci::kMaxValueDepth)) {
    return InvalidArgument(StrCat("chat template: messages or extra nest deeper than ",
                                  ci::kMaxValueDepth, " levels"));
  }
  try {
    using ci::Json;
    using ci::Value;
    ci::Renderer r(limits_);
    r.SetGlobal("bos_token", Value::Make(Json(bos_token_)));
    r.SetGlobal("eos_token", Value::Make(Json(eos_token_)));
    r.SetGlobal("tools", Value::Make(Json(nullptr)));
    r.SetGlobal("documents", Value::Make(Json(nullptr)));
    // The caller's documents outlive the render: values refer into them without copies.
    const std::shared_ptr<const Json> extra_root(&extra, [](const Json*) {});
    const std::shared_ptr<const Json> messages_root(&messages, [](const Json*) {});
    for (auto it = extra_root->begin(); it != extra_root->end(); ++it) {
      r.SetGlobal(it.key(), Value::Ref(extra_root, &it.value()));
    }
    r.SetGlobal("messages", Value::Ref(messages_root, messages_root.get()));
    r.SetGlobal("add_generation_prompt", Value::Make(Json(add_generation_prompt)));
    return r.Run(program_->body);
  } catch (const ci::TemplateError& e) {
    return e.status;
  } catch (const nlohmann::json::exception& e) {
    return InvalidArgument(StrCat("chat template: ", e.what()));
  }
}

}  // namespace ragserve::engine
