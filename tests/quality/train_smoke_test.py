#!/usr/bin/python3
"""Smoke run of the reader training program (tools/train-model/train.py): a few steps of a tiny
model from scratch (tokenizer, curriculum, dev evaluation, checkpoint, HF export), then the
exported model must load in the engine and generate (ragserve-generate), and a rerun with more
steps must resume from the checkpoint; then a few steps of the other recipes (the last phase
of recipe 3, the continuations of recipes 4 and 5). Training for real stays out of CI. Exit 77
(skipped) when python3-torch is not installed.

Usage: train_smoke_test.py --bin-dir BUILD/bin --source-dir REPO
"""
import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

PY = "/usr/bin/python3"


def train(src, bin_dir, tmp, steps, extra=(), name=""):
    cmd = [PY, os.path.join(src, "tools", "train-model", "train.py"), "--steps", str(steps),
           "--tokenizer-passages", "200", "--dev-items", "4", "--eval-every", "2",
           "--ckpt-every", "2", "--hidden", "32", "--layers", "1", "--heads", "2", "--kv-heads",
           "1", "--intermediate", "64", "--tokens-per-step", "512", "--out",
           os.path.join(tmp, "m" + name), "--work", os.path.join(tmp, "w" + name),
           "--tokenize-bin", os.path.join(bin_dir, "ragserve-tokenize")] + list(extra)
    print("$ " + " ".join(cmd), flush=True)
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=src)
    sys.stdout.write(r.stdout)
    if r.returncode != 0:
        sys.stdout.write(r.stderr)
        raise SystemExit("FAILED: train.py exited %d" % r.returncode)
    return r.stdout


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin-dir", required=True)
    ap.add_argument("--source-dir", required=True)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    src = os.path.abspath(args.source_dir)
    bin_dir = os.path.abspath(args.bin_dir)
    if subprocess.run([PY, "-c", "import torch"], capture_output=True).returncode != 0:
        print("SKIP: python3-torch is not installed (apt-get install python3-torch)")
        return 77
    t0 = time.time()
    tmp = tempfile.mkdtemp(prefix="ragserve-train-smoke-")
    try:
        train(src, bin_dir, tmp, 3)
        m = os.path.join(tmp, "m")
        for f in ("config.json", "model.safetensors", "tokenizer.json", "training.json"):
            if not os.path.isfile(os.path.join(m, f)):
                raise SystemExit("FAILED: the export has no %s" % f)
        with open(os.path.join(tmp, "w", "train_log.csv")) as f:
            log = f.read().splitlines()
        rows = list(csv.DictReader(log))
        if len(rows) != 3 or not rows[1]["dev_em"] or not rows[1]["dev_em_heldout"]:
            raise SystemExit("FAILED: train_log.csv should have a header and 3 steps with a dev "
                             "exact match at step 2:\n" + "\n".join(log))
        # The engine loads the export (same loader as any HF checkpoint) and generates.
        r = subprocess.run([os.path.join(bin_dir, "ragserve-generate"), "--model", m, "--prompt",
                            "Question: How long is the Nawerk River?\nAnswer:", "--add-bos",
                            "--max-tokens", "4", "--ignore-eos"], capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit("FAILED: ragserve-generate on the exported model:\n" + r.stderr)
        out = json.loads(r.stdout)
        if len(out["tokens"]) != 4:
            raise SystemExit("FAILED: ragserve-generate made %r" % out)
        print("engine: loaded the export (fingerprint %s), generated %s"
              % (out["fingerprint"], out["tokens"]))
        # Resume: the finished run left its checkpoint at step 3; --steps 4 continues from it.
        out4 = train(src, bin_dir, tmp, 4)
        if "resumed at step 3" not in out4:
            raise SystemExit("FAILED: the rerun did not resume from the step-3 checkpoint")
        # The last phase: long rows (attention in blocks) on every step, and the needle dev check
        # (a long prompt evaluated in chunks of queries).
        os.makedirs(os.path.join(tmp, "w2"))
        shutil.copy(os.path.join(tmp, "w", "tokenizer.json"), os.path.join(tmp, "w2"))
        out2 = train(src, bin_dir, tmp, 2, ["--recipe", "3", "--start-phase", "2", "--long-prob",
                                            "1", "--needle-k", "24", "--needle-items", "2"], "2")
        if " long " not in out2 or "needle_em" not in out2:
            raise SystemExit("FAILED: the last phase made no long row or no needle check")
        # A continuation (--recipe 4 --init-from): zero steps export the loaded weights
        # unchanged (the load is exact), two steps train on from them with the same tokenizer.
        m4 = os.path.join(tmp, "m4")
        init = ["--recipe", "4", "--init-from", m]
        out4 = train(src, bin_dir, tmp, 0, init, "4")
        if "initialized from" not in out4:
            raise SystemExit("FAILED: --init-from did not load the model")
        for f in ("model.safetensors", "tokenizer.json"):
            with open(os.path.join(m, f), "rb") as a, open(os.path.join(m4, f), "rb") as b:
                if a.read() != b.read():
                    raise SystemExit("FAILED: --init-from with 0 steps changed %s" % f)
        shutil.rmtree(os.path.join(tmp, "w4"))
        out4 = train(src, bin_dir, tmp, 2, init, "4")
        if "step 2 " not in out4 or "dev_em" not in out4:
            raise SystemExit("FAILED: the continuation did not train and evaluate 2 steps")
        # --recipe 5: the same continuation with the extra training phrasings (checked against
        # the held-out ones before the first step).
        out5 = train(src, bin_dir, tmp, 2, ["--recipe", "5", "--init-from", m], "5")
        if "step 2 " not in out5 or "dev_em" not in out5:
            raise SystemExit("FAILED: --recipe 5 did not train and evaluate 2 steps")
        # --recipe 7: binding drills and name-from-value questions (recipe 6's) in the rows, and
        # the drill dev score.
        out7 = train(src, bin_dir, tmp, 2, ["--recipe", "7", "--init-from", m], "7")
        if "step 2 " not in out7 or "drill dev exact match" not in out7:
            raise SystemExit("FAILED: --recipe 7 did not train and evaluate 2 steps")
        # --recipe 9 (a probe from scratch): name lists to continue, and their dev score.
        os.makedirs(os.path.join(tmp, "w9"))
        shutil.copy(os.path.join(tmp, "w", "tokenizer.json"), os.path.join(tmp, "w9"))
        out9 = train(src, bin_dir, tmp, 2, ["--recipe", "9"], "9")
        if "step 2 " not in out9 or "repeat dev exact match" not in out9:
            raise SystemExit("FAILED: --recipe 9 did not train and evaluate 2 steps")
        # --recipe 13 (a probe from scratch): random tokens said twice, the copy loss logged.
        os.makedirs(os.path.join(tmp, "w13"))
        shutil.copy(os.path.join(tmp, "w", "tokenizer.json"), os.path.join(tmp, "w13"))
        out13 = train(src, bin_dir, tmp, 2, ["--recipe", "13"], "13")
        if "step 2 " not in out13 or " copy " not in out13:
            raise SystemExit("FAILED: --recipe 13 did not train 2 steps of copy rows")
        # --recipe 14: its own tokenizer, trained with generated names in its text (4,096 ids),
        # so a name is a few pieces, not a spelling.
        train(src, bin_dir, tmp, 2, ["--recipe", "14", "--tokenizer-names", "20000"], "14")
        with open(os.path.join(tmp, "m14", "config.json")) as f:
            vocab = json.load(f)["vocab_size"]
        sys.path.insert(0, os.path.join(src, "tools", "train-model"))
        import train as train_lib  # noqa: E402
        enc = train_lib.Encoder(os.path.join(tmp, "m14", "tokenizer.json"))
        pieces = len(enc.encode(" Kelimanay Dreilum"))
        if vocab != 4096 or pieces > 6:
            raise SystemExit("FAILED: recipe 14's tokenizer has %d ids and spells two names in %d "
                             "pieces (want 4,096 and <= 6)" % (vocab, pieces))
        print("recipe 14's tokenizer: %d ids, two names in %d pieces" % (vocab, pieces))
        # The induction probe: a few steps on random tokens said twice.
        r = subprocess.run([PY, os.path.join(src, "tools", "train-model", "induction_probe.py"),
                            "--steps", "25", "--hidden", "32", "--layers", "2", "--heads", "2",
                            "--kv-heads", "1", "--sup-ind", "1", "--sup-prev", "--prev-task",
                            "0.25"], capture_output=True, text=True)
        sys.stdout.write(r.stdout)
        if r.returncode != 0 or "step 25  repeat" not in r.stdout:
            sys.stdout.write(r.stderr)
            raise SystemExit("FAILED: induction_probe.py did not run 25 steps")
    finally:
        if args.keep:
            print("kept " + tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print("PASSED in %.1f s" % (time.time() - t0))
    return 0


if __name__ == "__main__":
    sys.exit(main())
