"""A PyTorch character-level language model trained the way `unfold train` trains its own:
the anchor that unfold's default recipe is measured against.

Same corpus (the bundled novel, or --data), same vocabulary (the text's characters in
code-point order), same split (the last --held-out fraction of the characters is held out),
same streams (--batch parallel streams over the training text, chunks of --seq-len
characters, each chunk starting from the state the previous one ended in; a new pass
starts from zeros), same held-out measure (mean cross-entropy per character over the
held-out text read as streams, state carried, evaluated every --eval-every seconds), and
the same wall-clock budget (--minutes, evaluation included). The model is nn.LSTM /
nn.GRU / nn.RNN on one-hot characters with a linear readout; --out-dropout adds dropout on
the top layer's output before the readout (a common char-LM recipe; unfold has dropout
between layers only). AdamW with a linear warm-up and a cosine decay to 5% at the end of
the budget, gradients clipped at --clip.

Prints one JSON line per evaluation (elapsed seconds, step, characters/s, train loss
since the last evaluation, held-out loss) and a summary line with the best held-out loss.

    .venv/bin/python scripts/torch_charlm.py --threads 2 --minutes 10 \
        --cell lstm --hidden 384 --dropout 0 --out-dropout 0.2 --lr 2e-3 --weight-decay 0.1
"""
import argparse
import json
import math
import os
import time

HERE = os.path.dirname(os.path.abspath(__file__))
BUNDLED = os.path.join(HERE, "..", "data", "corpus", "persuasion.txt")
WARMUP_STEPS = 100
FINAL_FRACTION = 0.05


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=BUNDLED)
    ap.add_argument("--cell", default="lstm", choices=["tanh", "relu", "lstm", "gru"])
    ap.add_argument("--hidden", type=int, default=384)
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--dropout", type=float, default=0.0, help="between layers (nn.LSTM's)")
    ap.add_argument("--out-dropout", type=float, default=0.0,
                    help="on the top layer's output, before the readout")
    ap.add_argument("--seq-len", type=int, default=100)
    ap.add_argument("--batch", type=int, default=32, help="parallel streams")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--weight-decay", type=float, default=0.0, help="AdamW's, decoupled")
    ap.add_argument("--schedule", default="cosine", choices=["constant", "cosine"])
    ap.add_argument("--clip", type=float, default=5.0)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--held-out", type=float, default=0.05)
    ap.add_argument("--eval-every", type=float, default=30.0, help="seconds")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    return ap.parse_args()


class Streams:
    """Stream i reads segment i*S..(i+1)*S of the tokens, S = len // streams, in chunks
    of seq_len (the last chunk of a pass may be shorter), as unfold's TokenStreams."""

    def __init__(self, tokens, streams, seq_len):
        self.segment = len(tokens) // streams
        assert self.segment >= 2, "too few characters for that many streams"
        self.tokens = tokens[: self.segment * streams].view(streams, self.segment)
        self.seq_len = seq_len
        self.chunks_per_pass = (self.segment - 1 + seq_len - 1) // seq_len

    def chunk(self, index):
        start = (index % self.chunks_per_pass) * self.seq_len
        end = min(start + self.seq_len, self.segment - 1)
        return self.tokens[:, start:end], self.tokens[:, start + 1:end + 1]


def fitting_streams(tokens, max_streams, seq_len):
    streams = max(1, min(len(tokens) // (seq_len + 1), max_streams))
    return Streams(tokens, streams, seq_len)


def main():
    args = parse_args()
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    text = open(args.data, encoding="utf-8").read()
    chars = sorted(set(text))
    index = {c: i for i, c in enumerate(chars)}
    ids = torch.tensor([index[c] for c in text], dtype=torch.long)
    n = len(ids)
    held = max(2, round(n * args.held_out)) if args.held_out > 0 else 0
    train_ids, held_ids = ids[: n - held], ids[n - held:]
    vocab = len(chars)

    module = {"tanh": "RNN", "relu": "RNN", "lstm": "LSTM", "gru": "GRU"}[args.cell]
    extra = {"nonlinearity": args.cell} if args.cell in ("tanh", "relu") else {}
    rnn = getattr(torch.nn, module)(vocab, args.hidden, num_layers=args.layers,
                                    dropout=args.dropout if args.layers > 1 else 0.0,
                                    batch_first=True, **extra)
    out_drop = torch.nn.Dropout(args.out_dropout)
    readout = torch.nn.Linear(args.hidden, vocab)
    params = [*rnn.parameters(), *readout.parameters()]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)

    def lr_factor(step, done):
        if args.schedule == "constant":
            return 1.0
        warm = min(1.0, (step + 1) / WARMUP_STEPS)
        cosine = 0.5 * (1.0 + math.cos(math.pi * min(max(done, 0.0), 1.0)))
        return warm * (FINAL_FRACTION + (1.0 - FINAL_FRACTION) * cosine)

    def run(inputs, state):
        x = torch.nn.functional.one_hot(inputs, vocab).float()
        out, state = rnn(x, state)
        return readout(out_drop(out)), state

    def detach(state):
        if state is None:
            return None
        if isinstance(state, tuple):
            return tuple(s.detach() for s in state)
        return state.detach()

    train = Streams(train_ids, args.batch, args.seq_len)
    held_streams = fitting_streams(held_ids, args.batch, args.seq_len) if held else None

    def held_out_loss():
        rnn.eval()
        out_drop.eval()
        total, count, state = 0.0, 0, None
        with torch.no_grad():
            for c in range(held_streams.chunks_per_pass):
                x, y = held_streams.chunk(c)
                logits, state = run(x, state)
                total += torch.nn.functional.cross_entropy(
                    logits.reshape(-1, vocab), y.reshape(-1), reduction="sum").item()
                count += y.numel()
        rnn.train()
        out_drop.train()
        return total / count

    budget = args.minutes * 60.0
    start = time.perf_counter()
    next_eval = args.eval_every
    step, chunk, state = 0, 0, None
    window_loss, window_steps, chars = 0.0, 0, 0
    best = (math.inf, 0, 0.0)
    last = None
    print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(),
                      "vocab": vocab, "train_chars": len(train_ids), "held_out_chars": held,
                      "config": vars(args)}), flush=True)
    while True:
        elapsed = time.perf_counter() - start
        done = elapsed >= budget
        if elapsed >= next_eval or done:
            h = held_out_loss() if held_streams else float("nan")
            point = {"seconds": round(elapsed, 1), "step": step,
                     "chars_per_s": round(chars / max(elapsed, 1e-9)),
                     "train": round(window_loss / max(window_steps, 1), 4),
                     "held_out": round(h, 4)}
            print(json.dumps(point), flush=True)
            if h < best[0]:
                best = (h, step, elapsed)
            last = point
            window_loss, window_steps = 0.0, 0
            next_eval += args.eval_every
        if done:
            break
        if chunk == 0:
            state = None  # a new pass starts from the zero state
        x, y = train.chunk(chunk)
        for g in opt.param_groups:
            g["lr"] = args.lr * lr_factor(step, elapsed / budget)
        opt.zero_grad(set_to_none=True)
        logits, state = run(x, detach(state))
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, vocab), y.reshape(-1))
        loss.backward()
        if args.clip > 0:
            torch.nn.utils.clip_grad_norm_(params, args.clip)
        opt.step()
        state = detach(state)
        window_loss += loss.item()
        window_steps += 1
        chars += y.numel()
        step += 1
        chunk = (chunk + 1) % train.chunks_per_pass
    print(json.dumps({"done": True, "steps": step, "seconds": last["seconds"],
                      "chars_per_s": last["chars_per_s"], "last_held_out": last["held_out"],
                      "best_held_out": round(best[0], 4), "best_step": best[1],
                      "best_seconds": round(best[2], 1)}), flush=True)


if __name__ == "__main__":
    main()
