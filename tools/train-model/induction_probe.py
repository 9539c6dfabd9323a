#!/usr/bin/env python3
"""A cheap probe of the induction circuit on the reader's architecture (model.Reader): random
tokens said twice, loss on the repeat only; each token of the repeat is what followed its previous
token the first time, the pattern an induction head computes. One step of 16 rows takes ~0.4 s on
one core, so a setting can be tried in minutes (docs/MODEL.md, "The ninth session's probes").

  --fixed-len        every row has the same length: then the task is solved by a positional head
                     (attend to the token `half` places back), which is *not* induction; that is
                     why this form "learns" within ~150 steps and the variable one does not
  --prev-task P      a share P of the rows asks for the previous token instead (marker id 1 first):
                     a previous-token head forms within ~200 steps
  --sup-ind L        add the cross-entropy of layer L's head 0 attention against the induction
                     target (the token after the previous occurrence) to the loss
  --sup-prev         the same for layer 0's head 0 against the previous token
  --alphabet A       random tokens drawn from A ids only (names are built from a small pool)
  --qk-init S        query/key projections start S times larger; --weight-decay W (0.05)

Prints, every 25 steps, the repeat's loss (ln(alphabet) = no induction; near 0 = induction) and
the supervised attention's loss.
"""
import argparse
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import model as model_lib  # noqa: E402


def capture_head0(captured, name):
    """A model.Layer scores hook that keeps head 0's log-attention of every row in
    captured[name] ([B, T, T] once the forward is done)."""
    def hook(row, scores):
        if row == 0:
            captured[name] = []
        captured[name].append(torch.log_softmax(scores[0], -1))
    return hook


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=1024)
    ap.add_argument("--alphabet", type=int, default=0, help="0: the whole vocabulary but 0 and 1")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--half", type=int, default=48, help="mean length of the first copy")
    ap.add_argument("--fixed-len", action="store_true")
    ap.add_argument("--prev-task", type=float, default=0.0)
    ap.add_argument("--sup-ind", type=int, default=-1)
    ap.add_argument("--sup-prev", action="store_true")
    ap.add_argument("--weight-decay", type=float, default=0.05)
    ap.add_argument("--qk-init", type=float, default=1.0,
                    help="scale of the query and key projections' initial weights")
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.sup_prev and args.sup_ind == 0:
        ap.error("--sup-ind 0 and --sup-prev would supervise the same head")
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)
    V = args.vocab
    hi = 2 + (args.alphabet or V - 2)
    cfg = model_lib.Config(V, args.hidden, args.layers, args.heads, args.kv_heads,
                           int(args.hidden * 2.75))
    model = model_lib.Reader(cfg)
    with torch.no_grad():
        for layer in model.layers:
            layer.q_proj.weight.mul_(args.qk_init)
            layer.k_proj.weight.mul_(args.qk_init)
    captured = {}
    if args.sup_ind >= 0:
        model.layers[args.sup_ind].scores_hook = capture_head0(captured, "ind")
    if args.sup_prev:
        model.layers[0].scores_hook = capture_head0(captured, "prev")
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95),
                            weight_decay=args.weight_decay)
    t0 = time.time()
    for step in range(1, args.steps + 1):
        for g in opt.param_groups:
            g["lr"] = args.lr * min(1.0, step / 60)
        n = args.half if args.fixed_len else \
            int(torch.randint(args.half // 3, args.half * 4 // 3 + 1, ()))
        T = 2 * n
        n_prev = int(args.batch * args.prev_task)
        n_copy = args.batch - n_prev
        x = torch.randint(2, hi, (n_copy, n))
        ids = torch.cat([x, x], 1)
        tgt = torch.full((args.batch, T), -100, dtype=torch.long)
        tgt[:n_copy, n:T - 1] = ids[:, n + 1:]
        if n_prev:  # marker 1, then random tokens; target at i: the token at i - 1
            y = torch.cat([torch.ones(n_prev, 1, dtype=torch.long),
                           torch.randint(2, hi, (n_prev, T - 1))], 1)
            ids = torch.cat([ids, y], 0)
            tgt[n_copy:, 2:] = y[:, 1:-1]
        mask = torch.ones(T, T, dtype=torch.bool).tril().unsqueeze(0).expand(args.batch, T, T)
        pos = torch.arange(T).unsqueeze(0).expand(args.batch, T)
        logits = model(ids, pos, mask)
        ce = F.cross_entropy(logits.reshape(-1, V), tgt.reshape(-1), reduction="none",
                             ignore_index=-100).view(tgt.shape)
        copy = ce[:n_copy, n:T - 1].mean()
        prev = ce[n_copy:, 2:].mean() if n_prev else torch.zeros(())
        sup = torch.zeros(())
        if args.sup_ind >= 0:  # query n + j (x[j]) -> key j + 1 (what followed x[j])
            qi = torch.arange(n, T - 1)
            sup = sup - torch.stack(captured["ind"])[:n_copy, qi, qi - n + 1].mean()
        if args.sup_prev:
            pi = torch.arange(1, T)
            sup = sup - torch.stack(captured["prev"])[:, pi, pi - 1].mean()
        loss = copy + prev + sup
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 25 == 0:
            print("step %d  repeat %.3f  previous-token task %.3f  supervised attention %.3f  "
                  "%.0f s" % (step, copy.item(), prev.item(), sup.item(), time.time() - t0),
                  flush=True)


if __name__ == "__main__":
    main()
