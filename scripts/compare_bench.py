"""Side-by-side table of `unfold bench` and torch_rnn_bench.py JSON lines (same card, same
run): config, length mode, unfold ms, PyTorch ms (TF32 off), ratio (< 1: unfold faster)."""
import json, sys

def load(path):
    with open(path) as f:
        return [json.loads(l) for l in f if l.strip().startswith("{")]

ours = {(r["config"], r["variable"]): r for r in load(sys.argv[1])}
theirs = {(r["config"], r["variable"]): r for r in load(sys.argv[2]) if not r.get("tf32")}
print("| config | lengths | unfold ms | PyTorch ms | unfold / PyTorch | unfold GFLOP/s | host record ms | dispatches |")
print("|---|---|---|---|---|---|---|---|")
for key, r in ours.items():
    t = theirs.get(key)
    tm = t["train_step_ms"] if t else float("nan")
    print(f"| {key[0]} | {'variable' if key[1] else 'fixed'} | {r['train_step_ms']:.2f} | {tm:.2f} | "
          f"{r['train_step_ms'] / tm:.2f} | {r['gflops']:.0f} | {r['host_record_ms']:.2f} | {r['dispatches']} |")
