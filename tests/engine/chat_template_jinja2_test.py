#!/usr/bin/python3
"""engine::ChatTemplate against Debian's python3-jinja2, byte for byte.

Renders the real chat templates in chat_templates/*.json (tokenizer_config.json excerpts of
Llama-3, Llama-3.1, Qwen2, Qwen2.5, Mistral, Gemma and Phi-3 instruct models) over every
conversation of chat_templates/conversations.json with add_generation_prompt false and true, plus
the synthetic templates of chat_templates/snippets.json that exercise the supported Jinja subset,
once with the C++ renderer (ragserve-chat-template-render) and once with jinja2 set up exactly as
transformers' apply_chat_template does it (ImmutableSandboxedEnvironment(trim_blocks=True,
lstrip_blocks=True) with the loopcontrols extension, a raise_exception global, its tojson filter,
tools=None and documents=None).

For every case:
  * jinja2 rendered -> the C++ output must be the same bytes;
  * jinja2's raise_exception fired -> C++ must fail with "chat template raised: " + the message;
  * jinja2 failed otherwise (undefined attribute, type error) -> C++ must fail too.
Exit status 0 when all cases agree, 1 otherwise, 77 (skip) when jinja2 is not installed.
Usage: chat_template_jinja2_test.py --render BUILD/bin/ragserve-chat-template-render
                                    --data tests/engine/chat_templates [--verbose]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
from datetime import datetime

try:
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment
except ImportError:
    print("SKIP: python3-jinja2 is not installed (apt-get install python3-jinja2)")
    sys.exit(77)

RAISED_PREFIX = "chat template raised: "


class RaisedByTemplate(jinja2.exceptions.TemplateError):
    pass


def raise_exception(message):
    raise RaisedByTemplate(message)


def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # transformers' override of jinja2's tojson (no HTML escaping).
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def strftime_now(format):
    return datetime.now().strftime(format)


def make_env():
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


def render_jinja(env, case):
    """('output', text) | ('raised', message) | ('error', description)"""
    try:
        template = env.from_string(case["template"])
        context = {"bos_token": case["bos_token"], "eos_token": case["eos_token"],
                   "tools": None, "documents": None}
        context.update(case["extra"])
        return "output", template.render(messages=case["messages"],
                                         add_generation_prompt=case["add_generation_prompt"],
                                         **context)
    except RaisedByTemplate as e:
        return "raised", str(e)
    except Exception as e:  # noqa: BLE001 - any other jinja2/Python failure
        return "error", f"{type(e).__name__}: {e}"


def build_cases(data_dir):
    with open(os.path.join(data_dir, "conversations.json"), encoding="utf-8") as f:
        conversations = json.load(f)["conversations"]
    with open(os.path.join(data_dir, "snippets.json"), encoding="utf-8") as f:
        snippets = json.load(f)["snippets"]
    templates = {}
    for name in sorted(os.listdir(data_dir)):
        if name in ("conversations.json", "snippets.json") or not name.endswith(".json"):
            continue
        with open(os.path.join(data_dir, name), encoding="utf-8") as f:
            templates[name[:-5]] = json.load(f)
    cases = []
    for tname, config in templates.items():
        for cname, conv in conversations.items():
            for agp in (False, True):
                cases.append({
                    "id": f"{tname} x {cname} x agp={agp}",
                    "kind": "real",
                    "template": config["chat_template"],
                    "bos_token": config.get("bos_token") or "",
                    "eos_token": config.get("eos_token") or "",
                    "messages": conv["messages"],
                    "add_generation_prompt": agp,
                    "extra": conv.get("extra", {}),
                })
    default_messages = [{"role": "user", "content": "Hi"},
                        {"role": "assistant", "content": "Hello"}]
    for s in snippets:
        cases.append({
            "id": f"snippet {s['name']}",
            "kind": "snippet",
            "template": s["template"],
            "bos_token": s.get("bos_token", ""),
            "eos_token": s.get("eos_token", ""),
            "messages": s.get("messages", default_messages),
            "add_generation_prompt": s.get("add_generation_prompt", False),
            "extra": s.get("extra", {}),
        })
    return templates, conversations, cases


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--render", required=True, help="ragserve-chat-template-render binary")
    ap.add_argument("--data", required=True, help="tests/engine/chat_templates")
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args()

    templates, conversations, cases = build_cases(args.data)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "cases.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(cases, f, ensure_ascii=False)
        proc = subprocess.run([args.render, path], capture_output=True, check=False)
    if proc.returncode != 0:
        print(f"FAIL: {args.render} exited {proc.returncode}: {proc.stderr.decode(errors='replace')}")
        return 1
    results = {r["id"]: r for r in json.loads(proc.stdout.decode("utf-8"))}

    env = make_env()
    failures = []
    counts = {"output": 0, "raised": 0, "error": 0}
    for case in cases:
        kind, value = render_jinja(env, case)
        counts[kind] += 1
        got = results.get(case["id"])
        if got is None:
            failures.append((case["id"], "no result from the C++ renderer", "", ""))
            continue
        cpp = ("output", got["output"]) if "output" in got else ("error", got["error"])
        ok = False
        if kind == "output":
            ok = cpp == ("output", value)
        elif kind == "raised":
            ok = cpp == ("error", RAISED_PREFIX + value)
        else:
            ok = cpp[0] == "error" and not cpp[1].startswith(RAISED_PREFIX)
        if args.verbose:
            print(f"{'ok  ' if ok else 'FAIL'} {case['id']}: jinja2 {kind}; C++ {cpp[0]}")
        if not ok:
            failures.append((case["id"], f"jinja2 {kind}", repr(value), repr(cpp)))

    real = sum(1 for c in cases if c["kind"] == "real")
    print(f"{len(templates)} real templates x {len(conversations)} conversations x "
          f"add_generation_prompt {{false,true}} = {real} cases, "
          f"{len(cases) - real} subset snippets; jinja2 {jinja2.__version__}: "
          f"{counts['output']} rendered, {counts['raised']} raise_exception, "
          f"{counts['error']} other errors")
    for cid, what, want, got in failures:
        print(f"MISMATCH {cid} ({what})\n  jinja2: {want}\n  C++:    {got}")
    if failures:
        print(f"FAIL: {len(failures)} of {len(cases)} cases differ")
        return 1
    print(f"PASS: all {len(cases)} cases identical")
    return 0


if __name__ == "__main__":
    sys.exit(main())
