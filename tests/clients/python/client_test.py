#!/usr/bin/python3
"""The Python client package (tools/python/ragserve) against a running cluster.

Usage: client_test.py --target HOST:PORT --token T --admin-token A --collection C --question Q --max-tokens N
Run by tests/e2e/clients_e2e_test.cc, which starts the cluster, ingests collection C and checks
the answer printed on the last line (JSON: text, token_ids) against its own C++ client's answer.
Uses a collection of its own ("py-client") for create / ingest / list / drop. Exit 0 on success.
"""
import argparse
import json
import sys

import grpc

import ragserve
from ragserve import Delta, Document, Passages, RagError, Stats


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def expect_error(code, fn, *args, **kwargs):
    try:
        result = fn(*args, **kwargs)
        if hasattr(result, "__next__"):
            list(result)
    except RagError as e:
        check(e.code == code, f"expected {code.name}, got {e.code.name}: {e.details}")
        return e
    raise AssertionError(f"expected {code.name}, the call succeeded")


def collections_and_ingest(client):
    name = "py-client"
    info = client.create_collection(name, 256, metric="cosine", index="flat")
    check(info.name == name and info.dimension == 256 and info.index == "flat", f"created {info}")
    expect_error(grpc.StatusCode.ALREADY_EXISTS, client.create_collection, name, 256)
    docs = [Document(id="a", text="Owls hunt at night in the Varden forest.",
                     metadata={"topic": "birds"}),
            {"id": "b", "text": "The Varden forest is 30 kilometres wide.", "metadata": {}},
            {"id": "c", "text": "Salmon swim up the Nawerk River in autumn."}]
    check(client.ingest(name, docs, batch=2) == 3, "three documents ingested")
    listed = {c.name: c for c in client.collections()}
    check(name in listed and listed[name].num_documents == 3, f"listed: {listed}")
    # The collection answers a query of its own: all three passages, metadata read back.
    events = list(client.query(name, "How wide is the Varden forest?", top_k=3, max_tokens=4,
                               ignore_eos=True))
    check(isinstance(events[0], Passages), f"{events[0]}")
    found = {p.id: p for p in events[0].passages}
    check(set(found) == {"a", "b", "c"}, f"passages: {found}")
    check(found["a"].metadata == {"topic": "birds"}, f"metadata: {found['a']}")
    check(found["b"].text == docs[1]["text"], f"text: {found['b']}")
    client.drop_collection(name)
    check(name not in {c.name for c in client.collections()}, "dropped")
    expect_error(grpc.StatusCode.NOT_FOUND, client.query, name, "anything", max_tokens=2)


def stream_and_answer(client, args):
    """The stream is passages, deltas, stats in that order; answer() gathers the same."""
    # The C++ client's request: use_context_cache off (the Python client, like ragctl, turns it
    # on by default; the proto's default is off).
    kw = dict(top_k=2, max_tokens=args.max_tokens, ignore_eos=True, use_context_cache=False)
    events = list(client.query(args.collection, args.question, **kw))
    check(isinstance(events[0], Passages), "passages first")
    check(isinstance(events[-1], Stats), "stats last")
    deltas = [e for e in events[1:-1]]
    check(deltas and all(isinstance(e, Delta) for e in deltas), "deltas in between")
    streamed = "".join(d.text for d in deltas)
    ids = [i for d in deltas for i in d.token_ids]
    stats = events[-1]
    check(stats.generated_tokens == len(ids) == args.max_tokens, f"{stats} vs {len(ids)} ids")
    check(stats.finish_reason == "length" and stats.timings["total_ms"] > 0, f"{stats}")
    whole = client.answer(args.collection, args.question, **kw)
    check(whole.text == streamed and list(whole.token_ids) == ids,
          f"answer() {whole.text!r} differs from the stream {streamed!r}")
    check([p.id for p in whole.passages] == [p.id for p in events[0].passages], "same passages")
    return whole


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", required=True)
    ap.add_argument("--token", required=True)
    ap.add_argument("--admin-token", required=True)
    ap.add_argument("--collection", required=True)
    ap.add_argument("--question", required=True)
    ap.add_argument("--max-tokens", type=int, required=True)
    args = ap.parse_args()
    with ragserve.Client(args.target, timeout=60) as anonymous:
        expect_error(grpc.StatusCode.UNAUTHENTICATED, anonymous.collections)
    with ragserve.Client(args.target, token="wrong", timeout=60) as wrong:
        expect_error(grpc.StatusCode.UNAUTHENTICATED, wrong.query, args.collection, "a question")
    with ragserve.Client(args.target, token=args.token, timeout=60) as public_only:
        # Collection admin needs the admin credential (docs/SECURITY.md).
        expect_error(grpc.StatusCode.PERMISSION_DENIED, public_only.create_collection, "py-x", 8)
    with ragserve.Client(args.target, token=args.token, admin_token=args.admin_token,
                         timeout=60) as client:
        expect_error(grpc.StatusCode.INVALID_ARGUMENT, client.query, args.collection, "")
        collections_and_ingest(client)
        whole = stream_and_answer(client, args)
    print(json.dumps({"text": whole.text, "token_ids": list(whole.token_ids)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
