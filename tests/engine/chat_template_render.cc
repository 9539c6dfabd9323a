// ragserve-chat-template-render: renders every case of a JSON case file with engine::ChatTemplate
// and prints the results as JSON (the C++ side of tests/engine/chat_template_jinja2_test.py).
//
//   ragserve-chat-template-render cases.json > results.json
//
// cases.json: [{"id": "...", "template": "...", "bos_token": "<s>", "eos_token": "</s>",
//               "messages": [...], "add_generation_prompt": true, "extra": {...}}, ...]
// results:    [{"id": "...", "output": "..."} or {"id": "...", "error": "...",
//               "stage": "create" | "render"}, ...]
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>

#include <nlohmann/json.hpp>

#include "services/engine/chat_template.h"

using ragserve::engine::ChatTemplate;
using Json = nlohmann::ordered_json;

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: " << argv[0] << " CASES.json\n";
    return 2;
  }
  std::ifstream in(argv[1], std::ios::binary);
  if (!in) {
    std::cerr << "cannot read " << argv[1] << "\n";
    return 2;
  }
  std::stringstream buf;
  buf << in.rdbuf();
  Json cases;
  try {
    cases = Json::parse(buf.str());
  } catch (const std::exception& e) {
    std::cerr << "bad case file: " << e.what() << "\n";
    return 2;
  }
  Json results = Json::array();
  for (const Json& c : cases) {
    Json r = Json::object();
    r["id"] = c.at("id");
    auto t = ChatTemplate::Create(c.at("template").get<std::string>(),
                                  c.value("bos_token", std::string()),
                                  c.value("eos_token", std::string()));
    if (!t.ok()) {
      r["error"] = t.status().message();
      r["stage"] = "create";
    } else {
      auto out = (*t)->Render(c.at("messages"), c.value("add_generation_prompt", false),
                              c.value("extra", Json::object()));
      if (out.ok()) {
        r["output"] = *out;
      } else {
        r["error"] = out.status().message();
        r["stage"] = "render";
      }
    }
    results.push_back(std::move(r));
  }
  // error_handler replace: an output that is not valid UTF-8 still prints (and then differs).
  std::cout << results.dump(1, ' ', false, Json::error_handler_t::replace) << "\n";
  return 0;
}
